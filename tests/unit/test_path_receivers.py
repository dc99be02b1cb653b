"""Sender -> receiver q/k/v path patching against a plain two-pass reference (tiny MHA and GQA)."""

import pytest
import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.metrics import flip_metric
from sycointerp.patching.path_receivers import path_patch_to_receivers
from tests.reference import plain_cache, reference_receivers

ATOL = 1e-5


@pytest.fixture(scope="module")
def questions():
    return load_builtin()[3::50][:3]


@pytest.mark.parametrize(
    ("component", "position"), [("q", "last"), ("q", "all"), ("k", "all"), ("v", "last")]
)
def test_receiver_path_patching_equals_plain_two_pass_reference(
    tiny, questions, component, position
):
    pairs = build_pairs(questions, tiny.tokenizer, align=True)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    receivers = [(1, 0), (1, 1)] if tiny.cfg.n_layers > 1 else [(0, 0)]
    fast = path_patch_to_receivers(
        tiny, pairs, metric, receivers, component=component, position=position, batch_size=5
    )
    plain = reference_receivers(tiny, pairs, receivers, component, position)
    assert torch.allclose(fast.values, plain, atol=ATOL)
    assert torch.equal(
        fast.values[1:], torch.zeros_like(fast.values[1:])
    )  # senders at/after the receivers
    hooked = path_patch_to_receivers(
        tiny, pairs, metric, receivers, component=component, position=position, engine="hooked"
    )
    assert torch.allclose(fast.values, hooked.values, atol=ATOL)


def test_pass_one_adds_only_the_senders_direct_contribution(tiny_llama, questions):
    """The residual entering a receiver layer is the reference plus o_proj(sender's z change)."""
    model = tiny_llama
    (pair,) = build_pairs(questions[:1], model.tokenizer, align=True)
    names = ["blocks.0.attn.hook_z", "blocks.0.ln2.hook_in", "blocks.1.hook_resid_pre"]
    ref, cf = plain_cache(model, pair.ref_ids, names), plain_cache(model, pair.cf_ids, names)
    H, d = model.cfg.n_heads, model.cfg.d_head
    hs, last = 1, len(pair.ref_ids) - 1

    def patch(z, hook=None):
        z = z.clone()
        z[0, last, hs] = cf["blocks.0.attn.hook_z"][last, hs]
        return z

    freeze = [("blocks.0.ln2.hook_in", _freeze_last(ref, "blocks.0.ln2.hook_in", last))]
    with torch.no_grad():
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", patch)] + freeze):
            _, got = model.run_with_cache(
                torch.tensor([pair.ref_ids]), names_filter=lambda n: n == "blocks.1.hook_resid_pre"
            )
    delta_z = torch.zeros(H * d)
    delta_z[hs * d : (hs + 1) * d] = (cf["blocks.0.attn.hook_z"] - ref["blocks.0.attn.hook_z"])[
        last, hs
    ]
    o_weight = model.original_model.model.layers[0].self_attn.o_proj.weight
    expected = ref["blocks.1.hook_resid_pre"][last] + o_weight @ delta_z
    assert torch.allclose(got["blocks.1.hook_resid_pre"][0, last], expected, atol=1e-5)
    assert not torch.allclose(expected, ref["blocks.1.hook_resid_pre"][last], atol=1e-4)


def _freeze_last(acts, name, last):
    """A hook setting the last position to ``acts[name]`` (one prompt's activations, no batch
    axis)."""

    def hook(x, hook=None):
        x = x.clone()
        x[0, last] = acts[name][last]
        return x

    return hook


def test_receiver_refusals(tiny_llama, questions):
    pairs = build_pairs(questions, tiny_llama.tokenizer, align=True)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    with pytest.raises(ValueError, match="kv_head"):
        path_patch_to_receivers(tiny_llama, pairs, metric, [(1, 3)], component="k")  # 2 KV heads
    with pytest.raises(ValueError, match="non-empty"):
        path_patch_to_receivers(tiny_llama, pairs, metric, [])
    unaligned = build_pairs(questions, tiny_llama.tokenizer)
    with pytest.raises(ValueError, match="align"):
        path_patch_to_receivers(
            tiny_llama,
            unaligned,
            flip_metric(PairBatch.from_pairs(unaligned, 0)),
            [(1, 0)],
            position="all",
        )
