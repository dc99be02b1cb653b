"""Necessity and sufficiency of a head set against matched controls, against plain references."""

import pytest
import torch

from sycointerp.data.pairs import build_pairs
from sycointerp.data.questions import load_builtin
from sycointerp.metrics import apology_logit_diff_metric
from sycointerp.patching import PairBatch, knockout_metric
from sycointerp.patching.activation import patch_head_list
from sycointerp.patching.controls import (
    norm_matched_draws,
    patch_head_set,
    set_controls,
    w_o_norms,
)
from tests.reference import reference_set_patch


def _pairs(model, n=4):
    return build_pairs(load_builtin()[:n], model.tokenizer, position="reply")


def test_patch_head_set_equals_a_plain_reference(tiny):
    pairs = _pairs(tiny)
    heads = [(0, 1), (1, 0), (1, 3)]
    metric = apology_logit_diff_metric(tiny.tokenizer)
    got = patch_head_set(tiny, pairs, metric, heads, batch_size=3)
    torch.testing.assert_close(got, reference_set_patch(tiny, pairs, heads), atol=1e-5, rtol=0)


def test_one_head_set_equals_exact_single_head_patching(tiny):
    pairs = _pairs(tiny)
    metric = apology_logit_diff_metric(tiny.tokenizer)
    batch = PairBatch.from_pairs(pairs, tiny.tokenizer.pad_token_id or 0)
    from sycointerp.patching._engine import baselines

    ref, _ = baselines(tiny, batch, metric)
    single = patch_head_list(tiny, batch, metric, [(1, 2)], engine="hooked")[0]
    got = patch_head_set(tiny, pairs, metric, [(1, 2)]) - ref.cpu()
    torch.testing.assert_close(got, single.cpu(), atol=1e-5, rtol=0)


def test_norm_matched_draws_stay_within_tolerance_and_outside_the_set():
    norms = torch.tensor([[1.0, 1.05, 2.0, 2.1], [0.98, 3.0, 1.9, 5.0]])
    draws, worst = norm_matched_draws([(0, 0), (0, 2)], norms, 6, seed=1, tolerance=0.1)
    for draw in draws:
        assert not {(0, 0), (0, 2)} & set(draw) and len(draw) == 2
        low, high = sorted(float(norms[hd]) for hd in draw)
        assert min(abs(low - 1.05), abs(low - 0.98)) < 1e-6
        assert min(abs(high - 2.1), abs(high - 1.9)) < 1e-6
    assert worst <= 0.1
    # No head within 10% of 5.0 but itself: the closest unused one, and the gap is reported.
    _, worst = norm_matched_draws([(1, 3)], norms, 1, tolerance=0.1)
    assert worst == pytest.approx((5.0 - 3.0) / 5.0)


def test_w_o_norms_are_the_blocks_frobenius_norms(tiny_llama):
    norms = w_o_norms(tiny_llama)
    assert norms.shape == (2, 4)
    assert norms[1, 2] == pytest.approx(float(tiny_llama.W_O[1, 2].detach().norm()), rel=1e-6)


def test_set_controls_shapes_and_necessity_is_the_knockout_change(tiny_llama):
    pairs = _pairs(tiny_llama)
    metric = apology_logit_diff_metric(tiny_llama.tokenizer)
    result = set_controls(tiny_llama, pairs, metric, [(0, 1), (1, 3)], n_draws=3, seed=2)
    assert set(result.controls) == {"uniform", "layer_matched", "norm_matched"}
    assert all(len(d) == 3 for d in result.controls.values())
    assert result.necessity["selected"].shape == (1, 4) and result.sufficiency["uniform"].shape == (
        3,
        4,
    )
    ablated = knockout_metric(tiny_llama, pairs, metric, [(0, 1), (1, 3)])
    torch.testing.assert_close(
        result.necessity["selected"][0], ablated - result.metric_ref, atol=1e-6, rtol=0
    )
    summary = result.summary()
    assert summary["set"].tolist() == ["selected", "uniform", "layer_matched", "norm_matched"]
    assert summary["draws"].tolist() == [1, 3, 3, 3]
    for draw in result.controls["layer_matched"]:  # one head in layer 0, one in layer 1
        assert sorted(layer for layer, _ in draw) == [0, 1] and len(set(draw)) == 2
    table = result.comparison(n_boot=200)
    assert len(table) == 6 and set(table["measure"]) == {"necessity", "sufficiency"}
    row = table[(table["control"] == "uniform") & (table["measure"] == "necessity")].iloc[0]
    expected = result.necessity["selected"][0] - result.necessity["uniform"].mean(0)
    assert row["diff"] == pytest.approx(float(expected.double().mean()), abs=1e-6)
    assert row["n"] == 4 and bool(row["small"])


def test_share_by_hand():
    from sycointerp.patching.controls import SetControls

    ref, cf = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([2.0, 2.0, 2.0])
    suf = torch.tensor([[1.0, 1.0, 1.0]])
    sc = SetControls(((0, 0),), {}, {"selected": suf}, {"selected": suf}, ref, cf, 0.0, "m")
    assert sc.share(suf[0]) == (0.5, 0.5, 0.5)  # every resample: mean 1 of a gap of 2
    # A ratio of means, not a mean of ratios: gaps 1 and 3, recovered 1 and 0 -> 1/4 (a mean of
    # per-example ratios would give (1 + 0) / 2 = 1/2).
    ref, cf = torch.zeros(2), torch.tensor([1.0, 3.0])
    suf = torch.tensor([[1.0, 0.0]])
    sc = SetControls(((0, 0),), {}, {"selected": suf}, {"selected": suf}, ref, cf, 0.0, "m")
    assert sc.share(suf[0])[0] == 0.25


def test_comparison_by_hand():
    """Selected minus the draws' mean, per example: necessity [-2, -4] against draws [[0, -1],
    [0, 1]] (mean [0, 0]) gives differences [-2, -4]: mean -3, and a two-example bootstrap whose
    resample means are -2, -3 or -4, so its 95% interval is [-4, -2]; the sign-flip p-value over
    the 4 sign assignments is 2/4 (only all-negative and all-positive reach |mean| 3)."""
    from sycointerp.patching.controls import SetControls

    ref, cf = torch.zeros(2), torch.ones(2)
    sel = torch.tensor([[-2.0, -4.0]])
    draws = torch.tensor([[0.0, -1.0], [0.0, 1.0]])
    values = {"selected": sel, "uniform": draws}
    sc = SetControls(((0, 0),), {"uniform": ((), ())}, values, values, ref, cf, 0.0, "m")
    table = sc.comparison(n_boot=4000)
    row = table[table["measure"] == "necessity"].iloc[0]
    assert row["diff"] == -3.0 and row["controls_mean"] == 0.0 and row["selected"] == -3.0
    assert (row["ci_low"], row["ci_high"]) == (-4.0, -2.0)
    assert row["p_value"] == pytest.approx(0.5)
