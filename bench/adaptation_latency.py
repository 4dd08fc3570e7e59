"""Adaptation latency: adapt a new user's prompt on K support items and rank the whole catalogue.

For each K, at least ``--users`` distinct meta-test users go through one at a time (inner loop, then scoring
every item and taking the top 10); the script prints p50/p95/p99 of the end-to-end time per user, the share
spent in the inner loop, peak RSS, the batched path's users per second against the one-at-a-time loop,
meta-training throughput batched against per-user, and the process start-up time to a first recommendation.
``--variants`` repeats the K = 5 measurement on the same users with other backbone engines and dtypes (by
default the unoptimised path: transformers in float32, and each change alone) and reports each one's time
and NDCG@10 beside the main setting's, with a paired bootstrap interval of the per-user NDCG@10 difference.
Start-up is timed over three fresh processes. No figure here is asserted anywhere.

    python bench/adaptation_latency.py --checkpoint bench-output/ml-1m/checkpoint --data-dir DATA [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from coldprompt.evaluation.metrics import bootstrap_mean, metrics_from_ranks, target_ranks
from coldprompt.evaluation.protocol import ScoringBatch, split_users
from coldprompt.evaluation.report import machine_info
from coldprompt.llm.batching import make_sequence_batch
from coldprompt.llm.recommender import SoftPromptScorer
from coldprompt.meta.algorithms import adapt
from coldprompt.pipeline import TrainedModel, load_trained


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder")
    parser.add_argument("--data-dir", help="data set folder, when it moved since training")
    parser.add_argument("--users", type=int, default=200, help="distinct test users per K (default: 200)")
    parser.add_argument("--ks", default="1,3,5,10", help="support sizes, comma-separated (default: 1,3,5,10)")
    parser.add_argument("--batch-sizes", default="8,32", help="batch sizes of the batched path (default: 8,32)")
    parser.add_argument("--dtype", default=None, help="backbone dtype: auto, float32 or bfloat16 (default: as trained)")
    parser.add_argument("--engine", default=None, help="backbone engine: auto, lean or transformers (default: as trained)")
    parser.add_argument("--variants", default="transformers:float32:recompute,lean:bfloat16:recompute,"
                                                "transformers:bfloat16,lean:float32",
                        help="ENGINE:DTYPE[:recompute] settings compared at K=5 on the same users ('' for none); "
                             "recompute: the catalogue's output embeddings in every forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", help="write all figures as JSON here")
    return parser.parse_args(argv)


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values) * 1000.0
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 95, 99)} | {"mean": float(array.mean())}


def eligible_users(trained: TrainedModel, k: int, count: int) -> np.ndarray:
    data = trained.data
    split = split_users(data, seed=trained.config.seed)
    lengths = np.array([len(data.sequences()[u]) for u in split.test])
    users = split.test[lengths >= k + 1]
    if len(users) < count:
        print(f"note: only {len(users)} test users have {k + 1} interactions; using all of them", file=sys.stderr)
    return users[:count]


def one_at_a_time(trained: TrainedModel, users: np.ndarray, k: int, device: str, recompute: bool = False) -> dict:
    """Adapt and rank for each user alone; time the inner loop and the whole request.

    The catalogue's output embeddings are computed once before the loop, as `coldprompt serve` does at start-up,
    unless ``recompute`` requests the older path that recomputes them in every forward pass.
    """
    model = trained.model
    with contextlib.nullcontext() if recompute else model.fixed_item_outputs():
        return _one_at_a_time(trained, users, k, device)


def _one_at_a_time(trained: TrainedModel, users: np.ndarray, k: int, device: str) -> dict:
    model, data = trained.model, trained.data
    steps = trained.config.inner_steps
    lr = model.inner_lr().detach()
    totals, inner, ranks = [], [], []
    for user in users:
        support = data.sequences()[user][:k]
        ratings = data.rating_sequences()[user][:k]
        start = time.perf_counter()
        batch = make_sequence_batch([support], [ratings], [trained.profiles.ids[user]]).to(device)
        prompts = model.prompt_init.detach().unsqueeze(0)
        with torch.enable_grad():
            prompts = adapt(lambda p: model.position_losses(p, batch, 0, batch.lengths), prompts, steps, lr).detach()
        adapted = time.perf_counter()
        with torch.inference_mode():
            scores = model.user_scores(prompts, batch)[0]
            scores[torch.as_tensor(support, device=scores.device)] = -torch.inf
            top = torch.topk(scores, 10).indices.cpu()
        _ = top.tolist()
        end = time.perf_counter()
        totals.append(end - start)
        inner.append(adapted - start)
        target = data.sequences()[user][k]
        ranks.append(target_ranks(scores.double().cpu().numpy()[None], np.array([target]), [support])[0])
    per_user = metrics_from_ranks(np.array(ranks))["ndcg@10"]
    return {
        "users": len(users),
        "end_to_end_ms": percentiles(totals),
        "inner_loop_share": float(np.sum(inner) / np.sum(totals)),
        "ndcg@10": float(per_user.mean()),
        "ndcg@10_per_user": per_user.tolist(),
    }


def batched(trained: TrainedModel, users: np.ndarray, k: int, batch_size: int) -> float:
    """Users per second when ``batch_size`` users adapt and score in one pass."""
    scorer = SoftPromptScorer(trained.model, trained.profiles, "bench", inner_steps=trained.config.inner_steps)
    data = trained.data
    start = time.perf_counter()
    for first in range(0, len(users), batch_size):
        chunk = users[first : first + batch_size]
        batch = ScoringBatch(chunk, [data.sequences()[u][:k] for u in chunk],
                             [data.rating_sequences()[u][:k] for u in chunk], k)
        scorer.score(batch)
    return len(users) / (time.perf_counter() - start)


def training_throughput(trained: TrainedModel, meta_batch: int, seconds: float) -> float:
    """Meta-training users per second (FOMAML outer steps) with ``meta_batch`` users per step, for ``seconds``."""
    from coldprompt.evaluation.protocol import split_users as split
    from coldprompt.meta.trainer import Trainer

    config = trained.config
    config.meta_batch_size, config.validation_users = meta_batch, 1
    trainer = Trainer(trained.model, trained.data, split(trained.data, seed=config.seed), trained.profiles, config, "fomaml")
    state = trainer.trainable_state()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        trainer.outer_step()
        steps += 1
    trainer.load_trainable_state(state)
    return steps * meta_batch / (time.perf_counter() - start)


def startup_seconds(checkpoint: str, data_dir: str | None, history: str) -> list[float]:
    """Wall times of three fresh `coldprompt recommend` processes, from launch to their printed top 10."""
    command = [sys.executable, "-m", "coldprompt", "recommend", "--checkpoint", checkpoint, "--history", history]
    if data_dir:
        command += ["--data-dir", data_dir]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    trained = load_trained(args.checkpoint, data_dir=args.data_dir, dtype=args.dtype, engine=args.engine)
    trained.model.to(args.device)
    dtype = str(next(trained.model.backbone.parameters()).dtype)
    engine = "lean" if type(trained.model.backbone).__name__ == "LeanLlama" else "transformers"
    report = {"machine": machine_info() | {"device": args.device, "dtype": dtype, "engine": engine,
                                           "threads": torch.get_num_threads()},
              "checkpoint": args.checkpoint, "inner_steps": trained.config.inner_steps, "per_k": {}}
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch {torch.__version__}, "
          f"{dtype}, {engine} engine, {torch.get_num_threads()} threads, device {args.device}, "
          f"inner steps {trained.config.inner_steps}")

    for k in ks:
        users = eligible_users(trained, k, args.users)
        one_at_a_time(trained, users[:3], k, args.device)  # warm-up, not timed
        single = one_at_a_time(trained, users, k, args.device)
        single["users_per_second"] = {"1": single["users"] / (single["end_to_end_ms"]["mean"] * single["users"] / 1000)}
        for size in (int(b) for b in args.batch_sizes.split(",")):
            single["users_per_second"][str(size)] = batched(trained, users, k, size)
        report["per_k"][str(k)] = single
        e2e = single["end_to_end_ms"]
        print(f"K={k:>2}: {single['users']} users one at a time: p50 {e2e['p50']:.0f} ms, p95 {e2e['p95']:.0f} ms, "
              f"p99 {e2e['p99']:.0f} ms; inner loop {100 * single['inner_loop_share']:.0f}% of the time; "
              f"NDCG@10 {single['ndcg@10']:.4f}; users/s by batch size "
              + ", ".join(f"{b}: {v:.1f}" for b, v in single["users_per_second"].items()))

    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {report['peak_rss_mib']:.0f} MiB")
    per_user, batched_16 = training_throughput(trained, 1, 20), training_throughput(trained, 16, 20)
    report["meta_training_users_per_second"] = {"1": per_user, "16": batched_16}
    print(f"meta-training (FOMAML) users/s: per-user {per_user:.1f}, batched 16: {batched_16:.1f}")
    data = trained.data
    five = eligible_users(trained, 5, 1)
    history = ",".join(data.item_ids[i] for i in data.sequences()[five[0]][:5]) if len(five) else ""
    times = startup_seconds(args.checkpoint, args.data_dir, history)
    report["startup_to_first_recommendation_s"] = {"runs": times, "median": float(np.median(times)), "history_items": 5}
    print(f"process start to first recommendation (K=5, three runs): median {np.median(times):.2f} s, "
          + ", ".join(f"{t:.2f}" for t in times))

    base = report["per_k"].get("5")
    report["variants"] = {}
    for variant in filter(None, args.variants.split(",")):
        other_engine, other_dtype, *flags = variant.split(":")
        recompute = "recompute" in flags
        del trained
        trained = load_trained(args.checkpoint, data_dir=args.data_dir, dtype=other_dtype, engine=other_engine)
        trained.model.to(args.device)
        users = eligible_users(trained, 5, args.users)
        one_at_a_time(trained, users[:3], 5, args.device, recompute)
        result = one_at_a_time(trained, users, 5, args.device, recompute)
        report["variants"][variant] = result
        if base:
            difference = bootstrap_mean(np.array(base["ndcg@10_per_user"]) - np.array(result["ndcg@10_per_user"]))
            result["ndcg@10_difference_main_minus_this"] = difference.as_dict()
            print(f"K=5 with {variant}: p50 {result['end_to_end_ms']['p50']:.0f} ms, "
                  f"p95 {result['end_to_end_ms']['p95']:.0f} ms (main setting: p50 {base['end_to_end_ms']['p50']:.0f} ms, "
                  f"so the main setting is {result['end_to_end_ms']['p50'] / base['end_to_end_ms']['p50']:.2f} times faster); NDCG@10 "
                  f"{result['ndcg@10']:.4f} (main {base['ndcg@10']:.4f}; difference {difference.mean:+.4f} "
                  f"[{difference.low:+.4f}, {difference.high:+.4f}]) on the same users")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
