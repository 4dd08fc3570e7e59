"""A lean Llama decoder for inference and prompt tuning, loaded straight from a ``save_pretrained`` folder.

coldprompt only ever runs the decoder stack on input embeddings and reads hidden states: no generation, no
output head, no sampling. transformers does that too, but importing it and building a model through
``from_pretrained`` takes about 2.5 s on a 2-core CPU, and its per-layer dispatch adds Python work to every
forward pass of a 30-layer model. This module implements the same arithmetic as transformers 4.57's
``LlamaModel``: RMSNorm, rotary position embeddings, grouped-query attention and SwiGLU. It covers the
configurations it can check (``model_type`` "llama", no rope scaling, no biases, SiLU). Its parameter names
are transformers' names, so the weights load unchanged. Tests compare its hidden states with transformers' on
the same weights.

It adds one thing that transformers' public forward does not offer in this form. :meth:`LeanLlama.forward`
takes the keys and values of an earlier call (``past``) with right-padded rows. A user's profile tokens do not
depend on the soft prompt that follows them, so they are encoded once and reused by every inner step and by
scoring.

The tokenizer is the ``tokenizers`` library's reading of the folder's ``tokenizer.json``, wrapped in the few
methods coldprompt calls (:class:`LeanTokenizer`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: Settings of config.json this module implements; :func:`unsupported_reason` rejects any other value.
_REQUIRED = {"model_type": "llama", "hidden_act": "silu"}
_MUST_BE_FALSE_OR_ABSENT = ("attention_bias", "mlp_bias")

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values [B, kv_heads, L, head_dim]


@dataclass
class LeanConfig:
    """The fields of a Llama config.json that the forward pass uses."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    vocab_size: int
    tie_word_embeddings: bool = True
    model_type: str = "llama"

    @classmethod
    def from_dict(cls, values: dict) -> "LeanConfig":
        heads = int(values["num_attention_heads"])
        return cls(
            hidden_size=int(values["hidden_size"]),
            intermediate_size=int(values["intermediate_size"]),
            num_hidden_layers=int(values["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(values.get("num_key_value_heads") or heads),
            head_dim=int(values.get("head_dim") or int(values["hidden_size"]) // heads),
            rms_norm_eps=float(values.get("rms_norm_eps", 1e-6)),
            rope_theta=float(values.get("rope_theta", 10000.0)),
            max_position_embeddings=int(values.get("max_position_embeddings", 2048)),
            vocab_size=int(values["vocab_size"]),
            tie_word_embeddings=bool(values.get("tie_word_embeddings", True)),
        )


def unsupported_reason(values: dict) -> str | None:
    """Return why a config.json cannot run on :class:`LeanLlama`, or None when it can."""
    for key, expected in _REQUIRED.items():
        if values.get(key) != expected:
            return f"{key} is {values.get(key)!r}, not {expected!r}"
    for key in _MUST_BE_FALSE_OR_ABSENT:
        if values.get(key):
            return f"{key} is set"
    if values.get("rope_scaling"):
        return "rope_scaling is set"
    if values.get("pretraining_tp", 1) != 1:
        return "pretraining_tp is not 1"
    return None


@dataclass
class LeanOutput:
    last_hidden_state: torch.Tensor  # [B, L, H]
    past: KeyValues | None = None  # this call's keys and values when asked for (past ones included)


class Linear(nn.Module):
    """A bias-free linear layer whose weight is allocated, not initialised: every weight is loaded afterwards.

    ``nn.Linear`` would draw random weights first, which for 135 M parameters costs about a second.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: LeanConfig):
        super().__init__()
        hidden, d = config.hidden_size, config.head_dim
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = Linear(hidden, self.heads * d)
        self.k_proj = Linear(hidden, self.kv_heads * d)
        self.v_proj = Linear(hidden, self.kv_heads * d)
        self.o_proj = Linear(self.heads * d, hidden)

    def forward(self, x, cos, sin, mask, past, eager: bool):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        present = (k, v)
        repeat = self.heads // self.kv_heads
        keys, values = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if eager:
            # Written out, so that second-order gradients (MAML) exist; CPU SDPA has no double backward.
            weights = (q @ keys.transpose(2, 3)) / math.sqrt(self.head_dim) + mask
            weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
            out = weights @ values
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1)), present


class MLP(nn.Module):
    def __init__(self, config: LeanConfig):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LeanConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past, eager: bool):
        attended, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past, eager)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), present


class LeanLlama(nn.Module):
    """The decoder stack of a Llama model (no output head); parameter names match transformers' ``model.*``."""

    def __init__(self, config: LeanConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        if attn_implementation not in ("eager", "sdpa"):
            raise ValueError(f"attn_implementation must be 'eager' or 'sdpa', got {attn_implementation!r}")
        self.config = config
        self.eager = attn_implementation == "eager"
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, _weight=torch.empty(config.vocab_size, config.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    # The few methods of transformers' PreTrainedModel that coldprompt calls.
    @property
    def base_model(self) -> "LeanLlama":
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def get_output_embeddings(self) -> None:
        return None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past: KeyValues | None = None,
        return_past: bool = False,
        use_cache: bool | None = None,  # accepted for call compatibility; caching is ``past``/``return_past``
    ) -> LeanOutput:
        """Run the decoder on ``inputs_embeds`` (or ``input_ids``): [B, L, H] hidden states after the final norm.

        ``attention_mask`` is [B, Lpast + L], 1 for real positions, and may have holes (a padded past followed
        by real tokens). ``position_ids`` default to 0..L-1 after the past's length. Query ``i`` attends to
        every real key at or before its own slot ``Lpast + i``.
        """
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, L, _ = x.shape
        past_length = 0 if past is None else past[0][0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(B, past_length + L, dtype=torch.long, device=x.device)
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + L, device=x.device).expand(B, L)
        mask = self._mask(attention_mask, L, past_length, x.dtype)
        freqs = position_ids[..., None].float() * self.inv_freq  # [B, L, d/2]
        angles = torch.cat([freqs, freqs], dim=-1)
        cos, sin = angles.cos().to(x.dtype)[:, None], angles.sin().to(x.dtype)[:, None]  # [B, 1, L, d]
        presents: KeyValues = []
        for index, layer in enumerate(self.layers):
            x, present = layer(x, cos, sin, mask, None if past is None else past[index], self.eager)
            if return_past:
                presents.append(present)
        return LeanOutput(self.norm(x), presents if return_past else None)

    @staticmethod
    def _mask(attention_mask: torch.Tensor, length: int, past_length: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [B, 1, L, Lpast + L]: 0 where allowed, the dtype's minimum elsewhere."""
        keys = attention_mask.shape[1]
        slots = torch.arange(keys, device=attention_mask.device)
        queries = torch.arange(past_length, past_length + length, device=attention_mask.device)
        allowed = (slots[None, :] <= queries[:, None])[None] & attention_mask[:, None, :].bool()  # [B, L, Lk]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def load_lean_llama(folder: Path, dtype: torch.dtype, attn_implementation: str = "sdpa") -> LeanLlama:
    """Build a :class:`LeanLlama` from a ``save_pretrained`` folder, without drawing random weights first.

    Raises ValueError when the folder's config is not one this module implements (see
    :func:`unsupported_reason`), or when its weight names or shapes do not match.
    """
    from safetensors.torch import load_file

    values = json.loads((folder / "config.json").read_text())
    reason = unsupported_reason(values)
    if reason:
        raise ValueError(f"{folder}: the lean Llama path does not implement this model ({reason})")
    config = LeanConfig.from_dict(values)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no .safetensors weight files")
    state = {}
    for path in files:
        for name, tensor in load_file(path).items():
            if name.startswith("model."):
                state[name.removeprefix("model.")] = tensor.to(dtype)
    model = LeanLlama(config, attn_implementation)
    missing = set(model.state_dict()) - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weight names do not match a Llama decoder (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    model.load_state_dict(state, assign=True, strict=True)
    return model


class LeanTokenizer:
    """A ``tokenizers.Tokenizer`` read from ``tokenizer.json``, with the calls coldprompt makes of a tokenizer.

    Special tokens come from ``tokenizer_config.json`` (falling back to ``special_tokens_map.json``).
    ``__call__`` returns ``{"input_ids": ...}`` for one text or a list, like a transformers tokenizer.
    """

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        settings: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = folder / name
            if path.is_file():
                settings.update(json.loads(path.read_text()))
        for token in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = settings.get(token)
            setattr(self, token, value.get("content") if isinstance(value, dict) else value)
        self.padding_side = "right"

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._tokenizer.token_to_id(self.pad_token)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self._tokenizer.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self._tokenizer.token_to_id(self.eos_token)

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(int(token_id))

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __call__(self, text, add_special_tokens: bool = True, truncation: bool = False, max_length: int | None = None, **_):
        single = isinstance(text, str)
        encodings = self._tokenizer.encode_batch([text] if single else list(text), add_special_tokens=add_special_tokens)
        ids = [e.ids[:max_length] if truncation and max_length else e.ids for e in encodings]
        return {"input_ids": ids[0] if single else ids}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
