"""Atomic file writes and the safetensors + JSON bundles results are saved as (no pickle).

A crash mid-write leaves the previous file (or none), never a truncated one.
"""

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["atomic_write", "write_tensors", "write_json", "read_bundle"]


def atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``target`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(
            tmp, 0o666 & ~_umask()
        )  # mkstemp's 0600 would make results private to their writer
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_tensors(target: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save ``tensors`` (made contiguous) as safetensors, atomically."""
    flat = {name: t.contiguous() for name, t in tensors.items()}
    atomic_write(target, lambda p: save_file(flat, p))


def _finite(obj: Any) -> Any:
    """``obj`` with NaN / infinite floats as None (JSON has no NaN; ``json.dumps`` would write one)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(target: Path, obj: Any) -> None:
    """Save ``obj`` as indented, valid JSON (non-finite floats become ``null``), atomically."""
    text = json.dumps(_finite(obj), indent=2, allow_nan=False)
    atomic_write(target, lambda p: Path(p).write_text(text))


def read_bundle(
    directory: str | Path, tensors_name: str, json_name: str, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON info of a saved ``what`` (e.g. ``"PatchResult"``) in ``directory``.

    Raises:
        FileNotFoundError: one of the two files is missing.
    """
    src = Path(directory)
    for name in (tensors_name, json_name):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} is missing; is {src} a saved {what} directory?")
    return load_file(src / tensors_name), json.loads((src / json_name).read_text())
