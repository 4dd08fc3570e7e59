"""EASE: a linear item-item autoencoder with a closed-form solution.

Source: H. Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019. With ``X`` the binary
``[users, items]`` matrix of meta-train users and ``G = X^T X``, the weights minimising
``||X - X B||_F^2 + lambda ||B||_F^2`` subject to ``diag(B) = 0`` are

    P = (G + lambda I)^-1,    B = I - P diag(1 / diag(P)),   that is   B_ij = -P_ij / P_jj for i != j.

A cold user's scores are ``x_support @ B``, the sum of the rows of ``B`` for the support items.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from coldprompt.baselines.common import (
    binary_matrix,
    break_ties,
    nearest_k,
    onboarding_scores,
    positive_ks,
    validation_ndcg_by_k,
)
from coldprompt.baselines.simple import OnboardingPopularityRecommender
from coldprompt.data.dataset import InteractionData
from coldprompt.evaluation.protocol import DEFAULT_KS, ScoringBatch, UserSplit, evaluation_users

logger = logging.getLogger(__name__)

#: L2 weights lambda tried on meta-validation users. The grid spans five orders of magnitude because the best
#: value varies with K and with the number of meta-train users: on ml-100k with the seed-0 split, validation
#: chose 10,000 for K = 1, 100,000 for K = 5 and 1,000 for K = 10.
EASE_LAMBDAS: tuple[float, ...] = (
    1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 3000.0, 10_000.0, 30_000.0, 100_000.0,
)


def ease_weights(gram: np.ndarray, regularization: float) -> np.ndarray:
    """Return ``B = I - P diag(1 / diag(P))`` with ``P = (gram + regularization * I)^-1``; ``diag(B) = 0``.

    ``gram`` is ``X^T X`` (``[items, items]``) and is not changed. The result has ``gram``'s dtype, and the
    inverse is computed in that dtype too. Peak memory is about four ``[items, items]`` matrices: ``gram``,
    its regularised copy, the LU factors and the inverse.
    """
    if regularization <= 0:
        raise ValueError(f"EASE needs a positive L2 weight lambda, got {regularization}; pass only values > 0")
    regularized = gram.copy()
    regularized[np.diag_indices_from(regularized)] += regularization
    # torch.linalg.inv keeps float32 in float32, while np.linalg.inv computes in float64 and would double the
    # memory of a float32 fit.
    precision = torch.linalg.inv(torch.from_numpy(regularized)).numpy()
    del regularized
    diagonal = np.diag(precision).copy()
    precision /= -diagonal[None, :]
    np.fill_diagonal(precision, 0.0)
    return precision


def gram_matrix(data: InteractionData, users: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Return the dense item-item co-occurrence matrix ``X^T X`` of ``users``' binary interactions."""
    matrix = binary_matrix(data, users)
    return np.asarray((matrix.T @ matrix).toarray(), dtype=dtype)


class EASERecommender:
    """EASE fit on meta-train users, with lambda chosen per K >= 1 by validation NDCG@10.

    K = 0 has no support items, so every EASE score is 0 and the recommender returns onboarding popularity.
    For K >= 1, onboarding popularity only breaks ties (see ``TIE_BREAK`` in ``common``).

    Memory: the fit keeps ``G``, three working ``[items, items]`` matrices during each inverse and the weight
    matrix of each distinct lambda chosen for some K. At 16,859 items (Amazon Games) one float32 matrix takes
    1.1 GB, so pass ``dtype=np.float32`` there.
    """

    name = "EASE"

    def __init__(self, lambdas: Sequence[float] = EASE_LAMBDAS, dtype: type = np.float64):
        if not lambdas:
            raise ValueError("EASE needs at least one lambda to try")
        self.lambdas = tuple(float(value) for value in lambdas)
        self.dtype = dtype
        self.onboarding = OnboardingPopularityRecommender()
        self.weights: dict[float, np.ndarray] = {}  # lambda -> B, for the lambdas chosen for some K
        self.chosen: dict[int, float] = {}  # K -> lambda
        self.validation_ndcg: dict[float, dict[int, float]] = {}  # lambda -> K -> NDCG@10

    def fit(self, data: InteractionData, split: UserSplit, ks: Sequence[int] = DEFAULT_KS) -> None:
        """Fit onboarding popularity, then try every lambda and keep, per K >= 1, the best on validation."""
        self.onboarding.fit(data, split, ks)
        gram = gram_matrix(data, split.train, self.dtype)
        logger.info("EASE: %d items, %.2f GB per item-item matrix", gram.shape[0], gram.nbytes / 1e9)
        validation = evaluation_users(data, split.validation, ks)
        targets = positive_ks(ks)
        best: dict[int, float] = {}
        self.weights, self.chosen, self.validation_ndcg = {}, {}, {}
        for regularization in self.lambdas:
            candidate = _FixedWeights(ease_weights(gram, regularization))
            scores = validation_ndcg_by_k(candidate, data, validation, targets)
            self.validation_ndcg[regularization] = scores
            for k in targets:
                if k not in best or scores[k] > best[k]:
                    best[k], self.chosen[k] = scores[k], regularization
            self.weights[regularization] = candidate.weights
            self._drop_unchosen()
            logger.info("EASE lambda %g: validation NDCG@10 %s", regularization, _format(scores))
        logger.info("EASE: chose lambda per K %s", self.chosen)

    def score(self, batch: ScoringBatch) -> np.ndarray:
        """Return ``x_support @ B`` for the batch's K (onboarding popularity at K = 0)."""
        if batch.k == 0 or not self.chosen:
            return onboarding_scores(self.onboarding, batch)
        weights = self.weights[self.chosen[nearest_k(self.chosen, batch.k)]]
        return break_ties(_support_sums(weights, batch), self.onboarding, batch.k)

    def _drop_unchosen(self) -> None:
        kept = set(self.chosen.values())
        self.weights = {key: value for key, value in self.weights.items() if key in kept}


class _FixedWeights:
    """EASE scores from one weight matrix, for the validation sweep."""

    name = "EASE candidate"

    def __init__(self, weights: np.ndarray):
        self.weights = weights

    def score(self, batch: ScoringBatch) -> np.ndarray:
        return _support_sums(self.weights, batch)


def _support_sums(weights: np.ndarray, batch: ScoringBatch) -> np.ndarray:
    """Return ``x_support @ B`` as the sum of B's rows for each row's distinct support items."""
    scores = np.zeros((len(batch.supports), weights.shape[1]), dtype=np.float64)
    for row, support in enumerate(batch.supports):
        if len(support):
            scores[row] = weights[np.unique(support)].sum(axis=0)
    return scores


def _format(scores: dict[int, float]) -> str:
    return ", ".join(f"K={k} {value:.4f}" for k, value in scores.items())
