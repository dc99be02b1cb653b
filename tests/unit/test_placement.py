"""Device maps as written, device groups for torchrun ranks (hand-computed cases), the patch job's
placement checks, and a real two-rank torchrun job whose ranks each place their copy with a
disk-offload map: its outputs are byte-identical to one unplaced process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sycointerp._config import ConfigError
from sycointerp.placement import (
    check_device_map,
    group_device_map,
    offloads_to_disk,
    parse_device_map,
    rank_device_group,
    uses_gpus,
)
from sycointerp.testing import save_tiny_model
from sycointerp.workflows.patch import _check_placement, _rank_placement
from sycointerp.workflows.patch_config import PatchConfig
from sycointerp.workflows.shards import Group

REPO = Path(__file__).resolve().parents[2]


def test_device_maps_parse_from_a_strategy_or_a_json_object():
    assert parse_device_map("") is None and parse_device_map("  ") is None
    assert parse_device_map("balanced") == "balanced"
    text = '{"model.layers.0": 0, "model.layers.1": "cuda:1", "lm_head": "disk", "x": "cpu"}'
    assert parse_device_map(text) == {
        "model.layers.0": 0,
        "model.layers.1": "cuda:1",
        "lm_head": "disk",
        "x": "cpu",
    }
    for bad, message in [
        ("everywhere", "is not a strategy"),
        ("{", "not valid JSON"),
        ("{}", "non-empty object"),
        ('{"a": "gpu"}', "is not a place"),
        ('{"a": -1}', "is not a place"),
        ('{"a": true}', "is not a place"),
        ('{"a": "cuda:x"}', "is not a place"),
        ('{"a": "cpu:0"}', "is not a place"),
        ('{"a": 1.5}', "is not a place"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_device_map(bad)
    with pytest.raises(ValueError, match="module names"):
        check_device_map({0: "cpu"})


def test_what_a_map_offloads_and_whether_it_uses_gpus():
    assert offloads_to_disk({"a": "disk", "b": 0}) and not offloads_to_disk({"a": "cpu"})
    assert not offloads_to_disk("auto") and not offloads_to_disk(None)
    assert uses_gpus("auto") and uses_gpus({"a": "cpu", "b": 1}) and uses_gpus({"a": "cuda"})
    assert not uses_gpus({"a": "cpu", "b": "disk", "c": "mps"}) and not uses_gpus(None)


def test_rank_device_groups_are_consecutive_runs_of_local_gpus():
    # 8 GPUs, 4 ranks of 2: rank r takes 2r and 2r+1.
    assert [rank_device_group(r, 4, 2, 8) for r in range(4)] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert rank_device_group(1, 2, 3, 6) == (3, 4, 5)
    assert rank_device_group(0, 1, 1, 1) == (0,)
    assert rank_device_group(1, 2, 2, 8) == (2, 3)  # fewer ranks than groups: some GPUs idle
    with pytest.raises(ValueError, match="do not divide the 8 visible GPUs"):
        rank_device_group(0, 2, 3, 8)
    with pytest.raises(ValueError, match="need 8 GPUs, but 4 are visible"):
        rank_device_group(0, 4, 2, 4)
    with pytest.raises(ValueError, match="outside the 2 local ranks"):
        rank_device_group(2, 2, 1, 4)
    with pytest.raises(ValueError, match="at least 1"):
        rank_device_group(0, 1, 0, 4)


def test_a_rank_s_map_counts_gpus_within_its_group():
    group = (4, 5)
    placed, memory = group_device_map(
        {"model.layers.0": 0, "model.layers.1": "cuda:1", "lm_head": "disk", "n": "cpu"},
        group,
        {},
    )
    assert placed == {"model.layers.0": 4, "model.layers.1": 5, "lm_head": "disk", "n": "cpu"}
    assert memory is None
    # A strategy (or none) is confined to the group by max_memory, only the group's devices named.
    assert group_device_map("sequential", group, {3: 1, 4: 10, 5: 20}) == (
        "sequential",
        {4: 10, 5: 20},
    )
    assert group_device_map(None, group, {4: 10, 5: 20}) == ("balanced", {4: 10, 5: 20})
    with pytest.raises(ValueError, match="names GPU 2 but each rank's group has 2"):
        group_device_map({"a": 2}, group, {})
    with pytest.raises(ValueError, match="no memory figure for GPUs \\[5\\]"):
        group_device_map("auto", group, {4: 10})


def _config(**kw) -> PatchConfig:
    return PatchConfig(limit=4, png=False, **kw)


def test_the_patch_job_refuses_placements_that_ranks_would_share():
    two = Group(rank=1, world=2, local_rank=1, local_world=2)
    for kw in ({"device_map": "auto"}, {"device_map": '{"model": 0}'}):
        with pytest.raises(ConfigError, match="same GPUs: give --devices-per-rank"):
            _check_placement(_config(**kw), two)
        _check_placement(_config(**kw), Group())  # one process: its own placement
    # CPU and disk placements hold no GPU: every rank may place its own copy so.
    disk = _config(device_map='{"model": "disk"}', offload_folder="/tmp/off")
    _check_placement(disk, two)
    assert _rank_placement(disk, two)["offload_folder"] == Path("/tmp/off/rank-1")
    assert _rank_placement(disk, Group())["offload_folder"] == Path("/tmp/off")
    assert _rank_placement(_config(), Group()) == {"device_map": None}
    with pytest.raises(ConfigError, match="give one"):
        _config(device_map="auto", n_devices=2)


def _disk_map(layers: int) -> str:
    placed = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu"}
    placed |= {f"model.layers.{i}": ("disk" if i % 2 else "cpu") for i in range(layers)}
    return json.dumps(placed | {"lm_head": "disk"})


def test_torchrun_ranks_each_place_their_copy_with_a_disk_map_and_match_one_process(tmp_path):
    """Two ranks, each with its own offload folder, path patching on the engine: every output
    byte-identical to one process of the unplaced model (the wall-clock timings aside)."""
    model = str(save_tiny_model(tmp_path / "model", "llama", n_layers=2))
    common = ["--model", model, "--limit", "6", "--chunk-size", "2", "--no-png", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    placed = [
        *run,
        "-m",
        "sycointerp.patch",
        *common,
        "--device-map",
        _disk_map(2),
        "--offload-folder",
        str(tmp_path / "offload"),
        "--out",
        str(tmp_path / "two"),
    ]
    done = subprocess.run(placed, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "offload").iterdir()) == ["rank-0", "rank-1"]
    one = [sys.executable, "-m", "sycointerp.patch", *common, "--out", str(tmp_path / "one")]
    done = subprocess.run(one, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("heads.csv", "values.safetensors", "result.json", "examples.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), (
            name
        )
