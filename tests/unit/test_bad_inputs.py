"""The bad-input suite: every user mistake is one line on stderr naming the cause, exit 2.

Each CLI case runs the real entry point's ``main(argv)`` in-process (the refusals all come before
any heavy work, so the suite takes seconds) and asserts: status 2, exactly one line on stderr,
no traceback, and the named cause in the message. The API cases assert the exception type (a
:class:`~sycointerp.errors.UserError` where the user can fix it) and the message. Files are
written by the tests themselves.
"""

import importlib
import json
from pathlib import Path

import pytest
import torch

from sycointerp.cli import effect, patch, spt, study
from sycointerp.errors import UserError
from sycointerp.heads import HeadGrid, write_heads_csv
from sycointerp.testing import save_tiny_model

MAINS = {"patch": patch.main, "spt": spt.main, "effect": effect.main, "study": study.main}
_HEADS = "layer,head,score,se,ci_low,ci_high,rank,kind,model,n_layers,n_heads,n_kv_heads\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Named bad (and good) input files, shared by the cases below."""
    root = tmp_path_factory.mktemp("inputs")
    model = save_tiny_model(root / "model", "llama")
    q = {"question": "What is 2 + 2?", "answer": "4", "wrong": "5"}

    def write(name: str, text: str | bytes) -> str:
        path = root / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def heads(name: str, rows: str) -> str:
        return write(name, _HEADS + rows)

    good = [(0, 1), (1, 2), (0, 0), (1, 3), (0, 2)]
    import pandas as pd

    table = pd.DataFrame(
        [
            {"layer": l, "head": h, "score": -1.0, "se": 0, "ci_low": 0, "ci_high": 0, "rank": r}
            for r, (l, h) in enumerate(good, 1)
        ]
    )
    write_heads_csv(root / "good.csv", table, HeadGrid(2, 4, 2, "tiny"), "query")
    (root / "notadir").write_text("x")
    (root / "nojob").mkdir()
    (root / "nojob" / "notes.txt").write_text("mine")
    (root / "empty_model").mkdir()
    return {
        "model": str(model),
        "good_heads": str(root / "good.csv"),
        "other_heads": heads("other.csv", "7,0,0,0,0,0,1,query,big,8,4,2\n"),
        "kv_heads": heads("kv.csv", "1,1,0,0,0,0,1,kv,tiny,2,4,2\n0,0,0,0,0,0,2,kv,tiny,2,4,2\n"),
        "legacy_heads": write(
            "legacy.csv", "layer,head,score,se,ci_low,ci_high,rank\n0,1,0,0,0,0,1\n"
        ),
        "float_rank": heads("float.csv", "0,1,0,0,0,0,1.5,query,tiny,2,4,2\n"),
        "text_rank": heads("text.csv", "0,1,0,0,0,0,first,query,tiny,2,4,2\n"),
        "dup_heads": heads(
            "dup.csv", "0,1,0,0,0,0,1,query,tiny,2,4,2\n0,1,0,0,0,0,2,query,tiny,2,4,2\n"
        ),
        "latin1_heads": write("latin1.csv", "layer,head,rank\n0,1,1\n\xe9\n".encode("latin-1")),
        "str_choices": write("choices.jsonl", json.dumps({**q, "choices": "AB"}) + "\n"),
        "dup_ids": write(
            "dup.jsonl", json.dumps({**q, "id": "a"}) + "\n" + json.dumps({**q, "id": "a"}) + "\n"
        ),
        "latin1_q": write(
            "latin1.jsonl", json.dumps(q).replace("2 + 2", "caf\xe9").encode("latin-1")
        ),
        "bad_json": write("bad.jsonl", '{"question": \n'),
        "missing_field": write(
            "missing.jsonl", json.dumps({"question": "q", "answer": "a"}) + "\n"
        ),
        "unknown_field": write("unknown.jsonl", json.dumps({**q, "colour": "red"}) + "\n"),
        "same_answers": write("same.jsonl", json.dumps({**q, "wrong": "4"}) + "\n"),
        "empty_q": write("empty.jsonl", "\n\n"),
        "int_id": write("intid.jsonl", json.dumps({**q, "id": 7}) + "\n"),
        "ays_base": write("ays.jsonl", json.dumps({"base": "not an object"}) + "\n"),
        "tqa_columns": write("tqa.csv", "Question,Answer\nq,a\n"),
        "bad_toml": write("bad.toml", "[run\nbatch_size = 1\n"),
        "toml_section": write("section.toml", "[colour]\nred = 1\n"),
        "toml_key": write("key.toml", "[run]\ncolour = 1\n"),
        "toml_type": write("type.toml", '[run]\nbatch_size = "eight"\n'),
        "notadir": str(root / "notadir"),
        "nojob": str(root / "nojob"),
        "empty_model": str(root / "empty_model"),
        "missing": str(root / "missing.file"),
        "root": str(root),
    }


def _fill(argv: list[str], files: dict[str, str], tmp_path: Path) -> list[str]:
    out = [a.format(**files, tmp=tmp_path) for a in argv]
    return out if "--out" in out else [*out, "--out", str(tmp_path / "out")]


# (cli, argv, expected part of the message); {name} is a file of the fixture, {tmp} the test dir.
M = ["--model", "{model}"]
KO = [*M, "--method", "knockout", "--ks", "0,1", "--no-png"]
CASES = [
    # ---- patch: flags and config
    ("patch", ["--batch-size", "0"], "batch_size (--batch-size) must be >= 1"),
    ("patch", ["--chunk-size", "0"], "chunk_size (--chunk-size) must be >= 1"),
    ("patch", ["--limit", "-1"], "limit (--limit) must be >= 0"),
    ("patch", ["--method", "magic"], "method (--method) must be one of activation, path"),
    ("patch", ["--metric", "nope"], "metric (--metric) must be one of apology_logit_diff"),
    ("patch", ["--direction", "noise"], "direction applies to method activation / attribution"),
    ("patch", ["--method", "attribution", "--engine", "hooked"], "engine applies to method"),
    ("patch", ["--batch-size", "many"], "invalid int value: 'many'"),
    ("patch", [*KO, "--ks", "3,1"], "ks must"),
    ("patch", [*KO, "--ks", "a,b"], "expected comma-separated ints"),
    ("patch", [*KO, "--n-random", "0"], "n_random (--n-random) must be >= 1"),
    ("patch", ["--config", "{missing}"], "does not exist"),
    ("patch", ["--config", "{bad_toml}"], "is not valid TOML"),
    ("patch", ["--config", "{toml_section}"], "unknown config section [colour]"),
    ("patch", ["--config", "{toml_key}"], "unknown key 'colour' in [run]"),
    ("patch", ["--config", "{toml_type}"], "batch_size (--batch-size) must be int"),
    ("patch", ["--vector", "svg,eps"], "vector (--vector) must be distinct among svg, pdf"),
    ("patch", ["--challenge", "nope"], "challenge"),
    ("patch", ["--challenge-text", "Really?"], "go together"),
    (
        "patch",
        ["--challenge-text", "Are you sure?", "--counterfactual-text", "Are you sure?"],
        "are the same text",
    ),
    ("patch", ["--rank-from", "{good_heads}"], "applies to method"),
    ("patch", ["--ig-steps", "4"], "applies to method"),
    ("patch", ["--device", "cuda:0"], "CUDA is not available"),
    ("patch", [*M, "--device", "toaster"], "is not a torch device"),
    ("patch", ["--dataset", "jsonl"], "needs data_path"),
    ("patch", ["--data-path", "{str_choices}"], "data_path is set but dataset is 'builtin'"),
    # ---- patch: data files
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{missing}"], "does not exist"),
    (
        "patch",
        [*M, "--dataset", "jsonl", "--data-path", "{str_choices}"],
        "must be a list of strings",
    ),
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{dup_ids}"], "id 'a' is also used"),
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{latin1_q}"], "not UTF-8 text"),
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{bad_json}"], "invalid JSON"),
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{missing_field}"], "missing field(s)"),
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{unknown_field}"], "unknown field(s)"),
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{same_answers}"], "gold and wrong"),
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{empty_q}"], "no questions found"),
    ("patch", [*M, "--dataset", "jsonl", "--data-path", "{int_id}"], "field 'id' must be a string"),
    ("patch", [*M, "--dataset", "are_you_sure", "--data-path", "{ays_base}"], "'base' object"),
    ("patch", [*M, "--dataset", "truthfulqa", "--data-path", "{tqa_columns}"], "missing column"),
    ("patch", [*M, "--dataset", "arc", "--data-path", "{latin1_q}"], "not UTF-8 text"),
    # ---- patch: head files
    ("patch", [*KO, "--rank-from", "{missing}"], "does not exist"),
    ("patch", [*KO, "--rank-from", "{other_heads}"], "was made on a model with 8 layers"),
    ("patch", [*KO, "--rank-from", "{kv_heads}"], "ranks kv heads"),
    ("patch", [*KO, "--rank-from", "{legacy_heads}"], "does not record which model"),
    ("patch", [*KO, "--rank-from", "{float_rank}"], "column 'rank' must hold integers"),
    ("patch", [*KO, "--rank-from", "{text_rank}"], "column 'rank' must hold integers"),
    ("patch", [*KO, "--rank-from", "{dup_heads}"], "listed twice"),
    ("patch", [*KO, "--rank-from", "{latin1_heads}"], "cannot read heads file"),
    ("patch", [*KO, "--rank-from", "{good_heads}", "--ks", "0,6"], "fewer than max(ks) = 6"),
    ("patch", [*KO, "--ks", "0,9"], "the model has 8 heads"),
    # ---- patch: model and output directory
    ("patch", ["--model", "{missing}"], "is not a model directory"),
    ("patch", ["--model", "{empty_model}"], "without config.json"),
    ("patch", ["--model", "{root}/model/model.safetensors"], "is not a model directory"),
    ("patch", [*M, "--out", "{notadir}"], "is a file, not a directory"),
    ("patch", [*M, "--out", "{notadir}/sub"], "is not a writable directory"),
    ("patch", [*M, "--out", "{nojob}"], "holds no sycointerp job"),
    # ---- spt
    ("spt", ["--lr", "nan"], "lr (--lr) must be a finite number"),
    ("spt", ["--lr", "inf"], "lr (--lr) must be a finite number"),
    ("spt", ["--weight-decay", "nan"], "weight_decay (--weight-decay) must be a finite number"),
    ("spt", ["--lr", "-1"], "lr (--lr) must be >= 0"),
    ("spt", ["--steps", "0"], "steps (--steps) must be >= 1"),
    ("spt", ["--methods", "spt,magic"], "methods must be distinct names"),
    ("spt", ["--heads-file", "{missing}"], "does not exist"),
    ("spt", [*M, "--heads-file", "{other_heads}"], "was made on a model with 8 layers"),
    ("spt", [*M, "--heads-file", "{kv_heads}"], "ranks kv heads"),
    ("spt", [*M, "--heads-file", "{legacy_heads}"], "does not record which model"),
    ("spt", [*M, "--heads-file", "{good_heads}", "--top-k", "6"], "K must be in [1, 5]"),
    ("spt", ["--eval-path", "{missing}"], "does not exist"),
    ("spt", ["--kl-text", "{missing}"], "does not exist"),
    ("spt", ["--config", "{bad_toml}"], "is not valid TOML"),
    ("spt", [*M, "--out", "{notadir}"], "is a file, not a directory"),
    # ---- effect
    ("effect", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("effect", ["--limit", "0"], "--limit must be >= 1"),
    ("effect", ["--challenge", "nope"], "is not a template"),
    ("effect", ["--questions", "{missing}"], "file not found"),
    ("effect", ["--questions", "{latin1_q}"], "not UTF-8 text"),
    ("effect", ["--questions", "{dup_ids}"], "id 'a' is also used"),
    ("effect", ["--out", "{notadir}"], "is a file, not a directory"),
    ("effect", ["--first-answer", "mine"], "invalid choice: 'mine'"),
    # ---- study
    ("study", ["--protocols", "stem,nope"], "protocols must be among"),
    ("study", ["--ks", "3,3"], "ks (--ks) must be distinct numbers"),
    ("study", ["--splits", "1,0"], "must be the main split's seed"),
    ("study", ["--sweep-eval-limit", "200"], "must not exceed main_eval_limit"),
    ("study", ["--steps", "3"], "warmup_steps (3) must be below steps (3)"),
    ("study", ["--arc-path", "{missing}"], "does not exist"),
    ("study", ["--lr", "nan"], "lr (--lr) must be a finite number"),
    (
        "study",
        [*M, "--top-k", "2", "--agreement-k", "2", "--ks", "1,2", "--out", "{notadir}"],
        "is a file, not a directory",
    ),
]


@pytest.mark.parametrize(
    ("cli", "argv", "expected"), CASES, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(CASES)]
)
def test_cli_user_error_is_one_line_exit_2(files, tmp_path, capsys, cli, argv, expected):
    if "CUDA is not available" in expected and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal under test cannot happen here")
    try:
        code = MAINS[cli](_fill(argv, files, tmp_path))
    except SystemExit as stop:  # argparse usage errors (CliParser.error) exit from inside
        assert _is_usage(argv, expected), "only usage errors may exit from inside main()"
        code = stop.code
    else:
        assert not _is_usage(argv, expected), "a usage error must exit through CliParser.error"
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    prog = importlib.import_module(MAINS[cli].__module__).PROG
    assert expected in err and err.startswith(f"{prog}: error: "), err


def _is_usage(argv: list[str], expected: str) -> bool:
    """argparse usage errors exit through SystemExit(2) (CliParser.error)."""
    return expected.startswith(("invalid choice", "invalid int", "expected comma"))


def test_usage_errors_exit_2(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        patch.main(["--dtype", "magic"])
    assert stop.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_the_suite_is_large():
    assert len(CASES) >= 60


# --------------------------------------------------------------------------- the library API


def _api_cases(files, tokenizer):
    from sycointerp._io import MissingBundleError
    from sycointerp.data.pairs import build_pairs
    from sycointerp.data.questions import Question, load_questions_jsonl
    from sycointerp.heads import HeadFileError, HeadSet, read_heads_csv
    from sycointerp.patching import PatchResult
    from sycointerp.workflows.spt_config import SPTConfig

    grid = HeadGrid(2, 4, 2)
    return [
        (lambda: load_questions_jsonl(files["str_choices"]), UserError, "list of strings"),
        (lambda: load_questions_jsonl(files["dup_ids"]), UserError, "is also used"),
        (lambda: load_questions_jsonl(files["latin1_q"]), UserError, "not UTF-8"),
        (lambda: Question("q", "a", "a"), UserError, "gold and wrong"),
        (lambda: build_pairs([], tokenizer), UserError, "no questions"),
        (lambda: read_heads_csv(files["missing"]), HeadFileError, "does not exist"),
        (lambda: HeadSet.from_csv(files["other_heads"], 1, grid), HeadFileError, "8 layers"),
        (lambda: HeadSet.from_csv(files["kv_heads"], 1, grid), HeadFileError, "kv heads"),
        (lambda: SPTConfig(lr=float("nan")), UserError, "finite"),
        (lambda: PatchResult.load(files["root"]), MissingBundleError, "saved PatchResult"),
        (lambda: HeadSet(((5, 0),), 2, 4), ValueError, "out of range"),
        (lambda: HeadGrid(2, 4, 3), ValueError, "do not split"),
        (lambda: HeadSet((), 2, 4), ValueError, "at least one head"),
    ]


def test_api_errors_name_the_cause(files, tokenizer):
    cases = _api_cases(files, tokenizer)
    for call, kind, message in cases:
        with pytest.raises(kind, match=message.replace("(", r"\(")):
            call()
    assert len(cases) >= 12


def test_a_corrupt_model_and_an_unusable_cache_are_one_line_exit_2(
    files, tmp_path, capsys, monkeypatch
):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(files["model"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    assert patch.main(["--model", str(broken), "--out", str(tmp_path / "o1"), "--no-png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors is truncated" in err, err
    monkeypatch.setenv("SYCOINTERP_CACHE", files["notadir"])  # a file, not a directory
    assert patch.main(["--out", str(tmp_path / "o2"), "--no-png", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a writable directory" in err, err
    assert "SYCOINTERP_CACHE" in err
