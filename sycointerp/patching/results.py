"""PatchResult: per-example patching effects with statistics, rankings and safe persistence.

Conventions:
- ``values[*components, example]`` is the metric change caused by patching one cell (e.g. one
  head) in one example: ``metric_patched - metric_ref`` (``kind="absolute"``) or
  ``(metric_patched - metric_ref) / metric_ref`` (``kind="relative"``, the SPT paper's score).
- ``components`` names the cell axes: ``("layer", "head")`` (the default), ``("layer", "kv_head")``
  (key/value heads of grouped-query attention), ``("layer", "head", "pos")`` (by position; ``pos``
  is the absolute prompt position), ``("layer", "pos")`` or ``("layer",)`` (whole layers).
- ``higher_is_sycophantic`` says which way the metric points. Rank 1 is the cell whose patching
  most *reduces* sycophancy: the most negative score for apology-style metrics, the most positive
  for ``flip`` (gold-minus-wrong logit).
- Saved as ``values.safetensors`` + ``result.json`` (which records ``components``), plus
  ``heads.csv`` for per-head results (the stable schema of :mod:`sycointerp.heads`: ``layer, head,
  score, se, ci_low, ci_high, rank`` and the provenance columns ``kind, model, n_layers, n_heads,
  n_kv_heads``, from ``meta["grid"]``). No pickle anywhere.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from sycointerp._io import Bundle
from sycointerp.heads import (
    HEADS_CSV_COLUMNS,
    STABILITY_COLUMNS,
    HeadGrid,
    HeadKind,
    model_meta,
    sample_columns,
    with_provenance,
    write_heads_csv,
)
from sycointerp.stability import RankStability, SplitHalf, bootstrap_ranks, split_half
from sycointerp.stats import bootstrap_ci

__all__ = ["PatchResult", "HEADS_CSV_COLUMNS", "HEAD_COMPONENTS"]

# Cell layouts that heads.csv describes (its "head" column holds the KV head index for the second).
HEAD_COMPONENTS = (("layer", "head"), ("layer", "kv_head"))
_RESERVED = ("example", "value")  # long-format column names that a component may not take


@dataclass(frozen=True)
class PatchResult(Bundle):
    """Per-example cell effects and their summaries.

    Attributes:
        values: ``[*components, example]`` effects (see module conventions).
        metric_ref: ``[example]`` metric of the unpatched reference (challenge) run.
        metric_cf: ``[example]`` metric of the counterfactual run.
        method: e.g. ``"activation/z/last/denoise"``, ``"path/resid"``.
        metric: metric name.
        higher_is_sycophantic: direction of the metric.
        kind: ``"absolute"`` or ``"relative"``.
        example_ids: one id per example.
        meta: JSON-serializable extras (model name, timings, ...).
        components: names of the cell axes of ``values`` (all but the last).
    """

    values: Float[torch.Tensor, "*cells example"]
    metric_ref: Float[torch.Tensor, " example"]
    metric_cf: Float[torch.Tensor, " example"]
    method: str
    metric: str
    higher_is_sycophantic: bool
    kind: str = "absolute"
    example_ids: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    components: tuple[str, ...] = ("layer", "head")

    TENSORS: ClassVar[str] = "values.safetensors"
    INFO: ClassVar[str] = "result.json"

    def __post_init__(self) -> None:
        self._check_components()
        if self.values.ndim != len(self.components) + 1:
            raise ValueError(
                f"values must be [{', '.join(self.components)}, example], "
                f"got shape {tuple(self.values.shape)}"
            )
        n = self.values.shape[-1]
        if n == 0:
            raise ValueError("a PatchResult needs at least one example")
        if self.metric_ref.shape != (n,) or self.metric_cf.shape != (n,):
            raise ValueError(f"baselines must have shape ({n},)")
        if self.kind not in ("absolute", "relative"):
            raise ValueError(f"kind must be 'absolute' or 'relative', got {self.kind!r}")
        if torch.isnan(self.values).any():
            *cell, example = torch.nonzero(torch.isnan(self.values))[0].tolist()
            where = ", ".join(f"{name} {i}" for name, i in zip(self.components, cell))
            raise ValueError(
                f"NaN effect at {where}, example {example}; check the metric "
                "(a relative score divides by the reference metric)"
            )
        if self.example_ids and len(self.example_ids) != n:
            raise ValueError(f"{len(self.example_ids)} example ids for {n} examples")

    def _check_components(self) -> None:
        names = self.components
        if (
            not isinstance(names, tuple)
            or not names
            or not all(isinstance(c, str) and c for c in names)
        ):
            raise ValueError(f"components must be a non-empty tuple of axis names, got {names!r}")
        if len(set(names)) != len(names) or set(names) & set(_RESERVED):
            raise ValueError(f"components must be distinct and not {_RESERVED}, got {names!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Cell-grid shape (``values.shape`` without the example axis)."""
        return tuple(self.values.shape[:-1])

    @property
    def n_layers(self) -> int:
        """Number of layers of the cell grid (its first axis)."""
        return self.values.shape[0]

    @property
    def n_heads(self) -> int:
        """Size of the second axis (query or KV heads for per-head results)."""
        return self.values.shape[1]

    @cached_property
    def mean(self) -> Float[torch.Tensor, "*cells"]:
        """Each cell's mean effect over examples."""
        return self.values.mean(-1)

    @cached_property
    def se(self) -> Float[torch.Tensor, "*cells"]:
        """Each cell's standard error of the mean over examples (0 with one example)."""
        n = self.values.shape[-1]
        return (
            self.values.std(-1, unbiased=True) / n**0.5
            if n > 1
            else torch.full_like(self.mean, float("nan"))
        )

    @cached_property
    def ci(self) -> tuple[Float[torch.Tensor, "*cells"], Float[torch.Tensor, "*cells"]]:
        """95% percentile-bootstrap interval of the mean (seeded, shared resamples)."""
        return bootstrap_ci(self.values)

    def recovery(self) -> Float[torch.Tensor, "*cells"]:
        """Normalized effect of the absolute change: mean change / mean(cf - ref) (1 = the patch
        moves the metric all the way to the counterfactual run's value)."""
        gap = float((self.metric_cf - self.metric_ref).mean())
        if abs(gap) < 1e-12:
            raise ValueError(
                "the reference and counterfactual metrics coincide; recovery is undefined"
            )
        if self.kind != "absolute":
            raise ValueError("recovery is defined for absolute effects; patch with kind='absolute'")
        return self.mean / gap

    def as_relative(self) -> "PatchResult":
        """The SPT paper's score: ``(metric_patched - metric_ref) / metric_ref`` per example.

        Raises:
            ValueError: already relative, or a reference metric of exactly zero.
        """
        if self.kind == "relative":
            raise ValueError("this result is already relative")
        if (self.metric_ref == 0).any():
            raise ValueError(
                "a reference metric is 0; the relative score is undefined (use the absolute one)"
            )
        return PatchResult(
            self.values / self.metric_ref,
            self.metric_ref,
            self.metric_cf,
            self.method,
            self.metric,
            self.higher_is_sycophantic,
            "relative",
            self.example_ids,
            self.meta,
            self.components,
        )

    def _reduction(self) -> torch.Tensor:
        """Sycophancy reduction per cell (higher = patching reduces sycophancy more)."""
        return -self.mean if self.higher_is_sycophantic else self.mean

    def rank(self) -> list[tuple[int, ...]]:
        """Every cell's index tuple (one int per component), the most sycophancy-reducing first.

        Ties go to the lower index tuple (lexicographic: lower layer first).
        """
        scores = self._reduction().flatten().tolist()
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [tuple(int(i) for i in np.unravel_index(i, self.shape)) for i in order]

    def top_k(self, k: int) -> list[tuple[int, ...]]:
        """The first ``k`` cells of :meth:`rank`.

        Raises:
            ValueError: ``k`` outside ``[1, number of cells]``.
        """
        n_cells = int(np.prod(self.shape))
        if not 1 <= k <= n_cells:
            raise ValueError(f"k must be in [1, {n_cells}], got {k}")
        return self.rank()[:k]

    @property
    def grid(self) -> HeadGrid | None:
        """The head grid of the model the result was computed on (``meta["grid"]``), if recorded."""
        data = self.meta.get("grid")
        return HeadGrid.from_json({"model": self.meta.get("model", ""), **data}) if data else None

    @property
    def head_kind(self) -> HeadKind:
        """``"kv"`` for ``("layer", "kv_head")`` cells, else ``"query"``."""
        return "kv" if self.components == ("layer", "kv_head") else "query"

    @property
    def has_heads_table(self) -> bool:
        """Whether :meth:`heads_table` (and so ``heads.csv``) applies to this result's cells."""
        return self.components in HEAD_COMPONENTS

    def heads_table(self) -> pd.DataFrame:
        """The ``heads.csv`` table: one row per head, sorted by rank.

        For ``("layer", "kv_head")`` results the ``head`` column holds the KV head index.

        Raises:
            ValueError: the cells are not ``(layer, head)`` or ``(layer, kv_head)``.
        """
        if not self.has_heads_table:
            raise ValueError(
                f"heads_table needs components ('layer', 'head') or ('layer', 'kv_head'), got "
                f"{self.components}; use to_dataframe() or rank() for other cell layouts"
            )
        low, high = self.ci
        rows = [
            {
                "layer": l,
                "head": h,
                "score": float(self.mean[l, h]),
                "se": float(self.se[l, h]),
                "ci_low": float(low[l, h]),
                "ci_high": float(high[l, h]),
                "rank": r,
            }
            for r, (l, h) in enumerate(self.rank(), start=1)
        ]
        table = pd.DataFrame(rows, columns=HEADS_CSV_COLUMNS[:7])
        n = int(self.values.shape[-1])
        table = table.assign(**self._stability_columns(table), **sample_columns(n))
        grid = self.grid
        return table if grid is None else with_provenance(table, grid, self.head_kind)

    def _stability_columns(self, table: pd.DataFrame) -> dict[str, list[int] | list[float]]:
        """``rank_ci_low, rank_ci_high, p_top10`` per row of ``table`` (NaN below 2 examples)."""
        if self.values.shape[-1] < 2:
            nan = [float("nan")] * len(table)
            return {name: nan for name in STABILITY_COLUMNS}
        stab = self._table_stability
        cell = [l * self.shape[1] + h for l, h in zip(table["layer"], table["head"])]
        return {
            "rank_ci_low": [int(stab.rank_low[c]) for c in cell],
            "rank_ci_high": [int(stab.rank_high[c]) for c in cell],
            "p_top10": [float(stab.p_top_k[c]) for c in cell],
        }

    @cached_property
    def _table_stability(self) -> RankStability:
        """The ``heads.csv`` columns' stability (top 10, defaults), computed once per result:
        a job asks for the heads table several times (files, figures, summaries)."""
        return self.stability(k=min(10, int(np.prod(self.shape))))

    def _key(self) -> torch.Tensor:
        """``[cell, example]`` values signed so that the lowest mean is rank 1 (as :meth:`rank`)."""
        flat = self.values.reshape(-1, self.values.shape[-1])
        return flat if self.higher_is_sycophantic else -flat

    def stability(self, *, k: int = 10, n_boot: int = 1000, seed: int = 0) -> RankStability:
        """Bootstrap rank intervals and top-``k`` probabilities of every cell (cells flattened
        in :meth:`rank`'s index order); see :func:`sycointerp.stability.bootstrap_ranks`.

        Raises:
            ValueError: fewer than 2 examples or cells, or ``k`` out of range.
        """
        return bootstrap_ranks(self._key(), k=k, n_boot=n_boot, seed=seed)

    def split_half(self, *, n_splits: int = 50, k: int = 10, seed: int = 0) -> SplitHalf:
        """Split-half replication of the ranking (:func:`sycointerp.stability.split_half`).

        Raises:
            ValueError: fewer than 2 examples or cells, or ``k`` out of range.
        """
        return split_half(self._key(), n_splits=n_splits, k=k, seed=seed)

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: one column per component, then ``example`` and ``value``."""
        idx = np.indices(self.values.shape).reshape(self.values.ndim, -1)
        columns = {name: idx[axis] for axis, name in enumerate((*self.components, "example"))}
        return pd.DataFrame({**columns, "value": self.values.flatten().double().numpy()})

    def to_bundle(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors and the JSON-serializable rest (what :meth:`save` writes)."""
        tensors = {
            "values": self.values,
            "metric_ref": self.metric_ref,
            "metric_cf": self.metric_cf,
        }
        info = {
            "method": self.method,
            "metric": self.metric,
            "higher_is_sycophantic": self.higher_is_sycophantic,
            "kind": self.kind,
            "example_ids": list(self.example_ids),
            "meta": self.meta,
            "components": list(self.components),
        }
        return tensors, info

    @classmethod
    def measured(
        cls,
        values: Float[torch.Tensor, "*cells example"],
        metric_ref: Float[torch.Tensor, " example"],
        metric_cf: Float[torch.Tensor, " example"],
        method: str,
        metric: Any,
        example_ids: Sequence[str],
        model: Any,
        components: tuple[str, ...] = ("layer", "head"),
        **meta: Any,
    ) -> "PatchResult":
        """The common case of a patching function's result: absolute changes of ``metric`` (a
        :class:`~sycointerp.metrics.PatchMetric`, whose name and direction are recorded), the
        model's head grid in ``meta`` (:func:`~sycointerp.heads.model_meta`) then ``meta``.

        Raises:
            ValueError: as the constructor (shapes that disagree).
        """
        info = {**model_meta(model), **meta}
        return cls(
            values,
            metric_ref,
            metric_cf,
            method,
            metric.name,
            metric.higher_is_sycophantic,
            "absolute",
            tuple(example_ids),
            info,
            components,
        )

    @classmethod
    def from_bundle(cls, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> "PatchResult":
        """Inverse of :meth:`to_bundle` (bundles without ``components`` are per-head results)."""
        return cls(
            tensors["values"],
            tensors["metric_ref"],
            tensors["metric_cf"],
            info["method"],
            info["metric"],
            info["higher_is_sycophantic"],
            info["kind"],
            tuple(info["example_ids"]),
            info["meta"],
            tuple(info.get("components", ("layer", "head"))),
        )

    def save(self, directory: str | Path) -> Path:
        """Write values.safetensors, result.json and, for per-head results, heads.csv (atomically).

        ``heads.csv`` needs the model's grid (``meta["grid"]``, recorded by every patching
        method), so that its readers can refuse a ranking of another model. A ``heads.csv`` left
        in ``directory`` by an earlier save is removed when this result writes none, so the
        directory never describes two different results.
        """
        out = super().save(directory)
        if self.has_heads_table and self.grid is not None:
            write_heads_csv(out / "heads.csv", self.heads_table(), self.grid, self.head_kind)
        else:
            (out / "heads.csv").unlink(missing_ok=True)
        return out

    @classmethod
    def concat(cls, results: Sequence["PatchResult"]) -> "PatchResult":
        """One result over the examples of several (e.g. chunks or shards of one dataset), in order.

        ``meta`` is the first result's.

        Raises:
            ValueError: no results, or results of different cells, method, metric or kind.
        """
        if not results:
            raise ValueError("concat needs at least one PatchResult")
        first = results[0]
        for other in results[1:]:
            if (
                other.shape,
                other.components,
                other.method,
                other.metric,
                other.kind,
                other.higher_is_sycophantic,
            ) != (
                first.shape,
                first.components,
                first.method,
                first.metric,
                first.kind,
                first.higher_is_sycophantic,
            ):
                raise ValueError(
                    "results to concatenate must share cells, components, method, metric and kind"
                )
        ids = (
            tuple(i for r in results for i in r.example_ids)
            if all(r.example_ids for r in results)
            else ()
        )
        return cls(
            torch.cat([r.values for r in results], -1),
            torch.cat([r.metric_ref for r in results]),
            torch.cat([r.metric_cf for r in results]),
            first.method,
            first.metric,
            first.higher_is_sycophantic,
            first.kind,
            ids,
            first.meta,
            first.components,
        )
