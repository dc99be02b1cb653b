"""Shared fixtures: tiny random models (unit tier) and the embedded model (integration tier).

The embedded model's converted weights are cached once per machine by sycointerp itself (the
user cache directory); the fixture loads the model once per test session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sycointerp.models import load_model
from sycointerp.testing import tiny_model

_CANDIDATES = [
    os.environ.get("SYCOINTERP_SHARED_DATA"),
    Path(__file__).resolve().parents[2] / "shared" / "data",  # ../shared/data next to the clone
    Path.cwd().parent / "shared" / "data",
    Path("/work/shared/data"),  # this project's machines keep the shared data here
]
SHARED_DATA = next((Path(c) for c in _CANDIDATES if c and Path(c).is_dir()), Path("../shared/data"))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data; skip (with the reason) on a user's clone that has none."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} not present (set SYCOINTERP_SHARED_DATA to the shared data folder)")
    return path


def grid_meta(values, components) -> dict:
    """The ``meta`` a patching method records about its model, for a hand-made PatchResult:
    a head grid shaped like ``values`` (none for cells that are not heads)."""
    if tuple(components[:2]) not in (("layer", "head"), ("layer", "kv_head")):
        return {}
    n_layers, n = values.shape[:2]
    n_heads = 2 * n if components[1] == "kv_head" else n
    return {"model": "test", "grid": {"n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n}}


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny_model("gpt2", seed=0)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny(request):
    """Both attention kinds: GQA (Llama-style) and MHA (GPT-2-style)."""
    return tiny_model(request.param, seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_llama):
    return tiny_llama.tokenizer


@pytest.fixture(scope="session")
def smol():
    torch.manual_seed(0)
    return load_model()
