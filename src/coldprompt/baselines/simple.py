"""Non-neural baselines: random, popularity, onboarding popularity and item co-occurrence.

All of them fit on meta-train users only and choose their settings on meta-validation users only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from coldprompt.data.dataset import InteractionData
from coldprompt.evaluation.protocol import (
    DEFAULT_KS,
    ScoringBatch,
    UserSplit,
    evaluate,
    evaluation_users,
)

logger = logging.getLogger(__name__)

#: Prefix lengths n tried for onboarding popularity; None counts a user's whole history.
ONBOARDING_PREFIXES: tuple[int | None, ...] = (1, 3, 5, 11, 20, 50, None)
#: Weights of normalised onboarding popularity added to the mean co-occurrence similarity.
BLEND_WEIGHTS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


class RandomRecommender:
    """Uniform random scores, seeded per (user, K) so results do not depend on batching."""

    name = "random"

    def __init__(self, num_items: int, seed: int = 0):
        self.num_items = num_items
        self.seed = seed

    def fit(self, data: InteractionData, split: UserSplit, ks: Sequence[int] = DEFAULT_KS) -> None:
        self.num_items = data.num_items

    def score(self, batch: ScoringBatch) -> np.ndarray:
        rows = [np.random.default_rng([self.seed, int(u), batch.k]).random(self.num_items) for u in batch.users]
        return np.stack(rows) if rows else np.zeros((0, self.num_items))


class PopularityRecommender:
    """Interaction counts over meta-train users' whole histories."""

    name = "popularity"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, data: InteractionData, split: UserSplit, ks: Sequence[int] = DEFAULT_KS) -> None:
        self.counts = item_counts(data, split.train, prefix=None)

    def score(self, batch: ScoringBatch) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(batch.users), len(self.counts)))


class OnboardingPopularityRecommender:
    """Counts over meta-train users' first n interactions, or over their interaction at position K + 1.

    New users start from a narrow set of items (sign-up pages, first-week hits), so counting only early
    interactions is the fair zero-history baseline. For each K, the variant (a prefix length n, or the
    "same position" count) is chosen by NDCG@10 on meta-validation users.
    """

    name = "onboarding popularity"

    def __init__(self, prefixes: Sequence[int | None] = ONBOARDING_PREFIXES):
        self.prefixes = tuple(prefixes)
        self.table: dict[int, np.ndarray] = {}
        self.chosen: dict[int, str] = {}

    def fit(self, data: InteractionData, split: UserSplit, ks: Sequence[int] = DEFAULT_KS) -> None:
        candidates = {f"first {n}" if n else "all": item_counts(data, split.train, prefix=n) for n in self.prefixes}
        validation = evaluation_users(data, split.validation, ks)
        for k in ks:
            options = dict(candidates)
            options[f"position {k + 1}"] = position_counts(data, split.train, k)
            scores = {
                label: _validation_ndcg(_Fixed(counts), data, validation, k) for label, counts in options.items()
            }
            best = max(scores, key=lambda label: (scores[label], label))
            self.table[k], self.chosen[k] = options[best], best
            logger.info("onboarding popularity, K=%d: chose %s (validation NDCG@10 %.4f)", k, best, scores[best])

    def counts_for(self, k: int) -> np.ndarray:
        if k in self.table:
            return self.table[k]
        nearest = min(self.table, key=lambda known: abs(known - k))
        return self.table[nearest]

    def score(self, batch: ScoringBatch) -> np.ndarray:
        counts = self.counts_for(batch.k)
        return np.broadcast_to(counts, (len(batch.users), len(counts)))


class CoOccurrenceRecommender:
    """Item-to-item cosine similarity from meta-train users, summed over the support items.

    ``sim(i, j) = c_ij / sqrt(c_i * c_j)`` where ``c_ij`` counts meta-train users who interacted with both.
    Ties (including every item at K = 0) are broken by onboarding popularity. With ``blend`` the score is
    ``mean similarity + w * onboarding / max(onboarding)`` with ``w`` chosen per K on meta-validation users.
    """

    def __init__(self, blend: bool = False, weights: Sequence[float] = BLEND_WEIGHTS):
        self.blend = blend
        self.name = "co-occurrence + onboarding (blend)" if blend else "co-occurrence"
        self.weights = tuple(weights) if blend else (0.0,)
        self.similarity: sp.csr_matrix | None = None
        self.onboarding = OnboardingPopularityRecommender()
        self.weight: dict[int, float] = {}

    def fit(self, data: InteractionData, split: UserSplit, ks: Sequence[int] = DEFAULT_KS) -> None:
        self.similarity = cosine_similarity(data, split.train)
        self.onboarding.fit(data, split, ks)
        validation = evaluation_users(data, split.validation, ks)
        for k in ks:
            if len(self.weights) == 1 or k == 0:
                self.weight[k] = self.weights[0]
                continue
            scores = {}
            for w in self.weights:
                self.weight[k] = w
                scores[w] = _validation_ndcg(self, data, validation, k)
            self.weight[k] = max(scores, key=lambda w: (scores[w], -w))
            logger.info("%s, K=%d: chose weight %g", self.name, k, self.weight[k])

    def score(self, batch: ScoringBatch) -> np.ndarray:
        onboarding = self.onboarding.counts_for(batch.k).astype(np.float64)
        onboarding = onboarding / max(onboarding.max(), 1.0)
        similarity = self.similarity_scores(batch)
        weight = self.weight.get(batch.k, 0.0)
        if weight == 0.0:
            # Onboarding popularity only breaks ties: it is below the smallest similarity gap that matters.
            return similarity + 1e-9 * onboarding
        return similarity + weight * onboarding

    def similarity_scores(self, batch: ScoringBatch) -> np.ndarray:
        """Return the mean cosine similarity of each item to the support items ([B, num_items])."""
        rows = np.zeros((len(batch.users), self.similarity.shape[0]))
        for b, support in enumerate(batch.supports):
            if len(support):
                rows[b] = np.asarray(self.similarity[support].sum(axis=0)).ravel() / len(support)
        return rows


# --------------------------------------------------------------------------------------------- helpers
def item_counts(data: InteractionData, users: np.ndarray, prefix: int | None) -> np.ndarray:
    """Count interactions per item over ``users``' first ``prefix`` interactions (all when None)."""
    sequences = data.sequences()
    picked = [sequences[u][:prefix] if prefix else sequences[u] for u in users]
    flat = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=data.num_items).astype(np.float64)


def position_counts(data: InteractionData, users: np.ndarray, k: int) -> np.ndarray:
    """Count which item ``users`` interacted with at 0-based position ``k`` (interaction K + 1)."""
    sequences = data.sequences()
    picked = np.array([sequences[u][k] for u in users if len(sequences[u]) > k], dtype=np.int64)
    return np.bincount(picked, minlength=data.num_items).astype(np.float64)


def interaction_matrix(data: InteractionData, users: np.ndarray) -> sp.csr_matrix:
    """Binary ``[len(users), num_items]`` matrix of ``users``' interactions."""
    sequences = data.sequences()
    rows = np.concatenate([np.full(len(sequences[u]), r) for r, u in enumerate(users)]) if len(users) else []
    cols = np.concatenate([sequences[u] for u in users]) if len(users) else []
    values = np.ones(len(cols), dtype=np.float32)
    return sp.csr_matrix((values, (rows, cols)), shape=(len(users), data.num_items))


def cosine_similarity(data: InteractionData, users: np.ndarray) -> sp.csr_matrix:
    """Item-item cosine similarity of binary interaction columns, zero diagonal."""
    matrix = interaction_matrix(data, users)
    co = (matrix.T @ matrix).tocsr().astype(np.float64)
    counts = co.diagonal()
    inverse = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1e-12)), 0.0)
    similarity = sp.diags(inverse) @ co @ sp.diags(inverse)
    similarity.setdiag(0.0)
    similarity.eliminate_zeros()
    return similarity.tocsr()


class _Fixed:
    """A recommender that gives every user the same score vector (used for validation sweeps)."""

    name = "fixed"

    def __init__(self, scores: np.ndarray):
        self.scores = scores

    def score(self, batch: ScoringBatch) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(batch.users), len(self.scores)))


def _validation_ndcg(recommender, data, validation, k: int) -> float:
    result = evaluate(recommender, data, validation, ks=(k,), batch_size=256, sampled=False)
    return float(result.per_user[k]["ndcg@10"].mean()) if len(validation.users) else 0.0
