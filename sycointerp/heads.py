"""Attention heads as data: head kinds, a model's head grid, validation, random draws, heads.csv.

Conventions:

- A head is a ``(layer, index)`` pair of ints. Its **kind** says what ``index`` counts:
  ``"query"`` heads (``0 <= index < n_heads``; what ``hook_z``, path patching, knockout and SPT
  act on) or ``"kv"`` heads of grouped-query attention (``0 <= index < n_kv_heads``; what k/v
  activation patching ranks). Query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``.
- A :class:`HeadGrid` is the head shape of one model: ``n_layers``, ``n_heads``, ``n_kv_heads``
  and the model's name. Every consumer of a ranking checks the grid the ranking was made on
  against the model it is applied to: a ranking of another shape, or of KV heads taken as query
  heads, is refused (:class:`HeadFileError`) with both shapes named. Model *names* may differ (a
  tuned copy of the ranked model has another name and the same heads): that is not refused, but
  logged as a warning naming both models, since a different model of the same shape is not
  caught by the grid check.
- ``heads.csv`` (written by :func:`write_heads_csv`, read by :func:`read_heads_csv`): one row per
  head, sorted by rank, columns :data:`HEADS_CSV_COLUMNS`: ``layer, head, score, se, ci_low,
  ci_high, rank`` (rank 1 reduces sycophancy most; ``head`` is the KV head index for ``kind =
  kv``), then the provenance columns ``kind, model, n_layers, n_heads, n_kv_heads``, equal on
  every row, so that a copied file still says what it ranks. Then the ranking-stability columns
  :data:`STABILITY_COLUMNS` (``rank_ci_low, rank_ci_high``: the 95% bootstrap interval of the
  head's rank over example resamples; ``p_top10``: the share of resamples that rank it among the
  first 10; see :mod:`sycointerp.stability`), written by every patching job. Then the sample
  columns :data:`SAMPLE_COLUMNS` (:func:`sample_columns`): ``n``, the number of examples the
  ranking rests on, and ``small``, true below :data:`~sycointerp.stats.SMALL_SAMPLE` examples
  (its intervals are then not to be trusted), equal on every row. Other extra columns may follow
  and are kept.
- Random draws (:func:`draw_random_heads`, :func:`draw_layer_matched`, :meth:`HeadSet.random`)
  come from one ``random.Random(seed)``, drawn in order: equal seeds give equal draws.

Refusals: :class:`HeadFileError` (a :class:`~sycointerp.errors.UserError`) for unreadable or
malformed files and grid mismatches; ``ValueError`` for heads out of range, repeated heads,
non-integer heads and impossible draw sizes.
"""

import logging
import math
import operator
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from sycointerp._io import atomic_write
from sycointerp.errors import UserError
from sycointerp.stats import SMALL_SAMPLE

__all__ = [
    "Head",
    "HeadKind",
    "HeadGrid",
    "HeadFileError",
    "HeadRanking",
    "HeadSet",
    "HEADS_CSV_COLUMNS",
    "PROVENANCE_COLUMNS",
    "SAMPLE_COLUMNS",
    "STABILITY_COLUMNS",
    "attention_dims",
    "model_meta",
    "check_heads",
    "heads_by_layer",
    "draw_random_heads",
    "draw_layer_matched",
    "read_heads_csv",
    "sample_columns",
    "with_provenance",
    "write_heads_csv",
]

log = logging.getLogger(__name__)

Head = tuple[int, int]
HeadKind = Literal["query", "kv"]
KINDS: tuple[HeadKind, ...] = ("query", "kv")
PROVENANCE_COLUMNS = ["kind", "model", "n_layers", "n_heads", "n_kv_heads"]
HEADS_CSV_COLUMNS = [
    "layer",
    "head",
    "score",
    "se",
    "ci_low",
    "ci_high",
    "rank",
    *PROVENANCE_COLUMNS,
]
STABILITY_COLUMNS = ["rank_ci_low", "rank_ci_high", "p_top10"]
SAMPLE_COLUMNS = ["n", "small"]


class HeadFileError(UserError):
    """A heads file cannot be read, or ranks heads of another shape or kind than needed."""


def model_meta(model: Any) -> dict[str, Any]:
    """What results record about the model they were computed on: its name and head grid."""
    grid = HeadGrid.of(model)
    return {"model": grid.model, "grid": grid.to_json()}


def attention_dims(config: Any) -> tuple[int, int, int, int, int]:
    """``(n_layers, n_heads, n_kv_heads, d_model, d_head)`` of a HuggingFace config."""
    n_layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    n_heads = getattr(config, "num_attention_heads", None) or config.n_head
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_model = getattr(config, "hidden_size", None) or config.n_embd
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    return n_layers, n_heads, n_kv, d_model, d_head


@dataclass(frozen=True)
class HeadGrid:
    """The head shape of one model.

    Attributes:
        n_layers: decoder layers.
        n_heads: query heads per layer.
        n_kv_heads: key/value heads per layer (``n_heads`` without grouped-query attention).
        model: the model's name (provenance only: never compared for refusal).

    Raises:
        ValueError: non-positive sizes, or ``n_heads`` not a multiple of ``n_kv_heads``.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    model: str = ""

    def __post_init__(self) -> None:
        sizes = (self.n_layers, self.n_heads, self.n_kv_heads)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise ValueError(f"a head grid needs positive integer sizes, got {sizes}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"{self.n_heads} query heads do not split into {self.n_kv_heads} KV heads"
            )

    @classmethod
    def of(cls, model: Any) -> "HeadGrid":
        """The grid of a TransformerBridge (``model.cfg``) or a HuggingFace model
        (``model.config``)."""
        cfg = getattr(model, "cfg", None)
        if cfg is not None and hasattr(cfg, "n_layers"):
            n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
            return cls(int(cfg.n_layers), int(cfg.n_heads), int(n_kv), str(cfg.model_name))
        return cls.from_config(model.config)

    @classmethod
    def from_config(cls, config: Any, model: str = "") -> "HeadGrid":
        """The grid of a HuggingFace config (no weights needed)."""
        n_layers, n_heads, n_kv, *_ = attention_dims(config)
        name = model or str(getattr(config, "name_or_path", "") or "")
        return cls(int(n_layers), int(n_heads), int(n_kv), name)

    def count(self, kind: HeadKind = "query") -> int:
        """Heads per layer of ``kind``."""
        return self.n_heads if kind == "query" else self.n_kv_heads

    def total(self, kind: HeadKind = "query") -> int:
        """Number of query heads (``n_layers * n_heads``)."""
        return self.n_layers * self.count(kind)

    def describe(self, kind: HeadKind = "query") -> str:
        """E.g. ``"30 layers x 9 query heads (3 KV heads)"``."""
        what = "query heads" if kind == "query" else "KV heads"
        kv = (
            f" ({self.n_kv_heads} KV heads)"
            if kind == "query" and self.n_kv_heads != self.n_heads
            else ""
        )
        return f"{self.n_layers} layers x {self.count(kind)} {what}{kv}"

    def shape(self) -> tuple[int, int, int]:
        """``(n_layers, n_heads, n_kv_heads)``: what two grids must share (the name is
        provenance)."""
        return (self.n_layers, self.n_heads, self.n_kv_heads)

    def to_json(self) -> dict[str, Any]:
        """The grid as a JSON-serializable dict."""
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "HeadGrid":
        """Inverse of :meth:`to_json`."""
        return cls(
            int(data["n_layers"]),
            int(data["n_heads"]),
            int(data["n_kv_heads"]),
            str(data.get("model", "")),
        )


def _as_head(pair: Any) -> Head:
    try:
        layer, index = (operator.index(x) for x in pair)
    except (TypeError, ValueError):
        raise ValueError(f"a head must be a (layer, head) pair of integers, got {pair!r}") from None
    return layer, index


def check_heads(heads: Iterable[Any], grid: HeadGrid, kind: HeadKind = "query") -> tuple[Head, ...]:
    """``heads`` as int pairs, in the given order, after checking them against ``grid``.

    Raises:
        ValueError: a head that is not an integer pair, out of range for ``kind``, or repeated.
    """
    out: list[Head] = []
    seen: set[Head] = set()
    for pair in heads:
        layer, index = _as_head(pair)
        if not (0 <= layer < grid.n_layers and 0 <= index < grid.count(kind)):
            raise ValueError(
                f"head ({layer}, {index}) is out of range: the model has {grid.describe(kind)}"
            )
        if (layer, index) in seen:
            raise ValueError(f"head ({layer}, {index}) is listed twice")
        seen.add((layer, index))
        out.append((layer, index))
    return tuple(out)


def heads_by_layer(
    heads: Iterable[Any], grid: HeadGrid, kind: HeadKind = "query"
) -> dict[int, list[int]]:
    """Checked heads grouped by layer: ``{layer: [head, ...]}``, layers sorted, heads in order.

    Raises:
        ValueError: as :func:`check_heads`.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, index in check_heads(heads, grid, kind):
        by_layer.setdefault(layer, []).append(index)
    return dict(sorted(by_layer.items()))


def draw_random_heads(
    n_layers: int, n_heads: int, ks: Sequence[int], n_random: int, seed: int = 0
) -> tuple[tuple[tuple[Head, ...], ...], ...]:
    """``n_random`` uniform random head sets of each size in ``ks``: ``[k][draw] -> sorted heads``.

    Each set is drawn without replacement from all ``n_layers * n_heads`` heads, independently
    per (k, draw), in that order, from one ``random.Random(seed)``; so
    ``draw_random_heads(L, H, [k], 1, s)[0][0] == HeadSet.random(k, L, H, s).heads``.

    Raises:
        ValueError: a k out of ``[0, n_layers * n_heads]`` or ``n_random < 1``.
    """
    total = n_layers * n_heads
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    if any(not 0 <= k <= total for k in ks):
        raise ValueError(f"every k must be in [0, {total}], got {list(ks)}")
    rng = random.Random(seed)

    def draw(k: int) -> tuple[Head, ...]:
        return tuple(sorted(divmod(i, n_heads) for i in rng.sample(range(total), k)))

    return tuple(tuple(draw(k) for _ in range(n_random)) for k in ks)


def draw_layer_matched(
    selected: Sequence[Head], grid: HeadGrid, n_draws: int, seed: int = 0
) -> tuple[tuple[Head, ...], ...]:
    """Random head sets with the same number of heads per layer as ``selected`` (a control).

    In each layer holding ``c`` selected heads, ``c`` heads are drawn uniformly from that layer's
    heads *outside* the selected set; a layer with fewer than ``c`` such heads contributes all
    of them plus randomly chosen selected ones (so the histogram always matches).

    Raises:
        ValueError: invalid ``selected`` heads, or ``n_draws < 1``.
    """
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    by_layer = heads_by_layer(selected, grid)
    rng = random.Random(seed)

    def draw() -> tuple[Head, ...]:
        out: list[Head] = []
        for layer, chosen in by_layer.items():
            others = [h for h in range(grid.n_heads) if h not in chosen]
            picked = rng.sample(others, min(len(chosen), len(others)))
            picked += rng.sample(chosen, len(chosen) - len(picked))
            out += [(layer, h) for h in picked]
        return tuple(sorted(out))

    return tuple(draw() for _ in range(n_draws))


# --------------------------------------------------------------------------- heads.csv


def with_provenance(table: pd.DataFrame, grid: HeadGrid, kind: HeadKind) -> pd.DataFrame:
    """``table`` (columns ``layer, head, score, se, ci_low, ci_high, rank`` and any extras) with
    the provenance columns after the first seven, as ``heads.csv`` holds it.

    Raises:
        ValueError: a missing column or an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    missing = [c for c in HEADS_CSV_COLUMNS[:7] if c not in table.columns]
    if missing:
        raise ValueError(f"a heads table needs the columns {missing}")
    provenance = {
        "kind": kind,
        "model": grid.model,
        "n_layers": grid.n_layers,
        "n_heads": grid.n_heads,
        "n_kv_heads": grid.n_kv_heads,
    }
    base = table[HEADS_CSV_COLUMNS[:7]].assign(**provenance)
    extras = table[[c for c in table.columns if c not in HEADS_CSV_COLUMNS]]
    return pd.concat([base, extras], axis=1)


def sample_columns(n: int) -> dict[str, int | bool]:
    """The :data:`SAMPLE_COLUMNS` of a ranking over ``n`` examples, for ``DataFrame.assign``:
    ``n`` and ``small`` (``n`` below :data:`~sycointerp.stats.SMALL_SAMPLE`, the size under which
    a bootstrap interval looks precise and is not).

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"a ranking rests on at least one example, got n={n}")
    return {"n": n, "small": n < SMALL_SAMPLE}


def write_heads_csv(
    target: str | Path, table: pd.DataFrame, grid: HeadGrid, kind: HeadKind
) -> None:
    """Write ``table`` as ``heads.csv`` with the provenance columns (:func:`with_provenance`),
    atomically.

    Raises:
        ValueError: as :func:`with_provenance`.
    """
    full = with_provenance(table, grid, kind)
    atomic_write(Path(target), lambda p: full.to_csv(p, index=False, float_format="%.8g"))


@dataclass(frozen=True, eq=False)
class HeadRanking:
    """A ranking read from a ``heads.csv``.

    Attributes:
        heads: every head of the file, best rank first.
        kind: ``"query"`` or ``"kv"``.
        grid: the grid of the model it was made on.
        path: the file.
        table: the file's rows, sorted by rank.
    """

    heads: tuple[Head, ...]
    kind: HeadKind
    grid: HeadGrid
    path: str
    table: pd.DataFrame

    def require(
        self,
        grid: HeadGrid,
        kind: HeadKind = "query",
        *,
        what: str = "this ranking",
        model: str = "",
    ) -> "HeadRanking":
        """Refuse a ranking of another head kind or another model shape; returns ``self``.

        ``model`` names the model in a refusal when ``grid`` carries no name (a shape read before
        loading, whose name is compared only after).

        Raises:
            HeadFileError: names the file's kind and grid and the model's.
        """
        if self.kind != kind:
            raise HeadFileError(
                f"{what} {self.path} ranks {self.kind} heads ({self.grid.describe(self.kind)}), "
                f"but {kind} heads are needed; rank (layer, head) cells, e.g. with path patching "
                "or hook_z activation patching"
            )
        if self.grid.shape() != grid.shape():
            fields = ("n_layers", "n_heads", "n_kv_heads")
            differ = [
                f"{f} {getattr(self.grid, f)} vs {getattr(grid, f)}"
                for f in fields
                if getattr(self.grid, f) != getattr(grid, f)
            ]
            raise HeadFileError(
                f"{what} {self.path} was made on a model with {self.grid.describe()} "
                f"({self.grid.model or 'model not recorded'}), but this model has "
                f"{grid.describe()} ({grid.model or model or 'model not named'}): "
                f"{', '.join(differ)}; rank the heads of this model"
            )
        if self.grid.model and grid.model and self.grid.model != grid.model:
            log.warning(
                "%s was ranked on %s; using it for %s (same head grid)",
                self.path,
                self.grid.model,
                grid.model,
            )
        return self

    def top(self, k: int) -> tuple[Head, ...]:
        """The ``k`` best-ranked heads.

        Raises:
            HeadFileError: ``k`` outside ``[1, len(heads)]``.
        """
        if not 1 <= k <= len(self.heads):
            raise HeadFileError(
                f"K must be in [1, {len(self.heads)}] ({self.path} lists {len(self.heads)} "
                f"heads), got {k}"
            )
        return self.heads[:k]


def _int_column(table: pd.DataFrame, name: str, path: Path) -> list[int]:
    values = pd.to_numeric(table[name], errors="coerce").astype(float)
    bad = [i for i, v in enumerate(values) if not (math.isfinite(v) and v.is_integer())]
    if bad:
        raise HeadFileError(
            f"{path}: column {name!r} must hold integers; row {bad[0] + 2} has "
            f"{table[name].iloc[bad[0]]!r}"
        )
    return [int(v) for v in values]


def _provenance(table: pd.DataFrame, path: Path) -> tuple[HeadKind, HeadGrid]:
    missing = [c for c in PROVENANCE_COLUMNS if c not in table.columns]
    if missing:
        raise HeadFileError(
            f"{path} does not record which model and head kind it ranks (no {', '.join(missing)} "
            "columns; written before sycointerp 0.2?); rerun the patch job that made it"
        )
    for name in PROVENANCE_COLUMNS:
        if table[name].nunique(dropna=False) != 1:
            raise HeadFileError(f"{path}: column {name!r} must be the same on every row")
    row = table.iloc[0]
    kind = str(row["kind"])
    if kind not in KINDS:
        raise HeadFileError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    try:
        sizes = [
            int(_int_column(table.iloc[:1], c, path)[0])
            for c in ("n_layers", "n_heads", "n_kv_heads")
        ]
        grid = HeadGrid(*sizes, model="" if pd.isna(row["model"]) else str(row["model"]))
    except ValueError as err:
        raise HeadFileError(f"{path}: invalid model shape ({err})") from None
    return kind, grid


def read_heads_csv(path: str | Path) -> HeadRanking:
    """Read and validate a ``heads.csv`` (see the module conventions).

    Raises:
        HeadFileError: unreadable or non-UTF-8 file, missing columns, non-integer layer / head /
            rank, repeated heads or ranks, heads outside the recorded grid, missing provenance.
    """
    src = Path(path)
    try:
        table = pd.read_csv(src, encoding="utf-8")
    except FileNotFoundError:
        raise HeadFileError(
            f"heads file {src} does not exist; pass the heads.csv of a patch job"
        ) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise HeadFileError(f"cannot read heads file {src} ({type(err).__name__}: {err})") from None
    missing = [c for c in ("layer", "head", "rank") if c not in table.columns]
    if missing or table.empty:
        raise HeadFileError(
            f"{src} is not a heads.csv (needs rows and the columns layer, head, rank)"
        )
    kind, grid = _provenance(table, src)
    ranks = _int_column(table, "rank", src)
    if len(set(ranks)) != len(ranks):
        raise HeadFileError(f"{src}: a rank is listed twice")
    table = table.assign(rank=ranks).sort_values("rank", kind="stable").reset_index(drop=True)
    pairs = zip(_int_column(table, "layer", src), _int_column(table, "head", src))
    try:
        heads = check_heads(pairs, grid, kind)
    except ValueError as err:
        raise HeadFileError(f"{src}: {err}") from None
    return HeadRanking(heads, kind, grid, str(src), table)


# --------------------------------------------------------------------------- head sets


@dataclass(frozen=True)
class HeadSet:
    """Selected query heads ``(layer, head)`` of a model with ``n_layers x n_heads`` query heads.

    Attributes:
        heads: sorted, distinct heads.
        n_layers, n_heads: the model's head grid (checked against the model when used).
        source: how the set was chosen (``"top-32 of path/resid"``, ``"random seed=0"``,
            ``"list"``).

    Raises:
        ValueError: no heads, repeated heads or heads outside the grid.
    """

    heads: tuple[Head, ...]
    n_layers: int
    n_heads: int
    source: str = "list"

    def __post_init__(self) -> None:
        grid = HeadGrid(self.n_layers, self.n_heads, self.n_heads)
        try:
            heads = tuple(sorted(check_heads(self.heads, grid)))
        except ValueError as err:
            raise ValueError(f"{err}; was the ranking made with another model?") from None
        if not heads:
            raise ValueError("a HeadSet needs at least one head")
        object.__setattr__(self, "heads", heads)

    def __len__(self) -> int:
        return len(self.heads)

    @classmethod
    def top_k(cls, result: Any, k: int) -> "HeadSet":
        """The ``k`` best-ranked heads of a per-query-head
        :class:`~sycointerp.patching.PatchResult`.

        Raises:
            ValueError: ``k`` outside ``[1, n_layers * n_heads]`` or cells that are not query heads.
        """
        if result.components != ("layer", "head"):
            raise ValueError(
                f"top_k needs a per-head result (components ('layer', 'head')), got "
                f"{result.components}"
            )
        _check_k(k, result.n_layers * result.n_heads)
        return cls(
            tuple(result.top_k(k)), result.n_layers, result.n_heads, f"top-{k} of {result.method}"
        )

    @classmethod
    def from_csv(cls, path: str | Path, k: int, grid: HeadGrid) -> "HeadSet":
        """The ``k`` best-ranked heads of a ``heads.csv``, which must rank ``grid``'s query heads.

        Raises:
            HeadFileError: see :func:`read_heads_csv` and :meth:`HeadRanking.require`; ``k``
                larger than the file.
        """
        ranking = read_heads_csv(path).require(grid, "query", what="heads file")
        return cls(ranking.top(k), grid.n_layers, grid.n_heads, f"top-{k} of {path}")

    @classmethod
    def random(cls, k: int, n_layers: int, n_heads: int, seed: int = 0) -> "HeadSet":
        """``k`` heads drawn uniformly without replacement (the paper's random-heads control)."""
        _check_k(k, n_layers * n_heads)
        (heads,) = draw_random_heads(n_layers, n_heads, [k], 1, seed)[0]
        return cls(heads, n_layers, n_heads, f"random seed={seed}")

    @classmethod
    def layer_matched(cls, selected: "HeadSet", seed: int = 0) -> "HeadSet":
        """Random heads with ``selected``'s number of heads per layer
        (:func:`draw_layer_matched`)."""
        grid = HeadGrid(selected.n_layers, selected.n_heads, selected.n_heads)
        (heads,) = draw_layer_matched(selected.heads, grid, 1, seed)
        return cls(heads, selected.n_layers, selected.n_heads, f"layer-matched random seed={seed}")

    def to_json(self) -> dict[str, Any]:
        """The head set as a JSON-serializable dict (``heads``, grid, ``source``)."""
        return {
            "heads": [list(h) for h in self.heads],
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "HeadSet":
        """Inverse of :meth:`to_json`."""
        return cls(
            tuple(tuple(h) for h in data["heads"]),
            data["n_layers"],
            data["n_heads"],
            data["source"],
        )


def _check_k(k: int, total: int) -> None:
    if not 1 <= k <= total:
        raise ValueError(f"K must be in [1, {total}] (the model has {total} heads), got {k}")
