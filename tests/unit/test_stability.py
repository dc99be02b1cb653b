"""Ranking stability: rank intervals, top-k probabilities and split-half replication, by hand."""

import pytest
import torch

from sycointerp.patching import PatchResult
from sycointerp.stability import bootstrap_ranks, ranks_of, spearman, split_half, top_k_overlap
from tests.conftest import grid_meta


def test_ranks_by_hand():
    assert ranks_of(torch.tensor([3.0, 1.0, 2.0])).tolist() == [3, 1, 2]
    assert ranks_of(torch.tensor([0.0, 0.0, -1.0])).tolist() == [2, 3, 1]  # ties: lower index first
    assert top_k_overlap([1, 2, 3], [3, 1, 4], 2) == 0.5


def test_bootstrap_top_1_probability_by_hand():
    # Two examples. Cell A: (0, 2); cell B: (1, 1). The four equally likely resamples give A the
    # means 0, 1, 1, 2 against B's 1; A ranks first in three of them (the tie goes to the lower
    # index): P(A in top 1) = 3/4, and A's rank interval is [1, 2].
    key = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    stab = bootstrap_ranks(key, k=1, n_boot=20000, seed=3)
    assert stab.p_top_k[0] == pytest.approx(0.75, abs=0.01)
    assert stab.p_top_k[1] == pytest.approx(0.25, abs=0.01)
    assert stab.rank_low.tolist() == [1, 1] and stab.rank_high.tolist() == [2, 2]


def test_well_separated_cells_have_point_intervals():
    key = torch.tensor([[-5.0, -5.2, -4.8, -5.1], [1.0, 1.1, 0.9, 1.0], [0.0, 0.2, -0.1, 0.1]])
    stab = bootstrap_ranks(key, k=1, n_boot=300)
    assert stab.rank_low.tolist() == stab.rank_high.tolist() == [1, 3, 2]
    assert stab.p_top_k.tolist() == [1.0, 0.0, 0.0]
    assert bootstrap_ranks(key, k=2, n_boot=300, seed=1).p_top_k.tolist() == [1.0, 0.0, 1.0]


def test_split_half_by_hand():
    # Two examples whose orderings are exact opposites: every split correlates at -1, and the
    # top head of one half is never the other's.
    key = torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    half = split_half(key, n_splits=4, k=1)
    assert half.correlations == (-1.0,) * 4 and half.mean == -1.0 and half.top_k_overlap == 0.0
    same = split_half(torch.tensor([[1.0, 1.5], [2.0, 2.5], [3.0, 3.5]]), n_splits=3, k=1)
    assert same.mean == 1.0 and same.top_k_overlap == 1.0
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == -1.0


def test_refusals():
    with pytest.raises(ValueError, match="cell >= 2, example >= 2"):
        bootstrap_ranks(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        split_half(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="1 <= k"):
        bootstrap_ranks(torch.zeros(2, 3), k=3)


def test_heads_table_carries_rank_intervals_consistent_with_the_ranking():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(2, 4, 12, generator=gen) * 0.1 + torch.arange(8.0).view(2, 4, 1)
    result = PatchResult(
        values,
        torch.ones(12),
        torch.ones(12),
        "t",
        "m",
        True,
        meta=grid_meta(values, ("layer", "head")),
    )
    table = result.heads_table()
    assert (table["rank_ci_low"] <= table["rank"]).all() and (
        table["rank"] <= table["rank_ci_high"]
    ).all()
    assert table["rank"].tolist() == table["rank_ci_low"].tolist()  # separated by 1 >> noise
    assert table["p_top10"].tolist() == [1.0] * 8  # 8 heads: top min(10, cells) is every head
    # Separated by 1 >> noise 0.1, the three most negative heads (values ~0, 1, 2) are the top 3
    # in every resample and no other head ever is.
    assert result.stability(k=3).p_top_k.flatten().tolist() == [1.0] * 3 + [0.0] * 5
    flip = PatchResult(
        values,
        torch.ones(12),
        torch.ones(12),
        "t",
        "flip",
        False,
        meta=grid_meta(values, ("layer", "head")),
    )
    assert flip.stability(k=1).p_top_k.tolist()[7] == 1.0  # the largest value ranks first
    assert result.split_half(n_splits=5, k=2).mean == pytest.approx(1.0)


def test_rank_intervals_plot_draws_the_tables_intervals():
    from sycointerp.plot import rank_intervals_plot

    gen = torch.Generator().manual_seed(1)
    values = torch.randn(2, 4, 10, generator=gen)
    result = PatchResult(
        values,
        torch.ones(10),
        torch.ones(10),
        "t",
        "m",
        True,
        meta=grid_meta(values, ("layer", "head")),
    )
    table = result.heads_table().head(5)
    (trace,) = rank_intervals_plot(result, k=5).data
    assert list(trace.y) == table["rank"].tolist()
    assert list(trace.error_y.array) == (table["rank_ci_high"] - table["rank"]).tolist()
    assert list(trace.error_y.arrayminus) == (table["rank"] - table["rank_ci_low"]).tolist()
    assert trace.x[0] == f"L{table['layer'][0]}H{table['head'][0]}"
    with pytest.raises(ValueError, match="at least 2 examples"):
        rank_intervals_plot(
            PatchResult(values[..., :1], torch.ones(1), torch.ones(1), "t", "m", True)
        )
