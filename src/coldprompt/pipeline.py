"""The main job: baselines, the shared-prompt ablation, per-user tuning and the meta-learners, side by side."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np
import torch

from coldprompt.baselines.simple import (
    CoOccurrenceRecommender,
    OnboardingPopularityRecommender,
    PopularityRecommender,
    RandomRecommender,
)
from coldprompt.checkpoint import CheckpointError, check_backbone, load_checkpoint, save_checkpoint
from coldprompt.config import RunConfig
from coldprompt.data.dataset import InteractionData
from coldprompt.data.registry import load_dataset
from coldprompt.evaluation.protocol import (
    PROTOCOL_FULL,
    PROTOCOL_SAMPLED,
    EvaluationUsers,
    MethodResult,
    UserSplit,
    evaluate,
    evaluation_users,
    split_users,
)
from coldprompt.evaluation.report import machine_info, method_summary, paired_test
from coldprompt.meta.trainer import SHARED

if TYPE_CHECKING:
    from coldprompt.llm.backbone import Backbone

logger = logging.getLogger(__name__)

LR_SCALES = (1.0, 10.0, 100.0)  # multiples of inner_lr tried for per-user tuning from a random start


@dataclass
class Experiment:
    """Data, split and evaluation users of one run."""

    config: RunConfig
    data: InteractionData
    split: UserSplit
    test_users: EvaluationUsers


def prepare(config: RunConfig) -> Experiment:
    data = load_dataset(config.dataset, config.data_dir, shuffle_seed=config.seed)
    split = split_users(data, seed=config.seed)
    test_users = evaluation_users(data, split.test, config.ks, max_users=config.max_test_users, seed=config.seed)
    logger.info(
        "%s: %d users (%d / %d / %d), %d items, %d interactions; %d test users evaluated, %d left out",
        data.name, data.num_users, len(split.train), len(split.validation), len(split.test), data.num_items,
        data.num_interactions, len(test_users.users), test_users.left_out,
    )
    return Experiment(config, data, split, test_users)


def baseline_recommenders(data: InteractionData, seed: int) -> list:
    return [
        RandomRecommender(data.num_items, seed=seed),
        PopularityRecommender(),
        OnboardingPopularityRecommender(),
        CoOccurrenceRecommender(),
        CoOccurrenceRecommender(blend=True),
    ]


class Runner:
    """Collects every method's results on the same test users, then writes one results dict."""

    def __init__(self, experiment: Experiment, show_progress: bool = True):
        self.experiment = experiment
        self.show_progress = show_progress
        self.results: dict[str, MethodResult] = {}
        self.fit_seconds: dict[str, float] = {}
        self.training: dict[str, dict] = {}
        self.baseline_names: list[str] = []

    def add(self, recommender, fit_seconds: float) -> MethodResult:
        e = self.experiment
        ks = e.config.ks
        kwargs = dict(batch_size=e.config.batch_size, seed=e.config.seed, show_progress=self.show_progress)
        result = evaluate(recommender, e.data, e.test_users, ks, **kwargs)
        self.results[recommender.name] = result
        self.fit_seconds[recommender.name] = fit_seconds
        logger.info(
            "%s: NDCG@10 %s", recommender.name,
            ", ".join(f"K={k} {result.per_user[k]['ndcg@10'].mean():.4f}" for k in ks),
        )
        return result

    def run_baselines(self) -> None:
        e = self.experiment
        recommenders = baseline_recommenders(e.data, e.config.seed)
        if e.config.strong_baselines:
            from coldprompt.baselines.strong import strong_recommenders

            recommenders += strong_recommenders(
                e.config.seed, e.config.baseline_budget_s, e.config.ease_lambdas, e.config.ease_float32
            )
        self.baseline_names = [r.name for r in recommenders]
        for recommender in recommenders:
            start = time.perf_counter()
            recommender.fit(e.data, e.split, e.config.ks)
            self.add(recommender, time.perf_counter() - start)

    def summary(self, extra: dict | None = None) -> dict:
        e = self.experiment
        seed = e.config.seed
        return {
            "dataset": e.data.summary(),
            "protocol": PROTOCOL_FULL,
            "sampled_protocol": PROTOCOL_SAMPLED,
            "ks": list(e.config.ks),
            "split": {"seed": seed, "train": len(e.split.train), "validation": len(e.split.validation), "test": len(e.split.test)},
            "evaluated_users": len(e.test_users.users),
            "left_out_users": e.test_users.left_out,
            "min_interactions": e.test_users.min_interactions,
            "methods": {n: method_summary(r, self.fit_seconds[n], seed) for n, r in self.results.items()},
            "sampled_methods": {n: method_summary(r, self.fit_seconds[n], seed, sampled=True) for n, r in self.results.items()},
            "training": self.training,
            "config": e.config.to_dict(),
            "machine": machine_info(),
            **(extra or {}),
        }


# ------------------------------------------------------------------------------------------------ LLM
def build_model(config: RunConfig, data: InteractionData, backbone: Backbone, show_progress: bool = True):
    """Encode the catalogue with the backbone (cached) and wrap it in a :class:`SoftPromptRecommender`."""
    from coldprompt.llm.backbone import encode_catalogue
    from coldprompt.llm.batching import ProfileTokens
    from coldprompt.llm.model import SoftPromptRecommender

    encodings = encode_catalogue(backbone, data, config.item_encoder_layer, show_progress=show_progress)
    torch.manual_seed(config.seed)
    prompt_ids = backbone.tokenizer(
        " ".join(["Recommend", "items", "this", "user", "will", "enjoy", "next", "."] * 8), add_special_tokens=False
    )["input_ids"]
    model = SoftPromptRecommender(
        backbone.model,
        encodings,
        num_virtual_tokens=config.num_virtual_tokens,
        prompt_init_ids=torch.tensor(prompt_ids[: config.num_virtual_tokens]),
        learn_item_ids=config.learn_item_ids,
        inner_lr=config.inner_lr,
        support_in_context=config.support_in_context,
    )
    profiles = ProfileTokens(data, backbone.tokenizer, config.max_profile_tokens)
    return model, profiles


def llm_name(algorithm: str, inner: bool = True) -> str:
    if algorithm == SHARED:
        return "LLM shared prompt"
    return f"LLM {algorithm}" + ("" if inner else " (no inner step)")


def run_llm_methods(runner: Runner, backbone: Backbone, output_dir: Path) -> dict:
    """Train the shared model, then each meta-learner from it; evaluate each right after training."""
    from coldprompt.llm.recommender import SoftPromptScorer
    from coldprompt.meta.trainer import Trainer

    e = runner.experiment
    config = e.config
    model, profiles = build_model(config, e.data, backbone, runner.show_progress)
    logger.info("trainable parameters: %d (backbone, frozen: %d)", model.trainable_parameter_count(), model.backbone_parameter_count())

    from coldprompt.baselines.zeroshot import ZeroShotTextRecommender

    zero_shot = ZeroShotTextRecommender(backbone, config.item_encoder_layer)
    start = time.perf_counter()
    zero_shot.fit(e.data, e.split, config.ks)
    runner.add(zero_shot, time.perf_counter() - start)

    shared = Trainer(model, e.data, e.split, profiles, config, SHARED)
    runner.training[SHARED] = shared.train(config.shared_budget_s, show_progress=runner.show_progress).as_dict()
    shared_state = shared.trainable_state()
    runner.add(SoftPromptScorer(model, profiles, llm_name(SHARED), inner_steps=0), runner.training[SHARED]["seconds"])
    runner.add(_random_start_scorer(model, profiles, e), runner.training[SHARED]["seconds"])

    validation = {}
    for algorithm in config.algorithms:
        shared.load_trainable_state(shared_state)
        trainer = Trainer(model, e.data, e.split, profiles, config, algorithm)
        log = trainer.train(config.meta_budget_s, show_progress=runner.show_progress)
        runner.training[algorithm] = log.as_dict()
        validation[algorithm] = log.best_validation_ndcg
        seconds = runner.training[SHARED]["seconds"] + log.seconds
        runner.add(SoftPromptScorer(model, profiles, llm_name(algorithm), inner_steps=config.inner_steps), seconds)
        runner.add(SoftPromptScorer(model, profiles, llm_name(algorithm, inner=False), inner_steps=0), seconds)
        save_checkpoint(output_dir / "checkpoints" / algorithm, trainer.trainable_state(), manifest(config, e.data, backbone, algorithm))

    best = max(validation, key=validation.get) if validation else None
    if best is not None:
        state, _ = load_checkpoint(output_dir / "checkpoints" / best)
        save_checkpoint(output_dir / "checkpoint", state, manifest(config, e.data, backbone, best))
    return {"best_algorithm_on_validation": best, "validation_ndcg@10": validation,
            "trainable_parameters": model.trainable_parameter_count(), "backbone_parameters": model.backbone_parameter_count()}


def _random_start_scorer(model, profiles, e: Experiment):
    """Per-user prompt tuning from a random start (no meta-learning); its inner learning rate is chosen on validation."""
    from coldprompt.llm.recommender import PROMPT_RANDOM, SoftPromptScorer

    config = e.config
    validation = evaluation_users(e.data, e.split.validation, config.ks, max_users=config.validation_users, seed=config.seed)
    best_scale, best_score = LR_SCALES[0], -1.0
    for scale in LR_SCALES:
        scorer = SoftPromptScorer(model, profiles, "LLM per-user tuning, random init", inner_steps=max(config.inner_steps, 1),
                                  start=PROMPT_RANDOM, lr_scale=scale, seed=config.seed)
        result = evaluate(scorer, e.data, validation, [k for k in config.ks if k > 0] or config.ks, batch_size=config.batch_size, sampled=False)
        score = float(np.mean([v["ndcg@10"].mean() for v in result.per_user.values()]))
        if score > best_score:
            best_scale, best_score = scale, score
    logger.info("per-user tuning from a random start: inner learning rate scale %g chosen on validation", best_scale)
    return SoftPromptScorer(model, profiles, "LLM per-user tuning, random init", inner_steps=max(config.inner_steps, 1),
                            start=PROMPT_RANDOM, lr_scale=best_scale, seed=config.seed)


def manifest(config: RunConfig, data: InteractionData, backbone: Backbone, algorithm: str) -> dict:
    return {
        "algorithm": algorithm,
        "backbone": {"identity": backbone.identity, "sha256": backbone.sha256, "source": backbone.source},
        # The catalogue's texts too, so that serving and `recommend` need not read the interactions.
        "dataset": {"name": data.name, "num_items": data.num_items, "item_ids": data.item_ids,
                    "item_titles": data.item_titles, "item_genres": data.item_genres},
        "config": config.to_dict(),
    }


def paired_tests(runner: Runner, best: str | None) -> list[dict]:
    """Compare the best meta-learner (chosen on validation) with each baseline and ablation, per K."""
    if best is None:
        return []
    ours = runner.results[llm_name(best)]
    others = ["co-occurrence", "co-occurrence + onboarding (blend)", "onboarding popularity", llm_name(SHARED),
              "LLM per-user tuning, random init", llm_name(best, inner=False)]
    tests = []
    seed = runner.experiment.config.seed
    for other in others:
        if other in runner.results:
            for k in runner.experiment.config.ks:
                tests.append(paired_test(ours, runner.results[other], k, seed=seed))
    # Against the strongest baseline at each K, picked by its mean NDCG@10 on the test users themselves. That
    # choice can only favour the baseline, so it never flatters coldprompt.
    baselines = [n for n in runner.baseline_names if n in runner.results]
    for k in runner.experiment.config.ks:
        if baselines:
            strongest = max(baselines, key=lambda n: runner.results[n].per_user[k]["ndcg@10"].mean())
            tests.append(paired_test(ours, runner.results[strongest], k, seed=seed) | {"against_best_baseline": True})
    return tests


def run(config: RunConfig, *, show_progress: bool = True, with_llm: bool = True) -> dict:
    """Run the main job and write results.json and the plot into ``config.output_dir``; return the results."""
    from coldprompt.evaluation.report import plot_ndcg, write_results

    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    experiment = prepare(config)
    runner = Runner(experiment, show_progress)
    runner.run_baselines()
    extra: dict = {}
    if with_llm:
        from coldprompt.llm.backbone import load_backbone, resolve_dtype

        attn = "eager" if "maml" in config.algorithms else "sdpa"
        backbone = load_backbone(
            config.backbone, attn_implementation=attn, dtype=resolve_dtype(config.backbone_dtype), engine=config.backbone_engine
        )
        extra["llm"] = run_llm_methods(runner, backbone, output_dir)
        extra["llm"]["backbone"] = {"identity": backbone.identity, "sha256": backbone.sha256}
        extra["paired_tests"] = paired_tests(runner, extra["llm"]["best_algorithm_on_validation"])
    extra["wall_seconds"] = round(time.perf_counter() - start, 1)
    results = runner.summary(extra)
    write_results(results, output_dir)
    plot_ndcg(results, output_dir / "ndcg_at_10.png")
    return results


@dataclass
class TrainedModel:
    """A checkpoint loaded with the data set and backbone it was trained on."""

    model: object  # SoftPromptRecommender
    profiles: object  # ProfileTokens
    data: InteractionData
    manifest: dict
    tokenizer: object
    config: RunConfig


def load_trained(
    checkpoint: str | Path,
    backbone_source: str | None = None,
    data_dir: str | None = None,
    dtype: str | None = None,
    engine: str | None = None,
    catalogue_only: bool = False,
) -> TrainedModel:
    """Load a checkpoint with its data set and backbone; reject a different catalogue or backbone.

    ``dtype`` overrides the backbone dtype setting the checkpoint was trained with (auto, float32, bfloat16),
    ``engine`` its backbone engine (auto, lean, transformers). With ``catalogue_only`` and a manifest that
    contains the catalogue's titles and genres, the data set's files are not read. ``data`` then has the items
    and no users, which is all that scoring a new user needs.
    """
    from coldprompt.config import load_config
    from coldprompt.llm.backbone import load_backbone, resolve_dtype

    state, info = load_checkpoint(checkpoint)
    try:
        config = load_config(**{k: v for k, v in info["config"].items() if v is not None})
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{checkpoint}: its settings do not match this version of coldprompt ({error}); retrain it with "
            "`coldprompt train`"
        ) from error
    if data_dir is not None:
        config.data_dir = data_dir
    if dtype is not None:
        config.backbone_dtype = dtype
    if engine is not None:
        config.backbone_engine = engine
    stored = info["dataset"]
    if catalogue_only and "item_titles" in stored and "item_genres" in stored:
        data = InteractionData.catalogue(stored["name"], stored["item_ids"], stored["item_titles"], stored["item_genres"])
    else:
        data = load_dataset(config.dataset, config.data_dir, shuffle_seed=config.seed)
    if data.item_ids != stored["item_ids"]:
        raise ValueError(f"{checkpoint}: the data set's catalogue differs from the one the checkpoint was trained on")
    backbone = load_backbone(
        backbone_source or config.backbone, attn_implementation="sdpa", dtype=resolve_dtype(config.backbone_dtype),
        engine=config.backbone_engine,
    )
    check_backbone(info, backbone.identity, backbone.sha256, checkpoint)
    model, profiles = build_model(config, data, backbone, show_progress=False)
    missing = set(n for n, _ in model.named_parameters() if not n.startswith("backbone.")) - set(state)
    if missing:
        raise CheckpointError(
            f"{checkpoint}: tensors {sorted(missing)} are missing, so it was written by an older version of "
            "coldprompt; retrain it with `coldprompt train`"
        )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in state:
                parameter.copy_(state[name])
    return TrainedModel(model, profiles, data, info, backbone.tokenizer, config)
