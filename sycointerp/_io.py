"""Atomic file writes and the safetensors + JSON bundles results are saved as (no pickle).

A crash mid-write leaves the previous file (or none), never a truncated one. Results
(:class:`~sycointerp.patching.PatchResult`, :class:`~sycointerp.patching.KnockoutCurve`,
:class:`~sycointerp.evaluate.EffectResult`, the SPT outputs) derive from :class:`Bundle`: one
safetensors file of tensors and one JSON file of everything else, written and read in one place.
A missing or corrupt bundle file raises :class:`BundleError` naming the path.
"""

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file

from sycointerp.errors import UserError

__all__ = [
    "Bundle",
    "BundleError",
    "MissingBundleError",
    "atomic_write",
    "fsync_tree",
    "writable_directory_problem",
    "write_tensors",
    "write_json",
    "read_json",
    "read_bundle",
]


def atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``target`` atomically and durably.

    The temporary file is fsynced before the rename and the directory after it, so a power cut
    leaves either the old file or the complete new one under ``target``, never an empty one.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as err:
        raise _naming(err, target) from None
    os.close(fd)
    try:
        write(tmp)
        # mkstemp's 0600 would make results private to their writer.
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    except OSError as err:  # a full disk says which file it stopped (errors of writers can omit it)
        Path(tmp).unlink(missing_ok=True)
        raise _naming(err, target) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _naming(err: OSError, target: Path) -> OSError:
    """``err`` with ``target`` as its file name when it names none (same type and errno)."""
    if err.filename is not None:
        return err
    return type(err)(err.errno, err.strerror or str(err), str(target))


def writable_directory_problem(directory: Path) -> str | None:
    """Create ``directory`` if needed; ``None`` when a file can be written there, else the reason
    (the OS's message: "Not a directory", "Read-only file system", ...)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def fsync_tree(directory: Path) -> None:
    """fsync every file under ``directory`` and the directories themselves (before renaming a
    directory written in place, e.g. a checkpoint, onto its final name)."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            _fsync(path)
    for path in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        _fsync(path)
    _fsync(directory)


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_tensors(target: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save ``tensors`` (made contiguous) as safetensors, atomically."""
    flat = {name: t.contiguous() for name, t in tensors.items()}
    atomic_write(target, lambda p: save_file(flat, p))


def _finite(obj: Any) -> Any:
    """``obj`` with NaN / infinite floats as None (JSON has no NaN; ``json.dumps`` would write
    one)."""
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


class BundleError(UserError):
    """A saved result's file is corrupt or does not hold what its reader expects."""


class MissingBundleError(BundleError, FileNotFoundError):
    """A saved result's file is missing."""


def read_json(path: Path, what: str) -> Any:
    """Parse the JSON file ``path`` of a saved ``what``.

    Raises:
        MissingBundleError: no such file.
        BundleError: unreadable, not UTF-8 or not valid JSON.
    """
    if not path.is_file():
        raise MissingBundleError(f"{path} is missing; is {path.parent} a saved {what} directory?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BundleError(
            f"{path} is not a valid {what} file ({type(err).__name__}: {err})"
        ) from None


def read_bundle(
    directory: str | Path, tensors_name: str, json_name: str, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON info of a saved ``what`` (e.g. ``"PatchResult"``) in ``directory``.

    Raises:
        MissingBundleError: one of the two files is missing.
        BundleError: a file is corrupt.
    """
    src = Path(directory)
    info = read_json(src / json_name, what)
    path = src / tensors_name
    if not path.is_file():
        raise MissingBundleError(f"{path} is missing; is {src} a saved {what} directory?")
    try:
        tensors = load_file(path)
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise BundleError(
            f"{path} is not a valid {what} file ({type(err).__name__}: {err})"
        ) from None
    return tensors, info


B = TypeVar("B", bound="Bundle")


class Bundle:
    """Save / load as ``TENSORS`` (safetensors) + ``INFO`` (JSON) in a directory, atomically.

    Subclasses set ``TENSORS`` and ``INFO`` and implement :meth:`to_bundle` / :meth:`from_bundle`.
    """

    TENSORS: ClassVar[str]
    INFO: ClassVar[str]

    def to_bundle(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def from_bundle(cls: type[B], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> B:
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        """Write the two files (each atomically) into ``directory``; returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors, info = self.to_bundle()
        write_tensors(out / self.TENSORS, tensors)
        write_json(out / self.INFO, info)
        return out

    @classmethod
    def load(cls: type[B], directory: str | Path) -> B:
        """Inverse of :meth:`save`.

        Raises:
            MissingBundleError: a file is missing.
            BundleError: a file is corrupt or lacks a field.
        """
        tensors, info = read_bundle(directory, cls.TENSORS, cls.INFO, cls.__name__)
        try:
            return cls.from_bundle(tensors, info)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise BundleError(
                f"{Path(directory) / cls.INFO} is not a saved {cls.__name__} "
                f"({type(err).__name__}: {err})"
            ) from None
