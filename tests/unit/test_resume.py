"""Resumed runs (start at the patched layer, recompute only the positions a patch changes)
against full forwards, on tiny MHA and GQA models."""

import pytest
import torch
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.metrics import apology_logit_diff_metric, flip_metric
from sycointerp.models import boot_bridge
from sycointerp.patching import patch_heads, path_patch_heads
from sycointerp.patching._engine import observe, run_cells
from sycointerp.patching._resume import (
    _parts,
    build_state,
    last_logits,
    resume_logits,
    unfold_hook,
)
from sycointerp.patching.layers import patch_layers
from sycointerp.testing import _tiny_hf

ATOL = 1e-5


@pytest.fixture(scope="module")
def questions():
    return load_builtin()[5::37][:4]


def _ragged_state(model):
    """A base run of three prompts whose resumed suffixes differ in length (10, 1 and 13
    positions), and a full forward's logits at their last positions."""
    ids = torch.randint(5, 1000, (3, 20))
    last, start = torch.tensor([19, 15, 12]), torch.tensor([10, 15, 0])
    with torch.no_grad():
        full = model(ids)[torch.arange(3), last]
    return build_state(model, ids, start, last), full


def test_resumed_logits_equal_a_full_forward_from_every_layer(tiny):
    state, full = _ragged_state(tiny)
    for layer in range(tiny.cfg.n_layers):
        with torch.inference_mode():
            logits = resume_logits(tiny, state, 2, layer)
        assert torch.allclose(logits, full.repeat(2, 1), atol=ATOL)


def test_the_mlp_runs_only_at_positions_that_reach_the_metric(tiny):
    """Padding past an example's end and the last layer's non-metric positions skip the MLP
    (exact: the logits still equal a full forward); a hooked MLP runs on every position."""
    state, full = _ragged_state(tiny)
    live = 10 + 1 + 13  # of the 3 x 13 suffix positions
    layers = _parts(tiny).layers
    rows: list[tuple[int, ...]] = []
    spies = [
        layer.mlp.register_forward_hook(lambda m, a, out: rows.append(tuple(out.shape[:2])))
        for layer in layers
    ]
    try:
        with torch.inference_mode():
            logits = resume_logits(tiny, state, 2, 0)
            L = tiny.cfg.n_layers
            assert rows == [(1, 2 * live)] * (L - 1) + [(1, 2 * 3)]
            rows.clear()
            with tiny.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: x)]):
                hooked = resume_logits(tiny, state, 2, 0)
            assert rows[0] == (3, 2 * 13) and rows[1:] == [(1, 2 * live)] * (L - 2) + [(1, 6)]
    finally:
        for spy in spies:
            spy.remove()
    assert torch.allclose(logits, full.repeat(2, 1), atol=ATOL)
    assert torch.allclose(hooked, full.repeat(2, 1), atol=ATOL)


def test_unhooked_attention_runs_as_the_wrapped_huggingface_module(tiny):
    """Layers with no hook inside their attention run HuggingFace's own attention (faster than
    the bridge's reimplementation, same numbers) where the bridge's projections are that
    module's own (Llama); a hooked layer, and GPT-2 (whose bridge splits ``c_attn`` into copies),
    keep the bridge; the bridges are back afterwards, also after an exception."""
    state, full = _ragged_state(tiny)
    decoders = [layer.original_component for layer in _parts(tiny).layers]
    bridges = [next(c for c in d.children() if isinstance(c, AttentionBridge)) for d in decoders]
    plain_calls: list[int] = []
    bridge_calls: list[int] = []
    spies = [
        b.original_component.register_forward_hook(lambda m, a, o, i=i: plain_calls.append(i))
        for i, b in enumerate(bridges)
    ] + [
        b.register_forward_hook(lambda m, a, o, i=i: bridge_calls.append(i))
        for i, b in enumerate(bridges)
    ]
    L = tiny.cfg.n_layers
    swaps = tiny.original_model.config.model_type == "llama"
    z = "blocks.0.attn.hook_z"

    def boom(x, hook):
        raise KeyError("boom")

    try:
        with torch.inference_mode():
            plain = resume_logits(tiny, state, 3, 0)
            assert (plain_calls, bridge_calls) == (
                (list(range(L)), []) if swaps else ([], list(range(L)))
            )
            plain_calls.clear(), bridge_calls.clear()
            with tiny.hooks(fwd_hooks=[(z, lambda x, hook: x)]):
                hooked = resume_logits(tiny, state, 3, 0)
            assert bridge_calls[0] == 0 and 0 not in plain_calls
            assert plain_calls == (list(range(1, L)) if swaps else [])
            with pytest.raises(KeyError, match="boom"):  # inside a layer whose attention is swapped
                with tiny.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", boom)]):
                    resume_logits(tiny, state, 3, 0)
    finally:
        for spy in spies:
            spy.remove()
    assert all(any(c is b for c in d.children()) for d, b in zip(decoders, bridges))
    assert torch.allclose(plain, full.repeat(3, 1), atol=ATOL)
    assert torch.allclose(hooked, full.repeat(3, 1), atol=ATOL)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("compat", ["hooks", "processed"])
def test_resumed_logits_equal_a_full_forward_with_processed_weights(arch, compat):
    """Weight processing folds the layer norms into the bridge's projections; with non-trivial
    norms and biases a resumed run (from every layer, any attention path) still equals a full
    forward. (GPT-2's HuggingFace ``c_attn`` keeps the raw weights: swapping to it would not.)"""
    hf, tokenizer = _tiny_hf(arch, 0, 2, 64, 4, 2 if arch == "llama" else 4)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "ln" in name or "norm" in name:
                param.add_(torch.randn_like(param) * 0.5)
            elif "bias" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model = boot_bridge(hf, tokenizer, f"tiny-{arch}-perturbed", compat, "cpu")
    state, full = _ragged_state(model)
    for layer in range(model.cfg.n_layers):
        with torch.inference_mode():
            logits = resume_logits(model, state, 2, layer)
        assert torch.allclose(logits, full.repeat(2, 1), atol=ATOL), (layer, compat)


def test_resumed_runs_never_write_into_the_shared_prefix(tiny):
    ids = torch.randint(5, 1000, (2, 12))
    state = build_state(tiny, ids, torch.tensor([6, 8]), torch.tensor([11, 9]))
    before = [k.clone() for k in state.keys + state.values]
    with torch.inference_mode():
        resume_logits(tiny, state, 3, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, state.keys + state.values))


def test_only_declared_tokens_are_unembedded(tiny):
    ids = torch.randint(5, 1000, (1, 8))
    state = build_state(tiny, ids, torch.tensor([7]), torch.tensor([7]))
    with torch.inference_mode():
        logits = resume_logits(tiny, state, 1, 0, token_ids=(3, 9))
        full = tiny(ids)[0, -1]
    assert torch.allclose(logits[0, [3, 9]], full[[3, 9]], atol=ATOL)
    assert torch.isnan(logits[0, 4]) and torch.isnan(logits).sum() == logits.numel() - 2


def test_last_position_logits_equal_a_full_forward(tiny):
    ids = torch.randint(5, 1000, (3, 14))
    last = torch.tensor([13, 6, 0])
    with torch.inference_mode():
        full = tiny(ids)[torch.arange(3), last]
        every = last_logits(tiny, ids, last)
        some = last_logits(tiny, ids, last, token_ids=(9, 3, 9))
    assert torch.allclose(every, full, atol=ATOL)
    assert torch.allclose(some[:, [3, 9]], full[:, [3, 9]], atol=ATOL)
    assert torch.isnan(some).sum() == some.numel() - 3 * 2  # only the declared columns


def test_observe_equals_run_with_cache_and_a_full_forward(tiny, questions):
    pairs = build_pairs(questions, tiny.tokenizer, position="answer")
    batch = PairBatch.from_pairs(pairs, tiny.tokenizer.pad_token_id or 0)
    metric, rows = flip_metric(batch), torch.arange(batch.n)
    names = ["blocks.0.attn.hook_z", f"blocks.{tiny.cfg.n_layers - 1}.hook_resid_pre"]
    cached, values = observe(tiny, batch.ref, batch.ref_last, metric, rows, names)
    with torch.inference_mode():
        logits, cache = tiny.run_with_cache(batch.ref, names_filter=lambda n: n in names)
    expected = metric(logits[rows, batch.ref_last].float(), rows)
    assert torch.allclose(values, expected, atol=ATOL)
    for name in names:
        assert torch.allclose(cached[name], cache[name], atol=ATOL)
    with pytest.raises(RuntimeError, match="hooks not found"):
        observe(tiny, batch.ref, batch.ref_last, metric, rows, ["blocks.0.hook_no_such"])


def test_the_base_run_gives_the_unpatched_logits_metric_and_observed_hooks(tiny, questions):
    """build_state's logits and observed activations, and run_cells' base metric and
    ``view.base`` (both engines), equal a full run_with_cache at each metric position."""
    pairs = build_pairs(questions, tiny.tokenizer, position="answer")
    batch = PairBatch.from_pairs(pairs, tiny.tokenizer.pad_token_id or 0)
    metric, rows, last = flip_metric(batch), torch.arange(batch.n), batch.ref_last
    names = ["blocks.1.ln1.hook_in", "blocks.0.attn.hook_z"]
    with torch.inference_mode():
        logits, cache = tiny.run_with_cache(batch.ref, names_filter=lambda n: n in names)
    full = logits[rows, last]
    state = build_state(tiny, batch.ref, last, last, metric.token_ids, names)
    ids = sorted(set(metric.token_ids))
    assert torch.allclose(state.logits[:, ids], full[:, ids], atol=ATOL)
    assert torch.isnan(state.logits).sum() == state.logits.numel() - len(ids) * batch.n
    for name in names:
        assert torch.allclose(state.observed[name], cache[name][rows, last], atol=ATOL)
    seen = []

    def look(cells, view):
        seen.append((view.example[: view.n_ex].tolist(), view.base))
        return []

    for engine in ("resume", "hooked"):
        seen.clear()
        kwargs = {"start": last, "base_hooks": names, "engine": engine}
        patched, base, _ = run_cells(tiny, batch.ref, last, 2, look, metric, 2, **kwargs)
        expected = metric(full.float(), rows)
        assert torch.allclose(base, expected, atol=ATOL)
        assert torch.allclose(patched, expected.expand(2, -1), atol=ATOL)  # no hooks: unpatched
        for example, observed in seen:
            for name in names:
                assert torch.allclose(
                    observed[name], cache[name][example, last[example]], atol=ATOL
                )
    with pytest.raises(RuntimeError, match="hooks not found"):
        build_state(tiny, batch.ref, last, last, observe=["blocks.0.hook_no_such"])


@pytest.mark.parametrize(
    ("component", "position"),
    [("z", "last"), ("z", "all"), ("z", "each"), ("k", "last"), ("v", "all")],
)
def test_resumed_head_patching_equals_full_hooked_runs(tiny, questions, position, component):
    pairs = build_pairs(
        questions[:1] if position == "each" else questions, tiny.tokenizer, align=True
    )
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    fast = patch_heads(tiny, pairs, metric, component=component, position=position, batch_size=24)
    plain = patch_heads(
        tiny, pairs, metric, component=component, position=position, engine="hooked"
    )
    assert torch.allclose(fast.values, plain.values, atol=ATOL)
    if component == "z":  # k/v at one position move tiny random models by < 1e-6
        assert fast.values.abs().max() > 1e-5


@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out"])
def test_resumed_layer_patching_equals_full_hooked_runs(tiny, questions, component):
    pairs = build_pairs(questions, tiny.tokenizer, align=True)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    for position in ("last", "all"):
        fast = patch_layers(tiny, pairs, metric, component=component, position=position)
        plain = patch_layers(
            tiny, pairs, metric, component=component, position=position, engine="hooked"
        )
        assert torch.allclose(fast.values, plain.values, atol=ATOL)


def test_resumed_path_patching_equals_full_hooked_runs(tiny, questions):
    pairs = build_pairs(
        questions, tiny.tokenizer, position="reply"
    )  # unaligned: last position only
    metric = apology_logit_diff_metric(tiny.tokenizer)
    for freeze_mlps in (False, True):
        fast = path_patch_heads(tiny, pairs, metric, freeze_mlps=freeze_mlps, batch_size=10)
        plain = path_patch_heads(tiny, pairs, metric, freeze_mlps=freeze_mlps, engine="hooked")
        assert torch.allclose(fast.values, plain.values, atol=ATOL)


def test_resume_refusals(tiny_llama):
    with pytest.raises(ValueError, match="engine='hooked'"):
        unfold_hook("blocks.0.attn.hook_pattern", lambda x, hook: x, 2, 1)
    ids = torch.randint(5, 1000, (2, 6))
    with pytest.raises(ValueError, match="outside"):
        build_state(tiny_llama, ids, torch.tensor([6, 1]), torch.tensor([5, 5]))
    metric = flip_metric(
        PairBatch.from_pairs(build_pairs(load_builtin()[:1], tiny_llama.tokenizer), 0)
    )
    with pytest.raises(ValueError, match="needs first_layer or start"):
        run_cells(
            tiny_llama, ids, torch.tensor([5, 5]), 1, lambda c, v: [], metric, 4, engine="resume"
        )


def test_configs_that_cannot_resume_exactly_fall_back():
    """Soft-capped logits, sliding windows, position-dependent rotary and unknown layouts refuse."""
    from transformers import GPTJConfig, LlamaConfig, MistralConfig

    from sycointerp.patching._resume import _config_blocks_resume

    assert _config_blocks_resume(LlamaConfig()) is None
    assert _config_blocks_resume(MistralConfig(sliding_window=None)) is None
    assert "sliding-window" in _config_blocks_resume(MistralConfig(sliding_window=4096))
    assert "not in the resumable set" in _config_blocks_resume(GPTJConfig())
    soft = LlamaConfig()
    soft.final_logit_softcapping = 30.0
    assert "soft-capped" in _config_blocks_resume(soft)
    dynamic = LlamaConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert "rotary" in _config_blocks_resume(dynamic)


def test_unfold_hook_refuses_activations_outside_the_blocks():
    hook = unfold_hook("ln_final.hook_normalized", lambda x, hook: x, rep=4, suffix=16)
    with pytest.raises(ValueError, match="inside the decoder blocks"):
        hook(torch.zeros(3, 64))  # [rows, d_model]: no position axis, even though 64 == 4 * 16


def test_the_other_side_resumes_from_the_base_runs_shared_prefix(tiny, questions):
    """``resume_tokens``: the counterfactual prompts run only from where they first differ from
    the reference, reading the reference's cached keys; logits and activations equal a full
    forward of the counterfactual (``observe``). Prompts that differ before their start, or a
    start past the state's prefix, are refused."""
    from sycointerp.patching._engine import Source, _source_run
    from sycointerp.patching._resume import resume_tokens

    pairs = build_pairs(questions, tiny.tokenizer, position="reply")
    batch = PairBatch.from_pairs(pairs, tiny.tokenizer.pad_token_id or 0)
    metric = apology_logit_diff_metric(tiny.tokenizer)
    state = build_state(tiny, batch.ref, batch.ref_last, batch.ref_last, metric.token_ids)
    every = torch.arange(batch.n)
    names = ("blocks.0.attn.hook_z", "blocks.1.hook_resid_pre")
    full, full_metric = observe(tiny, batch.cf, batch.cf_last, metric, every, names)
    kept, resumed_metric = _source_run(
        tiny, Source(batch.cf, batch.cf_last, names), every, state, metric
    )
    assert (batch.shared_prefix > 0.6 * batch.cf_last).all()  # most of the prompt is skipped
    torch.testing.assert_close(resumed_metric, full_metric, atol=ATOL, rtol=0)
    for name in names:
        torch.testing.assert_close(kept[name], full[name][every, batch.cf_last], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="differ from the state's base run"):
        resume_tokens(tiny, state, batch.cf, batch.shared_prefix + 1, batch.cf_last)
    with pytest.raises(ValueError, match="within the state's prefix"):
        beyond = torch.full_like(batch.cf_last, state.prefix + 1)
        resume_tokens(tiny, state, batch.cf, beyond, beyond)
