"""Plotly figures of patching results and knockout curves, and their export to HTML and PNG.

Conventions:
- Every figure shows the mean effect over examples (``result.mean``: the score that ``heads.csv``
  ranks). Heatmaps use a diverging scale centred at 0 (``zmid=0``): red cells raise the metric
  when patched, blue cells lower it. Layer 0 is the top row.
- Rank labels follow :meth:`PatchResult.rank`: rank 1 is the cell whose patching most *reduces*
  sycophancy, which is the most negative score for apology-style metrics and the most positive for
  ``flip``. The ranking, not the colour, says which end of the scale matters.
- Hover text gives the cell, the score, its standard error and the 95% bootstrap interval
  (``result.ci``). Error bars are that interval, not +-SE.
- Positions are drawn on a numeric axis with the token strings (HTML-escaped, as plotly renders
  labels as HTML) as tick labels, so repeated tokens (two ``" the"``) stay separate columns.

PNG export (:func:`save_figure`) goes through kaleido >= 1, which drives a Chromium-family browser
that it finds on ``PATH`` (Debian's ``chromium`` at ``/usr/bin/chromium`` works; ``make install``
installs it as root) or at ``$BROWSER_PATH``. ``kaleido.get_chrome_sync()`` would download Chrome
instead, which fails offline. Without a browser :func:`save_figure` raises a ``RuntimeError`` naming
the fix rather than writing the HTML alone.

Refusals: per-head figures need ``("layer", "head")`` or ``("layer", "kv_head")`` cells, the
position heatmap ``("layer", "pos")`` cells; ``tokens`` must hold one string per position.
"""

import html
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sycointerp._io import atomic_write
from sycointerp.patching.knockout import KnockoutCurve
from sycointerp.patching.results import HEAD_COMPONENTS, PatchResult

__all__ = ["head_heatmap", "ranked_heads_bar", "knockout_plot", "layer_position_heatmap", "save_figure"]

COLORSCALE = "RdBu_r"  # diverging: blue < 0 < red
_AXIS_TITLES = {"head": "head", "kv_head": "KV head", "pos": "position"}
_BROWSER_FIX = ("PNG export needs a Chromium-family browser for kaleido and none was found: install one with "
                "`apt-get install -y chromium` (`make install` does this as root), point $BROWSER_PATH at a "
                "chrome/chromium executable, or call save_figure(..., png=False) to write the HTML only")


def _check_components(result: PatchResult, allowed: Sequence[tuple[str, ...]], caller: str) -> None:
    if result.components not in allowed:
        names = " or ".join(str(c) for c in allowed)
        raise ValueError(f"{caller} needs a result with components {names}, got {result.components}")


def _hover_text(result: PatchResult, column_labels: Sequence[str] | None = None) -> np.ndarray:
    """``[layer, column]`` hover strings: cell, score, SE and 95% CI of a two-axis result."""
    low, high = (t.double().numpy() for t in result.ci)
    mean, se = result.mean.double().numpy(), result.se.double().numpy()
    column = result.components[1]
    text = np.empty(result.shape, dtype=object)
    for l, c in np.ndindex(*result.shape):
        label = f" {html.escape(repr(column_labels[c]), quote=False)}" if column_labels is not None else ""
        text[l, c] = (f"layer {l}<br>{column} {c}{label}<br>score {mean[l, c]:.4g}<br>SE {se[l, c]:.3g}"
                      f"<br>95% CI [{low[l, c]:.4g}, {high[l, c]:.4g}]")
    return text


def _heatmap(result: PatchResult, column_labels: Sequence[str] | None, title: str | None) -> go.Figure:
    """The ``[layer, column]`` heatmap of ``result.mean`` shared by the head and position figures."""
    heat = go.Heatmap(z=result.mean.double().numpy(), x=list(range(result.shape[1])),
                      y=list(range(result.shape[0])), zmid=0, colorscale=COLORSCALE,
                      colorbar={"title": {"text": f"{result.metric} ({result.kind})"}},
                      text=_hover_text(result, column_labels), hovertemplate="%{text}<extra></extra>",
                      name="score")
    fig = go.Figure(heat)
    fig.update_layout(title=title or f"{result.method}: {result.metric}", plot_bgcolor="white")
    fig.update_xaxes(title=_AXIS_TITLES.get(result.components[1], result.components[1]), dtick=1)
    fig.update_yaxes(title="layer", range=[result.shape[0] - 0.5, -0.5], dtick=1)  # reversed: layer 0 on top
    return fig


def head_heatmap(result: PatchResult, *, title: str | None = None, top_k: int = 10) -> go.Figure:
    """Layer x head heatmap of the mean effect, with the top-ranked heads circled and numbered.

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
    k = min(top_k, int(np.prod(result.shape)))
    if k:
        top = result.top_k(k)
        fig.add_trace(go.Scatter(
            x=[h for _, h in top], y=[l for l, _ in top], mode="markers+text", name=f"top {k}",
            text=[str(r) for r in range(1, k + 1)], textfont={"size": 11, "color": "black"},
            marker={"symbol": "circle", "size": 22, "color": "white", "line": {"color": "black", "width": 1.5}},
            hoverinfo="skip", showlegend=False))
    return fig


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
    _check_components(result, HEAD_COMPONENTS, "ranked_heads_bar")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    table = result.heads_table().head(k)
    letter = "KV" if result.components[1] == "kv_head" else "H"
    labels = [f"L{l}{letter}{h}" for l, h in zip(table["layer"], table["head"])]
    bar = go.Bar(x=labels, y=table["score"],
                 error_y={"type": "data", "symmetric": False, "array": table["ci_high"] - table["score"],
                          "arrayminus": table["score"] - table["ci_low"]},
                 customdata=table[["rank", "se", "ci_low", "ci_high"]].to_numpy(),
                 hovertemplate=("rank %{customdata[0]}: %{x}<br>score %{y:.4g}<br>SE %{customdata[1]:.3g}"
                                "<br>95% CI [%{customdata[2]:.4g}, %{customdata[3]:.4g}]<extra></extra>"))
    fig = go.Figure(bar)
    fig.update_layout(title=f"top {len(table)} heads: {result.method}, {result.metric}",
                      xaxis={"title": "head (rank order)", "type": "category"},
                      yaxis={"title": f"{result.metric} ({result.kind})"})
    return fig


def _knockout_traces(rows: pd.DataFrame, measure: str) -> list[go.Scatter]:
    """Top-k line, random-k mean, its +-std band (when there are >= 2 draws) and the baseline."""
    ks = rows["k"].tolist()
    mean, std = rows["random_mean"].to_numpy(), rows["random_std"].to_numpy()
    traces = []
    if not np.isnan(std).all():
        traces += [go.Scatter(x=ks, y=mean + std, mode="lines", line={"width": 0}, showlegend=False,
                              hoverinfo="skip", legendgroup="random", name=f"{measure} random +std"),
                   go.Scatter(x=ks, y=mean - std, mode="lines", line={"width": 0}, fill="tonexty",
                              fillcolor="rgba(128,128,128,0.25)", hoverinfo="skip", legendgroup="random",
                              name="random +-std", showlegend=measure == "metric")]
    traces += [
        go.Scatter(x=ks, y=mean, mode="lines+markers", name="random k (mean)", legendgroup="random",
                   line={"color": "grey", "dash": "dash"}, showlegend=measure == "metric"),
        go.Scatter(x=ks, y=rows["top"], mode="lines+markers", name="top k", legendgroup="top",
                   line={"color": "crimson"}, showlegend=measure == "metric"),
        go.Scatter(x=ks, y=rows["baseline"], mode="lines", name="no ablation", legendgroup="baseline",
                   line={"color": "black", "dash": "dot", "width": 1}, showlegend=measure == "metric"),
    ]
    return traces


def knockout_plot(curve: KnockoutCurve) -> go.Figure:
    """Metric (and apology rate, when generated) against the number of heads ablated.

    Args:
        curve: a knockout curve; its :meth:`KnockoutCurve.summary` supplies every value.

    Returns:
        One panel per measure (``"metric"``, then ``"apology"`` if present), each with the top-k
        line, the random-k mean with a +-std band over draws (no band with a single draw) and the
        unablated baseline.
    """
    summary = curve.summary()
    measures = list(dict.fromkeys(summary["measure"]))
    titles = [curve.metric if m == "metric" else "apology rate" for m in measures]
    fig = make_subplots(rows=1, cols=len(measures), subplot_titles=titles)
    for col, measure in enumerate(measures, start=1):
        for trace in _knockout_traces(summary[summary["measure"] == measure], measure):
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title="heads ablated (k)", row=1, col=col)
    fig.update_layout(title=f"{curve.method} ablation: top-k vs {curve.n_random} random draws of k heads")
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
        fig.update_xaxes(tickmode="array", tickvals=list(range(n_pos)), ticktext=ticktext, tickangle=-45)
    return fig


def _render_png(fig: go.Figure, width: int, height: int) -> bytes:
    """PNG bytes at exactly ``width`` x ``height`` pixels (scale 1).

    Raises:
        RuntimeError: kaleido finds no Chromium-family browser (the message names the fix).
    """
    try:
        return fig.to_image(format="png", width=width, height=height, scale=1)
    except RuntimeError as err:  # plotly turns kaleido's ChromeNotFoundError into a RuntimeError
        if "Chrome" in str(err) or type(err).__name__ == "ChromeNotFoundError":
            raise RuntimeError(_BROWSER_FIX) from err
        raise


def save_figure(fig: go.Figure, path_without_suffix: str | Path, *, png: bool = True, width: int = 900,
                height: int = 700) -> list[Path]:
    """Write ``<path>.html`` (self-contained: plotly.js embedded) and, with ``png``, ``<path>.png``.

    The PNG is rendered before anything is written, so a failed export leaves no files; each file
    is written atomically. The suffix is appended, so dots in the name are kept (``heads.L0``).

    Args:
        fig: the figure.
        path_without_suffix: target path without ``.html``/``.png``; parent folders are created.
        png: also write the PNG (needs kaleido and a Chromium-family browser).
        width, height: PNG size in pixels.

    Returns:
        The written paths, HTML first.

    Raises:
        ValueError: the path already ends in ``.html`` or ``.png``, or a non-positive size.
        RuntimeError: ``png`` and no browser for kaleido (the message names the fix).
    """
    base = Path(path_without_suffix)
    if base.suffix.lower() in (".html", ".png"):
        raise ValueError(f"pass the path without its suffix, got {base}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    image = _render_png(fig, width, height) if png else None
    base.parent.mkdir(parents=True, exist_ok=True)
    html = base.with_name(base.name + ".html")
    # A fixed div id (plotly draws a random one) keeps equal figures byte-identical on disk.
    div_id = "sycointerp-" + re.sub(r"[^0-9A-Za-z_-]", "-", base.name)
    atomic_write(html, lambda p: fig.write_html(p, include_plotlyjs=True, full_html=True, div_id=div_id))
    written = [html]
    if image is not None:
        written.append(base.with_name(base.name + ".png"))
        atomic_write(written[-1], lambda p: Path(p).write_bytes(image))
    return written
