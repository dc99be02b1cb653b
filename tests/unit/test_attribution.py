"""Attribution patching against plain one-example autograd references, finite differences and
exact patching."""

import dataclasses
import json

import pytest
import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.metrics import apology_logit_diff_metric, flip_metric
from sycointerp.patching import patch_head_outputs
from sycointerp.patching._engine import baselines
from sycointerp.patching.attribution import attribution_patch_heads
from sycointerp.stability import spearman
from sycointerp.testing import tiny_model
from tests.reference import (
    logit_diff,
    plain_cache,
    plain_last_logits,
    reference_attribution,
    z_names,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def questions():
    return load_builtin()[::40][:3] + [load_builtin()[130]]


def _aligned(model, questions):
    pairs = build_pairs(questions, model.tokenizer, align=True)
    return pairs, flip_metric(PairBatch.from_pairs(pairs, 0))


def _pairs_for(model, questions, position):
    """Aligned answer pairs for "all"; unaligned reply pairs (different lengths, padding) for
    "last"."""
    if position == "all":
        return _aligned(model, questions)
    return build_pairs(questions, model.tokenizer, position="reply"), apology_logit_diff_metric(
        model.tokenizer
    )


@pytest.mark.parametrize("position", ["last", "all"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_equals_plain_autograd_reference(tiny, questions, position, direction):
    pairs, metric = _pairs_for(tiny, questions, position)
    fast = attribution_patch_heads(
        tiny, pairs, metric, position=position, direction=direction, batch_size=3
    )
    ref = reference_attribution(tiny, pairs, position, direction)
    assert fast.values.shape == (tiny.cfg.n_layers, tiny.cfg.n_heads, len(pairs))
    assert torch.allclose(fast.values, ref, atol=ATOL)
    assert fast.values.abs().max() > 1e-4  # the estimate is not trivially zero on these prompts
    assert fast.method == f"attribution/z/{position}/{direction}"
    exact_ref, exact_cf = baselines(
        tiny, PairBatch.from_pairs(pairs, tiny.tokenizer.pad_token_id or 0), metric
    )
    assert torch.allclose(fast.metric_ref, exact_ref, atol=ATOL) and torch.allclose(
        fast.metric_cf, exact_cf, atol=ATOL
    )


@pytest.mark.parametrize("position", ["last", "all"])
def test_integrated_gradients_equal_plain_reference(tiny, questions, position):
    pairs, metric = _aligned(tiny, questions[:2])
    fast = attribution_patch_heads(tiny, pairs, metric, position=position, ig_steps=3, batch_size=1)
    assert torch.allclose(
        fast.values, reference_attribution(tiny, pairs, position, "denoise", ig_steps=3), atol=ATOL
    )
    assert fast.method == f"attribution/z/{position}/denoise/ig3" and fast.meta["ig_steps"] == 3


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny64(request):
    """Double precision for the central differences (Llama's RMSNorm still computes in float32)."""
    return tiny_model(request.param, seed=0).to(torch.float64)


def test_attribution_is_the_derivative_of_activation_patching(tiny64, questions):
    """d/de metric(base with head h's z set to z_base + e (z_src - z_base)) at e = 0, by central
    differences with plain hooks: no autograd on this side at all."""
    (pair,), metric = _aligned(tiny64, questions[:1])
    attr = attribution_patch_heads(tiny64, [pair], metric, position="all").values[..., 0]
    # Not smaller: Llama's RMSNorm rounds to float32 even in a float64 model, and that rounding
    # divided by eps swamps the derivative below ~1e-2; the eps**2 truncation term is ~1e-7 here.
    eps = 0.05
    for l, name in enumerate(z_names(tiny64)):
        z_src, z_base = (
            plain_cache(tiny64, ids, [name])[name] for ids in (pair.cf_ids, pair.ref_ids)
        )
        for h in range(tiny64.cfg.n_heads):

            def nudged(e):
                def hook(z, hook=None):
                    z = z.clone()
                    z[0, :, h] = z_base[:, h] + e * (z_src[:, h] - z_base[:, h])
                    return z

                logits = plain_last_logits(tiny64, pair.ref_ids, [(name, hook)])
                return float(logit_diff(logits, pair, "flip"))

            derivative = (nudged(eps) - nudged(-eps)) / (2 * eps)
            # The metric is read in float32 (as in every patching run), hence 1e-5, not 1e-8.
            assert abs(float(attr[l, h]) - derivative) < ATOL, (l, h)


def test_attribution_ranks_heads_like_exact_patching(tiny, questions):
    """On tiny models the patches are small, so the first-order estimate should order heads almost
    as exact patching does (observed Spearman 1.0 on both tiny models)."""
    pairs, metric = _aligned(tiny, questions)
    attr = attribution_patch_heads(tiny, pairs, metric, position="all")
    exact = patch_head_outputs(tiny, pairs, metric, position="all")
    assert spearman(attr.mean.flatten(), exact.mean.flatten()) > 0.9
    assert spearman(attr.values.flatten(), exact.values.flatten()) > 0.9


def test_patching_a_run_into_itself_is_attributed_zero(tiny, questions):
    pairs = [dataclasses.replace(p, cf_ids=p.ref_ids) for p in _aligned(tiny, questions)[0]]
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    for kw in ({"position": "all"}, {"position": "last", "ig_steps": 2}):
        values = attribution_patch_heads(tiny, pairs, metric, **kw).values
        assert torch.equal(values, torch.zeros_like(values))


@pytest.mark.parametrize("position", ["last", "all"])
def test_verified_heads_equal_activation_patching(tiny, questions, position):
    pairs, metric = _aligned(tiny, questions)
    res = attribution_patch_heads(
        tiny, pairs, metric, position=position, verify_top_k=3, batch_size=2
    )
    exact = patch_head_outputs(tiny, pairs, metric, position=position).mean
    verified = res.meta["verified"]
    assert [(v["layer"], v["head"]) for v in verified] == res.rank()[:3]
    for v in verified:
        assert abs(v["exact"] - float(exact[v["layer"], v["head"]])) < ATOL
        assert abs(v["attribution"] - float(res.mean[v["layer"], v["head"]])) < ATOL
    assert -1.0 <= res.meta["spearman_top_k"] <= 1.0
    json.dumps(res.meta)  # stored in result.json


def test_spearman_against_hand_computed_values():
    # ranks of a with the tie averaged: [1, 2.5, 2.5, 4]; of b: [1, 3, 2, 4];
    # Pearson = 4.5 / sqrt(4.5 * 5)
    a, b = torch.tensor([1.0, 2.0, 2.0, 4.0]), torch.tensor([10.0, 30.0, 20.0, 40.0])
    assert spearman(a, b) == pytest.approx(0.9**0.5)
    x = torch.tensor([0.1, -3.0, 7.0, 2.0])
    assert spearman(x, x.exp()) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.ones(4)) != spearman(x, torch.ones(4))  # NaN: constant side
    with pytest.raises(ValueError, match=">= 2 values"):
        spearman(x[:1], x[:1])
    with pytest.raises(ValueError, match="NaN has no rank"):
        spearman(x, torch.tensor([0.0, float("nan"), 1.0, 2.0]))
    with pytest.raises(
        (ValueError, TypeError), match=r"equally long|Float\[Tensor, 'n'\]"
    ):  # jaxtyping at test time
        spearman(x, x[:3])


def test_no_parameter_gradients_flags_or_hooks_left(tiny, questions):
    pairs, metric = _aligned(tiny, questions[:2])
    ids = torch.tensor([pairs[0].ref_ids])
    params = list(tiny.parameters())
    params[0].requires_grad_(False)  # a mixed state must come back exactly as it was
    flags = [p.requires_grad for p in params]
    try:
        with torch.no_grad():
            before = tiny(ids)
        attribution_patch_heads(tiny, pairs, metric, position="all", ig_steps=1, verify_top_k=1)
        assert [p.requires_grad for p in params] == flags
        assert all(p.grad is None for p in params)
        with torch.no_grad():
            assert torch.equal(tiny(ids), before)
    finally:
        params[0].requires_grad_(True)


def test_results_do_not_depend_on_batch_size(tiny, questions):
    pairs, metric = _pairs_for(tiny, questions, "last")
    a = attribution_patch_heads(tiny, pairs, metric, batch_size=1)
    b = attribution_patch_heads(tiny, pairs, metric, batch_size=100)
    assert torch.allclose(a.values, b.values, atol=ATOL)


def test_bad_input_is_refused(tiny_llama, questions):
    model = tiny_llama
    unaligned, apology = _pairs_for(model, questions[:2], "last")
    pairs, metric = _aligned(model, questions[:2])
    with pytest.raises(ValueError, match="no prompt pairs"):
        attribution_patch_heads(model, [], metric)
    # Literal options: jaxtyping+beartype refuse them first at test time, our ValueError at run
    # time.
    with pytest.raises(
        (ValueError, TypeError), match=r"position must be 'last'/'all'|Literal\['last', 'all'\]"
    ):
        attribution_patch_heads(model, pairs, metric, position="first")
    with pytest.raises(
        (ValueError, TypeError), match=r"direction 'denoise'/'noise'|Literal\['denoise', 'noise'\]"
    ):
        attribution_patch_heads(model, pairs, metric, direction="both")
    with pytest.raises(ValueError, match="ig_steps must be >= 0"):
        attribution_patch_heads(model, pairs, metric, ig_steps=-1)
    with pytest.raises(ValueError, match=r"verify_top_k must be in \[0, 8\]"):
        attribution_patch_heads(model, pairs, metric, verify_top_k=9)
    with pytest.raises(ValueError, match="batch_size"):
        attribution_patch_heads(model, pairs, metric, batch_size=0)
    for kw in ({"position": "all"}, {"ig_steps": 2}):
        with pytest.raises(ValueError, match=r"pair 0 .*align=True"):
            attribution_patch_heads(model, unaligned, apology, **kw)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        attribution_patch_heads(model, pairs, metric)
    model.train()
    try:
        with pytest.raises(RuntimeError, match="training mode"):
            attribution_patch_heads(model, pairs, metric)
    finally:
        model.eval()
