"""The workflow layer as a library: each job called from Python writes the same files as its
command line, and a method, a metric and an SPT baseline added by registration alone (defined
here, in the test) run through the command line end to end."""

import json
from pathlib import Path

import pytest
import torch

from sycointerp.cli.main import main
from sycointerp.metrics import METRICS, MetricEntry, PatchMetric
from sycointerp.patching.methods import PATCH_METHODS, PatchMethod
from sycointerp.patching.results import PatchResult
from sycointerp.spt.methods import SPT_METHODS, MethodInputs, SPTMethod
from sycointerp.spt.tunable import HeadDeltas
from sycointerp.testing import save_tiny_model
from sycointerp.workflows import effect, patch, spt, study
from sycointerp.workflows.patch_config import PatchConfig
from sycointerp.workflows.spt_config import SPTConfig
from sycointerp.workflows.study_config import StudyConfig
from tests.unit.test_golden import manifest
from tests.unit.test_study import SMALL

SPT_SMALL = [
    "--limit", "16", "--steps", "2", "--warmup-steps", "1", "--eval-limit", "3",
    "--max-new-tokens", "3", "--answer-tokens", "3", "--top-k", "2", "--lr", "0.01",
]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama"))


def _same_files(a: Path, b: Path) -> None:
    """Equal outputs, the directories' own paths (and timings) aside."""
    left, right = manifest(a, a), manifest(b, b)
    assert sorted(left) == sorted(right)
    assert [f for f in left if left[f] != right[f]] == []


# --------------------------------------------------------------------------- Python = CLI


def test_the_patch_job_from_python_writes_what_the_cli_writes(model_dir, tmp_path):
    config = PatchConfig(model=model_dir, limit=6, chunk_size=4, png=False)
    done = patch.run(config, tmp_path / "py", progress=True)
    assert done.status == "new" and done.result().shape == (2, 4)
    assert done.heads().heads[:1] == tuple(done.result().rank()[:1])
    argv = ["patch", "--model", model_dir, "--limit", "6", "--chunk-size", "4", "--no-png", "-q"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    _same_files(tmp_path / "py", tmp_path / "cli")
    assert patch.run(config, tmp_path / "py").status == "complete"  # a rerun does nothing


def test_the_spt_experiment_from_python_writes_what_the_cli_writes(model_dir, tmp_path):
    methods = ["base", "spt", "random_layer"]
    config = SPTConfig(
        model=model_dir, limit=16, steps=2, warmup_steps=1, eval_limit=3, max_new_tokens=3,
        answer_tokens=3, top_k=2, lr=0.01, methods=methods,
    )  # fmt: skip
    done = spt.run(config, tmp_path / "py")
    assert list(done.rows) == methods and done.rows["spt"]["heads"] == 2
    assert done.evaluation("spt").n == 3
    with pytest.raises(KeyError, match="no method run 'sft'"):
        done.evaluation("sft")
    argv = ["spt", "--model", model_dir, *SPT_SMALL, "--methods", ",".join(methods), "-q"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    _same_files(tmp_path / "py", tmp_path / "cli")


def test_the_effect_job_from_python_writes_what_the_cli_writes(model_dir, tmp_path):
    done = effect.run(effect.EffectConfig(model=model_dir, limit=4), tmp_path / "py")
    assert 0.0 <= done.accuracy <= 1.0 and done.effect.n == 4
    argv = ["effect", "--model", model_dir, "--limit", "4", "-q"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    _same_files(tmp_path / "py", tmp_path / "cli")


def test_the_study_from_python_writes_what_the_cli_writes(model_dir, tmp_path):
    args = [a for a in SMALL if a != "-q"]
    options = {k[2:].replace("-", "_"): v for k, v in zip(args[::2], args[1::2])}
    config = _study_config(model_dir, options)
    done = study.run(config, tmp_path / "py", progress=False)
    assert [r["protocol"] for r in done.record["protocols"]["rows"]] == ["stem", "free"]
    assert "## 6. The K sweep" in done.markdown
    assert main(["study", "--model", model_dir, *SMALL, "--out", str(tmp_path / "cli")]) == 0
    _same_files(tmp_path / "py", tmp_path / "cli")


def _study_config(model_dir: str, options: dict[str, str]) -> StudyConfig:
    """``StudyConfig`` of the command line's ``SMALL`` flags, typed field by field."""
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(StudyConfig)}
    typed = {}
    for name, text in options.items():
        kind = types[name]
        if kind in (list[int], list[str]):
            item = int if kind == list[int] else str
            typed[name] = [item(x) for x in text.split(",")]
        else:
            typed[name] = kind(text)
    return StudyConfig(model=model_dir, **typed)


# --------------------------------------------------------------------------- registration


def _half_patch(model, pairs, metric, *, batch_size, progress, scale):
    """A toy method: every head's effect is ``scale`` x the pair's challenge effect."""
    from sycointerp.patching import path_patch_heads

    exact = path_patch_heads(model, pairs, metric, batch_size=batch_size)
    gap = exact.metric_cf - exact.metric_ref
    values = scale * gap.expand(*exact.values.shape[:2], -1).clone()
    return PatchResult.measured(
        values, exact.metric_ref, exact.metric_cf, "toy", metric, exact.example_ids, model
    )


def test_a_patching_method_added_by_registration_runs_through_the_cli(model_dir, tmp_path):
    toy = PatchMethod("toy", "toy patching", _half_patch, {"ig_steps": "scale"})
    out = tmp_path / "job"
    argv = ["patch", "--model", model_dir, "--limit", "4", "--no-png", "-q", "--out", str(out)]
    with PATCH_METHODS.added(toy):
        assert main([*argv, "--method", "toy", "--ig-steps", "3"]) == 0
    result = PatchResult.load(out)
    assert result.method == "toy" and result.metric == "apology_logit_diff"
    gap = result.metric_cf - result.metric_ref
    torch.testing.assert_close(result.values[1, 2], 3 * gap)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "toy" and "toy patching" in (out / "report.html").read_text()
    assert "toy" not in PATCH_METHODS  # registered inside the block only
    assert main([*argv[:-1], str(tmp_path / "again"), "--method", "toy"]) == 2


def _top_token_metric(tokenizer, pairs) -> PatchMetric:
    """A toy metric: the logit of token id 5 (no sign meaning, only a registration test)."""
    return PatchMetric("token5", True, lambda logits, example: logits[:, 5], (5,))


def test_a_metric_added_by_registration_ranks_heads_for_the_patch_job_and_spt(model_dir, tmp_path):
    entry = MetricEntry("token5", "logit of token 5", "reply", _top_token_metric)
    with METRICS.added(entry):
        argv = ["patch", "--model", model_dir, "--limit", "4", "--no-png", "-q"]
        assert main([*argv, "--metric", "token5", "--out", str(tmp_path / "job")]) == 0
        spt_argv = ["spt", "--model", model_dir, *SPT_SMALL, "--methods", "spt", "-q"]
        out = tmp_path / "spt"
        assert main([*spt_argv, "--rank-metric", "token5", "--out", str(out)]) == 0
    ranking = PatchResult.load(out / "ranking")
    assert ranking.metric == "token5" and PatchResult.load(out / "spt" / "repatch").metric == (
        "token5"
    )
    heads = json.loads((out / "heads.json").read_text())["heads"]
    assert sorted(tuple(h) for h in heads) == sorted(tuple(h) for h in ranking.rank()[:2])
    assert PatchResult.load(tmp_path / "job").metric == "token5"


def _layer0(inputs: MethodInputs) -> HeadDeltas:
    """A toy baseline: tune every head of the first layer."""
    from sycointerp.heads import HeadSet

    every = tuple((0, h) for h in range(inputs.heads.n_heads))
    chosen = HeadSet(every, inputs.heads.n_layers, inputs.heads.n_heads, "layer 0")
    return HeadDeltas(inputs.model, chosen, tune_kv=inputs.tune_kv)


def test_an_spt_baseline_added_by_registration_runs_through_the_cli(model_dir, tmp_path):
    toy = SPTMethod("layer0", "every head of layer 0", _layer0)
    out = tmp_path / "spt"
    argv = ["spt", "--model", model_dir, *SPT_SMALL, "-q", "--out", str(out)]
    with SPT_METHODS.added(toy):
        assert main([*argv, "--methods", "base,layer0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["base", "layer0"]
    assert report["rows"][1]["train"]["n_trainable"] > 0
    heads = json.loads((out / "layer0" / "heads.json").read_text())["heads"]
    assert sorted(tuple(h) for h in heads) == [(0, h) for h in range(4)]
    assert "layer0" in (out / "results.md").read_text()
    refused = main([*argv[:-1], str(tmp_path / "other"), "--methods", "base,layer0"])
    assert refused == 2  # outside the block the name is unknown again
