"""Golden outputs: every job at small settings on a tiny model writes exactly the files recorded
in ``tests/golden/`` (timings aside).

The manifests were recorded before the jobs moved from ``sycointerp.cli`` into the workflow layer
(``sycointerp.workflows``); the refactor had to leave every output byte-identical, and this test
keeps it so. A deliberate change of an output is re-recorded with
``SYCOINTERP_RECORD_GOLDEN=1 pytest tests/unit/test_golden.py`` and said in the commit.

What is normalised before hashing, and why: the temporary directory's path (it differs per run);
wall-clock values (JSON keys in :data:`VOLATILE_KEYS`; the seconds columns of ``results.md`` and
the pages built from it; ``study.md``'s time section); PNG files are not written (``--no-png``:
Chromium's rasteriser is not part of the contract). Everything else, tensors included, is hashed
byte for byte, on one thread (float reductions round differently on other thread counts; another
CPU family may too, in which case re-record the goldens at the commit the change is checked on).
"""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch

from sycointerp.cli.main import main
from sycointerp.testing import save_tiny_model

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
RECORD = os.environ.get("SYCOINTERP_RECORD_GOLDEN") == "1"
# Wall-clock values and the environment's package versions: the only things allowed to differ.
VOLATILE_KEYS = {
    "timings",
    "seconds",
    "step_seconds",
    "eval_seconds",
    "load_seconds",
    "versions",
}
PASSAGES = "\n\n".join(
    " ".join(f"Passage {p} sentence {s} says that the river runs past the mill." for s in range(30))
    for p in range(4)
)


def _drop_volatile(value):
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_drop_volatile(v) for v in value]
    return value


# Seconds in markdown / HTML tables and text: "| 12 | 0.53 |" after trainable params, "12.3 s".
_TIMING_TEXT = [
    (re.compile(r"(\| [\d,]+ \| )\d+ \| [\d.]+ (\|)"), r"\1<s> | <s/step> \2"),
    (re.compile(r"(<td>[\d,]+</td><td>)\d+(</td><td>)[\d.]+(</td>)"), r"\1<s>\2<s/step>\3"),
    (re.compile(r"\d+(\.\d+)? ?(s|min)\b"), "<time>"),
]


def _normalise(path: Path, data: bytes, root: bytes) -> bytes:
    data = data.replace(root, b"<TMP>").replace(root.replace(b"/", b"\\u002f"), b"<TMP>")
    if path.suffix == ".json":
        value = _drop_volatile(json.loads(data))
        if path.name == "inputs.json":  # a file written in the test holds its path: normalised
            value["files"] = {k: _input_hash(k, root) for k in value["files"]}
        return json.dumps(value, sort_keys=True).encode()
    if path.suffix in (".md", ".html", ".toml"):
        text = data.decode()
        for pattern, repl in _TIMING_TEXT:
            text = pattern.sub(repl, text)
        return text.encode()
    return data


def _input_hash(name: str, root: bytes) -> str:
    real = Path(name.replace("<TMP>", root.decode()))
    return hashlib.sha256(_normalise(real, real.read_bytes(), root)).hexdigest()


def manifest(out: Path, root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of the normalised content, for every file under ``out``."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "timings.json")
    key = str(root).encode()
    return {
        str(p.relative_to(out)): hashlib.sha256(_normalise(p, p.read_bytes(), key)).hexdigest()
        for p in files
    }


def check_golden(name: str, out: Path, root: Path) -> None:
    """``out``'s manifest equals ``tests/golden/<name>.json`` (or records it)."""
    found = manifest(out, root)
    path = GOLDEN / f"{name}.json"
    if RECORD:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        return
    expected = json.loads(path.read_text())
    assert sorted(found) == sorted(expected), f"{name}: other files than recorded"
    changed = [f for f in expected if found[f] != expected[f]]
    assert not changed, f"{name}: these outputs changed: {changed}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bytes of float reductions depend on the thread count: the goldens are recorded and checked
    on one thread (the study's, run as a subprocess, gets ``OMP_NUM_THREADS=1``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")


@pytest.fixture(scope="module")
def model_dir(root):
    return str(save_tiny_model(root / "llama", "llama"))


PATCH_RUNS = {
    "patch_path": ["--method", "path"],
    "patch_activation": ["--method", "activation", "--component", "v"],
    "patch_activation_all": ["--method", "activation", "--positions", "all"],
    "patch_attribution": ["--method", "attribution", "--ig-steps", "2", "--positions", "all"],
    "patch_knockout": ["--method", "knockout", "--ks", "0,1,2", "--n-random", "2"],
    "patch_flip_model": ["--method", "path", "--metric", "flip", "--first-answer", "model"],
}


@pytest.mark.parametrize("name", list(PATCH_RUNS))
def test_patch_outputs_are_golden(name, root, model_dir):
    out = root / name
    argv = ["patch", "--model", model_dir, "--limit", "6", "--chunk-size", "4", "--no-png"]
    assert main([*argv, "-q", "--out", str(out), *PATCH_RUNS[name]]) == 0
    check_golden(name, out, root)
    if name == "patch_path":  # the report job rebuilds the same page
        (out / "report.html").unlink()
        assert main(["report", str(out)]) == 0
        check_golden(name, out, root)


def test_spt_outputs_are_golden(root, model_dir):
    text = root / "passages.txt"
    text.write_text(PASSAGES)
    out = root / "spt"
    methods = "base,spt,sft,lora,lora_heads,random,random_layer,random_norm,caa,iti"
    argv = [
        "spt", "--model", model_dir, "--limit", "16", "--steps", "2", "--warmup-steps", "1",
        "--eval-limit", "3", "--max-new-tokens", "3", "--answer-tokens", "3", "--top-k", "2",
        "--lr", "0.01", "--methods", methods, "--kl-text", str(text), "--kl-passages", "2",
        "--caa-alphas=-0.5,-2", "--iti-alphas=-1,-5", "-q", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    check_golden("spt", out, root)


def test_spt_with_a_heads_file_and_draws_is_golden(root, model_dir):
    ranking = root / "ranked"
    patch = ["patch", "--model", model_dir, "--limit", "6", "--no-png", "-q"]
    assert main([*patch, "--out", str(ranking)]) == 0
    out = root / "spt_draws"
    argv = [
        "spt", "--model", model_dir, "--limit", "16", "--steps", "2", "--warmup-steps", "1",
        "--eval-limit", "3", "--max-new-tokens", "3", "--answer-tokens", "3", "--top-k", "2",
        "--heads-file", str(ranking / "heads.csv"), "--methods", "base,spt,random_layer",
        "--draws", "2", "-q", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    check_golden("spt_draws", out, root)


def test_effect_outputs_are_golden(root, model_dir):
    out = root / "effect"
    argv = ["effect", "--model", model_dir, "--limit", "4", "-q", "--out", str(out)]
    assert main(argv) == 0
    check_golden("effect", out, root)
