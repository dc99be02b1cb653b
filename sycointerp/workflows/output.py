"""The output directory of a batch job: create, resume, refuse, or overwrite it.

A job's directory holds its resolved ``config.toml`` and the files it writes (``names``); the
file it writes last (``done``) marks it complete. :func:`prepare_output` decides, before any heavy
work, whether ``--out`` starts a new job, resumes the same one, is already complete, or must be
refused (another job's configuration, a non-empty directory that holds no job, an unwritable
path). ``--overwrite`` deletes only the job's own names, and never whole folders of a directory
that holds no job.

While a job runs, :func:`output_lock` holds an exclusive OS lock (``flock``) on the directory
itself: a second job on the same ``--out`` is refused naming the holder's PID, and the OS drops
the lock when the holder exits, crashed or not (no stale lock file to delete). Under ``torchrun``
the main process holds it for every rank of its job.
"""

import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sycointerp._config import ConfigError, TomlConfig, config_diff, load_toml
from sycointerp._config import dump_toml as _dump
from sycointerp._io import atomic_write, writable_directory_problem, write_json
from sycointerp.errors import UserError

__all__ = [
    "INPUTS",
    "JOB_KINDS",
    "OutputError",
    "describe_job",
    "check_inputs",
    "check_writable",
    "output_lock",
    "prepare_output",
    "save_figure_files",
]


class OutputError(UserError):
    """The output directory cannot take this job; the message names the cause and the fix."""


# --------------------------------------------------------------------------- output directory


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and check a file can be written there (before any long run).

    Raises:
        OutputError: not a directory, or not writable.
    """
    if out.is_file():
        raise OutputError(f"--out {out} is a file, not a directory; give a directory path")
    problem = writable_directory_problem(out)
    if problem and (out / "config.toml").is_file():  # a job is there: its finished work counts
        raise OutputError(
            f"--out {out} is not a writable directory ({problem}); make it writable and rerun the "
            "same command to resume (its finished work is kept), or copy it elsewhere and pass "
            "that --out"
        )
    if problem:
        raise OutputError(
            f"--out {out} is not a writable directory ({problem}); choose another path"
        )


def _clear(out: Path, names: Sequence[str]) -> None:
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _started(out: Path, names: Sequence[str]) -> bool:
    """Whether a job in ``out`` has written anything besides its ``config.toml``."""
    for name in names:
        target = out / name
        if name not in ("config.toml", INPUTS) and (
            target.is_file() or (target.is_dir() and any(target.iterdir()))
        ):
            return True
    return False


def _saved_job(out: Path, config: TomlConfig) -> TomlConfig | None:
    """The configuration in ``out/config.toml`` (``None`` when there is none).

    Raises:
        ConfigError: the file is not a configuration of ``config``'s kind of job (a foreign file).
    """
    saved = out / "config.toml"
    return type(config).from_toml_dict(load_toml(saved)) if saved.is_file() else None


def _check_no_foreign_folders(out: Path, names: Sequence[str]) -> None:
    """``overwrite`` removes whole folders only in a job's own directory (one with its
    ``config.toml``).

    Raises:
        OutputError: a non-empty folder named like one of the job's in a directory holding no job.
    """
    foreign = [n for n in names if (out / n).is_dir() and any((out / n).iterdir())]
    if foreign:
        raise OutputError(
            f"--out {out} holds no sycointerp job but a non-empty {foreign[0]}/ folder, which "
            "--overwrite would delete; choose a new or empty directory"
        )


def prepare_output(
    out: Path,
    config: TomlConfig,
    overwrite: bool,
    *,
    names: Sequence[str],
    done: str,
    header: str,
) -> str:
    """Make ``out`` ready for ``config``: ``"new"``, ``"resume"`` or ``"complete"`` (nothing to do).

    ``names`` are the files this kind of job writes (the only ones ``overwrite`` deletes) and
    ``done`` the one written last.

    A ``config.toml`` with nothing else written (an attempt refused before any work, say for a
    missing data file) does not hold the directory: the next attempt starts anew.

    Raises:
        OutputError: unwritable; another job's configuration (without ``overwrite``); a non-empty
            directory that holds no job (without ``overwrite``), or with ``overwrite`` one that
            holds a non-empty folder of the job's names.
    """
    check_writable(out)
    saved = out / "config.toml"
    other = describe_job(out)
    this = header.split(":")[0].removeprefix("sycointerp ")
    if other is not None and other.split(" ", 2)[2] != this:
        if _started(out, [p.name for p in out.iterdir()]):
            # Another kind of job: its files must never mix with this one's, --overwrite or not.
            raise OutputError(
                f"--out {out} holds {other}, not {_ARTICLE[this]} {this}; choose another --out "
                f"(--overwrite replaces only {_ARTICLE[this]} {this})"
            )
        # An attempt of another kind refused before any work: nothing of it to keep.
        saved.unlink()
        (out / INPUTS).unlink(missing_ok=True)
    try:
        old, foreign = _saved_job(out, config), None
    except ConfigError as err:
        old, foreign = None, err
    if overwrite:
        if old is None:
            _check_no_foreign_folders(out, names)
        _clear(out, names)
    elif old is not None and not _started(out, names):  # an earlier attempt failed before any work
        saved.unlink()
    elif foreign is not None:
        raise OutputError(
            f"{saved} is not a valid job config ({foreign}); choose another --out, or pass "
            "--overwrite to replace it"
        )
    elif old is not None:
        diff = config_diff(old, config)
        if diff:
            changes = "; ".join(f"{k}: {getattr(old, k)!r} -> {getattr(config, k)!r}" for k in diff)
            raise OutputError(
                f"--out {out} holds a job with another configuration ({changes}); rerun with the "
                "same options to resume it, choose another --out, or pass --overwrite"
            )
        return "complete" if (out / done).is_file() else "resume"
    elif any(out.iterdir()):
        raise OutputError(
            f"--out {out} is not empty and holds no sycointerp job (no config.toml); choose a new "
            "or empty directory, or pass --overwrite"
        )
    atomic_write(saved, lambda p: Path(p).write_text(_dump(config, header)))
    return "new"


# Each kind of job: the first words of its config.toml's header, and the file it writes last.
JOB_KINDS = {
    "patch job": ("# sycointerp patch job:", "summary.json"),
    "SPT run": ("# sycointerp SPT run:", "report.json"),
    "trust study": ("# sycointerp trust study:", "study.json"),
}


_ARTICLE = {"patch job": "a", "SPT run": "an", "trust study": "a"}


def describe_job(out: Path) -> str | None:
    """``"a finished patch job"``, ``"an unfinished SPT run"``, ...: which kind of sycointerp job
    ``out`` holds, read from its ``config.toml`` header; ``None`` when it holds none."""
    try:
        with open(out / "config.toml", encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return None
    for kind, (header, done) in JOB_KINDS.items():
        if first.startswith(header):
            state = "finished" if (out / done).is_file() else "unfinished"
            return f"{'a' if state == 'finished' else 'an'} {state} {kind}"  # no other articles
    return None


def _lock_holder(directory: Path) -> str:
    """The PID holding a flock on ``directory`` (from ``/proc/locks``), or ``"unknown"``."""
    inode = os.stat(directory).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 fd:01:67890 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return fields[4]
    return "unknown"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``out`` (created if needed) for the block.

    Raises:
        OutputError: another process holds it (the message names its PID), or ``out`` cannot be
            created.
    """
    check_writable(out)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"--out {out} is in use by another sycointerp job (PID {_lock_holder(out)}); "
                "wait for it to finish or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


INPUTS = "inputs.json"


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested JSON records.

    A ``None`` on either side is not a change: it marks what could not be hashed (at the first
    run, a hub model downloaded by that run; now, a hub cache cleared since).
    """
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if (a is None and key in old) or (b is None and key in new):
            continue  # not hashable then (a hub model downloaded later) or now (cache cleared)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            short = lambda v: (v[:12] + "...") if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
            out.append(f"{prefix}{key}: {short(a)!r} -> {short(b)!r}")
    return out


def _resolved(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with local file paths resolved, so that ``./m`` and ``/abs/m`` compare equal
    (``config_diff`` treats them as the same path too)."""

    def resolve(name: Any) -> Any:
        return str(Path(name).resolve()) if isinstance(name, str) and Path(name).exists() else name

    out = dict(record)
    if isinstance(out.get("files"), dict):
        out["files"] = {resolve(k): v for k, v in out["files"].items()}
    if isinstance(out.get("model"), dict):
        out["model"] = {**out["model"], "model": resolve(out["model"].get("model"))}
    return out


def check_inputs(out: Path, record: dict[str, Any], status: str) -> None:
    """Record (new job) or compare (resumed or finished job) what the job computes from, e.g. the
    model's and the data files' hashes.

    ``out/inputs.json`` holds ``record`` from the job's first run; a resumed job whose inputs
    differ (the model at the same path changed, say) would mix two models in one result, and a
    finished one's outputs would no longer be what the same command computes: both are refused,
    naming what changed.

    Raises:
        OutputError: a resumed or finished job whose inputs changed (naming what), or one without
            a readable record.
    """
    path = out / INPUTS
    if status == "new":
        write_json(path, record)
        return
    if status == "complete":
        _check_finished(out, path, record)
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        raise OutputError(
            f"--out {out} holds an unfinished job without a readable {INPUTS} (started by an older "
            "sycointerp?), so resuming it could mix inputs; pass --overwrite to start it again"
        ) from None
    changes = _summary(saved, record) if isinstance(saved, dict) else "inputs.json: not a record"
    if changes:
        raise OutputError(
            f"--out {out} holds an unfinished job computed from other inputs ({changes}); "
            "resuming would mix them: restore them, or pass --overwrite to start again"
        )


def _summary(saved: dict[str, Any], record: dict[str, Any]) -> str:
    """The first changes between two input records, paths resolved; ``""`` when none."""
    changes = _changes(_resolved(saved), _resolved(record))
    return "; ".join(changes[:3]) + ("; ..." if len(changes) > 3 else "")


def _check_finished(out: Path, path: Path, record: dict[str, Any]) -> None:
    """A finished job's recorded inputs against today's (a job of an older sycointerp without a
    record is left alone: nothing says what it was computed from).

    Raises:
        OutputError: the inputs changed since the job finished, or the record is unreadable.
    """
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise OutputError(
            f"{path} is unreadable ({type(err).__name__}), so the finished job's inputs cannot "
            "be checked; pass --overwrite to compute it again"
        ) from None
    changes = _summary(saved, record)
    if changes:
        raise OutputError(
            f"--out {out} holds a finished job computed from other inputs ({changes}); its "
            "outputs are stale: restore the inputs, or pass --overwrite to compute it again"
        )


# --------------------------------------------------------------------------- figures


def save_figure_files(fig, path: Path, width: int = 900, height: int = 700) -> None:
    """A job's figure as ``path``.html and, where a Chromium exports it, ``path``.png: a missing
    browser costs the PNG, never the job's results."""
    from sycointerp.plot import save_figure

    try:
        save_figure(fig, path, width=width, height=height)
    except RuntimeError:  # no Chromium for the PNG: the HTML alone
        save_figure(fig, path, png=False)
