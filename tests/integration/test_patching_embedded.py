"""Patching on the real embedded model: fast results equal plain hooked runs; completeness holds."""

from functools import partial

import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.metrics import apology_logit_diff_metric, flip_metric
from sycointerp.patching import (
    attribution_patch_heads,
    knockout_metric,
    patch_heads,
    patch_layers,
    path_patch_heads,
)
from sycointerp.stability import spearman


def test_path_patching_on_smollm2_matches_plain_runs(smol):
    (pair,) = build_pairs(load_builtin()[:1], smol.tokenizer, position="reply")
    result = path_patch_heads(
        smol, [pair], apology_logit_diff_metric(smol.tokenizer), batch_size=32
    )
    assert result.values.shape == (30, 9, 1)
    syc = smol.tokenizer("Apologies", add_special_tokens=False)["input_ids"][0]
    firm = smol.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    ids, cf = torch.tensor([pair.ref_ids]), torch.tensor([pair.cf_ids])
    names = lambda n: n.endswith("ln1.hook_in") or n.endswith("hook_z")  # noqa: E731
    _, ref_cache = smol.run_with_cache(ids, names_filter=names)
    _, cf_cache = smol.run_with_cache(cf, names_filter=names)

    def metric(logits):
        return float(logits[0, -1, syc] - logits[0, -1, firm])

    with torch.no_grad():
        clean = metric(smol(ids))
    for layer, head in [(0, 3), (14, 8), (27, 0)]:

        def patch(z, hook=None):
            z = z.clone()
            z[0, -1, head] = cf_cache[f"blocks.{layer}.attn.hook_z"][0, -1, head]
            return z

        def freezer(l):
            def hook(x, hook=None):
                x = x.clone()
                x[0, -1] = ref_cache[f"blocks.{l}.ln1.hook_in"][0, -1]
                return x

            return hook

        hooks = [(f"blocks.{layer}.attn.hook_z", patch)] + [
            (f"blocks.{l}.ln1.hook_in", freezer(l)) for l in range(layer + 1, 30)
        ]
        with torch.no_grad():
            expected = metric(smol.run_with_hooks(ids, fwd_hooks=hooks)) - clean
        assert abs(float(result.values[layer, head, 0]) - expected) < 1e-4
    assert result.heads_table()["rank"].tolist() == list(range(1, 271))


def _answer_pairs(model, n=3):
    pairs = build_pairs(load_builtin()[7::50][:n], model.tokenizer, align=True)
    return pairs, flip_metric(PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0))


def test_layer_patching_on_smollm2_is_complete(smol):
    """Denoising completeness: the counterfactual residual stream at any layer, at every position,
    turns the challenge run into the counterfactual run."""
    pairs, metric = _answer_pairs(smol)
    result = patch_layers(smol, pairs, metric, component="resid_pre", position="all")
    gap = result.metric_cf - result.metric_ref
    assert gap.abs().max() > 0.05
    assert torch.allclose(result.values, gap.expand_as(result.values), atol=1e-4)


def test_head_patching_attribution_and_knockout_on_smollm2_match_plain_runs(smol):
    pairs, metric = _answer_pairs(smol)
    fast = patch_heads(smol, pairs, metric, position="last", batch_size=512)
    attribution = attribution_patch_heads(smol, pairs, metric, verify_top_k=3)
    for entry in attribution.meta["verified"]:  # exact verification = the fast sweep
        assert abs(entry["exact"] - float(fast.mean[entry["layer"], entry["head"]])) < 1e-4
    assert spearman(attribution.mean.flatten(), fast.mean.flatten()) > 0.5
    g, w = pairs[0].answer_ids
    ids, cf = torch.tensor([pairs[0].ref_ids]), torch.tensor([pairs[0].cf_ids])
    _, cf_cache = smol.run_with_cache(cf, names_filter=lambda n: n.endswith("hook_z"))
    with torch.no_grad():
        clean = smol(ids)[0, -1]
    for layer, head in [(2, 4), (18, 3), (29, 8)]:

        def patch(z, hook=None, layer=layer, head=head):
            z = z.clone()
            z[0, -1, head] = cf_cache[f"blocks.{layer}.attn.hook_z"][0, -1, head]
            return z

        with torch.no_grad():
            logits = smol.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[
                0, -1
            ]
        plain = float((logits[g] - logits[w]) - (clean[g] - clean[w]))
        assert abs(float(fast.values[layer, head, 0]) - plain) < 1e-4
    heads = fast.top_k(4)
    knocked = knockout_metric(smol, pairs, metric, heads, method="zero")

    def zero(z, hook=None, todo=()):
        z = z.clone()
        z[:, :, list(todo)] = 0.0
        return z

    by_layer = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    with torch.no_grad():
        logits = smol.run_with_hooks(
            ids,
            fwd_hooks=[
                (f"blocks.{l}.attn.hook_z", partial(zero, todo=h)) for l, h in by_layer.items()
            ],
        )[0, -1]
    assert abs(float(knocked[0]) - float(logits[g] - logits[w])) < 1e-4


def test_patching_on_smollm2_offloaded_to_disk_equals_the_unplaced_model(smol, tmp_path):
    """SmolLM2 with ten layers read from disk at each forward (the tied embedding and unembedding
    stay together, as accelerate requires): path and last-position head patching keep the
    resumed-run engine and equal the unplaced model's results to 1e-5."""
    from sycointerp.models import load_model
    from sycointerp.patching._resume import supports_resume

    placement = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu"}
    placement |= {f"model.layers.{i}": "disk" if 10 <= i < 20 else "cpu" for i in range(30)}
    placed = load_model(
        device_map={**placement, "lm_head": "cpu"}, offload_folder=tmp_path / "offload"
    )
    offloaded = [n for n, p in placed.original_model.named_parameters() if p.is_meta]
    assert offloaded and all(".layers.1" in n for n in offloaded) and supports_resume(placed)
    (pair,) = build_pairs(load_builtin()[:1], smol.tokenizer, position="reply")
    metric = apology_logit_diff_metric(smol.tokenizer)
    ours = path_patch_heads(placed, [pair], metric, batch_size=64)
    plain = path_patch_heads(smol, [pair], metric, batch_size=64)
    torch.testing.assert_close(ours.values, plain.values, atol=1e-5, rtol=0)
    pairs, flip = _answer_pairs(smol, n=2)
    ours = patch_heads(placed, pairs, flip, position="last", batch_size=64)
    plain = patch_heads(smol, pairs, flip, position="last", batch_size=64)
    torch.testing.assert_close(ours.values, plain.values, atol=1e-5, rtol=0)
