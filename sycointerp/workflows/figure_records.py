"""The trust study's rows as its figures' typed records: the K sweep (``study.json``'s
``"sweep"`` -> :class:`sycointerp.plot.SweepPoint`) and the selection recipes (``"selection"`` ->
:class:`sycointerp.plot.RecipeDifference`). The one place that knows both the study's layout and
the figures' records, so that the plots know nothing of the study's files (used by ``study.md``'s
figures and the report page).
"""

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from sycointerp.plot import SWEEP_MEASURES, RecipeDifference, SweepPoint, SweepRate, selection_plot

__all__ = [
    "sweep_figure_points",
    "selection_differences",
    "selection_detectable",
    "selection_figure",
]

# The controls of the selection comparison: its row key -> the figure's label.
SELECTION_CONTROLS = {
    "vs_layer_matched": "layer-matched random heads (own histogram)",
    "vs_uniform": "uniform random heads (shared)",
}


def _rate(record: dict[str, Any]) -> SweepRate:
    return SweepRate(
        record.get("rate"), record.get("ci_low"), record.get("ci_high"), record.get("n")
    )


def sweep_figure_points(rows: Sequence[dict[str, Any]]) -> list[SweepPoint]:
    """One :class:`SweepPoint` per row of :func:`sycointerp.workflows.study.sweep_points`.

    Raises:
        KeyError: a row without ``split``, ``k`` or a measure's ``spt`` / ``draws``.
    """
    points = []
    for row in rows:
        base = row.get("base", {})
        points.append(
            SweepPoint(
                split=int(row["split"]),
                k=int(row["k"]),
                spt={m: _rate(row[m]["spt"]) for m in SWEEP_MEASURES},
                draws={m: list(row[m]["draws"]) for m in SWEEP_MEASURES},
                base={m: base[m].get("rate") for m in SWEEP_MEASURES if m in base},
            )
        )
    return points


def selection_differences(selection: dict[str, Any]) -> list[RecipeDifference]:
    """Each recipe's pooled difference from each control, per measure, from ``study.json``'s
    ``"selection"`` (:func:`sycointerp.workflows.study.selection_rows`).

    Raises:
        KeyError: a row without its comparisons.
    """
    out = []
    for row in selection["recipes"]:
        for key, label in SELECTION_CONTROLS.items():
            for measure in SWEEP_MEASURES:
                d = row[key][measure]
                out.append(
                    RecipeDifference(
                        row["name"],
                        label,
                        measure,
                        d.get("diff"),
                        d.get("ci_low"),
                        d.get("ci_high"),
                        d.get("n"),
                    )  # fmt: skip
                )
    return out


def selection_detectable(selection: dict[str, Any]) -> dict[str, float | None]:
    """Measure -> the smallest difference the selection comparison detects (80% power), or
    ``None`` where it could not be estimated."""
    power = selection.get("power") or {}
    return {m: (power.get(m) or {}).get("difference") for m in SWEEP_MEASURES}


def selection_figure(selection: dict[str, Any]) -> go.Figure:
    """``figures/selection``: every recipe against both controls, with the band of differences
    the power plan says could be missed under the layer-matched points (the plan is made from
    the main comparison's layer-matched draws; see
    :func:`sycointerp.workflows.study.selection_power`).

    Raises:
        KeyError: a row without its comparisons.
        ValueError: no recipes.
    """
    return selection_plot(
        selection_differences(selection),
        selection_detectable(selection),
        detectable_control=SELECTION_CONTROLS["vs_layer_matched"],
    )
