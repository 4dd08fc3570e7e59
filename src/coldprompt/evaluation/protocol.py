"""The cold-start protocol: user-disjoint splits, first-K support sets, full-catalogue ranking.

* Users (not interactions) are split at random with a seed into meta-train, meta-validation and meta-test.
  Methods fit on meta-train users only and select settings on meta-validation users only; meta-test users
  are touched once, for the reported numbers.
* For each evaluation user and each K: the support set is the user's first K interactions and the target is
  interaction K + 1. Every catalogue item except the support items is a candidate.
* The same users are evaluated at every K: those with at least ``max(K) + 1`` interactions. Users with fewer
  are counted in the output as left out.
* Secondary protocol (labelled "sampled" everywhere): the target plus 99 items drawn uniformly from items
  the user never interacted with.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from coldprompt.data.dataset import InteractionData
from coldprompt.evaluation.metrics import METRICS, Estimate, bootstrap_mean, metrics_from_ranks, target_ranks

logger = logging.getLogger(__name__)

DEFAULT_KS = (0, 1, 3, 5, 10)
PROTOCOL_FULL = "full ranking"
PROTOCOL_SAMPLED = "sampled: target + 99 random negatives (secondary)"
SAMPLED_NEGATIVES = 99


# ----------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class UserSplit:
    """Disjoint user indices for meta-train, meta-validation and meta-test."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seed: int | None = None

    def part(self, name: str) -> np.ndarray:
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split part {name!r}; expected train, validation or test")
        return getattr(self, name)

    def export(self, path: str | Path, data: InteractionData) -> None:
        """Write the split as JSON lists of raw user ids, so it can be re-imported by any process."""
        payload = {
            "dataset": data.name,
            "seed": self.seed,
            **{name: [data.user_ids[u] for u in self.part(name)] for name in ("train", "validation", "test")},
        }
        Path(path).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, data: InteractionData) -> "UserSplit":
        """Read a split written by :meth:`export`; every listed user must exist in ``data``."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        index = {u: i for i, u in enumerate(data.user_ids)}
        parts = {}
        for name in ("train", "validation", "test"):
            if name not in payload:
                raise ValueError(f"{path}: field '{name}' is missing; a split file lists train, validation and test")
            unknown = [u for u in payload[name] if u not in index]
            if unknown:
                raise ValueError(
                    f"{path}: field '{name}' lists {len(unknown)} user ids not in dataset {data.name!r}, "
                    f"for example {unknown[:3]}; export the split from the same dataset"
                )
            parts[name] = np.array([index[u] for u in payload[name]], dtype=np.int64)
        split = cls(parts["train"], parts["validation"], parts["test"], payload.get("seed"))
        _check_disjoint(split, path)
        return split


def split_users(
    data: InteractionData, seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> UserSplit:
    """Split users at random into meta-train / meta-validation / meta-test.

    The permutation is drawn over users sorted by raw id, with NumPy's PCG64 generator, so the split depends on
    the seed and the set of user ids only, not on file order, process or ``PYTHONHASHSEED``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    by_id = np.array(sorted(range(data.num_users), key=lambda u: data.user_ids[u]), dtype=np.int64)
    shuffled = by_id[np.random.default_rng(seed).permutation(len(by_id))]
    n_train = int(round(fractions[0] * len(shuffled)))
    n_valid = int(round(fractions[1] * len(shuffled)))
    split = UserSplit(
        train=np.sort(shuffled[:n_train]),
        validation=np.sort(shuffled[n_train : n_train + n_valid]),
        test=np.sort(shuffled[n_train + n_valid :]),
        seed=seed,
    )
    _check_disjoint(split, "split")
    return split


def _check_disjoint(split: UserSplit, where: object) -> None:
    sets = [set(split.train.tolist()), set(split.validation.tolist()), set(split.test.tolist())]
    if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
        raise ValueError(f"{where}: the train, validation and test users overlap; a split must be user-disjoint")


# ----------------------------------------------------------------------------------------------- cases
@dataclass
class ScoringBatch:
    """The inputs a recommender gets for a batch of evaluation users at one K."""

    users: np.ndarray  # int64 [B] user indices (for profiles; never for the user's held-out items)
    supports: list[np.ndarray]  # B arrays of K item indices, in interaction order
    support_ratings: list[np.ndarray]  # B arrays of K ratings (NaN where unknown)
    k: int


class Recommender(Protocol):
    """Anything that scores the whole catalogue for a batch of users from their support sets."""

    name: str

    def score(self, batch: ScoringBatch) -> np.ndarray:
        """Return ``[B, num_items]`` scores; higher is better. Support items are masked by the caller."""


@dataclass
class EvaluationUsers:
    """The users evaluated at every K, and how many of the part were left out for short histories."""

    users: np.ndarray
    left_out: int
    min_interactions: int


def evaluation_users(
    data: InteractionData, users: np.ndarray, ks: Sequence[int] = DEFAULT_KS, max_users: int | None = None,
    seed: int = 0,
) -> EvaluationUsers:
    """Select the users with at least ``max(ks) + 1`` interactions; optionally a seeded sample of them."""
    need = max(ks) + 1
    lengths = np.array([len(data.sequences()[u]) for u in users], dtype=np.int64)
    eligible = users[lengths >= need]
    if len(users) and not len(eligible):
        raise ValueError(
            f"{data.name}: none of the {len(users)} users in this part has at least {need} interactions, so "
            f"K up to {max(ks)} cannot be evaluated; evaluate smaller K (for example --ks 0,1,3)"
        )
    if max_users is not None and len(eligible) > max_users:
        eligible = np.sort(np.random.default_rng(seed).choice(eligible, size=max_users, replace=False))
    return EvaluationUsers(eligible, int((lengths < need).sum()), need)


def make_batch(data: InteractionData, users: np.ndarray, k: int) -> ScoringBatch:
    sequences = data.sequences()
    ratings = data.rating_sequences()
    return ScoringBatch(
        users=np.asarray(users, dtype=np.int64),
        supports=[sequences[u][:k] for u in users],
        support_ratings=[ratings[u][:k] for u in users],
        k=k,
    )


# ----------------------------------------------------------------------------------------------- evaluate
@dataclass
class MethodResult:
    """Per-user metrics of one method at each K, under the full-ranking and the sampled protocol."""

    method: str
    users: np.ndarray
    per_user: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # K -> metric -> [n_users]
    sampled_per_user: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # secondary protocol
    seconds: float = 0.0

    def summary(self, seed: int = 0, sampled: bool = False) -> dict[int, dict[str, Estimate]]:
        table = self.sampled_per_user if sampled else self.per_user
        return {
            k: {m: bootstrap_mean(values, seed=seed) for m, values in per_metric.items()}
            for k, per_metric in table.items()
        }


def evaluate(
    recommender: Recommender,
    data: InteractionData,
    users: EvaluationUsers,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    batch_size: int = 64,
    sampled: bool = True,
    seed: int = 0,
    show_progress: bool = False,
) -> MethodResult:
    """Score every evaluation user at every K once; rank the target under both protocols from those scores.

    With ``sampled=False`` the secondary protocol is skipped (model selection needs only full ranking).
    """
    start = time.perf_counter()
    result = MethodResult(recommender.name, users.users)
    batches = [users.users[i : i + batch_size] for i in range(0, len(users.users), batch_size)]
    progress = tqdm(total=len(ks) * len(batches), desc=f"{recommender.name}", disable=not show_progress, leave=False)
    for k in ks:
        full, sampled_ranks = [], []
        for chunk in batches:
            batch = make_batch(data, chunk, k)
            scores, targets = _score_batch(recommender, data, batch)
            full.append(target_ranks(scores, targets, excluded=batch.supports))
            if sampled:
                sampled_ranks.append(_sampled_ranks(scores, targets, batch, data, seed))
            progress.update(1)
        result.per_user[k] = metrics_from_ranks(_concat(full))
        if sampled:
            result.sampled_per_user[k] = metrics_from_ranks(_concat(sampled_ranks))
    progress.close()
    result.seconds = time.perf_counter() - start
    return result


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _score_batch(recommender: Recommender, data: InteractionData, batch: ScoringBatch) -> tuple[np.ndarray, np.ndarray]:
    sequences = data.sequences()
    targets = np.array([sequences[u][batch.k] for u in batch.users], dtype=np.int64)
    scores = np.asarray(recommender.score(batch), dtype=np.float64)
    if scores.shape != (len(batch.users), data.num_items):
        raise ValueError(
            f"{recommender.name} returned scores of shape {scores.shape}; expected {(len(batch.users), data.num_items)}"
        )
    return scores, targets


def _sampled_ranks(
    scores: np.ndarray, targets: np.ndarray, batch: ScoringBatch, data: InteractionData, seed: int
) -> np.ndarray:
    """Rank each target among itself and 99 uniformly drawn items the user never interacted with."""
    sequences = data.sequences()
    ranks = np.empty(len(targets), dtype=np.int64)
    for row, user in enumerate(batch.users):
        # One generator per (seed, user, K): the negatives do not depend on batch composition.
        rng = np.random.default_rng([seed, int(user), batch.k])
        seen = np.zeros(data.num_items, dtype=bool)
        seen[sequences[user]] = True
        pool = np.flatnonzero(~seen)
        negatives = rng.choice(pool, size=min(SAMPLED_NEGATIVES, len(pool)), replace=False)
        candidates = np.concatenate([[targets[row]], negatives])
        ranks[row] = target_ranks(scores[row : row + 1, candidates], np.array([0]))[0]
    return ranks


def metric_names() -> tuple[str, ...]:
    return METRICS
