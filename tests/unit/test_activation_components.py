"""Head-component (q/k/v/z/pattern), by-position and layer-level activation patching against plain
one-forward-per-cell references on tiny MHA and GQA models, and the generalized PatchResult."""

import dataclasses

import pandas as pd
import pytest
import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.heads import HEADS_CSV_COLUMNS, SAMPLE_COLUMNS, STABILITY_COLUMNS
from sycointerp.metrics import flip_metric
from sycointerp.patching import PatchResult, activation, patch_head_outputs
from sycointerp.patching.activation import patch_heads
from sycointerp.patching.layers import patch_layers
from tests.conftest import grid_meta
from tests.reference import plain_cache, reference_activation

ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run one token row at a time here; thread hand-offs dominate on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _short(pair, extra):
    """The pair cut to ``3 + extra`` tokens that keep its differing ones (cells scale with
    length)."""
    fd = pair.first_diff

    def cut(ids):
        return ids[fd : fd + 2 + extra] + ids[-1:]

    return dataclasses.replace(pair, ref_ids=cut(pair.ref_ids), cf_ids=cut(pair.cf_ids))


@pytest.fixture(scope="module")
def aligned(tokenizer):
    """Two aligned pairs of different lengths (3 and 4 tokens), so by-position runs are padded."""
    qs = [load_builtin()[0], load_builtin()[130]]
    return [_short(p, extra) for p, extra in zip(build_pairs(qs, tokenizer, align=True), (0, 1))]


@pytest.fixture(scope="module")
def unaligned(aligned):
    """The same pairs with one counterfactual token dropped: lengths differ within each pair."""
    return [dataclasses.replace(p, cf_ids=p.cf_ids[:1] + p.cf_ids[2:]) for p in aligned]


def _metric(pairs):
    return flip_metric(PairBatch.from_pairs(pairs, 0))


def _n_units(model, component):
    if component in ("k", "v"):
        return model.cfg.n_key_value_heads or model.cfg.n_heads
    return model.cfg.n_heads


HEAD_CASES = [
    ("q", "last", "denoise"),
    ("q", "all", "noise"),
    ("q", "each", "noise"),
    ("k", "last", "noise"),
    ("k", "all", "denoise"),
    ("k", "each", "noise"),
    ("v", "last", "denoise"),
    ("v", "all", "noise"),
    ("v", "each", "denoise"),
    ("pattern", "last", "noise"),
    ("pattern", "all", "denoise"),
    ("pattern", "each", "noise"),
    ("z", "each", "denoise"),
]


@pytest.mark.parametrize("component,position,direction", HEAD_CASES)
def test_head_components_equal_plain_reference(
    tiny, aligned, unaligned, component, position, direction
):
    # Last-position patches of vectors accept pairs of different lengths; show they are exact there.
    pairs = unaligned if position == "last" and component != "pattern" else aligned
    fast = patch_heads(
        tiny,
        pairs,
        _metric(pairs),
        component=component,
        position=position,
        direction=direction,
        batch_size=5,
    )
    n_units = _n_units(tiny, component)
    ref = reference_activation(tiny, pairs, component, position, direction)
    unit = "kv_head" if component in ("k", "v") else "head"
    assert fast.components == ("layer", unit) + (("pos",) if position == "each" else ())
    L, P, n = tiny.cfg.n_layers, ref.shape[2], len(pairs)
    assert fast.values.shape == ((L, n_units, P, n) if position == "each" else (L, n_units, n))
    assert torch.allclose(fast.values, ref.reshape(fast.values.shape), atol=ATOL)
    assert (
        fast.values.abs().max() > 5e-5
    )  # the patch does something (queries of the tiny GPT-2 barely matter)


def test_gqa_keys_and_values_are_per_kv_head(tiny_llama, aligned):
    """Compat mode keeps hook_k/hook_v unexpanded: [batch, pos, n_kv_heads, d_head]."""
    cfg = tiny_llama.cfg
    assert cfg.n_key_value_heads < cfg.n_heads
    acts = plain_cache(
        tiny_llama, aligned[0].ref_ids, ["blocks.0.attn.hook_k", "blocks.0.attn.hook_v"]
    )
    assert all(a.shape[1] == cfg.n_key_value_heads for a in acts.values())
    result = patch_heads(tiny_llama, aligned, _metric(aligned), component="v", position="all")
    assert result.shape == (cfg.n_layers, cfg.n_key_value_heads) and result.components == (
        "layer",
        "kv_head",
    )
    assert result.heads_table()["head"].max() == cfg.n_key_value_heads - 1


LAYER_CASES = [
    ("resid_pre", "each", "denoise"),
    ("resid_pre", "last", "noise"),
    ("resid_pre", "all", "denoise"),
    ("attn_out", "each", "noise"),
    ("attn_out", "last", "denoise"),
    ("attn_out", "all", "noise"),
    ("mlp_out", "each", "denoise"),
    ("mlp_out", "last", "noise"),
    ("mlp_out", "all", "denoise"),
]


@pytest.mark.parametrize("component,position,direction", LAYER_CASES)
def test_layer_patching_equals_plain_reference(
    tiny, aligned, unaligned, component, position, direction
):
    pairs = unaligned if position == "last" else aligned
    fast = patch_layers(
        tiny,
        pairs,
        _metric(pairs),
        component=component,
        position=position,
        direction=direction,
        batch_size=3,
    )
    ref = reference_activation(tiny, pairs, component, position, direction)
    assert fast.components == (("layer", "pos") if position == "each" else ("layer",))
    assert torch.allclose(fast.values, ref.reshape(fast.values.shape), atol=ATOL)
    assert fast.values.abs().max() > 1e-4


def test_by_position_matches_transformer_lens(tiny_gpt2, aligned):
    """TransformerLens's own by-position patchers (one forward per cell; MHA only: TL indexes k/v
    by query head)."""
    from transformer_lens import patching as tl_patching

    pair = aligned[0]
    g, w = pair.answer_ids
    _, cf_cache = tiny_gpt2.run_with_cache(torch.tensor([pair.cf_ids]))
    ref_ids = torch.tensor([pair.ref_ids])

    def tl_metric(logits):
        return logits[0, -1, g] - logits[0, -1, w]

    metric = _metric([pair])
    k = patch_heads(tiny_gpt2, [pair], metric, component="k", position="each")
    tl_k = tl_patching.get_act_patch_attn_head_k_by_pos(
        tiny_gpt2, ref_ids, cf_cache, tl_metric
    )  # [layer, pos, head]
    assert torch.allclose(k.values[..., 0] + k.metric_ref[0], tl_k.permute(0, 2, 1), atol=ATOL)
    pattern = patch_heads(tiny_gpt2, [pair], metric, component="pattern", position="each")
    tl_pattern = tl_patching.get_act_patch_attn_head_pattern_by_pos(
        tiny_gpt2, ref_ids, cf_cache, tl_metric
    )
    assert torch.allclose(pattern.values[..., 0] + pattern.metric_ref[0], tl_pattern, atol=ATOL)
    resid = patch_layers(tiny_gpt2, [pair], metric, component="resid_pre")
    tl_resid = tl_patching.get_act_patch_resid_pre(
        tiny_gpt2, ref_ids, cf_cache, tl_metric
    )  # [layer, pos]
    assert torch.allclose(resid.values[..., 0] + resid.metric_ref[0], tl_resid, atol=ATOL)


def test_results_do_not_depend_on_batch_size(tiny, aligned):
    metric = _metric(aligned)
    for run in (
        lambda b: patch_heads(
            tiny, aligned, metric, component="pattern", position="each", batch_size=b
        ),
        lambda b: patch_layers(tiny, aligned, metric, component="attn_out", batch_size=b),
    ):
        assert torch.allclose(run(1).values, run(1000).values, atol=ATOL)


def test_patching_a_run_into_itself_has_zero_effect(tiny, aligned):
    pairs = [dataclasses.replace(p, cf_ids=p.ref_ids) for p in aligned]
    metric = _metric(pairs)
    results = [
        patch_heads(tiny, pairs, metric, component=c, position="all")
        for c in ("q", "k", "v", "pattern")
    ]
    results.append(patch_layers(tiny, pairs, metric, component="resid_pre"))
    for result in results:
        assert torch.allclose(result.values, torch.zeros_like(result.values), atol=ATOL), (
            result.method
        )


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patching_the_whole_residual_stream_reproduces_the_source_run(tiny, aligned, direction):
    """resid_pre at every position is a layer's whole state: any layer recovers the full gap."""
    result = patch_layers(
        tiny, aligned, _metric(aligned), component="resid_pre", position="all", direction=direction
    )
    gap = result.metric_cf - result.metric_ref
    expected = (gap if direction == "denoise" else -gap).expand_as(result.values)
    assert torch.allclose(result.values, expected, atol=ATOL)
    assert gap.abs().min() > 1e-4
    if direction == "denoise":
        assert torch.allclose(result.recovery(), torch.ones(tiny.cfg.n_layers), atol=1e-4)


def test_each_position_agrees_with_last_position(tiny, aligned):
    """The by-position cell at an example's last position is the last-position patch; past the end
    it is 0."""
    metric = _metric(aligned)
    last = torch.tensor([len(p.ref_ids) - 1 for p in aligned])
    for run in (
        lambda pos: patch_heads(tiny, aligned, metric, component="v", position=pos),
        lambda pos: patch_layers(tiny, aligned, metric, component="mlp_out", position=pos),
    ):
        each, at_last = run("each").values, run("last").values
        assert torch.allclose(each[..., last, torch.arange(len(aligned))], at_last, atol=ATOL)
        assert (
            each[..., 3, 0] == 0
        ).all()  # example 0 has 3 tokens: position 3 does not exist there


def test_source_run_caches_only_the_patched_hook(tiny, aligned, monkeypatch):
    """The source side keeps only the patched hook's activations: at the last position it runs
    beside each example chunk (run_cells' Source), elsewhere as one forward first."""
    seen = []
    real_observe, real_run = activation.observe, activation.run_cells

    def spy_observe(model, ids, last, metric, example, names=()):
        seen.append(("observe", list(names)))
        return real_observe(model, ids, last, metric, example, names)

    def spy_run(*args, source=None, **kwargs):
        if source is not None:
            seen.append(("beside", list(source.names)))
        return real_run(*args, source=source, **kwargs)

    monkeypatch.setattr(activation, "observe", spy_observe)
    monkeypatch.setattr(activation, "run_cells", spy_run)
    patch_heads(tiny, aligned, _metric(aligned), component="k")
    patch_layers(tiny, aligned, _metric(aligned), component="mlp_out", position="last")
    patch_layers(tiny, aligned, _metric(aligned), component="mlp_out", position="all")
    L = tiny.cfg.n_layers
    assert seen == [
        ("beside", [f"blocks.{l}.attn.hook_k" for l in range(L)]),
        ("beside", [f"blocks.{l}.hook_mlp_out" for l in range(L)]),
        ("observe", [f"blocks.{l}.hook_mlp_out" for l in range(L)]),
    ]


def test_z_alias_is_patch_heads(tiny, unaligned):
    metric = _metric(unaligned)
    alias = patch_head_outputs(tiny, unaligned, metric)
    assert alias.method == "activation/z/last/denoise" and alias.components == ("layer", "head")
    assert torch.equal(alias.values, patch_heads(tiny, unaligned, metric).values)


def test_bad_input_is_refused(tiny, aligned, unaligned):
    metric = _metric(unaligned)
    with pytest.raises(ValueError, match="aligned pairs even at the last position"):
        patch_heads(tiny, unaligned, metric, component="pattern")
    for position in ("all", "each"):
        with pytest.raises(ValueError, match=r"pair 0 .*align=True"):
            patch_heads(tiny, unaligned, metric, component="q", position=position)
        with pytest.raises(ValueError, match=r"pair 0 .*align=True"):
            patch_layers(tiny, unaligned, metric, component="resid_pre", position=position)
    # Literal options are type-checked at test time (TypeError from jaxtyping/beartype naming the
    # parameter); without the checker the functions' own ValueError names it.
    with pytest.raises((ValueError, TypeError), match="component"):
        patch_heads(tiny, aligned, metric, component="x")
    with pytest.raises((ValueError, TypeError), match="position"):
        patch_layers(tiny, aligned, metric, component="attn_out", position="first")


# PatchResult with other cell layouts.


def _result(values, components, higher_is_sycophantic=True):
    n = values.shape[-1]
    return PatchResult(
        values,
        torch.ones(n),
        torch.full((n,), 2.0),
        "test",
        "m",
        higher_is_sycophantic,
        example_ids=tuple(f"e{i}" for i in range(n)),
        meta=grid_meta(values, components),
        components=components,
    )


def test_patch_result_by_layer_and_position(tmp_path):
    values = torch.tensor(
        [[[1.0, 1.0], [-2.0, -2.0], [0.0, 0.0]], [[-3.0, -3.0], [0.5, 0.5], [-2.0, -2.0]]]
    )  # [2 layers, 3 pos, 2 ex]
    res = _result(values, ("layer", "pos"))
    assert res.shape == (2, 3) and res.mean.shape == (2, 3) and res.ci[0].shape == (2, 3)
    assert res.rank() == [(1, 0), (0, 1), (1, 2), (0, 2), (1, 1), (0, 0)]  # ties: lower index first
    assert _result(values, ("layer", "pos"), higher_is_sycophantic=False).top_k(2) == [
        (0, 0),
        (1, 1),
    ]
    assert torch.allclose(res.recovery(), values.mean(-1))
    with pytest.raises(ValueError, match=r"heads_table needs components .*\('layer', 'pos'\)"):
        res.heads_table()
    long = res.to_dataframe()
    assert list(long.columns) == ["layer", "pos", "example", "value"] and len(long) == 12
    assert long.query("layer == 1 and pos == 2 and example == 1")["value"].item() == -2.0
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "heads.csv").write_text("stale\n")  # from an earlier per-head save
    loaded = PatchResult.load(res.save(tmp_path / "r"))
    assert loaded.components == ("layer", "pos") and torch.equal(loaded.values, values)
    assert not (tmp_path / "r" / "heads.csv").exists()
    assert torch.equal(loaded.as_relative().values, values) and loaded.as_relative().components == (
        "layer",
        "pos",
    )


def test_patch_result_other_layouts(tmp_path):
    by_layer = _result(torch.tensor([[0.5, 0.7], [-1.0, -1.2]]), ("layer",))
    assert by_layer.rank() == [(1,), (0,)] and by_layer.top_k(1) == [(1,)]
    assert list(by_layer.to_dataframe().columns) == ["layer", "example", "value"]
    kv = _result(torch.tensor([[[1.0], [-1.0]]]), ("layer", "kv_head"))
    table = kv.heads_table()
    assert list(table.columns) == HEADS_CSV_COLUMNS + STABILITY_COLUMNS + SAMPLE_COLUMNS and table[
        ["layer", "head"]
    ].values.tolist() == [[0, 1], [0, 0]]
    kv.save(tmp_path / "kv")
    assert (
        pd.read_csv(tmp_path / "kv" / "heads.csv").columns.tolist()
        == HEADS_CSV_COLUMNS + STABILITY_COLUMNS + SAMPLE_COLUMNS
    )
    assert PatchResult.load(tmp_path / "kv").components == ("layer", "kv_head")
    by_pos = _result(torch.zeros(2, 3, 4, 1), ("layer", "head", "pos"))
    assert len(by_pos.rank()) == 24 and by_pos.rank()[1] == (0, 0, 1)


def test_patch_result_layout_refusals(tmp_path):
    with pytest.raises(ValueError, match="NaN effect at layer 1, pos 0, example 1"):
        _result(torch.tensor([[[0.0, 0.0]], [[0.0, float("nan")]]]), ("layer", "pos"))
    with pytest.raises((ValueError, TypeError), match=r"\[layer, head, pos, example\]"):
        _result(torch.zeros(2, 2, 2), ("layer", "head", "pos"))
    with pytest.raises(ValueError, match="distinct"):
        _result(torch.zeros(2, 2, 2), ("layer", "layer"))
    with pytest.raises(ValueError, match="distinct and not"):
        _result(torch.zeros(2, 2, 2), ("layer", "example"))
    with pytest.raises(ValueError, match="non-empty"):
        _result(torch.zeros(2), ())
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\]"):
        _result(torch.zeros(2, 3, 1), ("layer", "pos")).top_k(7)


def test_results_saved_before_components_existed_load_as_heads(tmp_path):
    res = _result(torch.zeros(2, 2, 1), ("layer", "head"))
    res.save(tmp_path)
    info = (tmp_path / "result.json").read_text()
    (tmp_path / "result.json").write_text(info.replace('"components"', '"unused"'))
    assert PatchResult.load(tmp_path).components == ("layer", "head")
