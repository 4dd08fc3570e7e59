"""Command-line interface: ``coldprompt run | train | evaluate | recommend | split | serve``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

DATASET_HELP = (
    "dataset name: ml-latest-small (shipped with the package, the default), ml-1m, ml-1m-timestamped, ml-100k, "
    "recbole (any RecBole atomic folder), amazon-games, amazon-beauty, amazon (JSON lines), movielens-csv"
)
METHODS = ("random", "popularity", "onboarding", "cooccurrence", "blend", "ease", "als", "sasrec", "melu", "zeroshot",
           "simple", "all")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("coldprompt").debug("failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coldprompt",
        description="Cold-start recommendation with meta-learned soft prompts on a frozen LLM.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(title="commands", required=True)

    run = commands.add_parser("run", help="the main job: train every method and evaluate them side by side")
    _add_run_options(run)
    run.add_argument("--no-llm", action="store_true", help="run the baselines only (no backbone needed)")
    run.set_defaults(handler=_run)

    train = commands.add_parser("train", help="train the shared model and one meta-learner; write a checkpoint")
    _add_run_options(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate baselines or a checkpoint on meta-test users")
    _add_data_options(evaluate)
    evaluate.add_argument("--method", choices=METHODS, default=None,
                          help="baselines to evaluate: one name, 'simple' (random, popularity, onboarding, "
                               "co-occurrence, blend; the default without --checkpoint) or 'all' (also EASE, ALS, "
                               "SASRec, MeLU); 'zeroshot' loads the default backbone for text similarity; with "
                               "--checkpoint, the baselines run beside it on the same users")
    evaluate.add_argument("--budget", type=float, default=120.0,
                          help="training budget of SASRec and MeLU, in seconds each (default: 120)")
    evaluate.add_argument("--checkpoint", help="evaluate this checkpoint folder, with and without its inner steps")
    evaluate.add_argument("--split", help="split file written by `coldprompt split --export` (default: seeded split)")
    evaluate.add_argument("--ks", default="0,1,3,5,10", help="support sizes K, comma-separated (default: 0,1,3,5,10)")
    evaluate.add_argument("--max-test-users", type=int, help="evaluate a seeded sample of this many test users")
    evaluate.add_argument("--output", default="evaluation.json", help="JSON file for the results (default: evaluation.json)")
    evaluate.set_defaults(handler=_evaluate)

    recommend = commands.add_parser("recommend", help="top items for a history of item ids, from a checkpoint")
    recommend.add_argument("--checkpoint", required=True, help="checkpoint folder written by `coldprompt run` or `train`")
    recommend.add_argument("--history", default="", help="item ids the user interacted with, comma-separated, oldest first")
    recommend.add_argument("--profile", help="optional profile sentence, e.g. 'A female user aged 25-34.'")
    recommend.add_argument("--top", type=int, default=10, help="number of items to print (default: 10)")
    recommend.add_argument("--data-dir", help="dataset folder, when it moved since training")
    recommend.set_defaults(handler=_recommend)

    split = commands.add_parser("split", help="split users into meta-train/validation/test and export the ids")
    _add_data_options(split)
    split.add_argument("--export", required=True, help="JSON file to write the user ids of each part to")
    split.set_defaults(handler=_split)

    serve = commands.add_parser("serve", help="run the HTTP recommendation service on a checkpoint")
    serve.add_argument("--checkpoint", required=True, help="checkpoint folder written by `coldprompt run` or `train`")
    serve.add_argument("--db", default="sqlite:///coldprompt.db",
                       help="SQLAlchemy URL of the user store: sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB "
                            "(default: sqlite:///coldprompt.db, in the working folder)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    serve.add_argument("--workers", type=int, default=1,
                       help="threads that adapt prompts and score items; the CPU cores are shared among them (default: 1)")
    serve.add_argument("--queue-size", type=int, default=64,
                       help="model jobs that may wait for a worker; further requests get 503 (default: 64)")
    serve.add_argument("--data-dir", help="dataset folder, when it moved since training")
    serve.set_defaults(handler=_serve)
    return parser


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="ml-latest-small", help=DATASET_HELP)
    parser.add_argument("--data-dir", help="folder with the dataset's files (not needed for ml-latest-small)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user split and of shuffles (default: 0)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help=DATASET_HELP + " (default: ml-latest-small)")
    parser.add_argument("--data-dir", help="folder with the dataset's files (not needed for ml-latest-small)")
    parser.add_argument("--algorithm", action="append", choices=("reptile", "fomaml", "maml"),
                        help="meta-learner to train; repeat for several (default: all three)")
    parser.add_argument("--config", help="YAML file of settings (see configs/default.yaml); unknown keys are rejected")
    parser.add_argument("--output-dir", help="folder for results.json, the plot and checkpoints (default: coldprompt-output)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="setting overrides, e.g. inner_steps=2 meta_budget_s=120")


def _config_from(args):
    from coldprompt.config import load_config

    return load_config(args.config, args.overrides, dataset=args.dataset, data_dir=args.data_dir,
                       algorithms=args.algorithm, output_dir=args.output_dir)


def _run(args) -> int:
    from coldprompt.evaluation.report import format_report
    from coldprompt.pipeline import run

    config = _config_from(args)
    results = run(config, with_llm=not args.no_llm)
    print(format_report(results))
    tests = results.get("paired_tests", [])
    for heading, group in (
        ("\nPaired tests, NDCG@10 (the validation-chosen meta-learner minus each method):", [t for t in tests if not t.get("against_best_baseline")]),
        ("\nAgainst the strongest baseline at each K (highest test NDCG@10):", [t for t in tests if t.get("against_best_baseline")]),
    ):
        if group:
            print(heading)
        for test in group:
            print(f"  K={test['k']}: {test['a']} - {test['b']} = {test['difference']['mean']:+.4f} "
                  f"(p bootstrap {test['p_paired_bootstrap']:.3g}, Wilcoxon {test['p_wilcoxon']:.3g})")
    print(f"\nwrote {Path(config.output_dir) / 'results.json'} and {Path(config.output_dir) / 'ndcg_at_10.png'} "
          f"({results['wall_seconds']:.0f} s)")
    return 0


def _train(args) -> int:
    from coldprompt.llm.backbone import load_backbone, resolve_dtype
    from coldprompt.pipeline import Runner, prepare, run_llm_methods

    config = _config_from(args)
    experiment = prepare(config)
    runner = Runner(experiment)
    attn = "eager" if "maml" in config.algorithms else "sdpa"
    backbone = load_backbone(
        config.backbone, attn_implementation=attn, dtype=resolve_dtype(config.backbone_dtype), engine=config.backbone_engine
    )
    info = run_llm_methods(runner, backbone, Path(config.output_dir))
    print(json.dumps({k: v for k, v in info.items()}, indent=1))
    print(f"checkpoint: {Path(config.output_dir) / 'checkpoint'}")
    return 0


def _evaluate(args) -> int:
    from coldprompt.data.registry import load_dataset
    from coldprompt.evaluation.protocol import UserSplit, evaluation_users, split_users
    from coldprompt.evaluation.report import format_report, write_results
    from coldprompt.pipeline import Experiment, Runner, paired_tests
    from coldprompt.config import RunConfig

    ks = [int(k) for k in args.ks.split(",")]
    data = load_dataset(args.dataset, args.data_dir, shuffle_seed=args.seed)
    split = UserSplit.load(args.split, data) if args.split else split_users(data, seed=args.seed)
    config = RunConfig(dataset=args.dataset, data_dir=args.data_dir, seed=args.seed, ks=ks,
                       max_test_users=args.max_test_users)
    users = evaluation_users(data, split.test, ks, max_users=args.max_test_users, seed=args.seed)
    runner = Runner(Experiment(config, data, split, users))
    method = args.method or (None if args.checkpoint else "simple")
    baselines = _baselines_for(method, data, args.seed, args.budget) if method else []
    runner.baseline_names = [recommender.name for recommender in baselines]
    for recommender in baselines:
        start = time.perf_counter()
        recommender.fit(data, split, ks)
        runner.add(recommender, time.perf_counter() - start)
    extra = {"command": " ".join(["coldprompt"] + sys.argv[1:])}
    if args.checkpoint:
        extra["paired_tests"] = paired_tests(runner, _add_checkpoint(runner, args))
    results = runner.summary(extra)
    print(format_report(results))
    path = write_results(results, Path(args.output).parent, Path(args.output).name)
    print(f"\nwrote {path}")
    return 0


def _baselines_for(method: str, data, seed: int, budget_s: float) -> list:
    from coldprompt.baselines.strong import strong_recommenders
    from coldprompt.pipeline import baseline_recommenders

    simple = baseline_recommenders(data, seed)
    if method == "simple":
        return simple
    if method == "zeroshot":
        from coldprompt.baselines.zeroshot import ZeroShotTextRecommender
        from coldprompt.llm.backbone import load_backbone, resolve_dtype

        return [ZeroShotTextRecommender(load_backbone(attn_implementation="sdpa", dtype=resolve_dtype("auto")))]
    strong = strong_recommenders(seed=seed, budget_s=budget_s)
    if method == "all":
        return simple + strong
    names = {"random": "random", "popularity": "popularity", "onboarding": "onboarding popularity",
             "cooccurrence": "co-occurrence", "blend": "co-occurrence + onboarding (blend)",
             "ease": "EASE", "als": "ALS", "sasrec": "SASRec", "melu": "MeLU"}
    return [r for r in simple + strong if r.name == names[method]]


def _add_checkpoint(runner, args) -> str:
    """Evaluate the checkpoint with its inner steps and without them; return its algorithm."""
    from coldprompt.llm.recommender import SoftPromptScorer
    from coldprompt.pipeline import llm_name, load_trained

    trained = load_trained(args.checkpoint, data_dir=args.data_dir)
    if trained.config.dataset != args.dataset:
        raise ValueError(
            f"--checkpoint {args.checkpoint} was trained on {trained.config.dataset}, not {args.dataset}; "
            f"pass --dataset {trained.config.dataset}"
        )
    steps = trained.manifest["config"]["inner_steps"]
    algorithm = trained.manifest["algorithm"]
    runner.add(SoftPromptScorer(trained.model, trained.profiles, llm_name(algorithm), inner_steps=steps), 0.0)
    runner.add(SoftPromptScorer(trained.model, trained.profiles, llm_name(algorithm, inner=False), inner_steps=0), 0.0)
    return algorithm


def _recommend(args) -> int:
    import numpy as np

    from coldprompt.evaluation.protocol import ScoringBatch
    from coldprompt.llm.recommender import SoftPromptScorer
    from coldprompt.pipeline import load_trained

    trained = load_trained(args.checkpoint, data_dir=args.data_dir, catalogue_only=True)
    data = trained.data
    index = {item: i for i, item in enumerate(data.item_ids)}
    history = [h.strip() for h in args.history.split(",") if h.strip()]
    unknown = [h for h in history if h not in index]
    if unknown:
        raise ValueError(f"--history: unknown item ids {unknown}; use ids from the data set's item file")
    items = np.array([index[h] for h in history], dtype=np.int64)

    # The new user gets the next free profile slot, so scoring works exactly as for data set users.
    trained.profiles.ids.append(trained.profiles.for_text(trained.tokenizer, args.profile, trained.config.max_profile_tokens))
    user = len(trained.profiles.ids) - 1
    steps = trained.manifest["config"]["inner_steps"]
    scorer = SoftPromptScorer(trained.model, trained.profiles, trained.manifest["algorithm"], inner_steps=steps)
    batch = ScoringBatch(np.array([user]), [items], [np.full(len(items), np.nan, dtype=np.float32)], len(items))
    scores = scorer.score(batch)[0]
    scores[items] = -np.inf
    top = np.argsort(-scores, kind="stable")[: min(args.top, data.num_items)]
    for rank, item in enumerate(top, start=1):
        title = data.item_titles[item] or data.item_ids[item]
        print(f"{rank:>2}. {title}  (id {data.item_ids[item]}, score {scores[item]:.3f})")
    return 0


def _split(args) -> int:
    from coldprompt.data.registry import load_dataset
    from coldprompt.evaluation.protocol import split_users

    data = load_dataset(args.dataset, args.data_dir, shuffle_seed=args.seed)
    split = split_users(data, seed=args.seed)
    split.export(args.export, data)
    print(f"wrote {args.export}: {len(split.train)} train, {len(split.validation)} validation, {len(split.test)} test users")
    return 0


def _serve(args) -> int:
    from coldprompt.service.server import serve
    from coldprompt.service.state import ServiceSettings

    settings = ServiceSettings(workers=args.workers, queue_size=args.queue_size, data_dir=args.data_dir)
    return serve(args.checkpoint, args.db, host=args.host, port=args.port, settings=settings)


if __name__ == "__main__":
    sys.exit(main())
