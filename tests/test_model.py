"""The soft-prompt recommender on a tiny random backbone: padding, batching, freezing, training."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from coldprompt.config import RunConfig
from coldprompt.evaluation.protocol import ScoringBatch, split_users
from coldprompt.llm.batching import ProfileTokens, make_sequence_batch
from coldprompt.llm.model import SoftPromptRecommender
from coldprompt.llm.recommender import PROMPT_RANDOM, SoftPromptScorer
from coldprompt.meta.algorithms import adapt
from coldprompt.meta.trainer import SHARED, Trainer
from toy import toy_data


def tiny_backbone(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def model():
    torch.manual_seed(0)
    data = toy_data(num_users=40, num_items=30)
    recommender = SoftPromptRecommender(tiny_backbone(), torch.randn(data.num_items, 16), num_virtual_tokens=3)
    # Non-zero shared modules so that every input path matters in the checks below.
    with torch.no_grad():
        for parameter in (recommender.item_in.weight, recommender.item_out.weight, recommender.rating.weight):
            parameter.normal_(std=0.1)
    return recommender


def test_padded_row_scores_like_row_alone(model):
    items = [np.array([1, 2, 3, 4, 5]), np.array([6, 7])]
    ratings = [np.array([5.0, 2, 5, 5, 1]), np.array([4.0, 3])]
    profiles = [[5, 6, 7, 8], []]
    prompts = torch.randn(2, 3, 32) * 0.1
    together = model.user_scores(prompts, make_sequence_batch(items, ratings, profiles))
    for row in range(2):
        alone = model.user_scores(prompts[row : row + 1], make_sequence_batch([items[row]], [ratings[row]], [profiles[row]]))
        assert torch.allclose(together[row], alone[0], atol=1e-5), row


def test_users_with_different_prompts_in_one_pass(model):
    batch = make_sequence_batch([np.array([1, 2])] * 2, [np.array([5.0, 5.0])] * 2, [[], []])
    prompts = torch.randn(2, 3, 32)
    scores = model.user_scores(prompts, batch)
    assert not torch.allclose(scores[0], scores[1])
    swapped = model.user_scores(prompts.flip(0), batch)
    assert torch.allclose(scores, swapped.flip(0), atol=1e-5)


def test_position_losses_use_only_support_positions(model):
    batch = make_sequence_batch([np.array([1, 2, 3, 4])], [np.array([5.0] * 4)], [[]])
    prompts = model.prompt_init.detach().unsqueeze(0)
    support = model.position_losses(prompts, batch, 0, torch.tensor([2]))
    changed = make_sequence_batch([np.array([1, 2, 9, 10])], [np.array([5.0] * 4)], [[]])
    # Items after the support end do not change the support loss (causal attention, positions masked).
    assert torch.allclose(support, model.position_losses(prompts, changed, 0, torch.tensor([2])))


def test_backbone_bitwise_unchanged_after_training(model):
    data = toy_data(num_users=40, num_items=30)
    split = split_users(data, seed=0)
    before = {name: p.detach().clone() for name, p in model.backbone.named_parameters()}
    config = RunConfig(meta_batch_size=4, maml_meta_batch_size=2, validation_users=8, max_outer_steps=3)
    for algorithm in (SHARED, "reptile", "fomaml", "maml"):
        Trainer(model, data, split, ProfileTokens(data, None, 8), config, algorithm).train(60, show_progress=False)
    for name, parameter in model.backbone.named_parameters():
        assert torch.equal(before[name], parameter), name
        assert not parameter.requires_grad, name


def test_training_lowers_validation_loss_direction(model):
    data = toy_data(num_users=40, num_items=30)
    split = split_users(data, seed=0)
    config = RunConfig(meta_batch_size=8, validation_users=8, max_outer_steps=20, outer_lr=1e-2)
    trainer = Trainer(model, data, split, ProfileTokens(data, None, 8), config, "fomaml")
    users, k, stops = trainer.sample_episode()
    log = trainer.train(60, show_progress=False)
    assert log.outer_steps == 20
    assert log.best_validation_ndcg >= log.history[0]["validation_ndcg@10"]


def test_inner_step_skipped_at_k_zero(model):
    scorer0 = SoftPromptScorer(model, ProfileTokens(toy_data(num_users=40, num_items=30), None, 8), "a", inner_steps=0)
    scorer1 = SoftPromptScorer(model, scorer0.profiles, "b", inner_steps=1)
    empty = ScoringBatch(np.array([0]), [np.array([], dtype=np.int64)], [np.array([])], 0)
    assert np.array_equal(scorer0.score(empty), scorer1.score(empty))
    one = ScoringBatch(np.array([0]), [np.array([3])], [np.array([5.0])], 1)
    assert not np.allclose(scorer0.score(one), scorer1.score(one))


def test_random_start_is_seeded_per_user(model):
    profiles = ProfileTokens(toy_data(num_users=40, num_items=30), None, 8)
    scorer = SoftPromptScorer(model, profiles, "r", inner_steps=1, start=PROMPT_RANDOM, seed=1)
    assert torch.equal(scorer.starting_prompts(np.array([4, 5]))[1], scorer.starting_prompts(np.array([5]))[0])


def test_memory_flat_over_many_users(model):
    import resource

    profiles = ProfileTokens(toy_data(num_users=40, num_items=30), None, 8)
    scorer = SoftPromptScorer(model, profiles, "m", inner_steps=2)
    batch = ScoringBatch(np.arange(8), [np.array([1, 2, 3])] * 8, [np.array([5.0, 2.0, 5.0])] * 8, 3)
    for _ in range(10):
        scorer.score(batch)
    warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(60):
        scorer.score(batch)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - warm
    # 480 more adapted users must not grow the peak resident set by more than 20 MiB.
    assert grown_kib < 20 * 1024, grown_kib


def test_trainable_parameter_count(model):
    hidden, text, items, prompt = 32, 16, 30, 3
    expected = (
        text * hidden  # in_proj
        + 2 * items * hidden  # item_in, item_out
        + 3 * hidden  # rating
        + 2 * hidden  # user_norm
        + hidden * hidden + hidden  # out_proj
        + text * hidden  # text_out
        + items  # item_bias
        + 2 * prompt * hidden  # prompt_init, log_inner_lr
    )
    assert model.trainable_parameter_count() == expected


def test_fixed_item_outputs_give_the_same_scores(model):
    batch = make_sequence_batch([np.array([1, 2, 3])], [np.array([5.0, 1.0, 4.0])], [[5, 6]])
    prompts = torch.randn(1, 3, 32) * 0.1
    with torch.no_grad():
        recomputed = model.user_scores(prompts, batch)
        with model.fixed_item_outputs():
            fixed = model.user_scores(prompts, batch)
    torch.testing.assert_close(fixed, recomputed)


def test_fixed_item_outputs_end_with_the_block(model):
    with model.fixed_item_outputs():
        assert not model.item_outputs().requires_grad
    assert model.item_outputs().requires_grad  # training gets its gradients again


def test_out_of_context_scores_ignore_items_until_adapted(model):
    model.support_in_context = False
    prompts = model.prompt_init.detach().unsqueeze(0).expand(2, -1, -1)
    batch = make_sequence_batch([np.array([1, 2, 3]), np.array([7])], [np.array([5.0, 5, 5]), np.array([5.0])], [[5, 6], [5, 6]])
    with torch.no_grad():
        scores = model.user_scores(prompts, batch)
    torch.testing.assert_close(scores[0], scores[1])  # same profile, same prompt: the items are not read


def test_out_of_context_inner_step_lowers_support_loss(model):
    model.support_in_context = False
    batch = make_sequence_batch([np.array([1, 2, 3])], [np.array([5.0, 5, 5])], [[]])
    prompts = model.prompt_init.detach().unsqueeze(0)
    loss = lambda p: model.position_losses(p, batch, 0, batch.lengths)  # noqa: E731
    before = loss(prompts).item()
    adapted = adapt(loss, prompts, steps=3, inner_lr=0.05)
    assert loss(adapted).item() < before


def test_out_of_context_loss_is_mean_over_targets(model):
    model.support_in_context = False
    batch = make_sequence_batch([np.array([1, 2, 3, 4])], [np.array([5.0] * 4)], [[]])
    prompts = model.prompt_init.detach().unsqueeze(0)
    with torch.no_grad():
        log_probs = torch.log_softmax(model.user_scores(prompts, batch), dim=-1)[0]
        loss = model.position_losses(prompts, batch, 1, torch.tensor([3]))
    torch.testing.assert_close(loss[0], -(log_probs[2] + log_probs[3]) / 2)
