"""An exclusive OS lock on ``--out``: a second job is refused naming the holder; a crash frees it.

Real processes: the holder is a separate Python process holding :func:`output_lock`; the
contender is the real CLI. Killing the holder with SIGKILL must release the lock (the OS does).
"""

import os
import signal
import subprocess
import sys

import pytest

from sycointerp.workflows.output import OutputError, output_lock

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from sycointerp.workflows.output import output_lock\n"
    "with output_lock(Path(sys.argv[1])):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("module", ["sycointerp.patch", "sycointerp spt"])
def test_a_second_job_on_a_locked_out_exits_2_naming_the_holder(holder, module):
    out, proc = holder
    done = subprocess.run(
        [sys.executable, "-m", *module.split(), "--out", str(out), "--limit", "4", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert f"in use by another sycointerp job (PID {proc.pid})" in done.stderr
    assert list(out.iterdir()) == []  # refused before writing anything


def test_the_lock_is_released_when_the_holder_is_killed(holder):
    out, proc = holder
    with pytest.raises(OutputError, match=f"PID {proc.pid}"):
        with output_lock(out):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with output_lock(out):  # free again, and no lock file was left behind
        assert list(out.iterdir()) == []


def test_the_lock_is_reentrant_across_sequential_jobs(tmp_path):
    for _ in range(2):
        with output_lock(tmp_path / "o"):
            pass
