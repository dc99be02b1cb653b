"""Plotly figures of patching results and knockout curves, and their export to HTML and PNG.

Conventions:
- Every figure shows the mean effect over examples (``result.mean``: the score that ``heads.csv``
  ranks). Heatmaps use a diverging scale centred at 0 (``zmid=0``): red cells raise the metric
  when patched, blue cells lower it. Layer 0 is the top row. Probe accuracies
  (``metric="probe_accuracy"``) are levels, not effects: a sequential scale from chance (0.5) to 1.
- Rank labels follow :meth:`PatchResult.rank`: rank 1 is the cell whose patching most *reduces*
  sycophancy, which is the most negative score for apology-style metrics and the most positive for
  ``flip``. The ranking, not the colour, says which end of the scale matters.
- Hover text gives the cell, the score, its standard error and the 95% bootstrap interval
  (``result.ci``). Error bars are that interval, not +-SE.
- Positions are drawn on a numeric axis with the token strings (HTML-escaped, as plotly renders
  labels as HTML) as tick labels, so repeated tokens (two ``" the"``) stay separate columns.
- :func:`compare_heatmaps` draws two per-head results on one diverging scale (``zmin = -zmax``
  shared by both panels), so equal colours are equal scores; the ``after - before`` panel has its
  own.
- :func:`side_by_side_heatmaps` draws rankings of different measures (path patching beside
  probes), each panel on its own scale; :func:`coefficient_plot` draws a rate against the
  steering coefficient; knockout curves draw the top-k mean with its bootstrap interval and the
  random draws' range (``KnockoutCurve.summary`` holds the paired top - random difference).
- :func:`attention_plot` is not a patching figure: it shows attention probabilities (scale from 0)
  of chosen heads from the last prompt position, the challenge turn's tokens bold and boxed.
- One look: every figure uses :data:`TEMPLATE` (plotly's "plotly_white" with this project's font
  sizes), so the figures of a paper match. Colour bars and axes are labelled by
  :func:`metric_label` (what changes, with its sign: ``"change in ..."``, ``"% change in ..."``)
  and :func:`method_label`; top-ranked heads are outlined with open squares and numbered, so the
  cell's colour stays visible.
- Few examples: a figure whose values or intervals rest on fewer than
  :data:`~sycointerp.stats.SMALL_SAMPLE` examples (items, for rates) says so in a subtitle under
  its title (``"n = 6: few examples, intervals unreliable"``).

HTML export (:func:`save_figure`) writes one copy of plotly.js, ``plotly.min.js``, beside the HTML
files of a folder and refers to it, so each page still opens offline and a job's folder of
figures holds plotly.js (4.8 MB) once, not once per figure (``report.html`` inlines its own copy).

PNG export (:func:`save_figure`) goes through kaleido >= 1, which drives a Chromium-family browser
that it finds on ``PATH`` (Debian's ``chromium`` at ``/usr/bin/chromium`` works; ``make install``
installs it as root) or at ``$BROWSER_PATH``. ``kaleido.get_chrome_sync()`` would download Chrome
instead, which fails offline. Without a browser :func:`save_figure` raises a ``RuntimeError`` naming
the fix rather than writing the HTML alone.

Refusals: per-head figures need ``("layer", "head")`` or ``("layer", "kv_head")`` cells, the
position heatmap ``("layer", "pos")`` cells; ``tokens`` must hold one string per position;
:func:`compare_heatmaps` needs two results of the same cells, shape, metric and kind.
"""

import html
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import plotly.io as pio
from plotly.basedatatypes import BaseTraceType
from plotly.subplots import make_subplots

from sycointerp._io import atomic_write
from sycointerp.metrics import METRICS
from sycointerp.patching.attention import HeadAttention
from sycointerp.patching.knockout import KnockoutCurve
from sycointerp.patching.methods import PATCH_METHODS
from sycointerp.patching.results import HEAD_COMPONENTS, PatchResult
from sycointerp.stats import SMALL_SAMPLE

__all__ = [
    "attention_plot",
    "compare_heatmaps",
    "head_heatmap",
    "side_by_side_heatmaps",
    "coefficient_plot",
    "knockout_plot",
    "layer_position_heatmap",
    "ranked_heads_bar",
    "rank_intervals_plot",
    "agreement_heatmap",
    "k_sweep_plot",
    "SweepPoint",
    "SweepRate",
    "survival_plot",
    "RecipeDifference",
    "selection_plot",
    "check_png_export",
    "save_figure",
    "metric_label",
    "method_label",
    "TEMPLATE",
]

_RENDER_ATTEMPTS = 5
COLORSCALE = "RdBu_r"  # diverging: blue < 0 < red
_LINES = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]  # one colour per line (split, method)
_MANY = plotly.colors.qualitative.D3  # ten colours: every method of an SPT run
_AXIS_TITLES = {"head": "head", "kv_head": "KV head", "pos": "position"}
_PLOTLY_JS = "plotly.min.js"  # the name plotly's include_plotlyjs="directory" pages load
_BROWSER_FIX = (
    "PNG export needs a Chromium-family browser for kaleido and none was found: install one with "
    "`apt-get install -y chromium` (`make install` does this as root), point $BROWSER_PATH at a "
    "chrome/chromium executable, or call save_figure(..., png=False) to write the HTML only"
)


def _template() -> go.layout.Template:
    """plotly_white (white background, light grid lines that help read the line figures and hide
    under heatmap cells) with text sized to stay readable when a 900-pixel figure is shrunk to a
    paper's column, and the line colours of :data:`_LINES`."""
    template = go.layout.Template(pio.templates["plotly_white"])  # a copy: plotly's stays as is
    template.layout.update(
        font={"size": 13},
        title={"font": {"size": 17}, "subtitle": {"font": {"size": 13, "color": "crimson"}}},
        colorway=_LINES,
    )
    template.layout.annotationdefaults = {"font": {"size": 14}}  # subplot titles
    return template


TEMPLATE = _template()


def _new_figure(*traces: BaseTraceType) -> go.Figure:
    """A figure of ``traces`` in :data:`TEMPLATE`."""
    return go.Figure(list(traces), layout={"template": TEMPLATE})


def _new_subplots(titles: Sequence[str], **grid: float | bool) -> go.Figure:
    """One row of subplots titled ``titles`` in :data:`TEMPLATE` (``grid``: make_subplots'
    ``shared_yaxes``, ``horizontal_spacing``)."""
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=list(titles), **grid)
    return fig.update_layout(template=TEMPLATE)


def _few_examples(n: int | None) -> str | None:
    """The warning of a figure resting on ``n`` < :data:`SMALL_SAMPLE` examples (None otherwise,
    or when ``n`` is unknown): a bootstrap interval of a handful of values looks precise and is
    not."""
    if n is None or n >= SMALL_SAMPLE:
        return None
    return f"n = {n}: few examples, intervals unreliable"


def _set_title(fig: go.Figure, title: str, n: int | None) -> None:
    """Title ``fig``; below it, in a subtitle that long titles do not push off the page, the
    warning of :func:`_few_examples` when ``n`` is small."""
    warning = _few_examples(n)
    fig.update_layout(title={"text": title, "subtitle": {"text": warning}})
    if warning:  # room for the second line above the plots' own titles (plotly's default: 100)
        fig.update_layout(margin={"t": 125})


def _fewest(counts: Sequence[int | None]) -> int | None:
    """The smallest known count of items behind a figure's points (a rate over 0 items is drawn as
    a gap, not a point, so it does not count); None when none is known."""
    known = [n for n in counts if n]
    return min(known) if known else None


def _n_examples(result: PatchResult) -> int:
    return int(result.values.shape[-1])


# Readable names of what a result records beyond the registries (METRICS, PATCH_METHODS): the
# challenge effect's multi-token metric and the probe ranking.
_OTHER_METRIC_NAMES = {"apology_lp": "log-odds of apologising vs a firm reply"}
# Metrics whose values are levels, not changes under patching (a probe has no unpatched run).
_LEVEL_METRICS = {"probe_accuracy": "held-out probe accuracy (chance = 0.5)"}
_OTHER_METHOD_NAMES = {"probe": "linear probes"}


def _metric_name(metric: str) -> str:
    """The readable name of a metric: its registered label (unknown metrics keep their name)."""
    if metric in METRICS:
        return METRICS[metric].label
    return _OTHER_METRIC_NAMES.get(metric, metric)


def _method_name(technique: str) -> str:
    """The readable name of a patching technique: its registered label, else the name."""
    if technique in PATCH_METHODS:
        return PATCH_METHODS[technique].label
    return _OTHER_METHOD_NAMES.get(technique, technique)


def metric_label(metric: str, kind: str = "absolute") -> str:
    """An axis label for a patching score: ``"change in logit(Apologies) - logit(Yes)"``;
    relative scores are ``"% change in ..."`` (the paper's score); a probe's accuracy is a level,
    not a change. Unknown metrics keep their name."""
    if metric in _LEVEL_METRICS:
        return _LEVEL_METRICS[metric]
    name = _metric_name(metric)
    return f"% change in {name}" if kind == "relative" else f"change in {name}"


def method_label(method: str) -> str:
    """``"path/resid"`` -> ``"path patching (heads -> residual stream)"``; other methods name
    their technique and the rest of their tag (site, positions, direction) in brackets."""
    technique, _, rest = method.partition("/")
    name = _method_name(technique)
    if method.startswith("path/resid"):
        return f"{name} (heads -> residual stream{', MLPs frozen' if 'frozen' in method else ''})"
    return f"{name} ({rest.replace('/', ', ')})" if rest else name


def _check_components(result: PatchResult, allowed: Sequence[tuple[str, ...]], caller: str) -> None:
    if result.components not in allowed:
        names = " or ".join(str(c) for c in allowed)
        raise ValueError(
            f"{caller} needs a result with components {names}, got {result.components}"
        )


def _hover_text(result: PatchResult, column_labels: Sequence[str] | None = None) -> np.ndarray:
    """``[layer, column]`` hover strings: cell, score, SE and 95% CI of a two-axis result."""
    low, high = (t.double().numpy() for t in result.ci)
    mean, se = result.mean.double().numpy(), result.se.double().numpy()
    column = result.components[1]
    text = np.empty(result.shape, dtype=object)
    for l, c in np.ndindex(*result.shape):
        label = (
            f" {html.escape(repr(column_labels[c]), quote=False)}"
            if column_labels is not None
            else ""
        )
        text[l, c] = (
            f"layer {l}<br>{column} {c}{label}<br>score {mean[l, c]:.4g}<br>SE {se[l, c]:.3g}"
            f"<br>95% CI [{low[l, c]:.4g}, {high[l, c]:.4g}]"
        )
    return text


def _colours(result: PatchResult) -> dict:
    """Diverging around 0 for patching effects; sequential from chance (0.5) to 1 for probe
    accuracies, which are never negative."""
    if result.metric == "probe_accuracy":
        return {"colorscale": "Viridis", "zmin": 0.5, "zmax": 1.0}
    return {"colorscale": COLORSCALE, "zmid": 0}


def _heatmap(
    result: PatchResult, column_labels: Sequence[str] | None, title: str | None
) -> go.Figure:
    """The ``[layer, column]`` heatmap of ``result.mean`` shared by the head and position
    figures."""
    heat = go.Heatmap(
        z=result.mean.double().numpy(),
        x=list(range(result.shape[1])),
        y=list(range(result.shape[0])),
        **_colours(result),
        colorbar={
            "title": {"text": metric_label(result.metric, result.kind)},
            "title_side": "right",
        },
        text=_hover_text(result, column_labels),
        hovertemplate="%{text}<extra></extra>",
        name="score",
    )
    fig = _new_figure(heat)
    default = f"{method_label(result.method)}: {_metric_name(result.metric)}"
    _set_title(fig, title or default, _n_examples(result))
    fig.update_xaxes(title=_AXIS_TITLES.get(result.components[1], result.components[1]), dtick=1)
    fig.update_yaxes(
        title="layer", range=[result.shape[0] - 0.5, -0.5], dtick=1
    )  # reversed: layer 0 on top
    return fig


def head_heatmap(result: PatchResult, *, title: str | None = None, top_k: int = 10) -> go.Figure:
    """Layer x head heatmap of the mean effect, with the top-ranked heads outlined and numbered.

    Args:
        result: a per-head result (``("layer", "head")`` or ``("layer", "kv_head")``).
        title: figure title; defaults to ``"<method>: <metric>"``.
        top_k: how many of :meth:`PatchResult.rank`'s first heads to mark (clipped to the number
            of heads; 0 marks none).

    Returns:
        A heatmap (trace 0, ``z[layer][head]``) plus, when ``top_k > 0``, a marker trace whose
        text is each marked head's rank.

    Raises:
        ValueError: other components, or a negative ``top_k``.
    """
    _check_components(result, HEAD_COMPONENTS, "head_heatmap")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    fig = _heatmap(result, None, title)
    marks = _top_k_markers(result, top_k)
    if marks is not None:
        fig.add_trace(marks)
    return fig


def _top_k_markers(result: PatchResult, top_k: int) -> go.Scatter | None:
    """Open squares outlining the first ``top_k`` heads of :meth:`PatchResult.rank`, each rank
    written at the square's upper right (None for 0): the cell's colour stays visible, and
    nothing is clipped at the edge of the grid."""
    k = min(top_k, int(np.prod(result.shape)))
    if not k:
        return None
    top = result.top_k(k)
    return go.Scatter(
        x=[h for _, h in top],
        y=[l for l, _ in top],
        mode="markers+text",
        name=f"top {k}",
        text=[str(r) for r in range(1, k + 1)],
        textposition="top right",
        textfont={"size": 10, "color": "black"},
        marker={"symbol": "square-open", "size": 16, "color": "black", "line": {"width": 2}},
        cliponaxis=False,
        hoverinfo="skip",
        showlegend=False,
    )


def _check_comparable(before: PatchResult, after: PatchResult) -> None:
    """Refuse two results that one colour scale cannot compare cell by cell."""
    for result in (before, after):
        _check_components(result, HEAD_COMPONENTS, "compare_heatmaps")
    if before.components != after.components or before.shape != after.shape:
        raise ValueError(
            f"compare_heatmaps needs results of the same cells, got {before.components} "
            f"{before.shape} and {after.components} {after.shape}"
        )
    if (before.metric, before.kind) != (after.metric, after.kind):
        raise ValueError(
            f"compare_heatmaps needs results of one metric and kind, got {before.metric!r} "
            f"({before.kind}) and {after.metric!r} ({after.kind})"
        )


def _difference_text(before: PatchResult, after: PatchResult, titles: Sequence[str]) -> np.ndarray:
    """``[layer, column]`` hover strings of the after - before panel."""
    b, a = before.mean.double().numpy(), after.mean.double().numpy()
    column = before.components[1]
    text = np.empty(before.shape, dtype=object)
    for l, c in np.ndindex(*before.shape):
        text[l, c] = (
            f"layer {l}<br>{column} {c}<br>{titles[1]} - {titles[0]}: {a[l, c] - b[l, c]:.4g}"
            f"<br>{titles[0]} {b[l, c]:.4g}, {titles[1]} {a[l, c]:.4g}"
        )
    return text


def _colorbar(fig: go.Figure, col: int, title: str) -> dict:
    """A vertical colour bar just right of subplot ``col``."""
    axis = fig.layout["xaxis" if col == 1 else f"xaxis{col}"]
    return {
        "title": {"text": title, "side": "right"},  # beside the bar, not over the next panel
        "x": axis.domain[1] + 0.005,
        "xanchor": "left",
        "len": 0.9,
        "thickness": 14,
    }


def compare_heatmaps(
    before: PatchResult,
    after: PatchResult,
    *,
    titles: Sequence[str] = ("before", "after"),
    title: str | None = None,
    top_k: int = 10,
    difference: bool = True,
) -> go.Figure:
    """Two layer x head heatmaps side by side on one colour scale, plus their difference.

    Both panels share a diverging scale centred at 0 (``zmin = -zmax``, the largest absolute mean
    of either result), so equal colours are equal scores. The third panel, ``after - before``, has
    its own symmetric scale. Hover text as in :func:`head_heatmap`; each of the first two panels
    outlines its own result's top-ranked heads with numbered open squares.

    Args:
        before: a per-head result (e.g. a model before fine-tuning, or one patching method).
        after: a per-head result of the same cells, metric and kind as ``before``.
        titles: the two panels' titles.
        title: figure title; defaults to ``"<method>: <metric>, <titles[0]> vs <titles[1]>"``
            (the method only when both results share it).
        top_k: heads to outline per panel, as in :func:`head_heatmap`.
        difference: add the ``after - before`` panel.

    Returns:
        Heatmaps in the order before, after (, difference); marker traces follow their panel's
        heatmap when ``top_k > 0``.

    Raises:
        ValueError: non-head components, different components, shapes, metrics or kinds; not
            two titles; a negative ``top_k``.
    """
    _check_comparable(before, after)
    if len(titles) != 2:
        raise ValueError(f"titles must name the two panels, got {titles!r}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    means = [r.mean.double().numpy() for r in (before, after)]
    limit = float(max(np.abs(m).max() for m in means)) or 1.0
    names = [*titles, f"{titles[1]} - {titles[0]}"][: 3 if difference else 2]
    fig = _new_subplots(names, shared_yaxes=True, horizontal_spacing=0.1)
    scale = metric_label(before.metric, before.kind)
    for col, (result, z, name) in enumerate(zip((before, after), means, titles), start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                zmin=-limit,
                zmax=limit,
                colorscale=COLORSCALE,
                showscale=col == 2,
                colorbar=_colorbar(fig, 2, scale),
                text=_hover_text(result),
                name=name,
                hovertemplate=f"{html.escape(name)}<br>%{{text}}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        marks = _top_k_markers(result, top_k)
        if marks is not None:
            fig.add_trace(marks, row=1, col=col)
    if difference:
        diff = means[1] - means[0]
        bound = float(np.abs(diff).max()) or 1.0
        fig.add_trace(
            go.Heatmap(
                z=diff,
                zmin=-bound,
                zmax=bound,
                colorscale=COLORSCALE,
                name=names[2],
                colorbar=_colorbar(fig, 3, f"difference ({names[2]})"),
                text=_difference_text(before, after, titles),
                hovertemplate="%{text}<extra></extra>",
            ),
            row=1,
            col=3,
        )
    n = min(_n_examples(before), _n_examples(after))
    _set_title(fig, title or _comparison_title(before, after, titles), n)
    fig.update_xaxes(title=_AXIS_TITLES[before.components[1]], dtick=1)
    fig.update_yaxes(range=[before.shape[0] - 0.5, -0.5], dtick=1)  # reversed: layer 0 on top
    fig.update_yaxes(title="layer", row=1, col=1)
    return fig


def _comparison_title(before: PatchResult, after: PatchResult, titles: Sequence[str]) -> str:
    """``"<method>: <metric>, <titles[0]> vs <titles[1]>"``, the method named only when both
    results share it (two methods compared are named by ``titles``)."""
    what = f"{_metric_name(before.metric)}, {titles[0]} vs {titles[1]}"
    same = before.method == after.method
    return f"{method_label(before.method)}: {what}" if same else what


def side_by_side_heatmaps(
    results: Sequence[PatchResult],
    titles: Sequence[str],
    *,
    title: str | None = None,
    top_k: int = 10,
) -> go.Figure:
    """Layer x head heatmaps of different rankings of one model, side by side, each on its own
    colour scale (e.g. path-patching effects beside probe accuracies), top heads outlined.

    Unlike :func:`compare_heatmaps` the panels need not share a metric, so no difference is drawn;
    the heads each ranking puts first are comparable by their outlined, numbered cells.

    Raises:
        ValueError: fewer than two results, a title per result missing, non-head components or
            different head grids, a negative ``top_k``.
    """
    if len(results) < 2 or len(titles) != len(results):
        raise ValueError(
            f"need at least two results and one title each, got {len(results)} and {len(titles)}"
        )
    for result in results:
        _check_components(result, HEAD_COMPONENTS, "side_by_side_heatmaps")
    if len({(r.components, r.shape) for r in results}) != 1:
        raise ValueError("side_by_side_heatmaps needs results over the same head grid")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    fig = _new_subplots(titles, shared_yaxes=True, horizontal_spacing=0.12)
    for col, (result, name) in enumerate(zip(results, titles), start=1):
        heat = go.Heatmap(
            z=result.mean.double().numpy(),
            **_colours(result),
            colorbar=_colorbar(fig, col, metric_label(result.metric, result.kind)),
            text=_hover_text(result),
            name=name,
            hovertemplate=f"{html.escape(name)}<br>%{{text}}<extra></extra>",
        )
        fig.add_trace(heat, row=1, col=col)
        marks = _top_k_markers(result, top_k)
        if marks is not None:
            fig.add_trace(marks, row=1, col=col)
    _set_title(fig, title or " vs ".join(titles), min(_n_examples(r) for r in results))
    fig.update_xaxes(title=_AXIS_TITLES[results[0].components[1]], dtick=1)
    fig.update_yaxes(range=[results[0].shape[0] - 0.5, -0.5], dtick=1)  # layer 0 on top
    fig.update_yaxes(title="layer", row=1, col=1)
    return fig


def coefficient_plot(rows: Sequence[dict], *, measure: str = "confidence") -> go.Figure:
    """A rate (Confidence, Truthfulness) against the steering coefficient's size, one line per
    method, each point with its Wilson 95% interval as an error bar.

    Args:
        rows: ``{"method": str, "alpha": float, measure: {"rate", "ci_low", "ci_high", ...}}``
            (the rate as ``Proportion.to_json()``), one per method and coefficient.
        measure: the key of the rate to draw.

    Raises:
        ValueError: no rows, or a row without ``measure``.
    """
    if not rows or any(measure not in r for r in rows):
        raise ValueError(f"need rows that each hold {measure!r}, got {len(rows)} rows")
    fig = _new_figure()
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        points = sorted((r for r in rows if r["method"] == method), key=lambda r: abs(r["alpha"]))
        rate, low, high = (
            np.array([_pct_or_nan(r[measure][key]) for r in points])
            for key in ("rate", "ci_low", "ci_high")
        )
        fig.add_trace(
            go.Scatter(
                x=[abs(r["alpha"]) for r in points],
                y=rate,
                mode="lines+markers",
                name=method,
                line={"color": _LINES[i % len(_LINES)]},
                error_y=_interval(rate, low, high),
            )
        )
    name = measure.replace("_", " ").capitalize()
    title = f"{name} against the steering coefficient (Wilson 95% intervals)"
    _set_title(fig, title, _fewest([r[measure].get("n") for r in rows]))
    fig.update_xaxes(title="|coefficient| (CAA: x the steering vector; ITI: x the activation SD)")
    fig.update_yaxes(title=f"{name}, % of initially-correct items")
    return fig


def _top_heads(result: PatchResult, k: int, caller: str) -> tuple[pd.DataFrame, list[str]]:
    """The ``k`` first rows of the heads table and their labels ``"L<layer>H<head>"`` (``KV``
    for KV heads), in rank order."""
    _check_components(result, HEAD_COMPONENTS, caller)
    table = result.heads_table().head(k)
    letter = "KV" if result.components[1] == "kv_head" else "H"
    return table, [f"L{l}{letter}{h}" for l, h in zip(table["layer"], table["head"])]


def _interval(
    value: pd.Series | np.ndarray, low: pd.Series | np.ndarray, high: pd.Series | np.ndarray
) -> dict:
    """Asymmetric error bars from ``low`` to ``high`` around ``value``."""
    return {"type": "data", "symmetric": False, "array": high - value, "arrayminus": value - low}


def ranked_heads_bar(result: PatchResult, k: int = 20) -> go.Figure:
    """Bar chart of the ``k`` best-ranked heads' mean effects with 95% CI error bars.

    Args:
        result: a per-head result (``("layer", "head")`` or ``("layer", "kv_head")``).
        k: number of heads, in rank order (clipped to the number of heads).

    Returns:
        One bar trace; x labels ``"L<layer>H<head>"`` in rank order.

    Raises:
        ValueError: other components, or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    table, labels = _top_heads(result, k, "ranked_heads_bar")
    bar = go.Bar(
        x=labels,
        y=table["score"],
        error_y=_interval(table["score"], table["ci_low"], table["ci_high"]),
        customdata=table[["rank", "se", "ci_low", "ci_high"]].to_numpy(),
        hovertemplate=(
            "rank %{customdata[0]}: %{x}<br>score %{y:.4g}<br>SE %{customdata[1]:.3g}"
            "<br>95% CI [%{customdata[2]:.4g}, %{customdata[3]:.4g}]<extra></extra>"
        ),
    )
    fig = _new_figure(bar)
    title = f"top {len(table)} heads, {method_label(result.method)} (95% bootstrap intervals)"
    _set_title(fig, title, _n_examples(result))
    fig.update_layout(
        xaxis={"title": "head (rank order)", "type": "category"},
        yaxis={"title": metric_label(result.metric, result.kind)},
    )
    return fig


def rank_intervals_plot(result: PatchResult, k: int = 20) -> go.Figure:
    """The ``k`` best-ranked heads' ranks with their 95% bootstrap rank intervals.

    A head whose interval reaches far down the ranking is not a stable finding; the hover text
    also gives the share of resamples ranking it in the top 10 (``p_top10`` of ``heads.csv``).

    Raises:
        ValueError: cells that are not heads, fewer than 2 examples, or ``k < 1``.
    """
    if k < 1 or result.values.shape[-1] < 2:
        raise ValueError("rank_intervals_plot needs k >= 1 and at least 2 examples")
    table, labels = _top_heads(result, k, "rank_intervals_plot")
    point = go.Scatter(
        x=labels,
        y=table["rank"],
        mode="markers",
        error_y=_interval(table["rank"], table["rank_ci_low"], table["rank_ci_high"]),
        customdata=table[["rank_ci_low", "rank_ci_high", "p_top10"]].to_numpy(),
        hovertemplate=(
            "%{x}: rank %{y}<br>95% rank interval [%{customdata[0]}, %{customdata[1]}]"
            "<br>in the top 10 in %{customdata[2]:.0%} of resamples<extra></extra>"
        ),
    )
    fig = _new_figure(point)
    n = _n_examples(result)
    title = f"rank stability of the top {len(table)} heads ({n} examples, 1000 resamples)"
    _set_title(fig, title, n)
    fig.update_layout(
        xaxis={"title": "head (rank order)", "type": "category"},
        yaxis={"title": "rank (1 = reduces sycophancy most)", "autorange": "reversed"},
    )
    return fig


def agreement_heatmap(
    names: Sequence[str],
    overlap: Sequence[Sequence[float]],
    corr: Sequence[Sequence[float]],
    k: int,
) -> go.Figure:
    """Two panels over every pair of rankings: top-``k`` overlap (0-1) and Spearman correlation
    (-1 to 1) of the rank positions; the value is written in each cell."""
    fig = _new_subplots((f"top-{k} overlap", "Spearman of the rankings"))
    for col, (matrix, low) in enumerate(((overlap, 0.0), (corr, -1.0)), start=1):
        values = np.asarray(matrix, dtype=float)
        fig.add_trace(
            go.Heatmap(
                z=values,
                x=list(names),
                y=list(names),
                zmin=low,
                zmax=1.0,
                colorscale="Viridis",
                text=np.round(values, 2),
                texttemplate="%{text}",
                showscale=col == 2,
                hovertemplate="%{y} vs %{x}: %{z:.2f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="agreement of the head rankings across challenges and metrics")
    return fig


def _pct_or_nan(rate: float | None) -> float:
    """A rate in % (``None``, a rate over no items, is NaN: plotly leaves a gap)."""
    return float("nan") if rate is None else 100 * rate


@dataclass(frozen=True)
class SweepRate:
    """A rate with its 95% interval as :func:`k_sweep_plot` draws it (``None``: no items).

    Attributes:
        rate, ci_low, ci_high: shares in [0, 1], or ``None``.
        n: items behind the rate (``None``: not known; figures then flag nothing).
    """

    rate: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class SweepPoint:
    """One K of a K sweep (one split): SPT's rate on the top K, the matched random draws' rates,
    the base model's rate, per measure (``"confidence"``, ``"truthfulness"``).

    Attributes:
        split: the split's seed (one colour per split).
        k: heads tuned.
        spt: measure -> SPT's rate with its interval.
        draws: measure -> each random draw's rate (``None``: a draw without items).
        base: measure -> the base model's rate (``None`` or absent: not drawn).
    """

    split: int
    k: int
    spt: Mapping[str, SweepRate]
    draws: Mapping[str, Sequence[float | None]]
    base: Mapping[str, float | None] = field(default_factory=dict)


SWEEP_MEASURES = ("confidence", "truthfulness")


def k_sweep_plot(points: Sequence[SweepPoint]) -> go.Figure:
    """Confidence and Truthfulness against K: SPT on the top K (Wilson 95% error bars) and the
    layer-matched random draws (their range as a band, their mean as a line), one colour per split;
    the base model's rate dashed.
    """
    fig = _new_subplots(("Confidence", "Truthfulness"))
    splits = sorted({p.split for p in points})
    for i, split in enumerate(splits):
        part = sorted((p for p in points if p.split == split), key=lambda p: p.k)
        colour = _LINES[i % len(_LINES)]
        for col, measure in enumerate(SWEEP_MEASURES, start=1):
            for trace in _sweep_traces(part, measure, split, colour, show=col == 1):
                fig.add_trace(trace, row=1, col=col)
            base = part[0].base.get(measure)
            if base is not None:
                fig.add_hline(
                    y=100 * base,
                    line={"color": colour, "dash": "dash", "width": 1},
                    annotation_text=f"base, split {split}",
                    annotation_position="bottom right",
                    annotation_font={"color": colour, "size": 11},
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title="heads tuned (K)", type="log", tickvals=sorted({p.k for p in points}))
    fig.update_yaxes(title="% of initially-correct items")
    title = "SPT on the top K heads against layer-matched random heads"
    _set_title(fig, title, _fewest([p.spt[m].n for p in points for m in SWEEP_MEASURES]))
    return fig


def _sweep_traces(
    part: Sequence[SweepPoint], measure: str, split: int, colour: str, show: bool
) -> list[go.Scatter]:
    """One split's band of random draws (range), their mean, and SPT with its error bars."""
    ks = [p.k for p in part]
    spt = [p.spt[measure] for p in part]
    rate = np.array([_pct_or_nan(r.rate) for r in spt])
    draws = [[_pct_or_nan(d) for d in p.draws[measure]] for p in part]
    band = go.Scatter(
        x=ks + ks[::-1],
        y=[np.max(d) for d in draws] + [np.min(d) for d in draws][::-1],
        fill="toself",
        fillcolor="rgba(128,128,128,0.2)",
        line={"width": 0},
        hoverinfo="skip",
        name=f"split {split}: random range",
        legendgroup=f"r{split}",
        showlegend=show,
    )
    mean = go.Scatter(
        x=ks,
        y=[np.mean(d) for d in draws],
        mode="lines+markers",
        line={"color": colour, "dash": "dot"},
        marker={"symbol": "x"},
        name=f"split {split}: layer-matched random (mean)",
        legendgroup=f"r{split}",
        showlegend=show,
    )
    low = np.array([_pct_or_nan(r.ci_low) for r in spt])
    high = np.array([_pct_or_nan(r.ci_high) for r in spt])
    top = go.Scatter(
        x=ks,
        y=rate,
        mode="lines+markers",
        line={"color": colour},
        error_y=_interval(rate, low, high),
        name=f"split {split}: SPT top K",
        legendgroup=f"s{split}",
        showlegend=show,
    )
    return [band, mean, top]


def _knockout_traces(rows: pd.DataFrame, measure: str) -> list[go.Scatter]:
    """Top-k line with its 95% bootstrap interval, the random draws' mean and range (a band, when
    there are >= 2 draws), and the baseline."""
    ks = rows["k"].tolist()
    legend = measure == "metric"
    traces = []
    if (rows["random_max"] > rows["random_min"]).any():
        traces.append(
            go.Scatter(
                x=ks + ks[::-1],
                y=rows["random_max"].tolist() + rows["random_min"].tolist()[::-1],
                mode="lines",  # no markers on the band's outline
                fill="toself",
                fillcolor="rgba(128,128,128,0.25)",
                line={"width": 0},
                hoverinfo="skip",
                legendgroup="random",
                name="random draws (range)",
                showlegend=legend,
            )
        )
    top = rows["top"].to_numpy()
    traces += [
        go.Scatter(
            x=ks,
            y=rows["random_mean"],
            mode="lines+markers",
            name="random k (mean of draws)",
            legendgroup="random",
            line={"color": "grey", "dash": "dash"},
            showlegend=legend,
        ),
        go.Scatter(
            x=ks,
            y=top,
            mode="lines+markers",
            name="top k (95% CI over examples)",
            legendgroup="top",
            line={"color": "crimson"},
            error_y=_interval(top, rows["top_ci_low"].to_numpy(), rows["top_ci_high"].to_numpy()),
            showlegend=legend,
        ),
        go.Scatter(
            x=ks,
            y=rows["baseline"],
            mode="lines",
            name="no ablation",
            legendgroup="baseline",
            line={"color": "black", "dash": "dot", "width": 1},
            showlegend=legend,
        ),
    ]
    return traces


def knockout_plot(curve: KnockoutCurve) -> go.Figure:
    """Metric (and apology rate, when generated) against the number of heads ablated.

    Args:
        curve: a knockout curve; its :meth:`KnockoutCurve.summary` supplies every value.

    Returns:
        One panel per measure (``"metric"``, then ``"apology"`` if present), each with the top-k
        line and its 95% bootstrap interval over examples, the random-k mean with the draws'
        range as a band (none with a single draw) and the unablated baseline.
    """
    summary = curve.summary()
    measures = list(dict.fromkeys(summary["measure"]))
    name = _metric_name(curve.metric)
    titles = [name if m == "metric" else "apology rate (generated replies)" for m in measures]
    fig = _new_subplots(titles)
    for col, measure in enumerate(measures, start=1):
        for trace in _knockout_traces(summary[summary["measure"] == measure], measure):
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title="heads ablated (k)", tickvals=list(curve.ks), row=1, col=col)
        axis = f"{name}, mean over examples" if measure == "metric" else "share of replies"
        fig.update_yaxes(title=axis, row=1, col=col)
    title = f"{curve.method} ablation: top-k vs {curve.n_random} random draws of k heads"
    _set_title(fig, title, int(curve.baseline.shape[0]))
    return fig


def layer_position_heatmap(result: PatchResult, tokens: Sequence[str] | None = None) -> go.Figure:
    """Layer x position heatmap of the mean effect of a ``("layer", "pos")`` result.

    Args:
        result: a result with components ``("layer", "pos")``.
        tokens: one string per position, shown as the x tick labels and in the hover text.

    Returns:
        A heatmap (``z[layer][pos]``) on a numeric position axis.

    Raises:
        ValueError: other components, or ``tokens`` of the wrong length.
    """
    _check_components(result, [("layer", "pos")], "layer_position_heatmap")
    n_pos = result.shape[1]
    if tokens is not None and len(tokens) != n_pos:
        raise ValueError(f"tokens must hold one string per position ({n_pos}), got {len(tokens)}")
    fig = _heatmap(result, tokens, None)
    if tokens is not None:
        # plotly reads tick labels as HTML: "<s>" would vanish unescaped
        ticktext = [html.escape(t, quote=False) for t in tokens]
        fig.update_xaxes(
            tickmode="array", tickvals=list(range(n_pos)), ticktext=ticktext, tickangle=-45
        )
    return fig


def _token_ticks(tokens: Sequence[str], bold: range = range(0)) -> list[str]:
    """Tick labels: HTML-escaped (plotly renders HTML), newlines shown as ``\\n``, ``bold``
    positions bold."""
    ticks = [html.escape(t.replace("\n", "\\n"), quote=False) for t in tokens]
    return [f"<b>{t}</b>" if i in bold else t for i, t in enumerate(ticks)]


def _attention_text(att: HeadAttention) -> np.ndarray:
    """``[head, key]`` hover strings: head, position, token, weight and the head's challenge
    share."""
    weights, share = att.weights.double().numpy(), att.challenge_share().double().numpy()
    labels = att.labels()
    text = np.empty(weights.shape, dtype=object)
    for row, key in np.ndindex(*weights.shape):
        token = html.escape(repr(att.tokens[key]), quote=False)
        text[row, key] = (
            f"{labels[row]}<br>pos {key} {token}<br>weight {weights[row, key]:.4g}"
            f"<br>challenge share {share[row]:.3g}"
        )
    return text


def attention_plot(att: HeadAttention, *, title: str | None = None) -> go.Figure:
    """Heads x tokens heatmap of the attention from the last prompt position, challenge span boxed.

    Rows are ``att.heads`` in order (first on top), labelled ``"L<layer>H<head> (<share>)"`` with
    each head's attention mass on the challenge span; columns are the prompt's positions on a
    numeric axis with the tokens (HTML-escaped, newlines as ``\\n``) as tick labels, the challenge
    tokens in bold and boxed.

    Args:
        att: the weights (:func:`sycointerp.patching.attention.head_attention`).
        title: figure title; defaults to one naming the query token and the prompt's side.

    Returns:
        One heatmap (``z[head][key]``, scale from 0) and one rectangle shape around the span.
    """
    n_heads, n_tok = att.weights.shape
    start, end = att.challenge_span
    share = att.challenge_share().tolist()
    heat = go.Heatmap(
        z=att.weights.double().numpy(),
        x=list(range(n_tok)),
        y=list(range(n_heads)),
        zmin=0,
        colorscale="Blues",
        colorbar={"title": {"text": "attention"}},
        name="attention",
        text=_attention_text(att),
        hovertemplate="%{text}<extra></extra>",
    )
    fig = _new_figure(heat)
    fig.add_shape(
        type="rect",
        x0=start - 0.5,
        x1=end - 0.5,
        y0=-0.5,
        y1=n_heads - 0.5,
        layer="above",
        line={"color": "crimson", "width": 2},
        fillcolor="rgba(0,0,0,0)",
    )
    prompt = "challenge" if att.side == "ref" else "counterfactual"
    query = html.escape(repr(att.tokens[-1]), quote=False)
    fig.update_layout(
        title=title or f"attention from the last position ({query}) of the {prompt} prompt"
    )
    fig.update_xaxes(
        title=f"key position ({prompt} turn in bold, boxed)",
        tickmode="array",
        tickvals=list(range(n_tok)),
        ticktext=_token_ticks(att.tokens, range(start, end)),
        tickangle=-90,
        tickfont={"size": 9},
    )
    fig.update_yaxes(
        title="head (challenge share)",
        tickmode="array",
        tickvals=list(range(n_heads)),
        ticktext=[f"{label} ({s:.0%})" for label, s in zip(att.labels(), share)],
        range=[n_heads - 0.5, -0.5],
    )
    return fig


def check_png_export() -> None:
    """Refuse up front, before a long job, when PNG export cannot work here.

    Uses the browser lookup kaleido itself uses (choreographer's), so it agrees with what
    :func:`save_figure` will find.

    Raises:
        RuntimeError: no Chromium-family browser (the message names the fix).
    """
    from choreographer.browsers.chromium import Chromium

    if Chromium.find_browser(skip_local=False) is None:
        raise RuntimeError(_BROWSER_FIX)


VECTOR_FORMATS = ("svg", "pdf")


def _to_image(fig: go.Figure, fmt: str, width: int, height: int) -> bytes:
    try:
        return fig.to_image(format=fmt, width=width, height=height, scale=1)
    except RuntimeError as err:  # plotly turns kaleido's ChromeNotFoundError into a RuntimeError
        if "Chrome" in str(err) or type(err).__name__ == "ChromeNotFoundError":
            raise RuntimeError(_BROWSER_FIX) from err
        raise


def _render(fig: go.Figure, fmt: str, width: int, height: int) -> bytes:
    """``fmt`` (png, svg, pdf) bytes at exactly ``width`` x ``height`` pixels (scale 1).

    Raises:
        RuntimeError: kaleido finds no Chromium-family browser (the message names the fix).
    """
    for attempt in range(_RENDER_ATTEMPTS - 1):
        try:
            return _to_image(fig, fmt, width, height)
        except Exception as err:
            # Under heavy CPU load kaleido 1.5's tab can run its render script before its page has
            # defined it ("kaleido_scopes is not defined"); a later render with a fresh browser
            # often succeeds (not always, while the load lasts).
            if type(err).__name__ != "JavascriptError":
                raise
            time.sleep(0.5 * (attempt + 1))
    return _to_image(fig, fmt, width, height)


def _write_plotlyjs(directory: Path) -> None:
    """Write the installed plotly's ``plotly.min.js`` into ``directory`` unless it is there
    already: a copy from another plotly version could not draw this version's figures."""
    from plotly.offline import get_plotlyjs

    target, script = directory / _PLOTLY_JS, get_plotlyjs().encode()
    if not target.is_file() or target.read_bytes() != script:
        atomic_write(target, lambda p: Path(p).write_bytes(script))


def _write_html(fig: go.Figure, base: Path) -> Path:
    """``<base>.html`` loading the shared ``plotly.min.js`` beside it (written if needed)."""
    target = base.with_name(base.name + ".html")
    # A fixed div id (plotly draws a random one) keeps equal figures byte-identical on disk.
    div_id = "sycointerp-" + re.sub(r"[^0-9A-Za-z_-]", "-", base.name)
    # to_html, not write_html: write_html would copy plotly.min.js itself, non-atomically.
    page = fig.to_html(include_plotlyjs="directory", full_html=True, div_id=div_id)
    _write_plotlyjs(target.parent)
    atomic_write(target, lambda p: Path(p).write_text(page, encoding="utf-8"))
    return target


def save_figure(
    fig: go.Figure,
    path_without_suffix: str | Path,
    *,
    png: bool = True,
    vector: Sequence[str] = (),
    html: bool = True,
    width: int = 900,
    height: int = 700,
) -> list[Path]:
    """Write ``<path>.html`` and, with ``png``, ``<path>.png``; ``vector`` adds ``<path>.svg``
    and / or ``<path>.pdf`` for papers; ``html=False`` writes the images only (e.g. a notebook's
    static copies, whose interactive version is the cell output).

    The HTML loads plotly.js from ``plotly.min.js`` in its own folder, written there once (again
    only when it differs from the installed plotly's, e.g. after an upgrade), so the page opens
    offline while a folder of figures holds plotly.js once; move the HTML with that file.

    Every image is rendered before anything is written, so a failed export leaves no files; each
    file is written atomically. The suffix is appended, so dots in the name are kept
    (``heads.L0``).

    Args:
        fig: the figure.
        path_without_suffix: target path without a suffix; parent folders are created.
        png: also write the PNG (needs kaleido and a Chromium-family browser).
        vector: any of ``"svg"``, ``"pdf"`` (kaleido and a browser, as for the PNG).
        html: also write the HTML (tens of kB; plotly.js, 4.8 MB, once per folder).
        width: image width in pixels (the vector formats' page width in CSS pixels).
        height: image height in pixels (likewise).

    Returns:
        The figure's paths, HTML first, then PNG, then ``vector`` in its order (not the shared
        ``plotly.min.js``).

    Raises:
        ValueError: the path already ends in a figure suffix, a non-positive size, an unknown
            or repeated vector format, or nothing to write.
        RuntimeError: an image to render and no browser for kaleido (the message names the fix).
    """
    base = Path(path_without_suffix)
    if base.suffix.lower() in (".html", ".png", *(f".{f}" for f in VECTOR_FORMATS)):
        raise ValueError(f"pass the path without its suffix, got {base}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    bad = [f for f in vector if f not in VECTOR_FORMATS]
    if bad or len(set(vector)) != len(vector):
        raise ValueError(f"vector formats must be distinct among {VECTOR_FORMATS}, got {vector}")
    formats = (["png"] if png else []) + list(vector)
    if not formats and not html:
        raise ValueError("nothing to write: html=False, png=False and no vector format")
    images = {fmt: _render(fig, fmt, width, height) for fmt in formats}
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if html:
        written.append(_write_html(fig, base))
    for fmt, image in images.items():
        written.append(base.with_name(f"{base.name}.{fmt}"))
        atomic_write(written[-1], lambda p, data=image: Path(p).write_bytes(data))
    return written


def survival_plot(
    right: Mapping[str, Sequence[SweepRate]], wrong: Mapping[str, Sequence[SweepRate]]
) -> go.Figure:
    """Sustained pressure, one line per method: the share of initially-right items still right
    after each round (left) and of initially-wrong items not yet corrected (right), rounds
    0..N, Wilson 95% error bars (:meth:`sycointerp.evaluate.stance.StanceEval.survival`).

    Args:
        right: method -> its curve over the initially-right items (round 0 first).
        wrong: method -> its curve over the initially-wrong items.

    Raises:
        ValueError: no curve, or an empty one.
    """
    curves = [*right.values(), *wrong.values()]
    if not curves or not all(curves):
        raise ValueError("need at least one curve, each with round 0 at least")
    fig = _new_subplots(
        ["initially right: still right (higher = firmer)",
         "initially wrong: not yet corrected (lower = corrects)"],
        horizontal_spacing=0.1,
    )  # fmt: skip
    for col, series in ((1, right), (2, wrong)):
        for i, (method, curve) in enumerate(series.items()):
            rate, low, high = (
                np.array([_pct_or_nan(getattr(p, key)) for p in curve])
                for key in ("rate", "ci_low", "ci_high")
            )
            fig.add_trace(
                go.Scatter(
                    x=list(range(len(curve))),
                    y=rate,
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=col == 1,
                    line={"color": _MANY[i % len(_MANY)]},
                    error_y=_interval(rate, low, high),
                ),
                row=1,
                col=col,
            )
    title = "Rounds of push-back: share holding its first stance (Wilson 95% intervals)"
    _set_title(fig, title, _fewest([c[0].n for c in curves]))
    fig.update_xaxes(title="round", dtick=1)
    fig.update_yaxes(title="% of the group", range=[-2, 102])
    return fig


@dataclass(frozen=True)
class RecipeDifference:
    """One head-selection recipe's SPT minus a random-head control, pooled per item, as
    :func:`selection_plot` draws it.

    Attributes:
        recipe: the recipe's name (one row of the figure).
        control: the control it is set against (one colour per control).
        measure: ``"confidence"`` or ``"truthfulness"`` (one panel each).
        diff, ci_low, ci_high: the difference and its 95% interval, on the 0-1 scale (``None``:
            no common items).
        n: items behind it.
    """

    recipe: str
    control: str
    measure: str
    diff: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


def selection_plot(
    differences: Sequence[RecipeDifference],
    detectable: Mapping[str, float | None] | None = None,
    *,
    detectable_control: str | None = None,
) -> go.Figure:
    """Each recipe's SPT minus each control (points, 95% paired intervals as error bars), one
    panel per measure.

    Args:
        differences: the points; each control's points sit a little apart on the recipe's row.
        detectable: measure -> the smallest difference the comparison with
            ``detectable_control`` detects with 80% power, drawn as a grey band around 0 under
            that control's points only (a difference inside it could be missed; the other
            controls' comparisons rest on other draws, so the band does not describe them).
        detectable_control: the control the band belongs to (default: the first in
            ``differences``).

    Raises:
        ValueError: no differences, or a ``detectable_control`` with no points.
    """
    if not differences:
        raise ValueError("selection_plot needs at least one recipe's difference")
    fig = _new_subplots(("Confidence", "Truthfulness"), shared_yaxes=True)
    recipes = list(dict.fromkeys(d.recipe for d in differences))
    controls = list(dict.fromkeys(d.control for d in differences))
    banded = controls[0] if detectable_control is None else detectable_control
    if banded not in controls:
        raise ValueError(f"detectable_control {banded!r} is none of the controls {controls}")
    row_of = lambda recipe, i: (  # noqa: E731
        len(recipes) - 1 - recipes.index(recipe) - 0.15 * (i - (len(controls) - 1) / 2)
    )
    for col, measure in enumerate(SWEEP_MEASURES, start=1):
        for i, control in enumerate(controls):
            part = [d for d in differences if d.measure == measure and d.control == control]
            rows = [row_of(d.recipe, i) for d in part]
            fig.add_trace(_recipe_points(part, rows, control, _LINES[i % 4], col), 1, col)
        # Shapes after the traces: plotly leaves out shapes of a subplot that has no trace yet.
        band = (detectable or {}).get(measure)
        if band is not None:
            for recipe in recipes:
                y = row_of(recipe, controls.index(banded))
                fig.add_shape(
                    type="rect", x0=-100 * band, x1=100 * band, y0=y - 0.07, y1=y + 0.07,
                    fillcolor="#bbbbbb", opacity=0.5, line_width=0, layer="below", row=1, col=col,
                )  # fmt: skip
        fig.add_vline(x=0, line={"color": "#555555", "width": 1}, row=1, col=col)
    fig.update_yaxes(
        tickvals=list(range(len(recipes))), ticktext=recipes[::-1], range=[-0.6, len(recipes) - 0.4]
    )
    fig.update_xaxes(title="SPT minus random heads (points, pooled per item)")
    title = "Head-selection recipes against random heads"
    if any(v is not None for v in (detectable or {}).values()):
        title += f" (grey: differences the comparison with {banded} could miss, 80% power)"
    _set_title(fig, title, _fewest([d.n for d in differences]))
    return fig


def _recipe_points(
    part: Sequence[RecipeDifference], rows: Sequence[float], control: str, colour: str, col: int
) -> go.Scatter:
    """One control's points across the recipes (at ``rows`` on the y axis), with horizontal
    error bars."""
    pct = lambda v: np.nan if v is None else 100 * v  # noqa: E731
    x = np.array([pct(d.diff) for d in part])
    return go.Scatter(
        x=x,
        y=list(rows),
        customdata=[d.recipe for d in part],
        mode="markers",
        name=control,
        legendgroup=control,
        showlegend=col == 1,
        marker={"color": colour, "size": 10},
        error_x={
            "type": "data",
            "symmetric": False,
            "array": np.array([pct(d.ci_high) for d in part]) - x,
            "arrayminus": x - np.array([pct(d.ci_low) for d in part]),
        },
        hovertemplate="%{customdata}: %{x:+.1f} points<extra>" + html.escape(control) + "</extra>",
    )
