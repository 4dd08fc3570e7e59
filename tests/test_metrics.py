"""Ranking metrics against hand-computed values."""

import math

import numpy as np
import pytest

from coldprompt.evaluation.metrics import (
    bootstrap_mean,
    metrics_from_ranks,
    paired_bootstrap_pvalue,
    target_ranks,
)


def test_rank_of_clear_winner_is_one():
    scores = np.array([[0.1, 0.9, 0.3, 0.2]])
    assert target_ranks(scores, np.array([1]))[0] == 1


def test_ties_count_above_target():
    # Items 0, 2 and 3 tie with the target (item 1), so the target ranks behind all three.
    scores = np.array([[0.5, 0.5, 0.5, 0.5, 0.1]])
    assert target_ranks(scores, np.array([1]))[0] == 4


def test_constant_scorer_gets_last_rank():
    scores = np.zeros((1, 20))
    rank = target_ranks(scores, np.array([7]))[0]
    assert rank == 20
    assert metrics_from_ranks(np.array([rank]))["ndcg@10"][0] == 0.0


def test_support_items_are_not_ranked():
    # Items 0 and 1 score above the target but are support items, so only item 2 counts above it.
    scores = np.array([[9.0, 8.0, 7.0, 5.0, 1.0]])
    rank = target_ranks(scores, np.array([3]), excluded=[np.array([0, 1])])[0]
    assert rank == 2


def test_excluded_items_tied_with_target_do_not_count():
    scores = np.array([[5.0, 5.0, 1.0]])
    assert target_ranks(scores, np.array([1]), excluded=[np.array([0])])[0] == 1


def test_nan_scores_rejected():
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(np.array([[np.nan, 1.0]]), np.array([1]))


def test_metrics_hand_computed():
    values = metrics_from_ranks(np.array([1, 3, 10, 11, 100]))
    assert values["ndcg@10"] == pytest.approx([1.0, 1 / math.log2(4), 1 / math.log2(11), 0.0, 0.0])
    assert values["hr@10"] == pytest.approx([1, 1, 1, 0, 0])
    # MRR is not truncated at 10: rank 11 and rank 100 still count.
    assert values["mrr"] == pytest.approx([1.0, 1 / 3, 0.1, 1 / 11, 0.01])


def test_batch_ranks_match_rowwise():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(6, 30)).astype(float)  # many ties
    targets = rng.integers(0, 30, size=6)
    batch = target_ranks(scores, targets)
    for row in range(6):
        expected = 1 + sum(
            1 for item in range(30) if item != targets[row] and scores[row, item] >= scores[row, targets[row]]
        )
        assert batch[row] == expected


def test_bootstrap_interval_contains_mean_and_is_seeded():
    values = np.random.default_rng(0).random(200)
    first = bootstrap_mean(values, seed=1)
    second = bootstrap_mean(values, seed=1)
    assert first == second
    assert first.low < first.mean < first.high
    assert first.mean == pytest.approx(values.mean())


def test_bootstrap_of_constant_has_zero_width():
    estimate = bootstrap_mean(np.full(50, 0.25))
    assert estimate.low == estimate.high == pytest.approx(0.25)


def test_paired_pvalue_small_for_consistent_gain():
    rng = np.random.default_rng(0)
    b = rng.random(300)
    assert paired_bootstrap_pvalue(b + 0.1, b) < 0.01


def test_paired_pvalue_large_for_noise():
    rng = np.random.default_rng(0)
    a, b = rng.random(300), rng.random(300)
    assert paired_bootstrap_pvalue(a, b) > 0.05
