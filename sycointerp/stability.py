"""How stable is a ranking of cells (heads) by their mean effect over examples?

Conventions: ``values`` is ``[cell, example]`` (a :class:`~sycointerp.patching.PatchResult`'s
values, cells flattened); ``key`` orders cells best first: the cell with the *lowest* key gets
rank 1 (pass ``-values`` to rank the most positive first). Ranks are 1-based; ties in a resample
are broken by cell index (stable sort), which only matters for exactly equal means.

- :func:`bootstrap_ranks`: resample the examples with replacement ``n_boot`` times (the same
  resample for every cell, from a seeded generator), rank the cells by their resampled mean each
  time; per cell, the percentile interval of its rank and the share of resamples that put it in
  the top ``k``. A head ranked 1 whose rank interval is [1, 40] is not a finding.
- :func:`split_half`: split the examples at random into two disjoint halves, rank on each, and
  correlate the two rankings (Spearman); repeated over ``n_splits`` splits. Values near 1 mean the
  ranking replicates on other examples; the published failure mode (scores whose spread across
  runs exceeds their mean) shows as values near 0.
- :func:`spearman`, :func:`top_k_overlap`: agreement of two rankings.

Cost: ``n_boot x cells x examples`` additions, done ``chunk`` resamples at a time (memory
``chunk x cells x examples`` floats).
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float

__all__ = [
    "RankStability",
    "SplitHalf",
    "bootstrap_ranks",
    "ranks_of",
    "spearman",
    "rank_positions",
    "ranking_agreement",
    "split_half",
    "top_k_overlap",
]


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks; tied values share the mean of the ranks they span."""
    below = (x[None, :] < x[:, None]).sum(1)
    tied = (x[None, :] == x[:, None]).sum(1)
    return below + (tied + 1) / 2


def spearman(a: Float[torch.Tensor, " n"], b: Float[torch.Tensor, " n"]) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks, ties given their average rank.

    Returns ``nan`` when either side is constant (the correlation is undefined).

    Raises:
        ValueError: the two sides differ in length, have fewer than 2 values, or hold a NaN.
    """
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(
            f"spearman needs two equally long vectors of >= 2 values, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if torch.isnan(a).any() or torch.isnan(b).any():
        raise ValueError("spearman got a NaN; NaN has no rank (drop those entries first)")
    ra, rb = _average_ranks(a.double()), _average_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float("nan") if denom == 0 else float((ra * rb).sum() / denom)


def ranks_of(key: Float[torch.Tensor, "... cell"]) -> torch.Tensor:
    """1-based rank of every cell along the last axis (lowest key first, stable ties)."""
    order = torch.argsort(key, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, key.shape[-1] + 1).expand_as(order).contiguous())
    return ranks


def top_k_overlap(a: list, b: list, k: int) -> float:
    """Share of the first ``k`` entries of ranking ``a`` that are among the first ``k`` of ``b``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return len(set(a[:k]) & set(b[:k])) / k


def rank_positions(ranking: list[tuple[int, ...]]) -> Float[torch.Tensor, " cell"]:
    """0-based position of every cell in ``ranking``, the cells in sorted order (so two rankings
    of the same cells give aligned vectors)."""
    pos = {cell: i for i, cell in enumerate(ranking)}
    return torch.tensor([float(pos[c]) for c in sorted(ranking)])


def ranking_agreement(
    a: list[tuple[int, ...]], b: list[tuple[int, ...]], k: int
) -> tuple[float, float]:
    """Top-``k`` overlap and Spearman correlation of the rank positions of two full rankings.

    Raises:
        ValueError: the rankings order different cells, or ``k < 1``.
    """
    if sorted(a) != sorted(b):
        raise ValueError("the two rankings must order the same cells (the same model's heads)")
    return top_k_overlap(a, b, k), spearman(rank_positions(a), rank_positions(b))


@dataclass(frozen=True)
class RankStability:
    """Bootstrap rank intervals of every cell.

    Attributes:
        rank_low, rank_high: ``[cell]`` percentile interval of the rank (``level``).
        p_top_k: ``[cell]`` share of resamples ranking the cell in the first ``k``.
        k: the ``k`` of ``p_top_k``.
        n_boot, level, seed: how it was computed.
    """

    rank_low: torch.Tensor
    rank_high: torch.Tensor
    p_top_k: torch.Tensor
    k: int
    n_boot: int
    level: float
    seed: int


def _check(values: torch.Tensor, what: str) -> None:
    if values.ndim != 2 or values.shape[0] < 2 or values.shape[1] < 2:
        raise ValueError(
            f"{what} needs values [cell >= 2, example >= 2], got {tuple(values.shape)}"
        )
    if torch.isnan(values).any():
        raise ValueError(f"{what}: values contain NaN")


def bootstrap_ranks(
    key: Float[torch.Tensor, "cell example"],
    *,
    k: int = 10,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 64,
) -> RankStability:
    """Rank intervals and top-``k`` probabilities from example resamples (see the module doc).

    Raises:
        ValueError: fewer than 2 cells or examples, NaN, ``k`` outside ``[1, cells]``, ``level``
            outside (0, 1) or ``n_boot < 1``.
    """
    _check(key, "bootstrap_ranks")
    n_cells, n = key.shape
    if not 1 <= k <= n_cells or not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 1 <= k <= {n_cells}, 0 < level < 1, n_boot >= 1")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    ranks = torch.cat(
        [ranks_of(key.double()[:, part].mean(-1).T) for part in idx.split(chunk)]
    )  # [n_boot, cell]
    alpha = (1 - level) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    low, high = torch.quantile(ranks.double(), q, dim=0)
    p_top = (ranks <= k).double().mean(0)
    return RankStability(low.floor().long(), high.ceil().long(), p_top, k, n_boot, level, seed)


@dataclass(frozen=True)
class SplitHalf:
    """Spearman correlations of the rankings made on two disjoint halves of the examples.

    Attributes:
        correlations: one per split.
        mean: their mean.
        low, high: their 2.5% and 97.5% percentiles (over splits, not a CI of the mean).
        top_k_overlap: mean share of the top ``k`` of one half found in the other's top ``k``.
        k: that ``k``.
    """

    correlations: tuple[float, ...]
    mean: float
    low: float
    high: float
    top_k_overlap: float
    k: int

    def to_json(self) -> dict:
        """The replication as a JSON-serializable dict."""
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "n_splits": len(self.correlations),
            "top_k_overlap": self.top_k_overlap,
            "k": self.k,
        }


def split_half(
    key: Float[torch.Tensor, "cell example"], *, n_splits: int = 50, k: int = 10, seed: int = 0
) -> SplitHalf:
    """Split-half replication of the ranking by mean ``key`` (see the module doc).

    With an odd number of examples one example, a different random one in each split, is left
    out of it.

    Raises:
        ValueError: fewer than 2 cells or examples, NaN, ``n_splits < 1`` or ``k`` out of range.
    """
    _check(key, "split_half")
    n_cells, n = key.shape
    if n_splits < 1 or not 1 <= k <= n_cells:
        raise ValueError(f"need n_splits >= 1 and 1 <= k <= {n_cells}")
    gen = torch.Generator().manual_seed(seed)
    rhos, overlaps = [], []
    for _ in range(n_splits):
        perm = torch.randperm(n, generator=gen)
        a, b = perm[: n // 2], perm[n // 2 : 2 * (n // 2)]
        mean_a, mean_b = key[:, a].double().mean(-1), key[:, b].double().mean(-1)
        rhos.append(spearman(mean_a, mean_b))
        order_a, order_b = torch.argsort(mean_a).tolist(), torch.argsort(mean_b).tolist()
        overlaps.append(top_k_overlap(order_a, order_b, k))
    values = torch.tensor(rhos, dtype=torch.float64)
    finite = values[~torch.isnan(values)]
    if finite.numel() == 0:
        low = high = mean = float("nan")
    else:
        low, high = (
            float(x)
            for x in torch.quantile(finite, torch.tensor([0.025, 0.975], dtype=torch.float64))
        )
        mean = float(finite.mean())
    return SplitHalf(tuple(rhos), mean, low, high, sum(overlaps) / len(overlaps), k)
