"""Progress reporting: the patching calls count patched cells (a tqdm bar, or a callback) without
changing a single number; the jobs show their bars unless ``-q`` and log each phase with its time.

tqdm redraws its bar in place (``\\r``), so the last segment of stderr is the closing draw.
"""

import re

import pytest
import torch

from sycointerp.cli import effect, patch
from sycointerp.data import build_pairs, load_builtin
from sycointerp.metrics import apology_logit_diff_metric
from sycointerp.patching import (
    KnockoutCurve,
    PatchResult,
    attribution_patch_heads,
    knockout_curve,
    patch_heads,
    path_patch_heads,
    path_patch_to_receivers,
)
from sycointerp.testing import save_tiny_model

N_EXAMPLES = 5


def _knockout(model, pairs, metric, **kw) -> KnockoutCurve:
    ranking = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    return knockout_curve(model, pairs, metric, ranking, [0, 2], n_random=2, batch_size=2, **kw)


def _knockout_cells(curve: KnockoutCurve) -> int:
    """One cell per distinct ablated head set and example (equal sets run once)."""
    sets = [(), *(curve.top_heads[:k] for k in curve.ks)]
    sets += [d for draws in curve.random_heads for d in draws]
    return len({frozenset(s) for s in sets}) * N_EXAMPLES


# name -> (call, cells it patches on the tiny Llama: 2 layers x 4 heads (2 KV heads), 5 examples)
CALLS = {
    "activation": (
        lambda m, p, metric, **kw: patch_heads(m, p, metric, batch_size=8, **kw),
        lambda result: 2 * 4 * N_EXAMPLES,
    ),
    "activation_kv_all": (
        lambda m, p, metric, **kw: patch_heads(
            m, p, metric, component="v", position="all", batch_size=4, **kw
        ),
        lambda result: 2 * 2 * N_EXAMPLES,
    ),
    "path": (
        lambda m, p, metric, **kw: path_patch_heads(m, p, metric, batch_size=8, **kw),
        lambda result: 2 * 4 * N_EXAMPLES,
    ),
    "receivers": (  # two patched runs per (sender, example)
        lambda m, p, metric, **kw: path_patch_to_receivers(m, p, metric, [(1, 0)], **kw),
        lambda result: 2 * 2 * 4 * N_EXAMPLES,
    ),
    "attribution": (  # every head estimated, plus the 3 verified heads patched exactly
        lambda m, p, metric, **kw: attribution_patch_heads(
            m, p, metric, verify_top_k=3, batch_size=3, **kw
        ),
        lambda result: (2 * 4 + 3) * N_EXAMPLES,
    ),
    "knockout": (_knockout, _knockout_cells),
}


@pytest.fixture(scope="module")
def setup(tiny_llama):
    aligned = build_pairs(load_builtin()[:N_EXAMPLES], tiny_llama.tokenizer, align=True)
    return tiny_llama, aligned, apology_logit_diff_metric(tiny_llama.tokenizer)


def _tensors(out: PatchResult | KnockoutCurve) -> dict[str, torch.Tensor]:
    return out.to_bundle()[0]


def _closing_bar(stderr: str) -> str:
    return stderr.strip().split("\r")[-1]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_progress_counts_patched_cells_and_changes_no_result(setup, name, capsys):
    call, cells = CALLS[name]
    model, pairs, metric = setup
    silent = call(model, pairs, metric)
    assert capsys.readouterr().err == ""
    shown = call(model, pairs, metric, progress=True)
    bar = _closing_bar(capsys.readouterr().err)
    reports: list[tuple[int, int]] = []
    counted = call(model, pairs, metric, progress=lambda n, total: reports.append((n, total)))
    for other in (shown, counted):  # bit-identical, not close
        assert other.to_bundle()[1] == silent.to_bundle()[1]
        for key, value in _tensors(silent).items():
            assert torch.equal(_tensors(other)[key], value), key
    total = cells(silent)
    # Cells done of the total, [elapsed<left, rate].
    closing = rf"\| {total}/{total} \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(cell/s|s/cell)\]$"
    assert re.search(closing, bar), bar
    # The callback hears the call's total with every report, and more than once per call.
    assert len(reports) > 1 and {t for _, t in reports} == {total}
    assert sum(n for n, _ in reports) == total


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama"))


def _patch_job(model_dir: str, out, *extra: str) -> list[str]:
    # Two chunks of 2 examples: the bar's total is known from the first chunk's first report.
    return [
        "--model", model_dir, "--limit", "4", "--chunk-size", "2", "--no-png", "--out", str(out),
        *extra,
    ]  # fmt: skip


def test_patch_job_bar_counts_cells_and_logs_phase_times(model_dir, tmp_path, capsys):
    assert patch.main(_patch_job(model_dir, tmp_path / "job")) == 0
    err = capsys.readouterr().err
    bars = [s for s in err.replace("\n", "\r").split("\r") if s.startswith("path patching:")]
    # The bar counts (head, example) cells: 8 heads x 4 examples.
    assert re.search(r"\| 32/32 \[.*cell", bars[-1]), bars
    assert re.search(r"path patching: 32 cells \(8 per example x 4 examples\) in \d+\.\d s", err)
    assert re.search(r"loaded .* in \d+\.\d s", err) and "written to" in err


def test_patch_job_quiet_shows_no_bar_and_no_phase_log(model_dir, tmp_path, capsys):
    assert patch.main(_patch_job(model_dir, tmp_path / "job", "-q")) == 0
    captured = capsys.readouterr()
    assert "cell" not in captured.err and "%|" not in captured.err, captured.err
    assert captured.out == ""


def test_effect_quiet_shows_no_bar(model_dir, tmp_path, capsys):
    # Without -q the same run draws its generate / forward bars on stderr (as before -q existed).
    argv = ["--model", model_dir, "--limit", "1", "--no-apology-lp", "-q"]
    assert effect.main([*argv, "--out", str(tmp_path / "quiet")]) == 0
    captured = capsys.readouterr()
    assert "%|" not in captured.err and "it/s" not in captured.err, captured.err
    assert "first-turn accuracy" in captured.out


def test_effect_takes_the_shared_verbosity_flags():
    parser = effect.build_parser()
    assert parser.parse_args(["-v"]).verbose and parser.parse_args(["--quiet"]).quiet
    with pytest.raises(SystemExit):
        parser.parse_args(["-q", "-v"])  # exclusive, as in the other jobs
