"""Checkpoints: trainable tensors as safetensors plus a JSON manifest (never pickle).

The manifest records the backbone's identity and weight hash, the dataset's item ids and the run
configuration, so a checkpoint is only ever used with the backbone and catalogue it was trained for.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "prompt_model.safetensors"
MANIFEST = "checkpoint.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not match the backbone or dataset in use."""


def save_checkpoint(folder: str | Path, state: dict[str, torch.Tensor], manifest: dict) -> Path:
    """Write ``state`` and ``manifest`` into ``folder`` atomically (a temporary folder, then a rename)."""
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=target.parent))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(staging / WEIGHTS))
    (staging / MANIFEST).write_text(json.dumps({"format": FORMAT_VERSION, **manifest}, indent=1) + "\n", encoding="utf-8")
    if target.exists():
        old = target.with_name(target.name + ".old")
        if old.exists():
            _remove_tree(old)
        os.replace(target, old)
        os.replace(staging, target)
        _remove_tree(old)
    else:
        os.replace(staging, target)
    return target


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    path = Path(folder)
    manifest_path, weights_path = path / MANIFEST, path / WEIGHTS
    if not manifest_path.is_file() or not weights_path.is_file():
        hint = ""
        if (path / "checkpoint" / MANIFEST).is_file():
            hint = f"; this looks like an output folder, so pass {path / 'checkpoint'}"
        raise CheckpointError(
            f"{path}: not a coldprompt checkpoint; expected {MANIFEST} and {WEIGHTS} (written by `coldprompt run` "
            f"or `coldprompt train`){hint}"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{manifest_path}: invalid JSON at line {error.lineno}: {error.msg}") from error
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path}: format {manifest.get('format')!r} is not supported (expected {FORMAT_VERSION})")
    return load_file(str(weights_path)), manifest


def check_backbone(manifest: dict, identity: str, sha256: str, where: str | Path) -> None:
    """Reject a checkpoint trained on another backbone: the prompts live in that backbone's embedding space."""
    expected = manifest.get("backbone", {})
    if expected.get("sha256") != sha256:
        raise CheckpointError(
            f"{where}: trained with backbone {expected.get('identity')!r} (sha256 {str(expected.get('sha256'))[:12]}...) "
            f"but the loaded backbone is {identity!r} (sha256 {sha256[:12]}...); load the checkpoint with the "
            f"backbone it was trained on (--backbone {expected.get('source')!r})"
        )


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()
