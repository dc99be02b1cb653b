import pytest
import torch
import torch.nn.functional as F

from sycointerp.metrics import (
    apology_logprob_diff,
    apology_ratio,
    apology_token_ids,
    continuation_logprobs,
    flip,
    kl_divergence,
    last_logits,
    last_logits_equal_length,
    ratio_unstable,
)
from tests.reference import plain_last_logits, reference_logprob


def test_flip_and_apology_ratio_by_hand():
    logits = torch.tensor([[1.0, 3.0, -2.0, 0.5], [0.0, -1.0, 4.0, 2.0]])
    assert torch.equal(flip(logits, torch.tensor([[1, 2], [2, 3]])), torch.tensor([5.0, 2.0]))
    assert torch.allclose(apology_ratio(logits, 1, 3), torch.tensor([3.0 / 3.5, -1.0 / 1.0]))
    # Our ValueError without runtime type checking; jaxtyping's TypeCheckError (a TypeError)
    # under the test suite's --jaxtyping-packages checking: either way, refused.
    with pytest.raises((ValueError, TypeError), match=r"\[batch, d_vocab\]|batch d_vocab"):
        flip(logits[0], torch.tensor([[1, 2]]))


def test_apology_token_ids_are_first_subtokens(tokenizer):
    syc, firm = apology_token_ids(tokenizer)
    assert tokenizer.decode([syc]) == "Ap" and tokenizer.decode([firm]) == "Yes"


def test_last_logits_batched_right_padding_equals_unbatched(tiny):
    prompts = [[1, 5, 9, 200, 7], [1, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9], [3]]
    got = last_logits(tiny, prompts, batch_size=3, pad_id=2)
    for row, prompt in enumerate(prompts):
        assert torch.allclose(got[row], plain_last_logits(tiny, prompt), atol=1e-5)


def test_equal_length_batches_keep_a_last_position_hook_on_each_prompts_last_token(tiny):
    # A hook that shifts only the forward's last position: right padding would move it onto a
    # pad; equal-length batches must give exactly the one-prompt-at-a-time logits, in input order.
    prompts = [[1, 5, 9], [1, 8], [4, 4, 4], [3], [7, 2], [1, 2, 3, 4]]

    def shift(x, hook):  # not uniform across d_model: LayerNorm would remove a constant shift
        x[:, -1] += torch.linspace(-1.0, 1.0, x.shape[-1])
        return x

    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", shift)]):
        got = last_logits_equal_length(tiny, prompts, batch_size=2)
        alone = torch.stack([last_logits(tiny, [p], batch_size=1)[0] for p in prompts])
    assert torch.allclose(got, alone, atol=1e-5)
    assert not torch.allclose(got[0], plain_last_logits(tiny, prompts[0]), atol=1e-3)


def test_continuation_logprobs_equal_plain_teacher_forcing(tiny):
    prompts = [[1, 5, 9, 200, 7], [1, 8, 44]]
    conts = [
        [10],
        [10, 11],
        [10, 11, 12],
        [20, 11],
        [10, 30],
    ]  # shared branches exercise row sharing
    got = continuation_logprobs(tiny, prompts, conts, pad_id=2)
    for p, prompt in enumerate(prompts):
        for c, cont in enumerate(conts):
            assert abs(float(got[p, c]) - reference_logprob(tiny, prompt, cont)) < 1e-5


def test_apology_logprob_diff_matches_definition(tiny_llama, tokenizer):
    prompt = [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]
    syc, firm = ["I apologize", "Sorry"], ["Yes"]
    got = apology_logprob_diff(tiny_llama, [prompt], tokenizer, sycophantic=syc, firm=firm)
    enc = lambda w: tokenizer(w, add_special_tokens=False)["input_ids"]  # noqa: E731
    s = torch.logsumexp(
        torch.tensor([reference_logprob(tiny_llama, prompt, enc(w)) for w in syc]), 0
    )
    f = torch.tensor(reference_logprob(tiny_llama, prompt, enc("Yes")))
    assert abs(float(got[0]) - float(s - f)) < 1e-5


def test_kl_divergence():
    p = torch.randn(3, 5, 11)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(3, 5), atol=1e-6)
    q = torch.randn(3, 5, 11)
    ref = F.kl_div(
        F.log_softmax(q, -1), F.log_softmax(p, -1), log_target=True, reduction="none"
    ).sum(-1)
    assert torch.allclose(kl_divergence(p, q), ref, atol=1e-6)
    assert (kl_divergence(p, q) > 0).all()
    with pytest.raises(ValueError, match="shapes differ"):
        kl_divergence(p, q[:, :2])


def test_ratio_is_flagged_unless_both_logits_are_positive_and_away_from_the_pole():
    # (y_syc, y_firm): (3, 0.5) a share; (-1, 2) F = -1; (2, -1.9) F = 20 at the pole; (-1, -3)
    # F = 0.25 in [0, 1] but running the wrong way; (0.001, 0.002) a same-sign sum near zero.
    y_syc = torch.tensor([3.0, -1.0, 2.0, -1.0, 0.001, 0.6])
    y_firm = torch.tensor([0.5, 2.0, -1.9, -3.0, 0.002, 0.4])
    assert ratio_unstable(y_syc, y_firm).tolist() == [False, True, True, True, True, False]
    logits = torch.stack([torch.zeros(6), y_syc, y_firm], dim=1)
    assert apology_ratio(logits, 1, 2)[3] == pytest.approx(0.25)  # in [0, 1], yet flagged
