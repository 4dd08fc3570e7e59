"""Helpers shared by the learned baselines: binary matrices, the onboarding fallback and validation sweeps.

Every learned baseline fits on meta-train users only and chooses its settings by NDCG@10 on meta-validation
users only. At K = 0 a baseline that needs history returns onboarding popularity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from coldprompt.baselines.simple import OnboardingPopularityRecommender, _validation_ndcg, interaction_matrix
from coldprompt.data.dataset import InteractionData
from coldprompt.evaluation.protocol import EvaluationUsers, Recommender, ScoringBatch

#: Weight of normalised onboarding popularity added to a model's scores, so that items with equal scores
#: (items no meta-train user interacted with, for instance) are ordered by onboarding popularity. Ranks are
#: pessimistic, so an unbroken tie costs the target rank.
TIE_BREAK = 1e-9

logger = logging.getLogger(__name__)


def binary_matrix(data: InteractionData, users: np.ndarray) -> sp.csr_matrix:
    """Return the ``[len(users), num_items]`` float32 matrix with 1 where a user interacted with an item.

    Repeated interactions with one item count once.
    """
    matrix = interaction_matrix(data, users)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def onboarding_scores(onboarding: OnboardingPopularityRecommender, batch: ScoringBatch) -> np.ndarray:
    """Return onboarding popularity for the batch's K as a ``[B, num_items]`` float64 array."""
    return np.array(onboarding.score(batch), dtype=np.float64)


def break_ties(scores: np.ndarray, onboarding: OnboardingPopularityRecommender, k: int) -> np.ndarray:
    """Return ``scores + TIE_BREAK * onboarding / max(onboarding)`` in float64."""
    counts = onboarding.counts_for(k).astype(np.float64)
    return np.asarray(scores, dtype=np.float64) + TIE_BREAK * counts / max(counts.max(), 1.0)


def validation_ndcg_by_k(
    recommender: Recommender, data: InteractionData, validation: EvaluationUsers, ks: Sequence[int]
) -> dict[int, float]:
    """Return mean NDCG@10 on the validation users for each K (full-catalogue ranking)."""
    return {k: _validation_ndcg(recommender, data, validation, k) for k in ks}


ZERO_HISTORY_ONBOARDING = "onboarding popularity"


def choose_zero_history(
    recommender, own: str, data: InteractionData, validation: EvaluationUsers, ks: Sequence[int]
) -> None:
    """Set ``recommender.zero_history`` to the K = 0 scoring with the higher validation NDCG@10.

    The candidates are ``own`` (the recommender's own scores) and onboarding popularity. Without K = 0 in
    ``ks`` nothing changes. ``recommender`` needs ``name``, ``onboarding`` (fitted) and a ``score`` that reads ``zero_history``.
    """
    if 0 not in ks:
        return
    recommender.zero_history = own
    from_own = _validation_ndcg(recommender, data, validation, 0)
    from_onboarding = _validation_ndcg(recommender.onboarding, data, validation, 0)
    if from_onboarding > from_own:
        recommender.zero_history = ZERO_HISTORY_ONBOARDING
    logger.info("%s K=0: %s %.4f, onboarding popularity %.4f on validation; using %s",
                recommender.name, own, from_own, from_onboarding, recommender.zero_history)


def nearest_k(table: dict[int, object], k: int) -> int:
    """Return ``k`` when the table has it, else the nearest K in the table (the smaller one on a tie)."""
    if k in table:
        return k
    if not table:
        raise ValueError("the recommender has no fitted K; call fit before score")
    return min(table, key=lambda known: (abs(known - k), known))


def positive_ks(ks: Sequence[int]) -> list[int]:
    """Return the K >= 1 of ``ks`` in ascending order."""
    return sorted(k for k in set(ks) if k > 0)


class Deadline:
    """A wall-clock budget in seconds, started at construction."""

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ValueError(f"a training budget must be positive seconds, got {seconds}")
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def expired(self) -> bool:
        return self.elapsed() >= self.seconds
