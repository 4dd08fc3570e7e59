"""Baselines fit on meta-train users only and match hand-checked results on tiny tables."""

import numpy as np
import pytest

from coldprompt.baselines.simple import (
    CoOccurrenceRecommender,
    OnboardingPopularityRecommender,
    PopularityRecommender,
    RandomRecommender,
    cosine_similarity,
    item_counts,
    position_counts,
)
from coldprompt.data.build import build_interaction_data
from coldprompt.evaluation.protocol import ScoringBatch, UserSplit, evaluation_users
from toy import toy_data


def _table(histories: dict[str, list[str]]):
    users, items, times = [], [], []
    for user, history in histories.items():
        users += [user] * len(history)
        items += history
        times += list(range(len(history)))
    return build_interaction_data("hand", users, items, timestamps=times)


def _split(data, train, validation, test):
    index = {u: i for i, u in enumerate(data.user_ids)}
    part = lambda names: np.array([index[n] for n in names], dtype=np.int64)  # noqa: E731
    return UserSplit(part(train), part(validation), part(test))


def test_popularity_counts_train_users_only():
    data = _table({"a": ["x", "y"], "b": ["x"], "test": ["z", "z2", "z3"]})
    split = _split(data, ["a", "b"], [], ["test"])
    model = PopularityRecommender()
    model.fit(data, split, ks=(0,))
    counts = dict(zip(data.item_ids, model.counts))
    assert counts == {"x": 2, "y": 1, "z": 0, "z2": 0, "z3": 0}


def test_item_counts_prefix_and_position():
    data = _table({"a": ["x", "y", "z"], "b": ["y", "x", "w"]})
    users = np.arange(2)
    as_dict = lambda c: {i: c[n] for n, i in enumerate(data.item_ids) if c[n]}  # noqa: E731
    assert as_dict(item_counts(data, users, prefix=1)) == {"x": 1, "y": 1}
    assert as_dict(position_counts(data, users, k=2)) == {"z": 1, "w": 1}
    assert as_dict(item_counts(data, users, prefix=None)) == {"x": 2, "y": 2, "z": 1, "w": 1}


def test_onboarding_prefers_early_items():
    # Every user starts with "start" then a random tail; global counts favour the tail item "pop".
    histories = {}
    rng = np.random.default_rng(0)
    for u in range(40):
        tail = [f"t{i}" for i in rng.choice(30, size=11, replace=False)]
        histories[f"u{u:02d}"] = ["start"] + tail[:5] + ["pop"] + tail[5:]
    data = _table(histories)
    names = sorted(histories)
    split = _split(data, names[:30], names[30:35], names[35:])
    model = OnboardingPopularityRecommender()
    model.fit(data, split, ks=(0,))
    top = data.item_ids[int(np.argmax(model.counts_for(0)))]
    assert top == "start"
    assert model.chosen[0] != "all"


def test_cosine_similarity_hand_computed():
    # x: users a, b; y: users a, b, c; z: user c. cos(x, y) = 2 / sqrt(2 * 3).
    data = _table({"a": ["x", "y"], "b": ["x", "y"], "c": ["y", "z"]})
    sim = cosine_similarity(data, np.arange(3)).toarray()
    x, y, z = (data.item_ids.index(i) for i in ("x", "y", "z"))
    assert sim[x, y] == pytest.approx(2 / np.sqrt(6))
    assert sim[y, z] == pytest.approx(1 / np.sqrt(3))
    assert sim[x, z] == 0.0
    assert np.all(np.diag(sim) == 0.0)


def test_cooccurrence_scores_neighbours_and_breaks_ties_by_onboarding():
    data = toy_data(num_users=60, num_items=25, length=12)
    split = UserSplit(np.arange(40), np.arange(40, 50), np.arange(50, 60))
    model = CoOccurrenceRecommender()
    model.fit(data, split, ks=(0, 1))
    support = data.sequences()[55][:1]
    batch = ScoringBatch(np.array([55]), [support], [np.array([np.nan])], 1)
    scores = model.score(batch)[0]
    similarity = np.asarray(model.similarity[support].sum(axis=0)).ravel()
    onboarding = model.onboarding.counts_for(1) / model.onboarding.counts_for(1).max()
    assert scores == pytest.approx(similarity + 1e-9 * onboarding, abs=1e-12)
    # Among items with equal similarity (here: zero), onboarding popularity decides the order.
    unrelated = np.flatnonzero(similarity == 0)
    assert unrelated[np.argmax(scores[unrelated])] == unrelated[np.argmax(onboarding[unrelated])]
    zero = ScoringBatch(np.array([55]), [support[:0]], [np.array([])], 0)
    assert np.argmax(model.score(zero)[0]) == np.argmax(model.onboarding.counts_for(0))


def test_random_is_seeded_per_user_and_k():
    model = RandomRecommender(10, seed=3)
    batch = ScoringBatch(np.array([1, 2]), [np.array([]), np.array([])], [np.array([]), np.array([])], 0)
    alone = ScoringBatch(np.array([2]), [np.array([])], [np.array([])], 0)
    assert np.array_equal(model.score(batch)[1], model.score(alone)[0])


def test_test_users_do_not_change_any_baseline():
    data = toy_data(num_users=60, num_items=25, length=12, seed=1)
    split = UserSplit(np.arange(40), np.arange(40, 50), np.arange(50, 60))
    users = evaluation_users(data, split.test)
    # The same table with the test users' histories replaced by other items.
    mutated = toy_data(num_users=60, num_items=25, length=12, seed=1)
    seqs = mutated.sequences()
    for user in split.test:
        seqs[user][:] = seqs[user][::-1]
    for make in (PopularityRecommender, OnboardingPopularityRecommender, CoOccurrenceRecommender):
        a, b = make(), make()
        a.fit(data, split, ks=(0, 1, 3))
        b.fit(mutated, split, ks=(0, 1, 3))
        for k in (0, 1, 3):
            batch = ScoringBatch(users.users, [data.sequences()[u][:k] for u in users.users], [np.array([])] * len(users.users), k)
            assert np.array_equal(a.score(batch), b.score(batch)), (make.__name__, k)
