"""Bad inputs of the surfaces built after the first bad-input round: ``report``, ``study``,
``spt`` (steering options, head files, overwrite), finished jobs rerun with changed inputs, jobs
of another kind in ``--out``, malformed files read back, weights cut short, shutdown.

Every refusal case is one line of :data:`CASES` (or :data:`DAMAGED`): the command, the text the
one-line message must contain, and which prepared directory it runs against. :func:`refused`
asserts exit status 2, exactly one line on stderr, no traceback, the named cause, and that no
file under the directories involved changed (bytes and modification times).
"""

import hashlib
import json
import shutil
import signal
from pathlib import Path

import pytest

from sycointerp.cli.app import guarded
from sycointerp.cli.main import main
from sycointerp.testing import save_tiny_model
from sycointerp.workflows.output import describe_job

SPT = [
    "--limit", "16", "--steps", "2", "--warmup-steps", "1", "--eval-limit", "2",
    "--max-new-tokens", "3", "--answer-tokens", "3", "--top-k", "2", "-q",
]  # fmt: skip
PATCH = ["--limit", "4", "--no-png", "-q"]
STUDY = [
    "--limit",
    "24",
    "--eval-fraction",
    "0.5",
    "--top-k",
    "2",
    "--agreement-k",
    "2",
    "--ks",
    "1,2",
    "-q",
]
PASSAGES = "\n\n".join(
    " ".join(f"Passage {p}, sentence {s}: the river runs past the old mill." for s in range(30))
    for p in range(3)
)


def _snapshot(paths: list[Path]) -> dict[str, tuple[bytes, int]]:
    out = {}
    for root in paths:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root] if root.exists() else []:
            if p.is_file():
                out[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def refused(argv: list[str], expected: str, capsys, watch: list[Path] = ()) -> str:
    """Run ``sycointerp <argv>`` in-process: exit 2, one line naming ``expected``, no traceback,
    nothing under ``watch`` changed. Returns the line."""
    before = _snapshot(list(watch))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse usage errors exit from inside
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, (code, err[-2000:])
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert _snapshot(list(watch)) == before, "a refused command changed files"
    return err


# --------------------------------------------------------------------------- prepared directories


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, finished patch / SPT / knockout jobs, and input files, made once."""
    root = tmp_path_factory.mktemp("world")
    model = save_tiny_model(root / "model", "llama")
    data = root / "questions.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "wrong": "1"} for i in (2, 3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    kl = root / "passages.txt"
    kl.write_text(PASSAGES)
    m = ["--model", str(model)]
    jsonl = ["--dataset", "jsonl", "--data-path", str(data)]
    assert main(["patch", *m, *PATCH, *jsonl, "--out", str(root / "patch")]) == 0
    ranking = root / "ranking.csv"
    shutil.copy(root / "patch" / "heads.csv", ranking)
    knock = ["--method", "knockout", "--ks", "0,1", "--n-random", "1", "--rank-from", str(ranking)]
    assert main(["patch", *m, *PATCH, *knock, "--out", str(root / "knockout")]) == 0
    spt = [*m, *SPT, "--methods", "base,spt", "--kl-text", str(kl), "--kl-passages", "2"]
    assert main(["spt", *spt, "--heads-file", str(ranking), "--out", str(root / "spt")]) == 0
    (root / "file.txt").write_text("not a directory")
    (root / "empty").mkdir()
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00 not utf-8 \xc3\x28")
    (root / "blank.txt").write_text("\n\n   \n")
    (root / "short.txt").write_text("Too short.\n\nAlso short.")
    study_like = root / "study_like"
    study_like.mkdir()
    (study_like / "config.toml").write_text("# sycointerp trust study: resolved\n[model]\n")
    (study_like / "protocols").mkdir()  # a study that has started: a stage wrote something
    (study_like / "protocols" / "protocols.json").write_text("{}")
    return {
        "root": root,
        "model": model,
        "data": data,
        "kl": kl,
        "ranking": ranking,
        "patch": root / "patch",
        "knockout": root / "knockout",
        "spt": root / "spt",
        "study_like": study_like,
    }


def _fill(argv: list[str], world: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]


# --------------------------------------------------------------------------- the cases

M = ["--model", "{model}"]
CASES = [
    # report: paths that hold no job, and directories of another shape
    (["report", "{root}/nowhere"], "does not exist"),
    (["report", "{root}/file.txt"], "is a file, not a directory"),
    (["report", "{root}/empty"], "holds no finished job"),
    (["report", "{study_like}"], "holds no finished job"),
    # spt / study: stance evaluation options, before the model loads
    (["spt", *M, *SPT, "--stance-variants", "wrong,gold"], "must be among wrong, user"),
    (["spt", *M, *SPT, "--pressure-rounds", "0"], "pressure_rounds"),
    (["spt", *M, *SPT, "--selection", "gradient"], "loss_gradient"),
    (["spt", *M, *SPT, "--pairs-per-wording", "-1"], "pairs_per_wording"),
    (["study", *M, "--stance-variants", "prefilled"], "must be among wrong, user"),
    (["study", *M, "--selection-recipes", "gradient"], "recipe[:metric]"),
    (["study", *M, "--selection-recipes", "probe:flip"], "reads no metric"),
    (["study", *M, "--selection-recipes", "path"], "main comparison's recipe"),
    (["study", *M, "--selection-recipes", "path:flip,path:flip"], "repeats"),
    (["study", *M, "--selection-recipes", "probe", "--selection-draws", "9"], "raise --draws"),
    # spt: steering coefficients, before the model loads
    (["spt", *M, *SPT, "--methods", "caa", "--caa-alphas=0"], "finite and non-zero"),
    (["spt", *M, *SPT, "--methods", "caa", "--caa-alphas=nan"], "finite"),
    (["spt", *M, *SPT, "--methods", "caa", "--caa-alphas=-1,inf"], "finite"),
    (["spt", *M, *SPT, "--methods", "caa", "--caa-alphas=1"], "steers toward sycophancy"),
    (["spt", *M, *SPT, "--methods", "caa", "--caa-alphas=-1,0.5"], "--steer-toward"),
    (["spt", *M, *SPT, "--methods", "iti", "--iti-alphas=2"], "steers toward sycophancy"),
    (["spt", *M, *SPT, "--methods", "iti", "--iti-alphas=-1,0"], "non-zero"),
    (["spt", *M, *SPT, "--methods", "iti", "--iti-alphas=nan"], "finite"),
    (["spt", *M, *SPT, "--methods", "caa", "--steer-toward", "--caa-alphas=-1"], "steers away"),
    (["spt", *M, *SPT, "--methods", "iti", "--steer-toward", "--iti-alphas=-2,3"], "steers away"),
    (["spt", *M, *SPT, "--methods", "caa", "--caa-alphas="], "needs at least one value"),
    (["spt", *M, *SPT, "--methods", "caa", "--steer-layer", "2"], "steer_layer=2 but"),
    (["spt", *M, *SPT, "--methods", "base,caa", "--steer-layer", "9"], "blocks 0-1"),
    # spt: the model's shape, files, registries, --out
    (["spt", *M, *SPT, "--top-k", "99"], "top_k=99 but"),
    (["spt", *M, *SPT, "--kl-text", "{root}/binary.txt"], "not a readable UTF-8 text file"),
    (["spt", *M, *SPT, "--kl-text", "{root}/blank.txt"], "holds no paragraph"),
    (["spt", *M, *SPT, "--kl-text", "{root}/nowhere.txt"], "does not exist"),
    (
        ["spt", *M, *SPT, "--kl-text", "{root}/short.txt", "--out", "{root}/k"],
        "no paragraph has 16",
    ),
    (["spt", *M, *SPT, "--rank-metric", "nope"], "rank_metric (--rank-metric) must be one of"),
    (["spt", *M, *SPT, "--methods", "base,nope"], "methods must be distinct names"),
    (["spt", *M, *SPT, "--methods", "spt,spt"], "methods must be distinct names"),
    (["spt", *M, *SPT, "--heads-file", "{root}/file.txt"], "heads"),
    (["spt", *M, *SPT, "--heads-file", "{root}/binary.txt"], "heads"),
    (["spt", *M, *SPT, "--out", "{root}/file.txt"], "is a file, not a directory"),
    # jobs of another kind in --out: named, and --overwrite never mixes them
    (["spt", *M, *SPT, "--out", "{patch}"], "holds a finished patch job, not an SPT run"),
    (["spt", *M, *SPT, "--out", "{patch}", "--overwrite"], "holds a finished patch job"),
    (["spt", *M, *SPT, "--out", "{study_like}"], "holds an unfinished trust study"),
    (["spt", *M, *SPT, "--out", "{study_like}", "--overwrite"], "unfinished trust study"),
    (["patch", *M, *PATCH, "--out", "{spt}"], "holds a finished SPT run, not a patch job"),
    (["patch", *M, *PATCH, "--out", "{spt}", "--overwrite"], "holds a finished SPT run"),
    (["patch", *M, *PATCH, "--out", "{study_like}"], "trust study"),
    (["study", *M, *STUDY, "--out", "{patch}"], "holds a finished patch job, not a trust study"),
    (["study", *M, *STUDY, "--out", "{spt}", "--overwrite"], "holds a finished SPT run"),
    (["study", *M, *STUDY, "--out", "{knockout}", "--overwrite"], "finished patch job"),
    # study: every K against the model's heads, before any stage
    (["study", *M, *STUDY, "--agreement-k", "99", "--out", "{root}/s1"], "agreement_k=99 but"),
    (["study", *M, *STUDY, "--ks", "1,99", "--out", "{root}/s2"], "ks goes up to 99 but"),
    (["study", *M, *STUDY, "--top-k", "9", "--out", "{root}/s3"], "top_k=9 but"),
    (["study", *M, *STUDY, "--out", "{root}/file.txt"], "is a file, not a directory"),
    (["study", *M, *STUDY, "--kl-text", "{root}/nowhere.txt"], "does not exist"),
    # patch: options that a method would ignore, the registries, --out
    (["patch", *M, *PATCH, "--direction", "noise"], "direction applies to method"),
    (["patch", *M, *PATCH, "--method", "attribution", "--engine", "hooked"], "engine applies"),
    (["patch", *M, *PATCH, "--component", "q"], "component applies to method activation"),
    (["patch", *M, *PATCH, "--method", "knockout", "--ig-steps", "2"], "ig_steps applies"),
    (["patch", *M, *PATCH, "--positions", "all"], "patches the last position only"),
    (["patch", *M, *PATCH, "--method", "toy"], "method (--method) must be one of"),
    (["patch", *M, *PATCH, "--metric", "toy"], "metric (--metric) must be one of"),
    (["patch", *M, *PATCH, "--out", "{root}/file.txt"], "is a file, not a directory"),
    # patch: model placement, before the model loads
    (["patch", *M, *PATCH, "--device-map", "everywhere"], "is not a strategy"),
    (["patch", *M, *PATCH, "--device-map", "{{"], "is not valid JSON"),
    (["patch", *M, *PATCH, "--device-map", "[0, 1]"], "is not a strategy"),
    (["patch", *M, *PATCH, "--device-map", "{{}}"], "non-empty object"),
    (["patch", *M, *PATCH, "--device-map", '{{"model.layers.0": "gpu"}}'], "is not a place"),
    (["patch", *M, *PATCH, "--device-map", '{{"model.layers.0": -1}}'], "is not a place"),
    (["patch", *M, *PATCH, "--device-map", '{{"model.layers.0": "disk"}}'], "--offload-folder"),
    (["patch", *M, *PATCH, "--offload-folder", "{root}/off"], "used only with a --device-map"),
    (["patch", *M, *PATCH, "--device-map", "auto", "--n-devices", "2"], "give one"),
    (["patch", *M, *PATCH, "--devices-per-rank", "2"], "CUDA is not available"),
    (["effect", *M, "--limit", "2", "--out", "{root}/file.txt"], "is a file, not a directory"),
    (["effect", *M, "--limit", "2", "--out", "{patch}"], "holds a finished patch job"),
]


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_a_bad_input_is_one_line_exit_2_and_changes_nothing(world, capsys, argv, expected):
    watch = [world["patch"], world["spt"], world["knockout"], world["study_like"]]
    refused(_fill(argv, world), expected, capsys, watch)


def test_the_suite_is_large():
    assert len(CASES) + len(DAMAGED) + len(CHANGED) >= 60


# --------------------------------------------------------------------------- files read back


def _damage(path: Path, how: str) -> None:
    text = {
        "list": b"[1, 2]",
        "string": b'"done"',
        "not-json": b"{not json",
        "not-utf8": b"\xff\xfe{}",
        "empty-object": b"{}",
        "toml": b"[model\nx = ",
        "csv": b"this,is,not\na,heads,table\n",
        "truncate": None,
    }[how]
    if text is None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(text)


DAMAGED = [
    ("patch", "summary.json", "list", "is not a JSON object"),
    ("patch", "summary.json", "string", "is not a JSON object"),
    ("patch", "summary.json", "not-json", "summary.json is not a valid"),
    ("patch", "summary.json", "not-utf8", "summary.json is not a valid"),
    ("patch", "summary.json", "empty-object", "holds a damaged patch job"),
    ("patch", "config.toml", "toml", "config.toml is not a valid TOML file"),
    ("patch", "config.toml", "not-utf8", "config.toml is not a valid TOML file"),
    ("patch", "heads.csv", "csv", "heads.csv"),
    ("patch", "heads.csv", "not-utf8", "heads.csv"),
    ("patch", "result.json", "not-json", "result.json"),
    ("patch", "values.safetensors", "truncate", "values.safetensors"),
    ("patch", "examples.json", "list", "damaged patch job"),
    ("spt", "report.json", "list", "is not a JSON object"),
    ("spt", "report.json", "empty-object", "holds a damaged spt job"),
    ("spt", "config.toml", "toml", "config.toml is not a valid TOML file"),
    ("knockout", "knockout/curve.json", "not-json", "curve.json"),
]


@pytest.mark.parametrize(("job", "name", "how", "expected"), DAMAGED)
def test_report_of_a_damaged_job_names_the_file(world, tmp_path, capsys, job, name, how, expected):
    target = tmp_path / job
    shutil.copytree(world[job], target)
    (target / "report.html").unlink()
    _damage(target / name, how)
    refused(["report", str(target)], expected, capsys, [target])


# --------------------------------------------------------------------------- finished jobs


def _edit(world: dict[str, Path], what: str, tmp: Path) -> Path:
    """A copy of the input ``what`` names, changed; returns the job directory to rerun."""
    if what == "data":
        world["data"].write_text(world["data"].read_text().replace("What is 2", "What is 7"))
    elif what == "ranking":
        lines = world["ranking"].read_text().splitlines()
        lines[1], lines[2] = lines[2], lines[1]
        world["ranking"].write_text("\n".join(lines) + "\n")
    elif what == "kl":
        world["kl"].write_text(PASSAGES.replace("river", "canal"))
    elif what == "model":
        save_tiny_model(world["model"], "llama", seed=1)
    return tmp


CHANGED = [
    ("patch", "data", ["--dataset", "jsonl", "--data-path", "{data}"], "questions.jsonl"),
    ("knockout", "ranking", ["--method", "knockout", "--ks", "0,1", "--n-random", "1"], "ranking"),
    ("spt", "ranking", [], "ranking.csv"),
    ("spt", "kl", [], "passages.txt"),
    ("patch", "model", ["--dataset", "jsonl", "--data-path", "{data}"], "model.safetensors"),
]


@pytest.mark.parametrize(("job", "what", "extra", "named"), CHANGED)
def test_a_finished_job_rerun_with_changed_inputs_is_refused_naming_them(
    world, tmp_path, capsys, job, what, extra, named
):
    """The same command on a finished job: "nothing to do" while its inputs are the same, exit 2
    naming the change once one is edited (``-q`` hides nothing)."""
    root = tmp_path / "world"
    shutil.copytree(world["root"], root)
    local = {k: root / v.relative_to(world["root"]) for k, v in world.items() if k != "root"}
    local["root"] = root
    argv = _rerun_argv(job, local, extra)
    _repoint(local[job], world["root"], root)
    capsys.readouterr()
    loud = [a for a in argv if a != "-q"]
    assert main(loud) == 0  # unchanged: nothing to do, and it says so
    said = capsys.readouterr()
    assert "already complete" in said.out or "already done" in said.err, said
    _edit(local, what, tmp_path)
    line = refused(argv, "holds a finished job computed from other inputs", capsys, [local[job]])
    assert named in line and "--overwrite" in line


def _rerun_argv(job: str, w: dict[str, Path], extra: list[str]) -> list[str]:
    m = ["--model", str(w["model"])]
    if job == "spt":
        spt = [*m, *SPT, "--methods", "base,spt", "--kl-text", str(w["kl"]), "--kl-passages", "2"]
        return ["spt", *spt, "--heads-file", str(w["ranking"]), "--out", str(w["spt"])]
    extra = _fill(extra, w)
    if job == "knockout":
        extra += ["--rank-from", str(w["ranking"])]
    return ["patch", *m, *PATCH, *extra, "--out", str(w[job])]


def _repoint(job_dir: Path, old: Path, new: Path) -> None:
    """A copied job's records name the copied inputs (paths are part of its configuration)."""
    for path in (job_dir / "config.toml", job_dir / "inputs.json", new / "ranking.csv"):
        path.write_text(path.read_text().replace(str(old), str(new)))
    record = json.loads((job_dir / "inputs.json").read_text())  # the rewritten ranking's hash
    record["files"] = {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in record["files"]}
    (job_dir / "inputs.json").write_text(json.dumps(record))


def test_a_finished_job_with_an_unreadable_input_record_is_refused(world, tmp_path, capsys):
    target = tmp_path / "patch"
    shutil.copytree(world["patch"], target)
    (target / "inputs.json").write_bytes(b"\xff not json")
    argv = ["patch", "--model", str(world["model"]), *PATCH, "--dataset", "jsonl"]
    argv += ["--data-path", str(world["data"]), "--out", str(target)]
    refused(argv, "inputs.json is unreadable", capsys, [target])


def test_describe_job_names_each_kind_and_state(world):
    assert describe_job(world["patch"]) == "a finished patch job"
    assert describe_job(world["spt"]) == "a finished SPT run"
    assert describe_job(world["study_like"]) == "an unfinished trust study"
    assert describe_job(world["root"] / "empty") is None


# --------------------------------------------------------------------------- resumed chunks


@pytest.mark.parametrize("how", ["truncate", "not-utf8", "list"])
def test_a_damaged_resume_chunk_is_recomputed_saying_so(world, tmp_path, capsys, how):
    """A chunk file damaged outside the job is recomputed (with a warning naming it), and the
    job ends with the outputs of an undamaged run."""
    from sycointerp.workflows.shards import CRASH_ENV

    m = ["--model", str(world["model"]), "--limit", "6", "--chunk-size", "2", "--no-png", "-q"]
    clean = tmp_path / "clean"
    assert main(["patch", *m, "--out", str(clean)]) == 0
    out = tmp_path / "job"
    import os
    import subprocess
    import sys

    env = {**os.environ, CRASH_ENV: "2", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "sycointerp", "patch", *m, "--out", str(out)]
    assert subprocess.run(argv, env=env, capture_output=True).returncode == -signal.SIGKILL
    chunk = sorted((out / "chunks").glob("heads-*.safetensors"))[0]
    _damage(chunk, how)
    capsys.readouterr()
    assert main(["patch", *m, "--out", str(out)]) == 0  # -q still shows warnings
    err = capsys.readouterr().err
    assert f"{chunk.name} is damaged" in err and "recomputing that chunk" in err, err
    assert (out / "values.safetensors").read_bytes() == (clean / "values.safetensors").read_bytes()


# --------------------------------------------------------------------------- weights cut short


def test_truncated_safetensors_weights_are_called_truncated(world, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    _damage(model / "model.safetensors", "truncate")
    argv = ["patch", "--model", str(model), *PATCH, "--out", str(tmp_path / "o")]
    line = refused(argv, "model.safetensors is truncated", capsys)
    assert "fetch the file again" in line


def test_a_truncated_gguf_is_called_truncated(tmp_path, capsys):
    from sycointerp.models import embedded_gguf_path

    gguf = tmp_path / "cut.gguf"
    data = embedded_gguf_path().read_bytes()
    gguf.write_bytes(data[: len(data) // 3])
    argv = ["patch", "--model", str(gguf), *PATCH, "--out", str(tmp_path / "o")]
    line = refused(argv, "truncated", capsys)
    assert "cut.gguf" in line and "fetch the file again" in line


# --------------------------------------------------------------------------- messages


def test_a_head_file_of_another_grid_says_what_differs_and_names_the_model(world, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text(
        "layer,head,score,se,ci_low,ci_high,rank,kind,model,n_layers,n_heads,n_kv_heads\n"
        "1,0,0,0,0,0,1,query,big-model,2,4,4\n"
    )
    argv = ["spt", "--model", str(world["model"]), *SPT, "--heads-file", str(other)]
    line = refused([*argv, "--out", str(tmp_path / "o")], "n_kv_heads 4 vs 2", capsys)
    assert "big-model" in line and str(world["model"]) in line


def test_a_registered_method_reading_an_option_the_job_lacks_is_refused(world, capsys):
    from sycointerp.patching.methods import PATCH_METHODS, PatchMethod

    toy = PatchMethod("toy_opts", "toy", lambda *a, **k: None, {"no_such_option": "x"})
    with PATCH_METHODS.added(toy):
        argv = ["patch", "--model", str(world["model"]), *PATCH, "--method", "toy_opts"]
        refused(argv, "reads no_such_option, which the patch job has no option for", capsys)


def test_a_second_ctrl_c_during_shutdown_is_ignored(capsys, monkeypatch):
    """After an interrupt, shutdown ignores Ctrl-C (no ignored-exception trace), while an
    in-process caller keeps its handler until then."""
    import atexit

    registered = []
    monkeypatch.setattr(atexit, "register", lambda *call: registered.append(call))

    def body() -> int:
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    assert guarded("sycointerp patch", body) == 130
    assert signal.getsignal(signal.SIGINT) is before  # unchanged in this process
    assert registered == [(signal.signal, signal.SIGINT, signal.SIG_IGN)]  # ignored at exit
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rerun the same command to resume" in err
