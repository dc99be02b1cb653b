"""Paired comparisons of two methods on the same items, against hand-computed cases."""

import random

import pytest
import torch

from sycointerp.stats import (
    detectable_difference,
    mcnemar_exact,
    paired_comparison,
    pooled_detectable_difference,
)


def test_mcnemar_by_hand():
    # b = 1, c = 5: p = 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * (1 + 6) / 64 = 14/64.
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    # b = c = 3: 2 * (1 + 6 + 15 + 20) / 64 = 84/64, capped at 1.
    assert mcnemar_exact(3, 3) == 1.0
    # b = 0, c = 10: 2 / 1024.
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 2)


def test_paired_comparison_by_hand():
    # 8 items: A and B agree on 2 (both yes) and 1 (both no); A only on 4, B only on 1.
    a = [1, 1, 0, 1, 1, 1, 1, 0]
    b = [1, 1, 0, 0, 0, 0, 0, 1]
    cmp = paired_comparison([bool(x) for x in a], [bool(x) for x in b], n_boot=4000)
    assert (cmp.n, cmp.b, cmp.c) == (8, 4, 1)
    assert cmp.rate_a == 6 / 8 and cmp.rate_b == 3 / 8 and cmp.diff == pytest.approx(3 / 8)
    assert cmp.p_value == pytest.approx(2 * (1 + 5) / 32)  # 2 * P(X <= 1), X ~ Bin(5, 1/2)
    assert cmp.ci_low < cmp.diff < cmp.ci_high and cmp.small
    assert "+37.5" in str(cmp) and "few items" in str(cmp)


def test_paired_bootstrap_interval_of_two_items_by_hand():
    """Two items, A yes / B no on the first, both yes on the second: per-item differences
    [1, 0], resample means 1, 0 (a quarter each) or 1/2, so the 95% interval is [0, 1] and
    the central 40% is 1/2; one discordant pair gives McNemar p = min(1, 2 * 1/2) = 1."""
    cmp = paired_comparison([True, True], [False, True], n_boot=4000)
    assert (cmp.diff, cmp.ci_low, cmp.ci_high, cmp.p_value) == (0.5, 0.0, 1.0, 1.0)
    narrow = paired_comparison([True, True], [False, True], n_boot=4000, level=0.4)
    assert (narrow.ci_low, narrow.ci_high) == (0.5, 0.5)


def test_identical_and_opposite_outcomes_have_point_intervals():
    same = paired_comparison([True, False] * 15, [True, False] * 15)
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not same.small
    opposite = paired_comparison([True] * 25, [False] * 25)
    assert (opposite.diff, opposite.ci_low, opposite.ci_high) == (1.0, 1.0, 1.0)
    assert opposite.p_value == pytest.approx(2 / 2**25)


def test_refusals_and_empty():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_comparison([True], [True, False])
    assert str(paired_comparison([], [])) == "n/a (no common items)"


def _eval(outcomes: dict[str, tuple[bool, bool, bool]]):
    from sycointerp.evaluate import EvalItem, SycophancyEval

    items = [
        EvalItem(q, False, "first", "reply", "final", bool(before), bool(admits), bool(after))
        for q, (before, admits, after) in outcomes.items()
    ]
    return SycophancyEval("m", "challenge", "judge", tuple(items))


def test_methods_are_compared_on_items_initially_correct_under_both():
    from sycointerp.evaluate.compare import compare_methods, comparison_table

    # (correct before, admits, correct after). q3 is initially wrong under B, q4 under A: both
    # are left out, so 3 items remain. Confidence: A keeps q1, q2 (B only q1): 2/3 vs 1/3.
    spt = _eval(
        {"q1": (1, 0, 1), "q2": (1, 0, 1), "q5": (1, 1, 0), "q3": (1, 0, 1), "q4": (0, 1, 0)}
    )
    base = _eval(
        {"q1": (1, 0, 1), "q2": (1, 1, 1), "q5": (1, 1, 0), "q3": (0, 1, 0), "q4": (1, 0, 1)}
    )
    (cmp,) = compare_methods({"spt": spt, "base": base}, "spt")
    assert (cmp.a, cmp.b, cmp.confidence.n) == ("spt", "base", 3)
    assert cmp.confidence.diff == pytest.approx(1 / 3) and (cmp.confidence.b, cmp.confidence.c) == (
        1,
        0,
    )
    assert cmp.truthfulness.diff == 0.0 and cmp.truthfulness.p_value == 1.0
    table = comparison_table([cmp])
    assert "| spt - base | 3 | +33.3" in table and "1 comparisons" in table


def test_small_samples_are_flagged_in_every_printed_interval():
    import torch

    from sycointerp.stats import SMALL_SAMPLE, proportion, summarize

    assert SMALL_SAMPLE == 20
    few, many = summarize(torch.arange(4.0)), summarize(torch.arange(20.0))
    assert few.small and str(few).endswith("(n=4, few examples)") and few.to_json()["small"]
    assert not many.small and str(many).endswith("(n=20)")
    assert (
        str(proportion(3, 6)).endswith("(3/6, few items)") and proportion(3, 6).to_json()["small"]
    )
    assert str(proportion(10, 20)).endswith("(10/20)") and not proportion(10, 20).to_json()["small"]


def test_sign_flip_p_by_hand():
    from sycointerp.stats import sign_flip_p

    # Three equal differences: only "all +" and "all -" reach |sum| = 3 among 2**3 flips.
    assert sign_flip_p([1, 1, 1]) == (pytest.approx(2 / 8), True)
    # Zeros do not flip: [1, 1, 1, 0, 0] is the same test.
    assert sign_flip_p([1, 1, 1, 0, 0]) == (pytest.approx(2 / 8), True)
    # [2, 1]: |sum| 3 (++ and --) reaches 3; 1 (+- and -+) does not: p = 2/4.
    assert sign_flip_p([2, 1])[0] == pytest.approx(0.5)
    # [1, -1]: the observed |sum| is 0, so every assignment reaches it.
    assert sign_flip_p([1, -1])[0] == pytest.approx(1.0)
    assert sign_flip_p([0, 0]) == (1.0, True)
    # Ten equal differences: 2 of 1024.
    assert sign_flip_p([0.5] * 10)[0] == pytest.approx(2 / 1024)
    # 30 equal differences: Monte Carlo, never below its floor 1 / (1 + n_flips).
    p, exact = sign_flip_p([1.0] * 30, n_flips=999)
    assert not exact and p == pytest.approx(1 / 1000)
    with pytest.raises(ValueError):
        sign_flip_p([float("nan")])


def test_paired_difference_by_hand():
    from sycointerp.stats import paired_difference

    # SPT outcomes against the mean of three random draws, per item.
    a = [1, 1, 0, 1]
    b = [1 / 3, 2 / 3, 0, 1]
    res = paired_difference(a, b, n_boot=4000)
    assert res.n == 4 and res.small
    assert res.mean_a == pytest.approx(0.75) and res.mean_b == pytest.approx(0.5)
    assert res.diff == pytest.approx(0.25)
    # Non-zero differences 2/3 and 1/3: |sum| = 1 only for ++ and --, so p = 2/4.
    assert res.p_value == pytest.approx(0.5) and res.exact
    # The bootstrap means of the differences [2/3, 1/3, 0, 0] lie in [0, 2/3].
    assert 0 <= res.ci_low <= res.diff <= res.ci_high <= 2 / 3
    assert "sign-flip p = 0.5" in str(res) and "few items" in str(res)
    assert paired_difference([], []).n == 0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1], [1, 0])


def test_random_draws_are_pooled_per_item_by_hand():
    from sycointerp.evaluate.compare import compare_pooled, pooled_table

    # (correct before, admits, correct after). q4 is initially wrong under draw r-1: left out.
    spt = _eval({"q1": (1, 0, 1), "q2": (1, 0, 1), "q3": (1, 1, 0), "q4": (1, 0, 1)})
    r0 = _eval({"q1": (1, 1, 1), "q2": (1, 0, 1), "q3": (1, 1, 0), "q4": (1, 0, 1)})
    r1 = _eval({"q1": (1, 1, 0), "q2": (1, 1, 1), "q3": (1, 0, 0), "q4": (0, 0, 0)})
    evals = {"spt": spt, "r-0": r0, "r-1": r1}
    (cmp,) = compare_pooled(evals, "spt", {"r": ["r-0", "r-1"]})
    assert (cmp.a, cmp.b, cmp.draws, cmp.confidence.n) == ("spt", "r", ("r-0", "r-1"), 3)
    # Confidence per item, SPT vs the draws' mean: q1 1 vs 0, q2 1 vs 1/2, q3 0 vs 1/2.
    assert cmp.confidence.mean_a == pytest.approx(2 / 3)
    assert cmp.confidence.mean_b == pytest.approx(1 / 3)
    # Differences 1, 1/2, -1/2 (observed |sum| 1). The 8 sign flips give sums 1, 2, 0, 1, -1, 0,
    # -2, -1: six reach |sum| >= 1, so p = 6/8.
    assert cmp.confidence.p_value == pytest.approx(6 / 8)
    # Truthfulness: q1 1 vs 1/2, q2 1 vs 1, q3 0 vs 0.
    assert cmp.truthfulness.diff == pytest.approx(1 / 6)
    assert "| spt - r (pooled) | 2 | 3 |" in pooled_table([cmp])
    with pytest.raises(ValueError, match="no draws"):
        compare_pooled(evals, "spt", {"r": []})


Z = 1.959963984540054 + 0.8416212335729143  # z_0.975 + z_0.8


def test_detectable_difference_by_hand():
    d = detectable_difference(0.2, 100)
    assert d.difference == pytest.approx(Z * (0.2 / 100) ** 0.5)  # 0.1253
    assert str(d).startswith("12.5 points (n=100")
    # Items for 10 points: (Z * sqrt(0.2) / 0.1)^2 = 156.98 -> 157.
    assert d.items_for(0.1) == 157 and not d.floored
    # Methods that never disagree on 50 items: not "0 points", but the floor z^2 / n = 0.157
    # (a true difference d needs disagreement on at least a share d of the items).
    never = detectable_difference(0.0, 50)
    assert never.difference == pytest.approx(Z * Z / 50) and never.floored
    assert "at its floor" in str(never)
    # Items for 10 points at the floor: z^2 / 0.1 = 78.5 -> 79.
    assert never.items_for(0.1) == 79
    # Few items: p_d = 0.2 on 30 items gives Z * sqrt(0.2 / 30) = 0.229, below the floor
    # z^2 / 30 = 0.262, which holds.
    assert detectable_difference(0.2, 30).difference == pytest.approx(Z * Z / 30)
    for bad in ({"p_discordant": 1.5, "n": 10}, {"p_discordant": 0.2, "n": 0}):
        with pytest.raises(ValueError):
            detectable_difference(**bad)
    with pytest.raises(ValueError, match="target"):
        d.items_for(0.0)


def test_detectable_difference_has_its_power_under_the_exact_test():
    # Simulated pairs whose true difference is the detectable one: the exact McNemar test at
    # alpha 0.05 rejects in about 80% of studies (the normal approximation is close at n=200).
    n, p_d = 200, 0.3
    delta = detectable_difference(p_d, n).difference
    rng, rejections, studies = random.Random(0), 0, 1500
    for _ in range(studies):
        b = c = 0
        for _ in range(n):
            u = rng.random()
            b += u < (p_d + delta) / 2
            c += (p_d + delta) / 2 <= u < p_d
        rejections += mcnemar_exact(b, c) < 0.05
    assert 0.72 < rejections / studies < 0.86


def test_pooled_detectable_difference_by_hand():
    x = torch.tensor([1.0, 0, 1, 1, 0, 1])
    y = torch.tensor([[1.0, 0], [0, 0], [1, 1], [0, 1], [1, 1], [0, 0]])
    # D = x - mean(y) = [.5, 0, 0, .5, -1, 1]: variance (ddof 1) 2.3333 / 5 = 0.46667.
    # Across-draw variance per item (ddof 1): [.5, 0, 0, .5, 0, 0], mean W = 1/6.
    # A = 0.46667 - W / 2 = 0.38333.
    observed = pooled_detectable_difference(x, y)
    assert observed.sd == pytest.approx((7 / 15) ** 0.5)
    # Z * sd / sqrt(6) = 0.781, below the floor z^2 / 6 = 1.31 of six items: floored.
    assert observed.difference == pytest.approx(Z * Z / 6) and observed.floored
    planned = pooled_detectable_difference(x, y, n=120, draws=8)
    assert planned.sd == pytest.approx((23 / 60 + 1 / 48) ** 0.5)
    assert planned.difference == pytest.approx(Z * (23 / 60 + 1 / 48) ** 0.5 / 120**0.5)  # 0.163
    assert not planned.floored  # the floor z^2 / 120 = 0.065 is below
    assert (planned.n, planned.draws) == (120, 8) and "8 draws pooled" in str(planned)
    # One draw pooled equals the item-by-item comparison's sd when the draws agree per item.
    same = pooled_detectable_difference(x, torch.stack([y[:, 1], y[:, 1]], 1))
    assert same.sd == pytest.approx(float((x - y[:, 1]).var()) ** 0.5)
    # Mismatched items: the shape annotation refuses them under the test-time checker, the
    # function's own check without it.
    with pytest.raises((ValueError, TypeError), match="same items|item"):
        pooled_detectable_difference(x, y[:4])
    with pytest.raises(ValueError, match="2 draws"):
        pooled_detectable_difference(x, y[:, :1])
    with pytest.raises(ValueError, match="at least one item"):
        pooled_detectable_difference(x, y, n=0)
    # Every item at the ceiling under the method and every draw: no spread, the floor.
    ceiling = pooled_detectable_difference(torch.ones(6), torch.ones(6, 3))
    assert ceiling.sd == 0.0 and ceiling.floored
    assert ceiling.difference == pytest.approx(Z * Z / 6)
