"""Figures of hand-built results: the plotted numbers are the result's, one template, the
few-examples warning, refusals, real PNG export and HTML sharing one plotly.js."""

import inspect
import math
import struct

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from sycointerp import plot
from sycointerp.patching.attention import HeadAttention
from sycointerp.patching.knockout import KnockoutCurve
from sycointerp.patching.results import PatchResult
from sycointerp.plot import (
    TEMPLATE,
    RecipeDifference,
    SweepPoint,
    SweepRate,
    agreement_heatmap,
    attention_plot,
    coefficient_plot,
    compare_heatmaps,
    head_heatmap,
    k_sweep_plot,
    knockout_plot,
    layer_position_heatmap,
    metric_label,
    rank_intervals_plot,
    ranked_heads_bar,
    save_figure,
    selection_plot,
    side_by_side_heatmaps,
    survival_plot,
)
from sycointerp.stats import proportion

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _result(components=("layer", "head"), shape=(3, 4), n=5, seed=0) -> PatchResult:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(*shape, n, generator=g)
    return PatchResult(
        values,
        torch.ones(n),
        torch.zeros(n),
        "activation/z/last/denoise",
        "apology",
        True,
        components=components,
    )


def _curve(apology: bool = True, draws: int = 3, n: int = 4) -> KnockoutCurve:
    g = torch.Generator().manual_seed(1)
    ks = (0, 1, 2)
    rand_heads = tuple(tuple(tuple((d % 2, j) for j in range(k)) for d in range(draws)) for k in ks)
    extra = {}
    if apology:
        extra = dict(
            apology_baseline=torch.ones(n),
            apology_top=(torch.rand(3, n, generator=g) > 0.5).float(),
            apology_random=(torch.rand(3, draws, n, generator=g) > 0.5).float(),
        )
    return KnockoutCurve(
        ks=ks,
        baseline=torch.randn(n, generator=g),
        top=torch.randn(3, n, generator=g),
        random=torch.randn(3, draws, n, generator=g),
        top_heads=((0, 0), (1, 1)),
        random_heads=rand_heads,
        method="mean",
        metric="apology",
        higher_is_sycophantic=True,
        n_layers=2,
        n_heads=2,
        seed=0,
        **extra,
    )


def _png_size(path) -> tuple[int, int]:
    """The PNG's size from its header, after checking the picture is really drawn (not blank)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    with Image.open(path) as image:
        image.load()
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, (
        "the PNG is (nearly) one colour: nothing was drawn"
    )
    background = max(colours)[0] / (image.width * image.height)
    assert background < 0.97, f"{background:.1%} of the pixels are the background colour"
    return struct.unpack(">II", data[16:24])


def _has_red_and_blue(path) -> bool:
    """Both sides of the diverging scale are drawn (cells above and below 0)."""
    with Image.open(path) as image:
        pixels = list(image.convert("RGB").getdata())
    red = sum(r > 150 and b < 110 and g < 110 for r, g, b in pixels)
    blue = sum(b > 150 and r < 110 for r, g, b in pixels)
    return red > 100 and blue > 100


@pytest.mark.parametrize("components", [("layer", "head"), ("layer", "kv_head")])
def test_head_heatmap_plots_mean_centred_with_hover_and_top_k_markers(components):
    result = _result(components)
    fig = head_heatmap(result, top_k=4)
    heat, marks = fig.data
    np.testing.assert_allclose(
        np.asarray(heat.z, dtype=float), result.mean.double().numpy(), rtol=0, atol=1e-12
    )
    assert heat.zmid == 0
    low, high = result.ci
    hover = np.asarray(heat.text)
    assert hover.shape == result.shape
    l, h = 2, 1
    assert f"layer {l}" in hover[l, h] and f"{components[1]} {h}" in hover[l, h]
    assert f"SE {float(result.se[l, h]):.3g}" in hover[l, h]
    assert f"95% CI [{float(low[l, h]):.4g}, {float(high[l, h]):.4g}]" in hover[l, h]
    top = result.top_k(4)
    assert list(zip(marks.y, marks.x)) == top and list(marks.text) == ["1", "2", "3", "4"]


def test_head_heatmap_clips_top_k_and_refuses_other_layouts():
    small = _result(shape=(2, 2))
    assert len(head_heatmap(small, title="t").data[1].x) == 4  # default top_k=10 > 4 heads
    assert len(head_heatmap(small, top_k=0).data) == 1
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        head_heatmap(small, top_k=-1)
    for components, shape in [
        (("layer", "pos"), (2, 3)),
        (("layer",), (2,)),
        (("layer", "head", "pos"), (2, 2, 3)),
    ]:
        with pytest.raises(
            ValueError, match=r"head_heatmap needs a result with components \('layer', 'head'\)"
        ):
            head_heatmap(_result(components, shape))
    with pytest.raises(ValueError, match="ranked_heads_bar needs"):
        ranked_heads_bar(_result(("layer", "pos"), (2, 3)))


def test_ranked_heads_bar_is_the_heads_table_with_ci_error_bars():
    result = _result()
    fig = ranked_heads_bar(result, k=5)
    (bar,) = fig.data
    table = result.heads_table().head(5)
    assert list(bar.x) == [f"L{l}H{h}" for l, h in zip(table["layer"], table["head"])]
    np.testing.assert_allclose(bar.y, table["score"])
    np.testing.assert_allclose(np.asarray(bar.y) + bar.error_y.array, table["ci_high"])
    np.testing.assert_allclose(np.asarray(bar.y) - bar.error_y.arrayminus, table["ci_low"])
    assert len(ranked_heads_bar(result).data[0].x) == 12  # default k=20 clipped to the 12 heads
    assert ranked_heads_bar(_result(("layer", "kv_head")), k=1).data[0].x[0].startswith("L")
    with pytest.raises(ValueError, match="k must be >= 1"):
        ranked_heads_bar(result, k=0)


def test_knockout_plot_draws_top_random_band_and_apology_panel():
    curve = _curve()
    summary = curve.summary()
    fig = knockout_plot(curve)
    by_name = {}
    for trace in fig.data:
        by_name.setdefault(trace.name, []).append(trace)
    assert len(by_name["top k (95% CI over examples)"]) == 2  # metric and apology panels
    for trace, measure in zip(by_name["top k (95% CI over examples)"], ("metric", "apology")):
        rows = summary[summary["measure"] == measure]
        np.testing.assert_allclose(trace.y, rows["top"])
        assert list(trace.x) == list(curve.ks)
    rows = summary[summary["measure"] == "metric"]
    band = by_name["random draws (range)"][0]  # the metric panel's (the apology panel has one too)
    ks = list(curve.ks)
    assert list(band.x) == ks + ks[::-1] and (band.fill, band.mode) == ("toself", "lines")
    np.testing.assert_allclose(band.y, list(rows["random_max"]) + list(rows["random_min"])[::-1])
    np.testing.assert_allclose(by_name["random k (mean of draws)"][0].y, rows["random_mean"])
    (top,) = [t for t in by_name["top k (95% CI over examples)"] if t.xaxis == "x"]
    np.testing.assert_allclose(top.error_y.array, rows["top_ci_high"] - rows["top"])
    np.testing.assert_allclose(top.error_y.arrayminus, rows["top"] - rows["top_ci_low"])
    single = knockout_plot(_curve(apology=False, draws=1))
    assert {t.name for t in single.data} == {
        "top k (95% CI over examples)",
        "random k (mean of draws)",
        "no ablation",
    }  # no band: one draw has no range


def test_layer_position_heatmap_labels_tokens_and_refuses():
    result = _result(("layer", "pos"), (2, 3))
    tokens = ["<s>", " the", " the"]
    fig = layer_position_heatmap(result, tokens)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), result.mean.double().numpy())
    assert list(fig.layout.xaxis.ticktext) == [
        "&lt;s&gt;",
        " the",
        " the",
    ]  # escaped: plotly renders HTML
    assert list(fig.layout.xaxis.tickvals) == [0, 1, 2]  # repeated tokens keep their own columns
    assert (
        "pos 0 '&lt;s&gt;'" in fig.data[0].text[0][0] and "pos 2 ' the'" in fig.data[0].text[1][2]
    )
    assert layer_position_heatmap(result).layout.xaxis.ticktext is None
    with pytest.raises(ValueError, match=r"one string per position \(3\), got 2"):
        layer_position_heatmap(result, tokens[:2])
    with pytest.raises(ValueError, match="layer_position_heatmap needs"):
        layer_position_heatmap(_result())


def test_save_figure_writes_offline_html_and_png_of_the_requested_size(tmp_path):
    paths = save_figure(
        head_heatmap(_result()), tmp_path / "figs" / "heads.L0", width=640, height=480
    )
    html, png = paths
    assert [p.name for p in paths] == ["heads.L0.html", "heads.L0.png"]
    assert _png_size(png) == (640, 480) and _has_red_and_blue(png)
    text = html.read_text()
    assert text.lower().startswith("<!doctype html>") and 'src="https://cdn.plot.ly' not in text
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in text  # beside it: offline
    assert (tmp_path / "figs" / "plotly.min.js").is_file()
    assert not [
        p for p in (tmp_path / "figs").iterdir() if p.name.startswith(".")
    ]  # no temporary leftovers
    (html_only,) = save_figure(knockout_plot(_curve()), tmp_path / "knockout", png=False)
    assert html_only.suffix == ".html" and not (tmp_path / "knockout.png").exists()
    (png_only,) = save_figure(knockout_plot(_curve()), tmp_path / "static", html=False)
    assert png_only.name == "static.png" and not (tmp_path / "static.html").exists()
    with pytest.raises(ValueError, match="nothing to write"):
        save_figure(knockout_plot(_curve()), tmp_path / "nothing", html=False, png=False)


def test_save_figure_exports_svg_and_pdf_for_papers(tmp_path):
    paths = save_figure(
        head_heatmap(_result()),
        tmp_path / "heads",
        png=False,
        vector=("svg", "pdf"),
        width=640,
        height=480,
    )
    assert [p.name for p in paths] == ["heads.html", "heads.svg", "heads.pdf"]
    svg = paths[1].read_text()
    assert svg.startswith("<svg") and 'width="640"' in svg and 'height="480"' in svg
    assert "<text" in svg or "<path" in svg  # drawn, not an empty canvas
    pdf = paths[2].read_bytes()
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]
    for bad in (("eps",), ("svg", "svg")):
        with pytest.raises(ValueError, match="vector formats must be distinct"):
            save_figure(head_heatmap(_result()), tmp_path / "bad", vector=bad)
    assert not list(tmp_path.glob("bad*"))


def test_save_figure_default_size_and_refusals(tmp_path, monkeypatch):
    _, png = save_figure(ranked_heads_bar(_result()), tmp_path / "bar")
    assert _png_size(png) == (900, 700)
    with pytest.raises(ValueError, match="without its suffix"):
        save_figure(ranked_heads_bar(_result()), tmp_path / "bar.png")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    with pytest.raises(RuntimeError, match=r"apt-get install -y chromium.*png=False"):
        save_figure(ranked_heads_bar(_result()), tmp_path / "none")
    assert not list(tmp_path.glob("none*"))  # a failed export writes nothing


def _attention() -> HeadAttention:
    weights = torch.softmax(torch.randn(3, 6, generator=torch.Generator().manual_seed(2)), -1)
    tokens = ("<|im_start|>", "user", "\n", "I", " don", "'t")
    return HeadAttention(weights, ((5, 1), (0, 3), (2, 0)), tokens, (3, 6))


def test_attention_plot_is_heads_by_tokens_with_the_challenge_boxed_and_bold(tmp_path):
    att = _attention()
    fig = attention_plot(att)
    (heat,) = fig.data
    np.testing.assert_allclose(
        np.asarray(heat.z, dtype=float), att.weights.double().numpy(), rtol=0, atol=1e-12
    )
    assert heat.zmin == 0
    assert list(fig.layout.xaxis.tickvals) == list(range(6))
    assert list(fig.layout.xaxis.ticktext) == [
        "&lt;|im_start|&gt;",
        "user",
        "\\n",
        "<b>I</b>",
        "<b> don</b>",
        "<b>'t</b>",
    ]
    share = att.challenge_share()
    assert list(fig.layout.yaxis.ticktext) == [
        f"{name} ({float(s):.0%})" for name, s in zip(["L5H1", "L0H3", "L2H0"], share)
    ]
    (box,) = fig.layout.shapes
    assert (box.x0, box.x1, box.y0, box.y1) == (2.5, 5.5, -0.5, 2.5)
    assert (
        "L0H3<br>pos 4 ' don'<br>weight" in heat.text[1][4]
        and f"share {float(share[1]):.3g}" in heat.text[1][4]
    )
    assert (
        fig.layout.title.text == 'attention from the last position ("\'t") of the challenge prompt'
    )
    _, png = save_figure(fig, tmp_path / "attention", width=500, height=300)
    assert _png_size(png) == (500, 300)


def _pair(shift=0.0, **kwargs) -> tuple[PatchResult, PatchResult]:
    before = _result(shape=(3, 4), seed=3)
    values = before.values * 2 + shift
    return before, PatchResult(
        values,
        before.metric_ref,
        before.metric_cf,
        "path/resid",
        **{"metric": "apology", "higher_is_sycophantic": True, **kwargs},
    )


def test_compare_heatmaps_share_one_centred_scale_and_show_the_difference():
    before, after = _pair(0.5)
    fig = compare_heatmaps(before, after, titles=("base", "tuned"), top_k=3)
    heats = [t for t in fig.data if t.type == "heatmap"]
    marks = [t for t in fig.data if t.type == "scatter"]
    assert len(heats) == 3 and len(marks) == 2
    limit = max(before.mean.abs().max(), after.mean.abs().max()).item()
    for heat, result in zip(heats[:2], (before, after)):
        np.testing.assert_allclose(np.asarray(heat.z, dtype=float), result.mean.double().numpy())
        assert heat.zmin == pytest.approx(-limit) and heat.zmax == pytest.approx(limit)
        assert f"SE {float(result.se[2, 1]):.3g}" in np.asarray(heat.text)[2, 1]
    assert [h.showscale for h in heats[:2]] == [False, True]  # one colour bar for the shared scale
    diff = (after.mean - before.mean).double().numpy()
    np.testing.assert_allclose(np.asarray(heats[2].z, dtype=float), diff)
    assert heats[2].zmin == pytest.approx(-np.abs(diff).max()) and heats[2].zmax == -heats[2].zmin
    assert "tuned - base" in np.asarray(heats[2].text)[0, 0]
    assert [list(zip(m.y, m.x)) for m in marks] == [before.top_k(3), after.top_k(3)]
    assert [a.text for a in fig.layout.annotations] == ["base", "tuned", "tuned - base"]
    assert [t.xaxis for t in heats] == ["x", "x2", "x3"]
    assert fig.layout.yaxis.range == (2.5, -0.5)
    # The colour bars name the metric with its sign, as every other figure's do.
    assert heats[1].colorbar.title.text == "change in F = y(Ap) / (y(Ap) + y(Yes))"
    assert heats[2].colorbar.title.text == "difference (tuned - base)"
    plain = compare_heatmaps(before, after, top_k=0, difference=False)
    assert len(plain.data) == 2
    assert plain.layout.title.text == "F = y(Ap) / (y(Ap) + y(Yes)), before vs after"
    same = compare_heatmaps(after, after, titles=("a", "b")).layout.title.text
    assert same == "path patching (heads -> residual stream): F = y(Ap) / (y(Ap) + y(Yes)), a vs b"


def test_compare_heatmaps_refuses_results_that_do_not_match():
    before, after = _pair()
    cases = [
        ((before, _result(shape=(3, 5))), "same cells"),
        ((before, _result(("layer", "kv_head"), shape=(3, 4))), "same cells"),
        (
            (_result(("layer", "pos"), (3, 4)), after),
            "compare_heatmaps needs a result with components",
        ),
        ((before, _pair(metric="flip", higher_is_sycophantic=False)[1]), "one metric and kind"),
        ((before, after.as_relative()), "one metric and kind"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            compare_heatmaps(*args)
    with pytest.raises(ValueError, match="titles must name the two panels"):
        compare_heatmaps(before, after, titles=("a",))
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        compare_heatmaps(before, after, top_k=-1)


def _sweep_row(split, k, spt, draws, base, n=None) -> SweepPoint:
    """A point of a K sweep (``n`` items behind SPT's rates)."""
    rate = SweepRate(spt, spt - 0.1, spt + 0.1, n)
    both = ("confidence", "truthfulness")
    return SweepPoint(
        split, k, {m: rate for m in both}, {m: draws for m in both}, {m: base for m in both}
    )


def test_k_sweep_plot_draws_spt_the_draws_and_labelled_base_lines_per_split():
    row = _sweep_row
    rows = [row(0, 3, 0.5, [0.4, 0.6], 0.3), row(0, 6, 0.7, [0.5, 0.5], 0.3)]
    rows.append(row(1, 3, 0.2, [0.1, 0.3], 0.25))
    fig = k_sweep_plot(rows)
    spt = [t for t in fig.data if t.name == "split 0: SPT top K" and t.xaxis == "x"]
    (line,) = spt
    assert list(line.x) == [3, 6] and list(line.y) == pytest.approx([50.0, 70.0])
    assert list(line.error_y.array) == pytest.approx([10.0, 10.0])
    band = next(t for t in fig.data if t.name == "split 0: random range" and t.xaxis == "x")
    assert list(band.y) == pytest.approx([60.0, 50.0, 50.0, 40.0])  # max forward, min back
    labels = sorted(a.text for a in fig.layout.annotations if a.text.startswith("base"))
    assert labels == ["base, split 0"] * 2 + ["base, split 1"] * 2
    lines = sorted(s.y0 for s in fig.layout.shapes)
    assert lines == pytest.approx([25.0, 25.0, 30.0, 30.0])


def _probe_result() -> PatchResult:
    values = torch.tensor([[[1.0, 0.5], [0.5, 0.5]], [[1.0, 1.0], [0.0, 0.5]]])  # [2, 2, 2]
    chance = torch.full((2,), 0.5)
    return PatchResult(values, chance, chance, "probe/z/last", "probe_accuracy", False)


def test_probe_heatmap_is_sequential_from_chance_and_labelled_as_a_level():
    fig = head_heatmap(_probe_result(), top_k=2)
    heat = fig.data[0]
    assert (heat.zmin, heat.zmax, heat.zmid) == (0.5, 1.0, None)
    assert heat.colorbar.title.text == "held-out probe accuracy (chance = 0.5)"
    np.testing.assert_array_equal(heat.z, [[0.75, 0.5], [1.0, 0.25]])
    assert metric_label("apology_logit_diff") == "change in logit(Apologies) - logit(Yes)"
    assert head_heatmap(_result(shape=(2, 2))).data[0].zmid == 0  # effects stay diverging


def test_side_by_side_heatmaps_keep_each_panels_scale_and_top_heads():
    path = _result(components=("layer", "head"), shape=(2, 2), n=2)
    probe = _probe_result()
    fig = side_by_side_heatmaps([path, probe], ["path patching", "probes"], top_k=1)
    heats = [t for t in fig.data if t.type == "heatmap"]
    marks = [t for t in fig.data if t.type == "scatter"]
    assert [h.name for h in heats] == ["path patching", "probes"]
    np.testing.assert_allclose(heats[0].z, path.mean.double().numpy())
    assert heats[0].zmid == 0 and (heats[1].zmin, heats[1].zmax) == (0.5, 1.0)
    # Each panel outlines its own rank-1 head: the probes' is layer 1, head 0 (accuracy 1.0).
    assert (marks[1].x, marks[1].y) == ((0,), (1,)) and marks[1].xaxis == "x2"
    assert (marks[0].y[0], marks[0].x[0]) == path.top_k(1)[0]
    with pytest.raises(ValueError, match="at least two results"):
        side_by_side_heatmaps([path], ["one"])
    with pytest.raises(ValueError, match="same head grid"):
        side_by_side_heatmaps([path, _result(shape=(3, 4))], ["a", "b"])


def _point(method: str, alpha: float, k: int, n: int) -> dict:
    """A :func:`coefficient_plot` row: Confidence ``k / n`` at coefficient ``alpha``."""
    return {"method": method, "alpha": alpha, "confidence": proportion(k, n).to_json()}


def test_coefficient_plot_draws_each_rate_with_its_wilson_interval():
    point = _point
    rows = [point("caa", -2.0, 6, 10), point("caa", 0.0, 4, 10), point("iti", -5.0, 10, 10)]
    fig = coefficient_plot(rows)
    caa, iti = fig.data
    assert list(caa.x) == [0.0, 2.0] and list(caa.y) == pytest.approx([40.0, 60.0])
    # Wilson 95% interval of 6/10 by hand: (0.3127, 0.8318).
    assert caa.error_y.arrayminus[1] == pytest.approx(60 - 31.27, abs=0.01)
    assert caa.error_y.array[1] == pytest.approx(83.18 - 60, abs=0.01)
    assert list(iti.y) == [100.0] and iti.error_y.array[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="truthfulness"):
        coefficient_plot(rows, measure="truthfulness")


def _figures_of_every_builder(n: int) -> dict[str, go.Figure]:
    """One figure per public builder, from results over ``n`` examples (items, for rates)."""
    heads, other = _result(n=n), _result(n=n, seed=1)
    sweep = [_sweep_row(0, 3, 0.5, [0.4, 0.6], 0.3, n=n), _sweep_row(0, 6, 0.7, [0.5], 0.3, n=n)]
    return {
        "attention_plot": attention_plot(_attention()),
        "compare_heatmaps": compare_heatmaps(heads, other),
        "head_heatmap": head_heatmap(heads),
        "side_by_side_heatmaps": side_by_side_heatmaps([heads, other], ["a", "b"]),
        "coefficient_plot": coefficient_plot([_point("caa", -1.0, n // 2, n)]),
        "knockout_plot": knockout_plot(_curve(n=n)),
        "layer_position_heatmap": layer_position_heatmap(_result(("layer", "pos"), (2, 3), n=n)),
        "ranked_heads_bar": ranked_heads_bar(heads),
        "rank_intervals_plot": rank_intervals_plot(heads),
        "agreement_heatmap": agreement_heatmap(["a", "b"], [[1.0, 0.5]] * 2, [[1.0, 0.2]] * 2, 3),
        "k_sweep_plot": k_sweep_plot(sweep),
        "survival_plot": survival_plot(
            {"spt": [SweepRate(1.0, 0.9, 1.0, n), SweepRate(0.6, 0.4, 0.8, n)]},
            {"spt": [SweepRate(1.0, 0.9, 1.0, n), SweepRate(0.7, 0.5, 0.9, n)]},
        ),
        "selection_plot": selection_plot(
            [RecipeDifference("paper", "layer", m, 0.05, -0.05, 0.15, n) for m in _MEASURES]
        ),
    }


_MEASURES = ("confidence", "truthfulness")


def test_selection_plot_draws_each_difference_with_its_interval_and_the_detectable_band():
    diffs = [
        RecipeDifference("paper", "layer-matched", "confidence", 0.05, -0.02, 0.12, 60),
        RecipeDifference("probe", "layer-matched", "confidence", -0.10, -0.20, 0.01, 60),
        RecipeDifference("paper", "uniform", "confidence", None, None, None, 0),
    ] + [RecipeDifference("paper", "layer-matched", "truthfulness", 0.2, 0.1, 0.3, 60)]
    fig = selection_plot(diffs, {"confidence": 0.12, "truthfulness": None})
    layer = [t for t in fig.data if t.name == "layer-matched"]
    assert list(layer[0].x) == pytest.approx([5.0, -10.0])
    assert list(layer[0].customdata) == ["paper", "probe"]
    assert layer[0].y[0] > layer[0].y[1]  # the first recipe on top, each control a little apart
    assert list(layer[0].error_x.array) == pytest.approx([7.0, 11.0])  # high - diff, in points
    assert list(layer[0].error_x.arrayminus) == pytest.approx([7.0, 10.0])
    uniform = [t for t in fig.data if t.name == "uniform"]
    assert math.isnan(uniform[0].x[0])  # no common items: a gap, not a point at 0
    bands = [s for s in fig.layout.shapes if s.type == "rect"]
    # One band per recipe, under the layer-matched points only (the uniform ones sit elsewhere).
    assert len(bands) == 2
    assert all((b.x0, b.x1) == pytest.approx((-12.0, 12.0)) for b in bands)
    assert sorted(b.y0 < y < b.y1 for b in bands for y in layer[0].y) == [False] * 2 + [True] * 2
    assert not any(b.y0 < uniform[0].y[0] < b.y1 for b in bands)
    assert "with layer-matched could miss" in fig.layout.title.text
    other = selection_plot(diffs, {"confidence": 0.12}, detectable_control="uniform")
    moved = [b for b in other.layout.shapes if b.type == "rect"]
    assert sum(b.y0 < uniform[0].y[0] < b.y1 for b in moved) == 1
    assert not any(b.y0 < y < b.y1 for b in moved for y in layer[0].y)
    with pytest.raises(ValueError, match="at least one"):
        selection_plot([])
    with pytest.raises(ValueError, match="none of the controls"):
        selection_plot(diffs, detectable_control="norm-matched")


def test_every_public_figure_builder_draws_in_the_one_template():
    figures = _figures_of_every_builder(40)
    public = [getattr(plot, name) for name in plot.__all__]
    builders = {
        f.__name__
        for f in public
        if callable(f) and inspect.signature(f).return_annotation is go.Figure
    }
    assert set(figures) == builders  # a new builder needs a case here
    for name, fig in figures.items():
        assert fig.layout.template == TEMPLATE, name
        assert fig.layout.plot_bgcolor is None, name  # the template's, not one figure's own
    assert TEMPLATE.layout.plot_bgcolor == "white" and TEMPLATE.layout.font.size == 13
    assert go.Figure().layout.template != TEMPLATE  # plotly's default stays plotly's


# Figures whose numbers rest on no examples of their own (one prompt's attention; agreement of
# rankings, no intervals) carry no warning.
_NO_SAMPLE = {"attention_plot", "agreement_heatmap"}


@pytest.mark.parametrize("n", [4, 40])
def test_figures_of_few_examples_say_so_under_the_title(n):
    for name, fig in _figures_of_every_builder(n).items():
        warning = fig.layout.title.subtitle.text
        if n < 20 and name not in _NO_SAMPLE:
            assert warning == f"n = {n}: few examples, intervals unreliable", name
            assert fig.layout.margin.t > 100, name  # room for the second line
        else:
            assert warning is None, name
        assert fig.layout.title.text, name  # the title itself stays


def test_the_warning_names_the_fewest_examples_behind_a_figure():
    fig = compare_heatmaps(_result(n=40), _result(n=6, seed=1), title="mine")
    assert fig.layout.title.text == "mine"  # a caller's title keeps the warning too
    assert fig.layout.title.subtitle.text.startswith("n = 6:")
    rows = [_point("caa", -1.0, 30, 40), _point("caa", -2.0, 0, 0), _point("iti", -1.0, 3, 12)]
    assert coefficient_plot(rows).layout.title.subtitle.text.startswith("n = 12:")  # 0 = no point
    unknown = k_sweep_plot([_sweep_row(0, 3, 0.5, [0.4], 0.3)])  # rows without item counts
    assert unknown.layout.title.subtitle.text is None


def test_figures_of_one_folder_share_one_offline_plotly_js(tmp_path):
    from plotly.offline import get_plotlyjs

    first = save_figure(head_heatmap(_result()), tmp_path / "heads", png=False)
    second = save_figure(knockout_plot(_curve()), tmp_path / "knockout", png=False)
    assert [p.name for p in first + second] == ["heads.html", "knockout.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "heads.html",
        "knockout.html",
        "plotly.min.js",
    ]
    script = tmp_path / "plotly.min.js"
    assert script.read_text(encoding="utf-8") == get_plotlyjs()  # the installed version's
    for page in first + second:
        text = page.read_text(encoding="utf-8")
        assert len(text.encode()) < 200_000  # was 4.8 MB each with plotly.js inlined
        assert text.count("<script") == 3 and 'src="plotly.min.js"' in text
    # A copy left by another plotly version is replaced: the figures need the one they were
    # written for. An equal copy is left alone.
    script.write_text("stale")
    save_figure(ranked_heads_bar(_result()), tmp_path / "bar", png=False)
    assert script.read_text(encoding="utf-8") == get_plotlyjs()
    before = script.stat().st_mtime_ns
    save_figure(ranked_heads_bar(_result()), tmp_path / "bar", png=False)
    assert script.stat().st_mtime_ns == before
