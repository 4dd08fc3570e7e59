"""Ranking metrics computed from the 1-based rank of the target item.

For one evaluation case with the target at rank ``r`` (1 = best):

* NDCG@10 = 1 / log2(r + 1) if r <= 10 else 0 (one relevant item, so the ideal DCG is 1);
* HR@10 = 1 if r <= 10 else 0;
* MRR = 1 / r over the full ranking, not truncated.

Ranks are pessimistic: every candidate whose score equals the target's counts as ranked above it, so a
scorer that gives all items the same score gets the worst rank, not a lucky one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CUTOFF = 10
METRICS = ("ndcg@10", "hr@10", "mrr")


def target_ranks(scores: np.ndarray, targets: np.ndarray, excluded: list[np.ndarray] | None = None) -> np.ndarray:
    """Return the pessimistic 1-based rank of each target among the candidates.

    ``scores`` is ``[B, n_items]``; ``targets`` is ``[B]``; ``excluded[b]`` lists items that are not candidates
    for row ``b`` (the support items). Excluded items never count against the target, whatever their score.
    NaN scores are invalid and raise.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; a recommender must return finite or -inf scores for every item")
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    at_or_above = scores >= target_scores[:, None]  # [B, n_items]
    at_or_above[rows, targets] = False
    if excluded is not None:
        for b, items in enumerate(excluded):
            at_or_above[b, items] = False
    return 1 + at_or_above.sum(axis=1)


def metrics_from_ranks(ranks: np.ndarray, cutoff: int = CUTOFF) -> dict[str, np.ndarray]:
    """Return per-case NDCG@cutoff, HR@cutoff and MRR arrays (unrounded)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= cutoff
    return {
        f"ndcg@{cutoff}": np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0),
        f"hr@{cutoff}": hit.astype(np.float64),
        "mrr": 1.0 / ranks,
    }


@dataclass(frozen=True)
class Estimate:
    """A mean over users with a percentile bootstrap 95% interval."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci95_low": self.low, "ci95_high": self.high}


def bootstrap_mean(values: np.ndarray, *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Return the mean and a percentile bootstrap 95% interval, resampling users with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(values.mean()), float(low), float(high))


def paired_bootstrap_pvalue(a: np.ndarray, b: np.ndarray, *, samples: int = 10000, seed: int = 0) -> float:
    """Return the two-sided p-value of mean(a - b) = 0 from a paired bootstrap over users.

    The differences are centred to impose the null hypothesis, then resampled. The p-value is the share of
    resampled mean differences at least as far from zero as the observed one.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) == 0:
        return float("nan")
    observed = abs(diff.mean())
    centred = diff - diff.mean()
    rng = np.random.default_rng(seed)
    means = centred[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    return float((np.sum(np.abs(means) >= observed) + 1) / (samples + 1))
