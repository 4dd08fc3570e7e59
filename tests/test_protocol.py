"""The cold-start protocol: user-disjoint splits, first-K supports, full and sampled ranking."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from coldprompt.data.build import build_interaction_data
from coldprompt.evaluation.protocol import (
    SAMPLED_NEGATIVES,
    ScoringBatch,
    UserSplit,
    evaluate,
    evaluation_users,
    make_batch,
    split_users,
)
from toy import toy_data


def test_split_is_disjoint_and_complete():
    data = toy_data(num_users=101)
    split = split_users(data, seed=3)
    train, valid, test = (set(p.tolist()) for p in (split.train, split.validation, split.test))
    assert not train & valid
    assert not train & test
    assert not valid & test
    assert len(train | valid | test) == data.num_users
    assert (len(train), len(valid), len(test)) == (81, 10, 10)


def test_split_depends_on_seed():
    data = toy_data(num_users=100)
    assert np.array_equal(split_users(data, seed=1).test, split_users(data, seed=1).test)
    assert not np.array_equal(split_users(data, seed=1).test, split_users(data, seed=2).test)


def test_split_same_across_processes_and_hash_seeds(tmp_path):
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from toy import toy_data\n"
        "from coldprompt.evaluation.protocol import split_users\n"
        "data = toy_data(num_users=80)\n"
        "print(','.join(data.user_ids[u] for u in split_users(data, seed=7).test))\n"
    ) % os.path.dirname(__file__)
    outputs = set()
    for hash_seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        outputs.add(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outputs) == 1


def test_split_independent_of_file_order():
    data = toy_data(num_users=40)
    order = np.random.default_rng(0).permutation(data.num_interactions)
    shuffled = build_interaction_data(
        "toy",
        [data.user_ids[u] for u in data.users[order]],
        [data.item_ids[i] for i in data.items[order]],
        timestamps=data.timestamps[order],
    )
    ids = lambda d: sorted(d.user_ids[u] for u in split_users(d, seed=5).test)  # noqa: E731
    assert ids(data) == ids(shuffled)


def test_split_export_round_trip(tmp_path):
    data = toy_data()
    split = split_users(data, seed=4)
    path = tmp_path / "split.json"
    split.export(path, data)
    loaded = UserSplit.load(path, data)
    for part in ("train", "validation", "test"):
        assert np.array_equal(np.sort(loaded.part(part)), np.sort(split.part(part)))


def test_split_import_rejects_unknown_users(tmp_path):
    data = toy_data()
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["nobody"], "validation": [], "test": []}))
    with pytest.raises(ValueError, match="field 'train'.*not in dataset"):
        UserSplit.load(path, data)


def test_split_import_rejects_overlap(tmp_path):
    data = toy_data()
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["u001"], "validation": ["u001"], "test": []}))
    with pytest.raises(ValueError, match="overlap"):
        UserSplit.load(path, data)


def test_invalid_fractions_rejected():
    with pytest.raises(ValueError, match="fractions"):
        split_users(toy_data(), fractions=(0.5, 0.5, 0.5))


def test_evaluation_users_need_max_k_plus_one():
    users = ["a"] * 11 + ["b"] * 10 + ["c"] * 12
    items = [str(i) for i in range(11)] + [str(i) for i in range(10)] + [str(i) for i in range(12)]
    data = build_interaction_data("short", users, items, timestamps=list(range(len(users))))
    chosen = evaluation_users(data, np.arange(3))
    assert [data.user_ids[u] for u in chosen.users] == ["a", "c"]
    assert chosen.left_out == 1
    assert chosen.min_interactions == 11


def test_support_is_first_k_in_time_order():
    data = build_interaction_data("t", ["u"] * 4, ["x", "y", "z", "w"], timestamps=[30, 10, 20, 40])
    batch = make_batch(data, np.array([0]), 2)
    assert [data.item_ids[i] for i in batch.supports[0]] == ["y", "z"]


class _Oracle:
    """Scores the true next item highest and the support items higher still (they must be masked)."""

    name = "oracle"

    def __init__(self, data):
        self.data = data

    def score(self, batch: ScoringBatch) -> np.ndarray:
        scores = np.zeros((len(batch.users), self.data.num_items))
        for row, user in enumerate(batch.users):
            scores[row, self.data.sequences()[user][batch.k]] = 1.0
            scores[row, batch.supports[row]] = 2.0
        return scores


def test_oracle_gets_perfect_scores_at_every_k():
    data = toy_data()
    users = evaluation_users(data, np.arange(data.num_users))
    result = evaluate(_Oracle(data), data, users)
    for k, metrics in result.per_user.items():
        assert metrics["ndcg@10"].mean() == 1.0, k
        assert metrics["mrr"].mean() == 1.0, k


class _Constant:
    name = "constant"

    def __init__(self, n):
        self.n = n

    def score(self, batch):
        return np.ones((len(batch.users), self.n))


def test_constant_scorer_gets_no_credit_full_and_sampled():
    data = toy_data()
    users = evaluation_users(data, np.arange(data.num_users))
    result = evaluate(_Constant(data.num_items), data, users)
    for k in result.per_user:
        assert result.per_user[k]["hr@10"].sum() == 0.0
        assert result.sampled_per_user[k]["hr@10"].sum() == 0.0


def test_sampled_protocol_ranks_among_one_hundred():
    # 300 items so that 99 negatives exist; the oracle ranks first, the constant ranks 100th.
    data = toy_data(num_users=12, num_items=300, length=12)
    users = evaluation_users(data, np.arange(data.num_users))
    result = evaluate(_Constant(data.num_items), data, users, ks=(1,))
    assert result.sampled_per_user[1]["mrr"] == pytest.approx(np.full(len(users.users), 1 / (SAMPLED_NEGATIVES + 1)))
    assert evaluate(_Oracle(data), data, users, ks=(1,)).sampled_per_user[1]["mrr"].min() == 1.0


def test_sampled_negatives_never_seen_by_user():
    data = toy_data(num_users=12, num_items=300, length=12)
    users = evaluation_users(data, np.arange(data.num_users))

    class _Spy:
        """Scores the target 0 and every item the user interacted with 1: those must never be sampled."""

        name = "spy"

        def score(self, batch):
            scores = np.zeros((len(batch.users), data.num_items))
            for row, user in enumerate(batch.users):
                scores[row, data.sequences()[user]] = 1.0
                scores[row, data.sequences()[user][batch.k]] = 0.5
            return scores

    result = evaluate(_Spy(), data, users, ks=(3,))
    assert result.sampled_per_user[3]["mrr"].min() == 1.0


def test_wrong_score_shape_rejected():
    data = toy_data()
    users = evaluation_users(data, np.arange(data.num_users))
    with pytest.raises(ValueError, match="shape"):
        evaluate(_Constant(data.num_items - 1), data, users)
