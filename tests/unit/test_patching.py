"""Fast patching paths against plain one-forward-per-head references (tiny MHA and GQA models)."""

import dataclasses

import pandas as pd
import pytest
import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.heads import HEADS_CSV_COLUMNS, SAMPLE_COLUMNS, STABILITY_COLUMNS
from sycointerp.metrics import apology_logit_diff_metric, flip_metric
from sycointerp.patching import PatchResult, patch_head_outputs, path_patch_heads
from tests.conftest import grid_meta
from tests.reference import reference_activation, reference_path

ATOL = 1e-5


@pytest.fixture(scope="module")
def questions():
    return load_builtin()[::40][:3] + [load_builtin()[130]]


def _pairs(model, questions, **kw):
    return build_pairs(questions, model.tokenizer, align=True, **kw)


@pytest.mark.parametrize("position", ["last", "all"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_head_output_patching_equals_plain_reference(tiny, questions, position, direction):
    pairs = _pairs(tiny, questions)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    fast = patch_head_outputs(
        tiny, pairs, metric, position=position, direction=direction, batch_size=5
    )
    ref = reference_activation(tiny, pairs, "z", position, direction)[:, :, 0]  # pos axis of 1
    assert fast.values.shape == (tiny.cfg.n_layers, tiny.cfg.n_heads, len(pairs))
    assert torch.allclose(fast.values, ref, atol=ATOL)
    assert fast.values.abs().max() > 1e-4  # the patch does something on these prompts


def test_all_position_patching_equals_transformer_lens(tiny, questions):
    """TransformerLens's own get_act_patch_attn_head_out_all_pos (one forward per head)."""
    from transformer_lens import patching as tl_patching

    pairs = _pairs(tiny, questions[:1])  # one pair: TL's metric sees the whole batch
    (pair,) = pairs
    g, w = pair.answer_ids
    _, cf_cache = tiny.run_with_cache(torch.tensor([pair.cf_ids]))
    tl = tl_patching.get_act_patch_attn_head_out_all_pos(
        tiny,
        torch.tensor([pair.ref_ids]),
        cf_cache,
        lambda logits: logits[0, -1, g] - logits[0, -1, w],
    )
    ours = patch_head_outputs(
        tiny, pairs, flip_metric(PairBatch.from_pairs(pairs, 0)), position="all"
    )
    assert torch.allclose(ours.values[..., 0] + ours.metric_ref[0], tl, atol=ATOL)


@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_path_patching_equals_plain_reference(tiny, questions, freeze_mlps):
    pairs = build_pairs(questions, tiny.tokenizer, position="reply")  # unaligned lengths are fine
    metric = apology_logit_diff_metric(tiny.tokenizer)
    fast = path_patch_heads(tiny, pairs, metric, freeze_mlps=freeze_mlps, batch_size=7)
    ref = reference_path(tiny, pairs, "apology", freeze_mlps)
    assert torch.allclose(fast.values, ref, atol=ATOL)


def test_path_patching_last_layer_equals_activation_patching(tiny, questions):
    """With no later layers, the path patch of a last-layer head is a plain last-position patch."""
    pairs = _pairs(tiny, questions)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    path = path_patch_heads(tiny, pairs, metric)
    act = patch_head_outputs(tiny, pairs, metric, position="last")
    assert torch.allclose(path.values[-1], act.values[-1], atol=ATOL)


def test_freezing_attention_input_leaves_the_residual_stream_alone(tiny):
    """ln1.hook_in is attention's private copy of the residual: changing it must not change
    resid_pre."""
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    names = {"blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_attn_out"}
    _, clean = tiny.run_with_cache(ids, names_filter=lambda n: n in names)

    def zero_last(x, hook=None):
        x = x.clone()
        x[:, -1] = 0.0
        return x

    with tiny.hooks(fwd_hooks=[("blocks.1.ln1.hook_in", zero_last)]):
        _, hooked = tiny.run_with_cache(ids, names_filter=lambda n: n in names)
    assert torch.equal(hooked["blocks.1.hook_resid_pre"], clean["blocks.1.hook_resid_pre"])
    assert not torch.allclose(
        hooked["blocks.1.hook_attn_out"][:, -1], clean["blocks.1.hook_attn_out"][:, -1]
    )
    resid_mid = hooked["blocks.1.hook_resid_pre"] + hooked["blocks.1.hook_attn_out"]
    assert torch.allclose(hooked["blocks.1.hook_resid_mid"], resid_mid, atol=1e-6)


def test_patching_a_run_into_itself_has_zero_effect(tiny, questions):
    pairs = [dataclasses.replace(p, cf_ids=p.ref_ids) for p in _pairs(tiny, questions)]
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    for result in (
        patch_head_outputs(tiny, pairs, metric, position="all"),
        path_patch_heads(tiny, pairs, metric),
    ):
        assert torch.allclose(result.values, torch.zeros_like(result.values), atol=ATOL)


def test_results_do_not_depend_on_batch_size(tiny, questions):
    pairs = _pairs(tiny, questions)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    a = path_patch_heads(tiny, pairs, metric, batch_size=1)
    b = path_patch_heads(tiny, pairs, metric, batch_size=100)
    assert torch.allclose(a.values, b.values, atol=ATOL)


def test_hooks_do_not_leak(tiny, questions):
    pairs = _pairs(tiny, questions)
    ids = torch.tensor([pairs[0].ref_ids])
    with torch.no_grad():
        before = tiny(ids)
    path_patch_heads(tiny, pairs, flip_metric(PairBatch.from_pairs(pairs, 0)))
    with torch.no_grad():
        assert torch.equal(tiny(ids), before)


def test_bad_input_is_refused(tiny, questions):
    unaligned = build_pairs(questions, tiny.tokenizer)
    metric = flip_metric(PairBatch.from_pairs(unaligned, 0))
    with pytest.raises(ValueError, match=r"pair 0 .*align=True"):
        patch_head_outputs(tiny, unaligned, metric, position="all")
    with pytest.raises(ValueError, match="no prompt pairs"):
        path_patch_heads(tiny, [], metric)
    reply = build_pairs(questions, tiny.tokenizer, position="reply")
    with pytest.raises(ValueError, match="position='answer'"):
        flip_metric(PairBatch.from_pairs(reply, 0))
    tiny.train()
    try:
        with pytest.raises(RuntimeError, match="training mode"):
            path_patch_heads(tiny, unaligned, metric)
    finally:
        tiny.eval()


def _result(values, higher_is_sycophantic=True):
    n = values.shape[-1]
    return PatchResult(
        values,
        torch.ones(n),
        torch.full((n,), 2.0),
        "test",
        "m",
        higher_is_sycophantic,
        example_ids=tuple(f"e{i}" for i in range(n)),
        meta=grid_meta(values, ("layer", "head")),
    )


def test_patch_result_ranking_statistics_and_persistence(tmp_path):
    values = torch.tensor(
        [[[-3.0, -2.9], [1.0, 1.2]], [[0.1, 0.0], [-1.0, -1.1]]]
    )  # [2 layers, 2 heads, 2 ex]
    res = _result(values)
    assert res.rank() == [
        (0, 0),
        (1, 1),
        (1, 0),
        (0, 1),
    ]  # most negative first when higher = sycophantic
    assert _result(values, higher_is_sycophantic=False).top_k(1) == [(0, 1)]
    assert torch.allclose(res.recovery(), values.mean(-1) / 1.0)
    assert torch.allclose(res.as_relative().values, values / 1.0)
    table = res.heads_table()
    assert list(table.columns) == HEADS_CSV_COLUMNS + STABILITY_COLUMNS + SAMPLE_COLUMNS and table[
        "rank"
    ].tolist() == [1, 2, 3, 4]
    assert (table["ci_low"] <= table["score"]).all() and (table["score"] <= table["ci_high"]).all()
    assert set(table["n"]) == {values.shape[-1]} and set(table["small"]) == {True}  # 2 examples
    long = res.to_dataframe()
    assert (
        len(long) == 8
        and long.query("layer == 1 and head == 1 and example == 0")["value"].item() == -1.0
    )
    loaded = PatchResult.load(res.save(tmp_path / "r"))
    assert torch.equal(loaded.values, values) and loaded.example_ids == res.example_ids
    assert (
        pd.read_csv(tmp_path / "r" / "heads.csv").columns.tolist()
        == HEADS_CSV_COLUMNS + STABILITY_COLUMNS + SAMPLE_COLUMNS
    )
    assert not list(tmp_path.glob("r/*.pkl")) and not list(tmp_path.glob("r/.*"))


def test_patch_result_refusals(tmp_path):
    with pytest.raises(ValueError, match="NaN effect at layer 0, head 1"):
        _result(torch.tensor([[[0.0], [float("nan")]]]))
    with pytest.raises(
        (ValueError, TypeError), match=r"\[layer, head, example\]|layer head example"
    ):
        _result(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="k must be"):
        _result(torch.zeros(1, 2, 3)).top_k(5)
    with pytest.raises(FileNotFoundError, match="saved PatchResult"):
        PatchResult.load(tmp_path)


def test_bad_metrics_are_refused_with_the_example(tiny_llama, questions):
    from sycointerp.metrics import PatchMetric

    pairs = _pairs(tiny_llama, questions)
    wrong_shape = PatchMetric("wide", True, lambda logits, example: logits[:, :2])
    with pytest.raises(ValueError, match=r"metric 'wide' returned shape \(\d+, 2\)"):
        patch_head_outputs(tiny_llama, pairs, wrong_shape)

    def nan_for_example_2(logits, example):
        out = logits[:, 0].clone()
        out[example == 2] = float("nan")
        return out

    with pytest.raises(ValueError, match="returned NaN for example 2"):
        path_patch_heads(tiny_llama, pairs, PatchMetric("nan", True, nan_for_example_2))
    undeclared = PatchMetric("reads-5", True, lambda logits, example: logits[:, 5], token_ids=(7,))
    with pytest.raises(ValueError, match="NaN"):  # resumed runs unembed only the declared tokens
        path_patch_heads(tiny_llama, pairs, undeclared)


def test_baselines_do_not_depend_on_batch_size(tiny, questions):
    from sycointerp.patching._engine import baselines

    pairs = build_pairs(
        questions, tiny.tokenizer, position="reply"
    )  # unequal lengths: padding differs per chunk
    batch = PairBatch.from_pairs(pairs, 0)
    metric = apology_logit_diff_metric(tiny.tokenizer)
    one, many = (
        baselines(tiny, batch, metric, batch_size=1),
        baselines(tiny, batch, metric, batch_size=64),
    )
    for a, b in zip(one, many):
        assert a.shape == (len(pairs),) and torch.allclose(a, b, atol=ATOL)
