"""The zero-shot text-similarity recommender on hand-made encodings with known cosines."""

import numpy as np
import pytest
import torch

from coldprompt.baselines.zeroshot import ZeroShotTextRecommender
from coldprompt.evaluation.protocol import ScoringBatch


@pytest.fixture
def recommender():
    zero_shot = ZeroShotTextRecommender(backbone=None)
    zero_shot.mean, zero_shot.std = torch.zeros(1, 2), torch.ones(1, 2)
    zero_shot.items = zero_shot._unit(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    return zero_shot


def test_scores_are_cosines_to_the_support_mean(recommender):
    batch = ScoringBatch(np.array([0]), [np.array([0])], [np.array([np.nan])], 1)
    np.testing.assert_allclose(recommender.score(batch)[0], [1.0, 0.0, np.sqrt(0.5)], atol=1e-12)


def test_two_support_items_average(recommender):
    batch = ScoringBatch(np.array([0]), [np.array([0, 1])], [np.array([np.nan, np.nan])], 2)
    scores = recommender.score(batch)[0]
    assert scores[0] == pytest.approx(scores[1])
    assert scores[2] > scores[0]


def test_no_profile_at_k_zero_gives_ties(recommender):
    batch = ScoringBatch(np.array([0, 1]), [np.array([], dtype=np.int64)] * 2, [np.array([])] * 2, 0)
    assert not recommender.score(batch).any()


def test_score_before_fit_is_rejected():
    with pytest.raises(RuntimeError, match="call fit"):
        ZeroShotTextRecommender(backbone=None).score(ScoringBatch(np.array([0]), [np.array([1])], [np.array([1.0])], 1))


def test_fit_and_profiles_on_a_tiny_backbone(tmp_path, monkeypatch):
    from coldprompt.evaluation.protocol import split_users
    from coldprompt.llm.backbone import load_backbone
    from tiny_models import save_tiny_llama, train_bpe_tokenizer
    from toy import toy_data

    monkeypatch.setenv("COLDPROMPT_CACHE", str(tmp_path / "cache"))
    backbone = load_backbone(save_tiny_llama(tmp_path / "tiny", train_bpe_tokenizer()), cache_dir=tmp_path / "cache")
    data = toy_data(num_users=12, num_items=20)
    data.user_profiles = ["A female user aged 25-34."] * 6 + ["A male user aged 50-55."] * 5 + [""]
    zero_shot = ZeroShotTextRecommender(backbone, layer=1)
    zero_shot.fit(data, split_users(data, seed=0))
    assert zero_shot.items.shape == (20, backbone.hidden_size)
    batch = ScoringBatch(np.array([0, 6, 11]), [np.array([], dtype=np.int64)] * 3, [np.array([])] * 3, 0)
    scores = zero_shot.score(batch)
    assert scores[0].any()
    assert scores[1].any()
    assert not np.allclose(scores[0], scores[1])  # different profiles, different rankings
    assert not scores[2].any()  # an empty profile gives ties
