"""Head knockout against plain one-forward-per-example references (tiny MHA and GQA models)."""

import dataclasses

import pytest
import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.evaluate.judges import admits_mistake
from sycointerp.generate import greedy_generate
from sycointerp.heads import draw_random_heads
from sycointerp.metrics import apology_logit_diff_metric, apology_token_ids, flip_metric
from sycointerp.patching.ablation import ablate_heads, head_means
from sycointerp.patching.knockout import (
    SUMMARY_COLUMNS,
    KnockoutCurve,
    knockout_curve,
    knockout_metric,
)
from tests.reference import plain_last_logits, reference_head_means, reference_knockout

ATOL = 1e-5
HEADS = [(0, 1), (1, 0), (1, 3)]  # two layers, two heads in one layer


@pytest.fixture(scope="module")
def questions():
    return load_builtin()[::40][:3] + [load_builtin()[130]]


def _pairs(model, questions, **kw):
    return build_pairs(questions, model.tokenizer, align=True, **kw)


def _flip(model, pairs):
    return flip_metric(PairBatch.from_pairs(pairs, 0))


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_each_method_equals_plain_reference(tiny, questions, method):
    pairs = _pairs(tiny, questions[1:])  # lengths 62, 62, 59: padding
    fast = knockout_metric(
        tiny, pairs, _flip(tiny, pairs), HEADS, method=method, batch_size=2
    )  # 2 chunks
    ref = reference_knockout(tiny, pairs, HEADS, method)
    assert fast.shape == (len(pairs),)
    assert torch.allclose(fast, ref, atol=ATOL)


def test_mean_over_other_prompts_and_precomputed_means(tiny, questions):
    pairs = _pairs(tiny, questions[:3])
    other = [p.cf_ids for p in pairs]
    means = head_means(tiny, other, batch_size=2)
    hand = reference_head_means(tiny, other)
    assert torch.allclose(means, torch.stack(hand).float(), atol=ATOL)
    ids = torch.tensor([pairs[0].ref_ids])
    with ablate_heads(tiny, HEADS, method="mean", reference=other), torch.no_grad():
        a = tiny(ids)
    with ablate_heads(tiny, HEADS, method="mean", means=means), torch.no_grad():
        b = tiny(ids)
    assert torch.allclose(a, b, atol=ATOL)
    assert torch.allclose(
        knockout_metric(tiny, pairs[:1], _flip(tiny, pairs), HEADS, reference=other)[0],
        (a[0, -1, pairs[0].answer_ids[0]] - a[0, -1, pairs[0].answer_ids[1]]),
        atol=ATOL,
    )


def test_no_heads_and_all_heads(tiny, questions):
    pairs = _pairs(tiny, questions[2:])
    metric = _flip(tiny, pairs)
    plain = torch.tensor(
        [
            float(
                plain_last_logits(tiny, p.ref_ids)[list(p.answer_ids)] @ torch.tensor([1.0, -1.0])
            )
            for p in pairs
        ]
    )
    for method in ("zero", "mean", "resample"):
        assert torch.allclose(
            knockout_metric(tiny, pairs, metric, [], method=method), plain, atol=ATOL
        )
    every = [(l, h) for l in range(tiny.cfg.n_layers) for h in range(tiny.cfg.n_heads)]
    zeroed = [
        (f"blocks.{l}.attn.hook_z", lambda z, hook=None: torch.zeros_like(z))
        for l in range(tiny.cfg.n_layers)
    ]
    all_zero = torch.tensor(
        [
            float(
                plain_last_logits(tiny, p.ref_ids, zeroed)[list(p.answer_ids)]
                @ torch.tensor([1.0, -1.0])
            )
            for p in pairs
        ]
    )
    assert torch.allclose(
        knockout_metric(tiny, pairs, metric, every, method="zero"), all_zero, atol=ATOL
    )
    assert (all_zero - plain).abs().max() > 1e-4  # ablating heads does change the metric here


def test_random_draws_are_seeded_distinct_and_without_duplicates():
    ks = [0, 1, 5, 40, 270]
    a, b = draw_random_heads(30, 9, ks, 6, seed=3), draw_random_heads(30, 9, ks, 6, seed=3)
    assert a == b and a != draw_random_heads(30, 9, ks, 6, seed=4)
    for k, draws in zip(ks, a):
        assert len(draws) == 6
        for heads in draws:
            assert len(heads) == k == len(set(heads)) and heads == tuple(sorted(heads))
            assert all(0 <= l < 30 and 0 <= h < 9 for l, h in heads)
    assert len(set(a[2])) == 6 and len(set(a[3])) == 6  # draws differ from each other
    assert len(set(a[4])) == 1  # k = all heads: every draw is the full set


def test_ablation_leaves_no_hooks_even_after_an_error(tiny):
    ids = torch.tensor([[1, 5, 9, 200, 7, 11]])
    hook_points = [tiny.hook_dict[f"blocks.{l}.attn.hook_z"] for l in range(tiny.cfg.n_layers)]
    with torch.no_grad():
        before = tiny(ids)
        with ablate_heads(tiny, HEADS, method="zero") as fired:
            inside = tiny(ids)
        assert fired == {"blocks.0.attn.hook_z": 1, "blocks.1.attn.hook_z": 1}
        assert not torch.allclose(inside, before) and torch.equal(tiny(ids), before)
        with pytest.raises(KeyError, match="inside the block"):
            with ablate_heads(tiny, HEADS, method="mean", reference=[[1, 2, 3], [4, 5]]):
                tiny(ids)
                raise KeyError("inside the block")
        assert torch.equal(tiny(ids), before)
    assert all(not hp.fwd_hooks and not hp._forward_hooks for hp in hook_points)
    with pytest.raises(RuntimeError, match="never fired"):
        with ablate_heads(tiny, HEADS, method="zero"):
            pass  # no forward: the hooks cannot have fired
    assert all(not hp.fwd_hooks for hp in hook_points)


def test_hooks_fire_during_huggingface_generate(tiny):
    """Ablated HF generate (KV cache) equals an uncached greedy loop of hand-hooked bridge
    forwards."""
    prompt, new = [1, 5, 9, 200, 7, 11, 42], 4
    zero = [
        (f"blocks.{l}.attn.hook_z", lambda z, hook=None, l=l: _zero_heads(z, l)) for l in (0, 1)
    ]
    ids = list(prompt)
    for _ in range(new):
        ids.append(int(plain_last_logits(tiny, ids, zero).argmax()))
    stop = {tiny.tokenizer.eos_token_id, tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    gen = ids[len(prompt) :]
    gen = gen[: next((i for i, t in enumerate(gen) if t in stop), len(gen))]
    with ablate_heads(tiny, HEADS, method="zero") as fired:
        (reply,) = greedy_generate(tiny, [prompt], max_new_tokens=new)
    assert reply == tiny.tokenizer.decode(gen, skip_special_tokens=True)
    assert set(fired.values()) == {min(len(gen) + 1, new)}  # prefill + each cached decoding step
    (unablated,) = greedy_generate(tiny, [prompt], max_new_tokens=new)
    assert (
        unablated == greedy_generate(tiny, [prompt], max_new_tokens=new)[0]
    )  # nothing left behind


def _zero_heads(z, layer):
    z = z.clone()
    for l, h in HEADS:
        if l == layer:
            z[:, :, h] = 0.0
    return z


@pytest.fixture(scope="module")
def curve(tiny_llama, questions):
    pairs = _pairs(tiny_llama, questions[:2], position="reply")
    ranking = [(1, 2), (0, 0), (0, 3)]
    return pairs, knockout_curve(
        tiny_llama,
        pairs,
        apology_logit_diff_metric(tiny_llama.tokenizer),
        ranking,
        [0, 2],
        n_random=2,
        seed=7,
        generate=True,
        max_new_tokens=3,
        batch_size=2,
    )


def test_curve_values_and_generation(tiny_llama, curve):
    pairs, c = curve
    assert (
        c.top.shape == (2, 2)
        and c.random.shape == (2, 2, 2)
        and c.apology_random.shape == (2, 2, 2)
    )
    assert c.random_heads == draw_random_heads(2, 4, [0, 2], 2, seed=7) and c.top_heads == (
        (1, 2),
        (0, 0),
    )
    for rates in (c.apology_baseline, c.apology_top, c.apology_random):
        assert set(rates.flatten().tolist()) <= {0.0, 1.0}
    metric = apology_logit_diff_metric(tiny_llama.tokenizer)
    assert torch.allclose(c.top[0], c.baseline) and torch.allclose(c.random[0, 1], c.baseline)
    assert torch.allclose(
        c.top[1], knockout_metric(tiny_llama, pairs, metric, [(1, 2), (0, 0)]), atol=ATOL
    )
    drawn = list(c.random_heads[1][1])
    assert torch.allclose(
        c.random[1, 1], knockout_metric(tiny_llama, pairs, metric, drawn), atol=ATOL
    )
    syc, firm = apology_token_ids(tiny_llama.tokenizer)
    base = torch.tensor(
        [
            float(plain_last_logits(tiny_llama, p.ref_ids)[[syc, firm]] @ torch.tensor([1.0, -1.0]))
            for p in pairs
        ]
    )
    assert torch.allclose(c.baseline, base, atol=ATOL)
    summary = c.summary()
    assert summary["measure"].tolist() == ["metric", "metric", "apology", "apology"]
    assert (
        summary.query("measure == 'apology'")[["baseline", "top", "random_mean"]]
        .stack()
        .between(0, 1)
        .all()
    )
    assert summary["random_std"].iloc[0] == 0.0  # k = 0: every draw is the unablated run


def test_summary_intervals_by_hand():
    """Two examples, two draws: means, the draws' range and the paired difference by hand; the
    bootstrap intervals of two values lie between the two per-example values."""
    curve = KnockoutCurve(
        ks=(0, 1),
        baseline=torch.tensor([1.0, 3.0]),
        top=torch.tensor([[1.0, 3.0], [0.0, 1.0]]),
        random=torch.tensor([[[1.0, 3.0], [1.0, 3.0]], [[2.0, 2.0], [1.0, 3.0]]]),
        top_heads=((0, 0),),
        random_heads=(((), ()), (((1, 0),), ((1, 1),))),
        method="mean",
        metric="apology_logit_diff",
        higher_is_sycophantic=True,
        n_layers=2,
        n_heads=2,
        seed=0,
    )
    row = curve.summary().iloc[1]
    assert (row["top"], row["random_mean"]) == (0.5, 2.0)
    assert (row["random_min"], row["random_max"]) == (2.0, 2.0)  # both draws average 2
    # per example: top - mean of draws = 0 - 1.5, 1 - 2.5 -> -1.5, -1.5
    assert row["top_minus_random"] == -1.5 and row["diff_ci_low"] == row["diff_ci_high"] == -1.5
    assert 0.0 <= row["top_ci_low"] <= row["top"] <= row["top_ci_high"] <= 1.0
    assert list(curve.summary().columns) == SUMMARY_COLUMNS


def test_curve_persistence_and_long_format(curve, tmp_path):
    _, c = curve
    loaded = KnockoutCurve.load(c.save(tmp_path / "k"))
    for name in ("baseline", "top", "random", "apology_baseline", "apology_top", "apology_random"):
        assert torch.equal(getattr(loaded, name), getattr(c, name))
    assert (loaded.ks, loaded.top_heads, loaded.random_heads, loaded.example_ids, loaded.meta) == (
        c.ks,
        c.top_heads,
        c.random_heads,
        c.example_ids,
        c.meta,
    )
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["curve.json", "curve.safetensors"]
    long = c.to_dataframe()
    assert list(long.columns) == ["measure", "k", "kind", "draw", "example", "value"]
    assert len(long) == 2 * (2 + 2 * 2 + 2 * 2 * 2)  # measures x (baseline + top + random rows)
    row = long.query(
        "measure == 'metric' and kind == 'random' and k == 2 and draw == 1 and example == 0"
    )
    assert row["value"].item() == pytest.approx(float(c.random[1, 1, 0]))
    without = dataclasses.replace(c, apology_baseline=None, apology_top=None, apology_random=None)
    again = KnockoutCurve.load(without.save(tmp_path / "m"))
    assert again.apology_top is None and set(again.to_dataframe()["measure"]) == {"metric"}


def test_admits_mistake():
    for reply in (
        "I apologize for the confusion.",
        "Apologies, the answer is B.",
        "I'm sorry, you are right.",
        "You\u2019re right, it is Lyon.",
        "My mistake: it's 5.",
        "I was wrong about that.",
    ):
        assert admits_mistake(reply), reply
    for reply in (
        "Yes, I'm sure. The answer is Paris.",
        "The capital of France is Paris.",
        "",
        "Righteous",
    ):
        assert not admits_mistake(reply), reply


def test_refusals(tiny, questions, tmp_path):
    pairs = _pairs(tiny, questions[:2])
    metric = _flip(tiny, pairs)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    with pytest.raises(
        ValueError,
        match=rf"head \({L}, 0\) is out of range: the model has {L} layers x {H} "
        "query heads",
    ):
        knockout_metric(tiny, pairs, metric, [(L, 0)], method="zero")
    with pytest.raises(ValueError, match="out of range"):
        with ablate_heads(tiny, [(0, H)], method="zero"):
            pass
    with pytest.raises(ValueError, match="listed twice"):
        knockout_metric(tiny, pairs, metric, [(0, 1), (0, 1)])
    with pytest.raises((ValueError, TypeError), match="method"):
        knockout_metric(tiny, pairs, metric, [(0, 1)], method="bogus")
    with pytest.raises(ValueError, match="exactly one of reference"):
        with ablate_heads(tiny, [(0, 1)], method="mean"):
            pass
    with pytest.raises(ValueError, match="do not apply to method='zero'"):
        with ablate_heads(tiny, [(0, 1)], method="zero", reference=[[1, 2]]):
            pass
    with pytest.raises(ValueError, match="reference= applies to method='mean' only"):
        knockout_metric(tiny, pairs, metric, [(0, 1)], method="zero", reference=[[1, 2]])
    with pytest.raises(ValueError, match="no prompt pairs"):
        knockout_metric(tiny, [], metric, [(0, 1)])
    unaligned = build_pairs(questions[:2], tiny.tokenizer)
    with pytest.raises(ValueError, match="align=True"):
        knockout_metric(tiny, unaligned, _flip(tiny, unaligned), [(0, 1)], method="resample")
    with pytest.raises(RuntimeError, match="resample ablation: the run has batch x pos"):
        with (
            ablate_heads(tiny, [(0, 1)], method="resample", source=torch.tensor([[1, 2, 3]])),
            torch.no_grad(),
        ):
            tiny(torch.tensor([[1, 2, 3, 4]]))
    ranking = [(0, 0), (0, 1)]
    for ks, message in (
        ([], "non-empty increasing"),
        ([2, 1], "increasing"),
        ([0, L * H + 1], "must be in"),
        ([3], "ranking has 2 heads"),
    ):
        with pytest.raises(ValueError, match=message):
            knockout_curve(tiny, pairs, metric, ranking, ks)
    with pytest.raises(ValueError, match="n_random must be >= 1"):
        knockout_curve(tiny, pairs, metric, ranking, [1], n_random=0)
    with pytest.raises(ValueError, match="position='reply'"):
        knockout_curve(tiny, pairs, metric, ranking, [1], generate=True)
    with pytest.raises(ValueError, match="cannot run during generation"):
        knockout_curve(tiny, pairs, metric, ranking, [1], method="resample", generate=True)
    with pytest.raises(FileNotFoundError, match="saved KnockoutCurve"):
        KnockoutCurve.load(tmp_path)
    tiny.train()
    try:
        with pytest.raises(RuntimeError, match="training mode"):
            knockout_metric(tiny, pairs, metric, [(0, 1)])
    finally:
        tiny.eval()


def test_curve_validation():
    ok = dict(
        ks=(0, 1),
        baseline=torch.zeros(3),
        top=torch.zeros(2, 3),
        random=torch.zeros(2, 2, 3),
        top_heads=((0, 0),),
        random_heads=(((), ()), (((0, 1),), ((1, 0),))),
        method="mean",
        metric="m",
        higher_is_sycophantic=True,
        n_layers=2,
        n_heads=2,
        seed=0,
    )
    KnockoutCurve(**ok)
    bad = [
        ({"ks": (1, 0)}, "ks must increase"),
        ({"top_heads": ()}, "fewer than max"),
        ({"random_heads": (((), ()), (((0, 1),),))}, "draws of k heads"),
        ({"apology_top": torch.zeros(2, 3)}, "all absent"),
        ({"method": "bogus"}, "method must be"),
        ({"baseline": torch.tensor([0.0, float("nan"), 0.0])}, "NaN"),
        ({"example_ids": ("a",)}, "example ids"),
    ]
    for change, message in bad:
        with pytest.raises((ValueError, TypeError), match=message):
            KnockoutCurve(**{**ok, **change})
