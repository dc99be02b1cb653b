"""Necessity and sufficiency of a head set against matched controls, against plain references."""

import pytest
import torch

from sycointerp.data.pairs import build_pairs
from sycointerp.data.questions import load_builtin
from sycointerp.heads import HeadGrid
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
    grid = HeadGrid(2, 4, 2)
    assert all(len(set(d)) == 2 for d in result.controls["layer_matched"]) and grid.total() == 8


def test_share_by_hand():
    from sycointerp.patching.controls import SetControls

    ref, cf = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([2.0, 2.0, 2.0])
    suf = torch.tensor([[1.0, 1.0, 1.0]])
    sc = SetControls(((0, 0),), {}, {"selected": suf}, {"selected": suf}, ref, cf, 0.0, "m")
    assert sc.share(suf[0]) == (0.5, 0.5, 0.5)  # every resample: mean 1 of a gap of 2
