"""What a model is, without loading it: a content identity (for resume checks) and its head shape.

:func:`model_identity` names a model by the SHA-256 of its files: every regular, non-hidden file
of a local model directory (weights, ``config.json``, tokenizer files), or the GGUF file (the
embedded model's included). So a model replaced at the same path, a retrained checkpoint or a
changed tokenizer gives another identity, and a job resumed on it is refused. Hashes are cached
in ``<cache_root>/file-hashes.json`` keyed by (path, size, modification time), so a model is read
in full once, not on every resume; an unwritable cache only costs the re-hash. A hub id that is
not in the local HuggingFace cache has no files to hash: its identity is the id alone (said in
the record, ``"files": null``).

:func:`model_dims` reads ``(n_layers, n_heads, n_kv_heads)`` from ``config.json`` or the GGUF
header, so head files can be checked against the model before its weights load.
"""

import json
import os
from pathlib import Path
from typing import Any

from sycointerp._io import atomic_write
from sycointerp.models import ModelLoadError, cache_root, embedded_gguf_path, sha256_file

__all__ = ["file_digest", "input_files", "model_dims", "model_identity", "model_files"]

_HASHES = "file-hashes.json"


def _hash_cache() -> Path:
    return cache_root() / _HASHES


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_hash_cache().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def file_digest(path: Path) -> str:
    """SHA-256 of ``path``'s bytes, from the stat-keyed cache when the file is unchanged."""
    resolved = path.resolve()
    stat = resolved.stat()
    # Inode and change time too: a same-size copy that keeps its mtime (cp -p, rsync -a) still
    # gets a new inode or ctime.
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{stat.st_ctime_ns}"
    cache = _read_cache()
    if key in cache:
        return cache[key]
    digest = sha256_file(resolved)
    # Entries of files that are gone (temporary model copies) would only make the cache grow.
    cache = {k: v for k, v in cache.items() if Path(k.split("|")[0]).exists()}
    cache[key] = digest
    try:
        _hash_cache().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(_hash_cache(), lambda p: Path(p).write_text(json.dumps(cache, indent=0)))
    except OSError:
        pass  # a read-only cache only means hashing again next time
    return digest


def input_files(paths: list[str]) -> dict[str, str | None]:
    """SHA-256 of each given input file (``None`` for a path that is not a local file, e.g. a
    dataset hub id)."""
    return {p: file_digest(Path(p)) if Path(p).is_file() else None for p in paths}


def _hub_dir(name: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, or not a valid id: nothing local to read
        return None


def model_files(name_or_path: str | os.PathLike[str] | None) -> tuple[str, Path | None]:
    """``(kind, path)``: ``"embedded"`` / ``"gguf"`` (a file), ``"dir"`` / ``"hub"`` (a
    directory, ``None`` for a hub id not cached locally)."""
    if name_or_path is None:
        return "embedded", embedded_gguf_path()
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        return "dir", path
    return "hub", _hub_dir(os.fspath(name_or_path))


def model_identity(name_or_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``{"model": name, "source": kind, "files": {name: sha256} | None}`` (see the module doc);
    ``files`` is ``None`` when there is nothing local to hash (a hub id not downloaded yet, a
    missing path: loading it will say why).

    Raises:
        ModelLoadError: a model file cannot be read (names it).
    """
    try:
        return _identity(name_or_path)
    except OSError as err:
        raise ModelLoadError(
            f"cannot read the model file {err.filename} ({err.strerror})"
        ) from None


def _identity(name_or_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The identity record; a file that cannot be read raises its OSError."""
    kind, path = model_files(name_or_path)
    name = "embedded" if name_or_path is None else os.fspath(name_or_path)
    if path is None or not path.exists():
        files = None  # nothing local to hash (loading it will say why, if it cannot load)
    elif path.is_file() or kind in ("embedded", "gguf"):
        files = {path.name: file_digest(path)}
    else:
        files = {
            str(f.relative_to(path)): file_digest(f)
            for f in sorted(path.rglob("*"))
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
        }
    return {"model": name, "source": kind, "files": files}


def _dims_from_config(config: dict[str, Any]) -> tuple[int, int, int] | None:
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    if not isinstance(layers, int) or not isinstance(heads, int):
        return None
    kv = config.get("num_key_value_heads") or heads
    return layers, heads, int(kv)


def _dims_from_gguf(path: Path) -> tuple[int, int, int] | None:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else field.parts[field.data[0]].tolist()[0]

    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    layers, heads = value(f"{arch}.block_count"), value(f"{arch}.attention.head_count")
    kv = value(f"{arch}.attention.head_count_kv") or heads
    return (int(layers), int(heads), int(kv)) if layers and heads else None


def model_dims(name_or_path: str | os.PathLike[str] | None) -> tuple[int, int, int] | None:
    """``(n_layers, n_heads, n_kv_heads)`` without loading weights; ``None`` when unknown here
    (a hub id not cached locally, an unreadable config)."""
    kind, path = model_files(name_or_path)
    try:
        if path is not None and path.is_file():
            return _dims_from_gguf(path)
        if path is not None:
            return _dims_from_config(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return None
