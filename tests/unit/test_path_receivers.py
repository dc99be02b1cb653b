"""Sender -> receiver q/k/v path patching against a plain two-pass reference (tiny MHA and GQA)."""

import pytest
import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.patching import PairBatch, flip_metric
from sycointerp.patching.path_receivers import path_patch_to_receivers

ATOL = 1e-5


@pytest.fixture(scope="module")
def questions():
    return load_builtin()[3::50][:3]


def _cache(model, ids):
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([ids]))
    return cache


def reference(model, pairs, receivers, component, position):
    """Two plain hooked forwards per (sender, example), the freezing rules written out."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    recv_layers = sorted({l for l, _ in receivers})
    out = torch.zeros(L, H, len(pairs))
    for e, pair in enumerate(pairs):
        ref, cf = _cache(model, pair.ref_ids), _cache(model, pair.cf_ids)
        pos = [len(pair.ref_ids) - 1] if position == "last" else list(range(len(pair.ref_ids)))
        g, w = pair.answer_ids
        with torch.no_grad():
            clean = model(torch.tensor([pair.ref_ids]))[0, -1]
        for ls in range(L):
            for hs in range(H):
                recorded = {}

                def patch_sender(z, hook=None, ls=ls, hs=hs):
                    z = z.clone()
                    z[0, pos, hs] = cf[f"blocks.{ls}.attn.hook_z"][0, pos, hs]
                    return z

                def freeze(name):
                    def hook(x, hook=None):
                        x = x.clone()
                        x[0, pos] = ref[name][0, pos]
                        return x

                    return hook

                def capture(layer):
                    def hook(act, hook=None):
                        recorded[layer] = act[0, :, [h for l, h in receivers if l == layer]].clone()

                    return hook

                hooks = [(f"blocks.{ls}.attn.hook_z", patch_sender)]
                for l in range(ls + 1, L):
                    if l in recv_layers:
                        hooks += [
                            (f"blocks.{l}.attn.hook_z", freeze(f"blocks.{l}.attn.hook_z")),
                            (f"blocks.{l}.attn.hook_{component}", capture(l)),
                        ]
                    else:
                        hooks.append((f"blocks.{l}.ln1.hook_in", freeze(f"blocks.{l}.ln1.hook_in")))
                hooks += [
                    (f"blocks.{l}.ln2.hook_in", freeze(f"blocks.{l}.ln2.hook_in"))
                    for l in range(ls, L)
                ]
                with torch.no_grad():
                    model.run_with_hooks(torch.tensor([pair.ref_ids]), fwd_hooks=hooks)

                def replay(layer):
                    def hook(act, hook=None):
                        act = act.clone()
                        heads = [h for l, h in receivers if l == layer]
                        act[0, torch.tensor(pos)[:, None], torch.tensor(heads)] = recorded[layer][
                            pos
                        ]
                        return act

                    return hook

                with torch.no_grad():
                    logits = model.run_with_hooks(
                        torch.tensor([pair.ref_ids]),
                        fwd_hooks=[
                            (f"blocks.{l}.attn.hook_{component}", replay(l)) for l in recorded
                        ],
                    )[0, -1]
                out[ls, hs, e] = (logits[g] - logits[w]) - (clean[g] - clean[w])
    return out


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
    plain = reference(tiny, pairs, receivers, component, position)
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
    ref, cf = _cache(model, pair.ref_ids), _cache(model, pair.cf_ids)
    H, d = model.cfg.n_heads, model.cfg.d_head
    hs, last = 1, len(pair.ref_ids) - 1

    def patch(z, hook=None):
        z = z.clone()
        z[0, last, hs] = cf["blocks.0.attn.hook_z"][0, last, hs]
        return z

    freeze = [("blocks.0.ln2.hook_in", _freeze_last(ref, "blocks.0.ln2.hook_in", last))]
    with torch.no_grad():
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", patch)] + freeze):
            _, got = model.run_with_cache(
                torch.tensor([pair.ref_ids]), names_filter=lambda n: n == "blocks.1.hook_resid_pre"
            )
    delta_z = torch.zeros(H * d)
    delta_z[hs * d : (hs + 1) * d] = (cf["blocks.0.attn.hook_z"] - ref["blocks.0.attn.hook_z"])[
        0, last, hs
    ]
    o_weight = model.original_model.model.layers[0].self_attn.o_proj.weight
    expected = ref["blocks.1.hook_resid_pre"][0, last] + o_weight @ delta_z
    assert torch.allclose(got["blocks.1.hook_resid_pre"][0, last], expected, atol=1e-5)
    assert not torch.allclose(expected, ref["blocks.1.hook_resid_pre"][0, last], atol=1e-4)


def _freeze_last(cache, name, last):
    def hook(x, hook=None):
        x = x.clone()
        x[0, last] = cache[name][0, last]
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
