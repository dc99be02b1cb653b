"""`python -m sycointerp.patch`: config resolution, outputs, resumption after kill -9, refusals,
torchrun.

The jobs run tiny random models saved with save_pretrained and loaded back through load_model
(the same path a user's local model takes), on the built-in questions.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sycointerp.cli.patch import build_parser, main, resolve_config
from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.heads import HEADS_CSV_COLUMNS, SAMPLE_COLUMNS, STABILITY_COLUMNS
from sycointerp.metrics import apology_logit_diff_metric, flip_metric
from sycointerp.models import load_model
from sycointerp.patching import KnockoutCurve, PatchResult, patch_heads, path_patch_heads
from sycointerp.patching.attention import HeadAttention, challenge_share, head_attention
from sycointerp.testing import save_tiny_model, tiny_model
from sycointerp.workflows.inputs import load_job_questions
from sycointerp.workflows.patch_config import ConfigError, PatchConfig, dump_toml, load_toml
from sycointerp.workflows.shards import CRASH_ENV

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: str(save_tiny_model(root / arch, arch)) for arch in ("llama", "gpt2")}


def _args(model_dir: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model",
        model_dir,
        "--limit",
        "10",
        "--chunk-size",
        "4",
        "--batch-size",
        "16",
        "-q",
        "--out",
        str(out),
        *extra,
    ]


def _cli(
    argv: list[str], env: dict[str, str] | None = None, torchrun: int = 0
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if torchrun:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
        ]
        cmd = [*launcher, "-m", "sycointerp.patch", *argv]
    else:
        cmd = [sys.executable, "-m", "sycointerp.patch", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _without_wallclock(summary: bytes) -> dict:
    data = json.loads(summary)
    data.pop("timings")
    return data


def _assert_same_outputs(a: Path, b: Path) -> None:
    """Byte-identical files, except summary.json's wall-clock timings."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name == "summary.json":
            assert _without_wallclock(fa[name]) == _without_wallclock(fb[name])
        else:
            assert fa[name] == fb[name], name


# --------------------------------------------------------------------------- config


def test_help_documents_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(PatchConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "(default: 'path')" in text and "(default: 0,3,9,27)" in text and "(default: 8)" in text


def test_toml_round_trip_and_flags_override_the_file(tmp_path):
    config = PatchConfig(
        model="m", limit=7, ks=[0, 2], method="knockout", sources=["geography"], png=False
    )
    path = tmp_path / "job.toml"
    path.write_text(dump_toml(config))
    assert PatchConfig.from_toml_dict(load_toml(path)) == config
    args = build_parser().parse_args(
        ["--config", str(path), "--limit", "3", "--no-png", "--ks", "0,1,5"]
    )
    resolved = resolve_config(args)
    assert (resolved.limit, resolved.ks, resolved.model, resolved.method) == (
        3,
        [0, 1, 5],
        "m",
        "knockout",
    )
    assert resolve_config(build_parser().parse_args([])) == PatchConfig()


@pytest.mark.parametrize(
    "data, match",
    [
        ({"model": {"nope": 1}}, "unknown key 'nope'"),
        ({"extra": {}}, "unknown config section"),
        ({"data": {"limit": "ten"}}, "limit .* must be int"),
        ({"data": {"limit": -1}}, "limit .* must be >= 0"),
        ({"run": {"chunk_size": 0}}, "chunk_size .* must be >= 1"),
        (
            {"method": {"method": "knockout", "ks": [3, 1]}},
            "ks must be non-negative and increasing",
        ),
        ({"method": {"metric": "nope"}}, "metric .* must be one of"),
        ({"method": {"method": "path", "generate": True}}, "generate applies to method knockout"),
        ({"data": {"dataset": "jsonl"}}, "needs data_path"),
        ({"data": {"challenge_text": "Really?"}}, "go together"),
    ],
)
def test_invalid_config_values_are_refused_by_name(data, match):
    with pytest.raises(ConfigError, match=match):
        PatchConfig.from_toml_dict(data)


def test_load_job_questions_sample_filter_and_ids(tmp_path):
    full = load_job_questions(PatchConfig())
    assert len(full) == len(load_builtin())
    sample = load_job_questions(PatchConfig(limit=12, seed=3))
    assert len(sample) == 12 and sample == load_job_questions(PatchConfig(limit=12, seed=3))
    order = [q.id for q in full]
    assert [order.index(q.id) for q in sample] == sorted(
        order.index(q.id) for q in sample
    )  # dataset order
    assert sample != load_job_questions(PatchConfig(limit=12, seed=4))
    geo = load_job_questions(PatchConfig(sources=["geography"]))
    assert geo and all(q.domain == "geography" or q.source == "geography" for q in geo)
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        '{"question": "2+2?", "answer": "4", "wrong": "5"}\n'
        '{"question": "3+3?", "answer": "6", "wrong": "7"}\n'
    )
    qs = load_job_questions(PatchConfig(dataset="jsonl", data_path=str(jsonl)))
    assert [q.id for q in qs] == ["q0", "q1"]


def test_every_dataset_kind_loads_through_the_job_config(tmp_path):
    """are_you_sure (with a source filter), truthfulqa and arc records written here, in each
    schema."""
    from tests.unit.test_loaders import _ays, _write_jsonl

    ays = _write_jsonl(
        tmp_path / "are_you_sure.jsonl", [_ays(), _ays("truthful_qa_mc", correct_letter="A")]
    )
    qs = load_job_questions(
        PatchConfig(dataset="are_you_sure", data_path=str(ays), sources=["aqua_mc"])
    )
    assert [(q.source, q.letter) for q in qs] == [("are_you_sure/aqua_mc", "B")]
    tqa = tmp_path / "tqa.csv"
    tqa.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        "Adversarial,Misc,What colour is the sky?,Blue,Blue; Azure,Green; Red; Yellow,x\n"
    )
    (q,) = load_job_questions(PatchConfig(dataset="truthfulqa", data_path=str(tqa)))
    assert (
        q.answer == "Blue" and len(q.choices) == 4 and q.choices[q.labels.index(q.letter)] == "Blue"
    )
    arc = _write_jsonl(
        tmp_path / "arc.jsonl",
        [
            {
                "id": "a1",
                "question": {
                    "stem": "2+2?",
                    "choices": [{"label": "A", "text": "3"}, {"label": "B", "text": "4"}],
                },
                "answerKey": "B",
            }
        ],
    )
    (q,) = load_job_questions(PatchConfig(dataset="arc", data_path=str(arc)))
    assert (q.id, q.letter, q.wrong_letter) == ("a1", "B", "A")


@pytest.mark.parametrize(
    "dataset, parts",
    [
        ("truthfulqa", ("truthfulqa", "TruthfulQA.csv")),
        ("arc", ("arc-easy", "ARC-Easy-Test.jsonl")),
    ],
)
def test_real_dataset_files_load_through_the_job_config(dataset, parts):
    from tests.conftest import shared_file

    qs = load_job_questions(
        PatchConfig(dataset=dataset, data_path=str(shared_file(*parts)), limit=25, seed=1)
    )
    assert len(qs) == 25 and all(q.letter in q.labels and q.wrong_letter != q.letter for q in qs)


# --------------------------------------------------------------------------- a job and its outputs


def test_job_writes_the_documented_layout_and_equals_the_library_call(model_dirs, tmp_path):
    out = tmp_path / "job"
    assert main(_args(model_dirs["llama"], out)) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.toml",
        "heads.csv",
        "values.safetensors",
        "result.json",
        "examples.json",
        "summary.json",
        "figures",
        "inputs.json",
        "stability.json",
        "report.html",
        "attention",
    }
    assert (out / "figures" / "rank_intervals.png").is_file()
    assert (out / "figures" / "attention.png").is_file()
    heads = pd.read_csv(out / "heads.csv")
    assert list(heads.columns) == HEADS_CSV_COLUMNS + STABILITY_COLUMNS + SAMPLE_COLUMNS and sorted(
        heads["rank"]
    ) == list(range(1, 9))
    png = (out / "figures" / "heads.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 900
    result = PatchResult.load(out)
    # Reference: the library function on all pairs at once (no chunks), on a freshly loaded model.
    questions = load_job_questions(PatchConfig(limit=10))
    model = tiny_model("llama")
    pairs = build_pairs(questions, model.tokenizer, position="reply")
    expected = path_patch_heads(model, pairs, apology_logit_diff_metric(model.tokenizer))
    torch.testing.assert_close(result.values, expected.values, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.metric_ref, expected.metric_ref, atol=1e-6, rtol=0)
    assert result.example_ids == tuple(q.id for q in questions)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["top_heads"][0]["rank"] == 1 and len(summary["top_heads"]) == 8
    # attention/: the top 5 heads on the first pair, and their challenge shares over all pairs.
    top5 = expected.top_k(5)
    att = HeadAttention.load(out / "attention")
    torch.testing.assert_close(
        att.weights, head_attention(model, pairs[0], top5).weights, atol=1e-6, rtol=0
    )
    shares = challenge_share(model, pairs, top5).mean(-1)
    record = summary["attention"]
    assert record["heads"] == [list(h) for h in top5] and record["n_examples"] == 10
    assert [s["mean"] for s in record["challenge_share"]] == pytest.approx(shares.tolist())
    stability = json.loads((out / "stability.json").read_text())
    assert stability["split_half"]["mean"] == pytest.approx(result.split_half(k=8).mean)
    first = stability["top_heads"][0]
    row = heads.iloc[0]
    assert (first["layer"], first["head"], first["rank_ci_high"]) == (
        row["layer"],
        row["head"],
        row["rank_ci_high"],
    )
    identity = json.loads((out / "inputs.json").read_text())["model"]
    assert identity["source"] == "dir" and "model.safetensors" in identity["files"]
    assert summary["data"]["n_examples"] == 10 and "torch" in summary["versions"]
    assert PatchConfig.from_toml_dict(load_toml(out / "config.toml")) == resolve_config(
        build_parser().parse_args(_args(model_dirs["llama"], out))
    )


def test_activation_flip_job_on_mha_matches_the_library_call(model_dirs, tmp_path):
    out = tmp_path / "job"
    assert (
        main(
            _args(model_dirs["gpt2"], out, "--method", "activation", "--metric", "flip", "--no-png")
        )
        == 0
    )
    result = PatchResult.load(out)
    model = tiny_model("gpt2")
    pairs = build_pairs(
        load_job_questions(PatchConfig(limit=10)), model.tokenizer, position="answer"
    )
    expected = patch_heads(
        model, pairs, flip_metric(PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id))
    )
    torch.testing.assert_close(result.values, expected.values, atol=1e-6, rtol=0)


def test_knockout_job_with_a_given_ranking_equals_the_ranked_run(model_dirs, tmp_path):
    ko = ["--method", "knockout", "--ks", "0,1,3", "--n-random", "2", "--no-png"]
    assert main(_args(model_dirs["llama"], tmp_path / "a", *ko)) == 0
    curve = KnockoutCurve.load(tmp_path / "a" / "knockout")
    assert curve.ks == (0, 1, 3) and curve.baseline.shape == (10,)
    ranked = PatchResult.load(tmp_path / "a")
    assert list(curve.top_heads) == ranked.rank()[:3]
    # report.html tabulates the curve: top - random at k = 3, paired, with its interval.
    page = (tmp_path / "a" / "report.html").read_text(encoding="utf-8")
    row = curve.summary().query("k == 3").iloc[0]
    diff = f"{row['top_minus_random']:+.3f} [{row['diff_ci_low']:+.3f}, {row['diff_ci_high']:+.3f}]"
    assert "<h2>Knockout" in page and "top - random [95% CI]" in page and diff in page
    assert "10 examples (few examples); 2 random draws per k" in page
    rank_from = str(tmp_path / "a" / "heads.csv")
    assert main(_args(model_dirs["llama"], tmp_path / "b", *ko, "--rank-from", rank_from)) == 0
    again = KnockoutCurve.load(tmp_path / "b" / "knockout")
    torch.testing.assert_close(again.top, curve.top, atol=0, rtol=0)
    assert (tmp_path / "b" / "heads.csv").read_bytes() == (
        tmp_path / "a" / "heads.csv"
    ).read_bytes()


# ------------------------------------------------------------------------- resumption and refusals


def test_kill_9_then_rerun_resumes_to_byte_identical_outputs(model_dirs, tmp_path):
    argv = _args(
        model_dirs["llama"],
        tmp_path / "killed",
        "--method",
        "knockout",
        "--ks",
        "0,2",
        "--n-random",
        "2",
    )
    crashed = _cli(argv, env={CRASH_ENV: "4"})  # SIGKILL itself after the 4th chunk file (of 9)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    done = sorted(p.name for p in (tmp_path / "killed" / "chunks").glob("*.safetensors"))
    assert done == [
        "heads-00000.safetensors",
        "heads-00001.safetensors",
        "heads-00002.safetensors",
        "means-00000.safetensors",
    ]
    assert not (tmp_path / "killed" / "summary.json").exists()
    resumed = _cli([a for a in argv if a != "-q"])  # info logging on: it reports what it skips
    assert resumed.returncode == 0, resumed.stderr
    assert (
        "heads: 3 of 3 chunks already done" in resumed.stderr and "means: 1 of 3" in resumed.stderr
    )
    assert (
        main(
            _args(
                model_dirs["llama"],
                tmp_path / "clean",
                "--method",
                "knockout",
                "--ks",
                "0,2",
                "--n-random",
                "2",
            )
        )
        == 0
    )
    _assert_same_outputs(tmp_path / "killed", tmp_path / "clean")


def test_rerun_of_a_finished_job_changes_nothing(model_dirs, tmp_path, capsys):
    argv = _args(model_dirs["llama"], tmp_path / "job", "--no-png")
    assert main(argv) == 0
    before = _files(tmp_path / "job")
    assert main([a for a in argv if a != "-q"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert _files(tmp_path / "job") == before


def test_other_config_in_the_same_out_is_refused_unless_overwrite(model_dirs, tmp_path, capsys):
    out = tmp_path / "job"
    assert main(_args(model_dirs["llama"], out, "--no-png")) == 0
    capsys.readouterr()
    assert main(_args(model_dirs["llama"], out, "--no-png", "--metric", "apology")) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "metric: 'apology_logit_diff' -> 'apology'" in err
        and "--overwrite" in err
    )
    assert (
        main(_args(model_dirs["llama"], out, "--no-png", "--metric", "apology", "--overwrite")) == 0
    )
    result = PatchResult.load(out)
    assert result.metric == "apology"
    flags = json.loads((out / "summary.json").read_text())["apology_ratio_unstable"]
    outside = ((result.metric_ref < 0) | (result.metric_ref > 1)) | (
        (result.metric_cf < 0) | (result.metric_cf > 1)
    )
    flagged = set(flags["examples"])
    assert flags["n"] == len(flagged) and flags["of"] == 10
    # F outside [0, 1] means a negative logit: every such example is flagged (and maybe more).
    assert {result.example_ids[i] for i in torch.nonzero(outside).flatten().tolist()} <= flagged
    assert (
        main(_args(model_dirs["llama"], tmp_path / "fresh", "--no-png", "--metric", "apology")) == 0
    )
    _assert_same_outputs(out, tmp_path / "fresh")


def test_non_job_directory_is_refused_and_overwrite_keeps_foreign_files(model_dirs, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_args(model_dirs["llama"], out, "--no-png")) == 2
    assert main(_args(model_dirs["llama"], out, "--no-png", "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "heads.csv").is_file()


def test_overwrite_refuses_to_delete_a_foreign_folder(model_dirs, tmp_path, capsys):
    """``--out . --overwrite`` in a project must not delete its own figures/ folder."""
    out = tmp_path / "project"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "paper.png").write_bytes(b"mine")
    (out / "config.toml").write_text('[site]\ntitle = "my project"\n')  # someone else's config.toml
    _one_line_exit_2(
        _args(model_dirs["llama"], out, "--no-png", "--overwrite"),
        capsys,
        "non-empty figures/ folder",
    )
    assert (out / "figures" / "paper.png").read_bytes() == b"mine"
    _one_line_exit_2(
        _args(model_dirs["llama"], out, "--no-png"), capsys, "is not a valid job config"
    )
    assert (
        (out / "config.toml").read_text().startswith("[site]")
    )  # never taken for a failed attempt


def test_a_refused_attempt_does_not_hold_the_directory(model_dirs, tmp_path, capsys):
    """A run refused before any work (missing data file) leaves nothing that blocks the corrected
    run."""
    out, data = tmp_path / "job", tmp_path / "q.jsonl"
    _one_line_exit_2(
        _args(model_dirs["llama"], out, "--no-png", "--dataset", "jsonl", "--data-path", str(data)),
        capsys,
        "does not exist",
    )
    data.write_text("".join(json.dumps(q.to_json()) + "\n" for q in load_builtin()[:6]))
    assert (
        main(
            _args(
                model_dirs["llama"], out, "--no-png", "--dataset", "jsonl", "--data-path", str(data)
            )
        )
        == 0
    )
    assert len(pd.read_csv(out / "heads.csv")) == 2 * 4


def test_resume_refuses_chunks_of_changed_data(model_dirs, tmp_path):
    """Chunks computed from other questions (the data file changed after a crash) are not mixed
    in."""
    data, out = tmp_path / "q.jsonl", tmp_path / "job"
    data.write_text("".join(json.dumps(q.to_json()) + "\n" for q in load_builtin()[:10]))
    argv = _args(
        model_dirs["llama"], out, "--no-png", "--dataset", "jsonl", "--data-path", str(data)
    )
    assert _cli(argv, env={CRASH_ENV: "1"}).returncode == -signal.SIGKILL
    data.write_text("".join(json.dumps(q.to_json()) + "\n" for q in load_builtin()[20:30]))
    rerun = _cli(argv)
    assert rerun.returncode == 2 and rerun.stderr.count("\n") == 1, rerun.stderr
    assert "computed from other inputs" in rerun.stderr and "--overwrite" in rerun.stderr
    assert _cli([*argv, "--overwrite"]).returncode == 0


def _one_line_exit_2(argv: list[str], capsys, match: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--limit", "-3"], "must be >= 0"),
        (["--chunk-size", "x"], "invalid int value"),
        (["--method", "nope"], "method (--method) must be one of"),
        (
            ["--dataset", "arc", "--data-path", "/nonexistent/arc.jsonl"],
            "/nonexistent/arc.jsonl does not exist",
        ),
        (["--device", "cuda"], "CUDA is not available"),
        (
            ["--method", "knockout", "--ks", "0,1", "--rank-from", "/nonexistent/heads.csv"],
            "does not exist; pass the heads.csv of a patch job",
        ),
        (["--challenge", "nope"], "unknown challenge template 'nope'"),
        (["--method", "knockout", "--ks", "0,9"], "ks goes up to 9 but the model has 8 heads"),
    ],
)
def test_user_errors_exit_2_with_one_line(model_dirs, tmp_path, capsys, extra, match):
    _one_line_exit_2(_args(model_dirs["llama"], tmp_path / "o", "--no-png", *extra), capsys, match)


def test_bad_toml_unwritable_out_and_unknown_model_exit_2(model_dirs, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nlimit = 3\n")
    _one_line_exit_2(
        ["--config", str(bad), "--out", str(tmp_path / "o")], capsys, "is not valid TOML"
    )
    (tmp_path / "file").write_text("")
    _one_line_exit_2(
        _args(model_dirs["llama"], tmp_path / "file" / "sub"), capsys, "is not a writable directory"
    )
    _one_line_exit_2(
        ["--model", str(tmp_path), "--out", str(tmp_path / "o2")], capsys, "without config.json"
    )
    heads = tmp_path / "heads.csv"
    heads.write_text(  # a ranking of another model: 8 layers x 4 heads
        "layer,head,score,se,ci_low,ci_high,rank,kind,model,n_layers,n_heads,n_kv_heads\n"
        "7,0,0,0,0,0,1,query,other,8,4,2\n"
    )
    _one_line_exit_2(
        _args(
            model_dirs["llama"],
            tmp_path / "o3",
            "--method",
            "knockout",
            "--ks",
            "0,1",
            "--rank-from",
            str(heads),
        ),
        capsys,
        "was made on a model with 8 layers x 4 query heads (2 KV heads)",
    )


def test_cli_process_exits_2_with_one_line_on_stderr(tmp_path):
    run = _cli(["--limit", "-1", "--out", str(tmp_path)])
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


# --------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_equal_one_process(model_dirs, tmp_path):
    argv = ["--method", "knockout", "--ks", "0,2", "--n-random", "2", "--no-png"]
    two = _cli(_args(model_dirs["gpt2"], tmp_path / "two", *argv), torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main(_args(model_dirs["gpt2"], tmp_path / "one", *argv)) == 0
    one_t, two_t = (load_file(tmp_path / d / "values.safetensors") for d in ("one", "two"))
    for name in one_t:
        torch.testing.assert_close(two_t[name], one_t[name], atol=1e-6, rtol=0)
    one_k, two_k = (KnockoutCurve.load(tmp_path / d / "knockout") for d in ("one", "two"))
    torch.testing.assert_close(two_k.random, one_k.random, atol=1e-6, rtol=0)
    assert one_k.top_heads == two_k.top_heads
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert pd.read_csv(tmp_path / "two" / "heads.csv")[["layer", "head"]].equals(
        pd.read_csv(tmp_path / "one" / "heads.csv")[["layer", "head"]]
    )


def test_torchrun_with_model_answers_and_an_idle_rank(model_dirs, tmp_path):
    """One chunk for two ranks: rank 1 computes nothing but must still join every collective phase
    (the model's first answers included); the outputs equal one process's."""
    argv = ["--first-answer", "model", "--limit", "4", "--no-png"]
    two = _cli(_args(model_dirs["llama"], tmp_path / "two", *argv), torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main(_args(model_dirs["llama"], tmp_path / "one", *argv)) == 0
    for name in ("heads.csv", "examples.json", "values.safetensors", "result.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), (
            name
        )


def test_load_model_passes_a_device_map_through(model_dirs):
    placed = load_model(model_dirs["llama"], device_map={"": "cpu"})
    plain = tiny_model("llama")
    ids = torch.tensor([[1, 5, 9, 2]])
    torch.testing.assert_close(placed(ids), plain(ids), atol=0, rtol=0)
    from sycointerp.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="n_devices=2"):
        load_model(model_dirs["llama"], n_devices=2)


def test_the_manuals_config_example_is_a_valid_job_config():
    text = (REPO / "docs" / "how-to" / "batch-jobs.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    import tomllib

    config = PatchConfig.from_toml_dict(tomllib.loads(block))
    assert config.method == "path" and config.chunk_size == 8
