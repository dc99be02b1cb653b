"""One persistence for results: atomic, durable writes; bundles refuse corrupt or missing files."""

import os

import pytest
import torch

from sycointerp._config import ConfigError
from sycointerp._io import BundleError, MissingBundleError, atomic_write
from sycointerp.evaluate import EffectResult, SycophancyEval
from sycointerp.patching import KnockoutCurve, PatchResult
from sycointerp.workflows.spt_config import SPTConfig


def _patch_result() -> PatchResult:
    grid = {"n_layers": 1, "n_heads": 2, "n_kv_heads": 2}
    return PatchResult(
        torch.tensor([[[0.5, 1.0], [-1.0, 0.0]]]),
        torch.ones(2),
        torch.ones(2),
        "t",
        "m",
        True,
        meta={"model": "m", "grid": grid},
    )


def _record_fsyncs(monkeypatch) -> list[str]:
    """The paths os.fsync is called on from now on (the real fsync still runs)."""
    synced, real = [], os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return synced


def test_atomic_write_fsyncs_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    target = tmp_path / "out.txt"
    atomic_write(target, lambda p: open(p, "w").write("done"))
    assert target.read_text() == "done" and len(synced) == 2
    assert synced[0].startswith(str(tmp_path / ".out.txt.")) and synced[1] == str(tmp_path)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(path):
        open(path, "w").write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("corrupt", ["result.json", "values.safetensors"])
def test_a_corrupt_bundle_file_is_refused_naming_it(tmp_path, corrupt):
    _patch_result().save(tmp_path)
    (tmp_path / corrupt).write_bytes(b"\x00garbage{")
    with pytest.raises(BundleError, match=str(tmp_path / corrupt)):
        PatchResult.load(tmp_path)


def test_a_bundle_missing_a_field_or_a_file_is_refused(tmp_path):
    _patch_result().save(tmp_path)
    (tmp_path / "result.json").write_text('{"method": "t"}')
    with pytest.raises(BundleError, match="is not a saved PatchResult"):
        PatchResult.load(tmp_path)
    for cls in (PatchResult, KnockoutCurve, EffectResult):
        with pytest.raises(MissingBundleError, match=f"saved {cls.__name__}"):
            cls.load(tmp_path / "none")
    with pytest.raises(FileNotFoundError):  # MissingBundleError is one
        SycophancyEval.load(tmp_path / "none")


def test_effect_result_round_trips_with_its_extras(tmp_path):
    metrics = {"flip_ref": torch.tensor([1.0, -1.0]), "flip_cf": torch.tensor([2.0, 1.0])}
    result = EffectResult("m", "dont_think", ("a", "b"), metrics)
    result.save(tmp_path, {"first_turn_accuracy": 0.5})
    back = EffectResult.load(tmp_path)
    assert back.meta == {"first_turn_accuracy": 0.5} and back.question_ids == ("a", "b")
    assert (
        torch.equal(back.metrics["flip_ref"], metrics["flip_ref"]) and int(back.flipped.sum()) == 1
    )


@pytest.mark.parametrize("field", ["lr", "weight_decay", "lora_lr"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"{field} .* must be a finite number"):
        SPTConfig(**{field: value})


def test_fsync_tree_flushes_every_file_and_directory(tmp_path, monkeypatch):
    from sycointerp._io import fsync_tree

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"1")
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"2")
    synced = _record_fsyncs(monkeypatch)
    fsync_tree(tmp_path / "a")
    a = str(tmp_path / "a")
    assert sorted(synced) == sorted([f"{a}/x.bin", f"{a}/b/y.bin", f"{a}/b", a])


def test_a_resume_is_not_refused_for_how_a_path_is_spelled(tmp_path, monkeypatch):
    from sycointerp._config import config_diff

    (tmp_path / "runs").mkdir()
    heads = tmp_path / "runs" / "heads.csv"
    heads.write_text("layer,head\n0,0\n")
    monkeypatch.chdir(tmp_path)
    absolute = SPTConfig(heads_file=str(heads))
    assert config_diff(absolute, SPTConfig(heads_file="runs/heads.csv")) == []
    assert config_diff(absolute, SPTConfig(heads_file="./runs/../runs/heads.csv")) == []
    # another file, or a path that does not exist, is still another configuration
    (tmp_path / "runs" / "other.csv").write_text("layer,head\n0,1\n")
    assert config_diff(absolute, SPTConfig(heads_file="runs/other.csv")) == ["heads_file"]
    assert config_diff(SPTConfig(heads_file="a.csv"), SPTConfig(heads_file="b.csv")) == [
        "heads_file"
    ]
