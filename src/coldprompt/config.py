"""Typed run configuration: YAML files and ``key=value`` overrides, unknown keys rejected, values validated."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from coldprompt.meta.algorithms import ALGORITHMS


@dataclass
class RunConfig:
    """Every setting of a training and evaluation run. Units are in the field comments."""

    # --- data and protocol
    dataset: str = "ml-latest-small"  # dataset name (see `coldprompt evaluate --help`)
    data_dir: str | None = None  # folder with the dataset's files; None = the copy shipped in the package
    seed: int = 0  # seeds the user split, sampling and initialisation
    ks: list[int] = field(default_factory=lambda: [0, 1, 3, 5, 10])  # support sizes evaluated
    max_test_users: int | None = None  # evaluate a seeded sample of this many test users (None = all)
    validation_users: int = 200  # validation users used for model selection during training

    # --- backbone and model
    backbone: str | None = None  # GGUF file, local folder or hub id; None = SmolLM2-135M-Instruct GGUF
    backbone_dtype: str = "auto"  # float32, bfloat16, or auto (bfloat16 where the CPU has native bf16 support)
    backbone_engine: str = "auto"  # lean (coldprompt's Llama decoder), transformers, or auto (lean where it fits)
    item_encoder_layer: int | None = 15  # backbone layer whose mean-pooled states encode item texts (None = last)
    num_virtual_tokens: int = 8  # P, soft-prompt length in tokens
    max_profile_tokens: int = 24  # profile sentences are cut to this many tokens
    learn_item_ids: bool = True  # learn item id embeddings from meta-train interactions
    support_in_context: bool = True  # the backbone reads the support items; False: only the adapted prompt carries them

    # --- inner loop
    inner_steps: int = 1  # gradient steps on a user's prompt, in training and at evaluation
    inner_lr: float = 0.01  # initial inner learning rate (learned per entry by MAML/FOMAML: Meta-SGD)

    # --- outer loop
    algorithms: list[str] = field(default_factory=lambda: list(ALGORITHMS))  # meta-learners to train
    query_size: int = 5  # query interactions per user and episode
    meta_batch_size: int = 16  # users per episode (MAML uses maml_meta_batch_size)
    maml_meta_batch_size: int = 4  # users per episode for second-order MAML (memory grows with it)
    outer_lr: float = 1e-3  # Adam learning rate of shared modules and the initialisation
    reptile_epsilon: float = 0.1  # Reptile step size towards the adapted prompts
    grad_clip: float = 1.0  # max global gradient norm of an outer step
    shared_budget_s: float = 120.0  # wall seconds for training the shared model (shared prompt, no inner loop)
    meta_budget_s: float = 50.0  # wall seconds per meta-learner, starting from the shared model
    max_outer_steps: int = 100000  # upper bound on outer steps per training stage
    validations: int = 3  # validation checks per training stage, evenly spaced in time (model selection)

    # --- baselines
    strong_baselines: bool = False  # also fit EASE, ALS, SASRec and MeLU (see docs/baselines.md)
    baseline_budget_s: float = 120.0  # wall seconds for each neural baseline's fit (SASRec, MeLU)
    ease_lambdas: list[float] | None = None  # EASE L2 grid; None = the default grid (11 values)
    ease_float32: bool = False  # EASE in float32: half the memory, needed for catalogues of 10,000+ items

    # --- output
    output_dir: str = "coldprompt-output"  # results.json, the plot and checkpoints go here
    batch_size: int = 32  # users per forward pass at evaluation

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.backbone_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"backbone_dtype: expected auto, float32 or bfloat16, got {self.backbone_dtype!r}")
        if self.backbone_engine not in ("auto", "lean", "transformers"):
            raise ValueError(f"backbone_engine: expected auto, lean or transformers, got {self.backbone_engine!r}")
        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"algorithms: unknown {unknown}; choose from {list(ALGORITHMS)}")
        if not self.ks or any(k < 0 for k in self.ks):
            raise ValueError(f"ks: expected non-negative support sizes, got {self.ks}")
        for name in ("num_virtual_tokens", "meta_batch_size", "maml_meta_batch_size", "query_size", "batch_size", "validations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps: must be >= 0, got {self.inner_steps}")
        if self.ease_lambdas is not None and (not self.ease_lambdas or min(self.ease_lambdas) <= 0):
            raise ValueError(f"ease_lambdas: expected a non-empty list of positive values, got {self.ease_lambdas}")
        for name in ("inner_lr", "outer_lr", "reptile_epsilon", "baseline_budget_s", "shared_budget_s", "meta_budget_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **fields) -> RunConfig:
    """Build a :class:`RunConfig` from a YAML file, then keyword fields, then ``key=value`` overrides."""
    values: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"--config {path}: file not found; pass the path of a YAML settings file")
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of setting names to values at the top level")
        _check_keys(loaded, str(path))
        values.update(loaded)
    keyword_values = {k: v for k, v in fields.items() if v is not None}
    _check_keys(keyword_values, "settings")
    values.update(keyword_values)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value, for example inner_steps=2")
        _check_keys({key: None}, "override")
        values[key] = _parse_value(key, raw)
    return RunConfig(**{k: _coerce(k, v) for k, v in values.items()})


def _field_types() -> dict[str, object]:
    return typing.get_type_hints(RunConfig)


def _check_keys(values: dict, where: str) -> None:
    known = _field_types()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; valid settings are {sorted(known)}")


def _parse_value(key: str, raw: str):
    """Parse an override with YAML scalar rules (``2`` -> int, ``null`` -> None, ``[1,3]`` -> list)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"override {key}={raw!r}: not a valid value ({error})") from error


def _coerce(key: str, value):
    """Check ``value`` against the field's type; ints are accepted for floats, a string for a one-item list."""
    hint = _field_types()[key]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        origin = typing.get_origin(option)
        if origin is list:
            inner = typing.get_args(option)[0]
            if isinstance(value, list):
                items = value
            elif isinstance(value, (str, int)):
                items = [value]
            else:
                items = None
            if items is not None and inner is float and all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in items):
                return [float(i) for i in items]
            if items is not None and all(isinstance(i, inner) and not isinstance(i, bool) or inner is str and isinstance(i, str) for i in items):
                return list(items)
            continue
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is bool and isinstance(value, bool):
            return value
        if option is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ValueError(f"setting {key}: {value!r} is not {_describe(hint)}")


def _describe(hint) -> str:
    """Return a type hint in words, for example "an integer or null" for ``int | None``."""
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    described = []
    for option in options:
        if typing.get_origin(option) is list:
            described.append(f"a list of {words.get(typing.get_args(option)[0], 'values').removeprefix('an ').removeprefix('a ')}s")
        else:
            described.append(words.get(option, str(option)))
    return " or ".join(described)
