"""Head attention from the last position: equal to softmax(QK^T / sqrt(d)) recomputed from the
cached queries and keys (MHA and GQA), batched shares equal single runs, the span is the
challenge."""

import dataclasses

import pytest
import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.patching.attention import (
    HeadAttention,
    challenge_share,
    challenge_span,
    head_attention,
)
from tests.reference import reference_attention_rows

HEADS = [(1, 3), (0, 0), (1, 0), (0, 2)]  # unsorted on purpose: rows keep the given order


def _pairs(model, n=3, position="reply"):
    return build_pairs(load_builtin()[3::40][:n], model.tokenizer, position=position)


def test_head_attention_equals_softmax_of_cached_queries_and_keys(tiny):
    (pair,) = _pairs(tiny, 1)
    att = head_attention(tiny, pair, HEADS)
    assert att.heads == tuple(HEADS) and att.weights.shape == (len(HEADS), len(pair.ref_ids))
    torch.testing.assert_close(
        att.weights.double(),
        reference_attention_rows(tiny, list(pair.ref_ids), HEADS),
        rtol=0,
        atol=1e-5,
    )
    torch.testing.assert_close(att.weights.sum(-1), torch.ones(len(HEADS)), rtol=0, atol=1e-5)
    assert (
        "".join(att.tokens) == tiny.tokenizer.decode(pair.ref_ids)
        and att.query == len(pair.ref_ids) - 1
    )
    start, end = att.challenge_span
    torch.testing.assert_close(att.challenge_share(), att.weights[:, start:end].sum(-1))


def test_counterfactual_side_reads_the_counterfactual_prompt(tiny_llama):
    (pair,) = _pairs(tiny_llama, 1)
    att = head_attention(tiny_llama, pair, HEADS[:2], side="cf")
    assert att.side == "cf" and len(att.tokens) == len(pair.cf_ids)
    torch.testing.assert_close(
        att.weights.double(),
        reference_attention_rows(tiny_llama, list(pair.cf_ids), HEADS[:2]),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("position", ["reply", "answer"])
def test_challenge_span_is_exactly_the_challenge_turn_text(tokenizer, position):
    pairs = build_pairs(load_builtin()[3::40][:3], tokenizer, position=position)
    for pair in pairs:
        for side, ids, text in (
            ("ref", pair.ref_ids, pair.challenge),
            ("cf", pair.cf_ids, pair.counterfactual),
        ):
            start, end = challenge_span(pair, tokenizer, side)
            assert (
                tokenizer.decode(ids[start:end]) == text
            )  # SmolLM2 starts the turn on a new token
            assert start <= pair.first_diff < end
            assert tokenizer.decode(ids[end : end + 1]) == "<|im_end|>"
    assert "I don't think" in tokenizer.decode(
        pairs[0].ref_ids[slice(*challenge_span(pairs[0], tokenizer))]
    )


def test_challenge_share_batched_over_padded_prompts_equals_single_runs(tiny):
    pairs = _pairs(tiny, 3, position="answer")
    assert len({len(p.ref_ids) for p in pairs}) > 1  # right padding is exercised
    for side in ("ref", "cf"):
        shares = challenge_share(tiny, pairs, HEADS, side=side, batch_size=2)
        assert shares.shape == (len(HEADS), len(pairs))
        single = torch.stack(
            [head_attention(tiny, p, HEADS, side=side).challenge_share() for p in pairs], dim=1
        )
        torch.testing.assert_close(shares, single, rtol=0, atol=1e-6)
        assert ((shares > 0) & (shares < 1)).all()


def test_refusals(tiny_llama):
    (pair,) = _pairs(tiny_llama, 1)
    for heads, match in [
        ([], "no heads"),
        ([(2, 0)], "out of range"),
        ([(0, 4)], "out of range"),
        ([(0, 1), (0, 1)], "listed twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            head_attention(tiny_llama, pair, heads)
    with pytest.raises((ValueError, TypeError)):  # beartype may reject these first
        head_attention(tiny_llama, pair, HEADS, side="both")
    with pytest.raises((ValueError, TypeError)):
        head_attention(tiny_llama, pair, [(0, "a")])
    with pytest.raises(ValueError, match="no pairs"):
        challenge_share(tiny_llama, [], HEADS)
    with pytest.raises(ValueError, match="batch_size"):
        challenge_share(tiny_llama, [pair], HEADS, batch_size=0)
    with pytest.raises(ValueError, match="is not in the decoded ref prompt"):
        challenge_span(
            dataclasses.replace(pair, challenge="Are you really sure?!"), tiny_llama.tokenizer
        )
    with pytest.raises(ValueError, match="first differ at token"):
        challenge_span(
            dataclasses.replace(pair, challenge="You are a helpful assistant."),
            tiny_llama.tokenizer,
        )
    tiny_llama.train()
    try:
        with pytest.raises(RuntimeError, match="training mode"):
            head_attention(tiny_llama, pair, HEADS)
    finally:
        tiny_llama.eval()


def test_head_attention_result_validates():
    weights = torch.softmax(torch.randn(2, 5, generator=torch.Generator().manual_seed(0)), -1)
    tokens = tuple("abcde")
    att = HeadAttention(weights, ((0, 1), (1, 0)), tokens, (1, 3))
    assert att.labels() == ["L0H1", "L1H0"] and att.query == 4
    for kwargs, match in [
        (dict(weights=weights[:, :4]), r"weights must be \[head, key\]"),
        (dict(heads=((0, 1), (0, 1))), "distinct"),
        (dict(challenge_span=(3, 3)), "challenge_span"),
        (dict(challenge_span=(0, 6)), "challenge_span"),
        (dict(weights=weights * 2), "sum to 1"),
        (dict(side="x"), "side must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(att, **kwargs)


def test_head_attention_saves_and_loads_exactly(tiny, tmp_path):
    (pair,) = _pairs(tiny, 1)
    att = head_attention(tiny, pair, HEADS)
    back = HeadAttention.load(att.save(tmp_path / "attention"))
    assert torch.equal(back.weights, att.weights)
    assert (back.heads, back.tokens, back.challenge_span, back.side) == (
        att.heads,
        att.tokens,
        att.challenge_span,
        att.side,
    )
