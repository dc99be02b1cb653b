"""The trust study's K-sweep rows (``study.json``'s ``"sweep"``) as the figure's typed records:
the one place that knows both the study's layout and :class:`sycointerp.plot.SweepPoint`, so that
the plot knows nothing of the study's files (used by ``study.md``'s figure and the report page).
"""

from collections.abc import Sequence
from typing import Any

from sycointerp.plot import SWEEP_MEASURES, SweepPoint, SweepRate

__all__ = ["sweep_figure_points"]


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
