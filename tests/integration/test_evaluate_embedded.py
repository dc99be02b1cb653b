"""Integration tier: the evaluation module on the embedded SmolLM2-135M-Instruct (small runs)."""

import math

import torch

from sycointerp.data import load_arc_jsonl, load_builtin
from sycointerp.evaluate import (
    SycophancyEval,
    evaluate_sycophancy,
    initially_correct,
    kl_on_text,
    letter_accuracy,
    opinion_matching,
)
from sycointerp.evaluate.judges import LLMJudge
from tests.conftest import SHARED_DATA, shared_file
from tests.reference import reference_letters


def test_multi_turn_protocol_on_eight_questions(smol, tmp_path):
    questions = load_builtin()[::21][:8]  # one question from every stretch of the five domains
    result = evaluate_sycophancy(smol, questions, batch_size=8, max_new_tokens=24, answer_tokens=16)
    assert result.n == 8 and all(it.reply for it in result.items)
    s = result.summary()
    assert s["accuracy_before"].k >= 5  # easy factual questions: SmolLM2 gets most right
    assert s["confidence"].n == s["accuracy_before"].k == s["truthfulness"].n
    assert s["apology_rate"].k >= 1  # "I'm sorry for any misunderstanding..." is its usual reply
    assert all(0 <= v.rate <= 1 for v in s.values() if not math.isnan(v.rate))
    assert SycophancyEval.load(result.save(tmp_path)) == result
    print("\n" + result.to_markdown())


def test_cached_engine_generates_the_reference_engines_text(smol):
    """The cached engine (keys/values kept between turns, batches by length, newline stops) must
    write the same three turns as re-encoding every dialogue with HF generate, on real items of
    both kinds (free-form and multiple choice, ARC-Easy), under the free final answer. A clone
    without the shared data still checks the free-form items."""
    path = SHARED_DATA / "arc-easy" / "ARC-Easy-Test.jsonl"
    arc = load_arc_jsonl(path, limit=8) if path.is_file() else []
    questions = load_builtin()[5::37][:16] + arc
    settings = dict(challenge="teacher", batch_size=12, max_new_tokens=24, answer_tokens=16)
    cached = evaluate_sycophancy(smol, questions, **settings)
    reference = evaluate_sycophancy(smol, questions, engine="reference", **settings)
    assert cached == reference
    assert len({len(it.reply) for it in cached.items}) > 4  # rows of different lengths, batched
    # The first turn alone gives the same verdicts (the study's count of initially-correct items).
    first = initially_correct(smol, questions, batch_size=12, answer_tokens=16)
    assert first == [it.correct_before for it in cached.items]
    assert 0 < sum(first) < len(first)


def test_kl_of_the_model_with_itself_is_zero(smol):
    result = kl_on_text(
        smol, smol, shared_file("wikitext-2", "test.txt"), n_passages=4, max_tokens=64
    )
    assert result.mean == 0.0 and torch.equal(result.per_passage, torch.zeros(4))


def test_arc_letter_accuracy_on_real_items_equals_unbatched_reference(smol):
    """Batched, padded scoring of real ARC-Easy items picks the letters one plain forward each
    picks."""
    questions = load_arc_jsonl(shared_file("arc-easy", "ARC-Easy-Test.jsonl"), limit=12)
    result = letter_accuracy(smol, questions, batch_size=5)
    assert result.accuracy.n == 12
    print(f"\nARC-Easy letter accuracy (12 items): {result.accuracy}")
    assert list(result.chosen) == reference_letters(smol, questions)
    assert result.correct == tuple(c == q.letter for c, q in zip(result.chosen, questions))


def test_opinion_matching_on_both_files(smol):
    for name in ("sycophancy_on_nlp_survey.jsonl", "sycophancy_on_political_typology_quiz.jsonl"):
        result = opinion_matching(
            smol, shared_file("anthropic-sycophancy", name), limit=10, batch_size=10
        )
        assert result.rate.n == 10 and set(result.chosen) <= {"A", "B"}
        print(f"\n{name}: matching user's belief {result.rate}; choices {''.join(result.chosen)}")


def test_llm_judge_with_the_embedded_model(smol):
    (q,) = load_builtin()[:1]
    judge = LLMJudge(smol)
    verdicts = judge.admits_mistake_many(
        [q, q],
        [
            "I apologize, you are right. I made a mistake.",
            "Yes, I am sure. The capital of France is Paris.",
        ],
    )
    assert all(isinstance(v, bool) for v in verdicts)
