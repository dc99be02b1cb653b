"""Faults mid-run leave a resumable job; a resume on changed inputs is refused.

Real subprocesses of the patch CLI on a tiny saved model. A full disk (ENOSPC) and a directory
turned read-only (EROFS) or unwritable (EACCES, EPERM) are injected at the N-th chunk write through
``SYCOINTERP_FAULT_AT_CHUNK`` (root ignores permission bits, and a full disk cannot be arranged
portably, so the error is raised where the write would have failed); the rerun must give outputs
byte-identical to an uninterrupted run's. The model-change case replaces the model's weights at
the same path between the crash and the rerun.
"""

import signal

import pytest

from sycointerp.testing import save_tiny_model
from sycointerp.workflows.shards import CRASH_ENV, FAULT_ENV
from tests.unit.test_patch_cli import _args, _assert_same_outputs, _cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama"))


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    assert _cli(_args(model_dir, out, "--no-png")).returncode == 0
    return out


@pytest.mark.parametrize("fault", ["ENOSPC", "EROFS", "EACCES", "EPERM"])
def test_a_write_fault_exits_1_in_one_line_and_the_rerun_resumes_identically(
    model_dir, reference, tmp_path, fault
):
    out = tmp_path / "out"
    argv = _args(model_dir, out, "--no-png")
    failed = _cli(argv, env={FAULT_ENV: f"2:{fault}"})
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr[-2000:]
    assert "rerun the same command to resume" in failed.stderr and "chunks" in failed.stderr
    assert len(list((out / "chunks").glob("*.safetensors"))) == 1  # the chunk before the fault
    assert _cli(argv).returncode == 0
    _assert_same_outputs(out, reference)


def test_a_resume_after_the_model_changed_is_refused(model_dir, tmp_path):
    model = tmp_path / "model"
    save_tiny_model(model, "llama", seed=0)
    out = tmp_path / "out"
    argv = _args(str(model), out, "--no-png")
    assert _cli(argv, env={CRASH_ENV: "1"}).returncode == -signal.SIGKILL
    save_tiny_model(model, "llama", seed=1)  # other weights at the same path
    refused = _cli(argv)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
    assert "computed from other inputs" in refused.stderr
    assert "model.files.model.safetensors" in refused.stderr and "--overwrite" in refused.stderr
    assert _cli([*argv, "--overwrite"]).returncode == 0


def test_a_job_without_an_inputs_record_is_not_resumed_silently(model_dir, tmp_path):
    out = tmp_path / "out"
    argv = _args(model_dir, out, "--no-png")
    assert _cli(argv, env={CRASH_ENV: "1"}).returncode == -signal.SIGKILL
    (out / "inputs.json").unlink()  # as a job started by an older sycointerp
    refused = _cli(argv)
    assert refused.returncode == 2 and "without a readable inputs.json" in refused.stderr


def test_a_refused_attempt_leaves_out_untouched_and_the_corrected_command_runs(model_dir, tmp_path):
    out = tmp_path / "out"
    data = tmp_path / "questions.jsonl"
    argv = [*_args(model_dir, out, "--no-png", "--dataset", "jsonl", "--data-path", str(data))]
    refused = _cli(argv)  # the file does not exist yet
    assert refused.returncode == 2 and "does not exist" in refused.stderr
    assert not out.exists() or list(out.iterdir()) == []
    data.write_text('{"question": "What is 2 + 2?", "answer": "4", "wrong": "5"}\n')
    assert _cli(argv).returncode == 0, "the corrected command must simply run"
