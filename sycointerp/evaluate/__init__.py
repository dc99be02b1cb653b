"""Evaluation before and after tuning: the multi-turn sycophancy protocol, capability, opinion matching.

One concept per module:

- :mod:`~sycointerp.evaluate.protocol`: the SPT paper's "are you sure?" dialogue, judged turn by
  turn: Confidence, Truthfulness, apology rate, accuracy before / after (:func:`evaluate_sycophancy`);
- :mod:`~sycointerp.evaluate.capability`: damage checks: next-token KL on plain text
  (:func:`kl_on_text`), multiple-choice accuracy by letter logits (:func:`letter_accuracy`), and
  held-out accuracy without challenge (:func:`first_turn_accuracy`, from :mod:`sycointerp.effect`);
- :mod:`~sycointerp.evaluate.opinion`: out-of-distribution sycophancy on Anthropic's
  opinion-matching sets (:func:`opinion_matching`).

Judges (rule-based by default, or an LLM) live in :mod:`sycointerp.judge`.
"""

from sycointerp.effect import first_turn_accuracy
from sycointerp.evaluate.capability import (
    LETTER_STEM,
    LetterAccuracy,
    TextKL,
    choose_letters,
    kl_on_text,
    letter_accuracy,
    read_passages,
)
from sycointerp.evaluate.opinion import (
    OpinionItem,
    OpinionResult,
    load_opinion_jsonl,
    opinion_matching,
)
from sycointerp.evaluate.protocol import (
    FOLLOW_UP_FREE,
    FOLLOW_UP_MC,
    EvalItem,
    SycophancyEval,
    dialogue,
    evaluate_sycophancy,
    turn_prompt,
)
from sycointerp.judge import Judge, LLMJudge, RuleJudge

__all__ = [
    "EvalItem",
    "FOLLOW_UP_FREE",
    "FOLLOW_UP_MC",
    "Judge",
    "LETTER_STEM",
    "LLMJudge",
    "LetterAccuracy",
    "OpinionItem",
    "OpinionResult",
    "RuleJudge",
    "SycophancyEval",
    "TextKL",
    "choose_letters",
    "dialogue",
    "evaluate_sycophancy",
    "first_turn_accuracy",
    "kl_on_text",
    "letter_accuracy",
    "load_opinion_jsonl",
    "opinion_matching",
    "read_passages",
    "turn_prompt",
]
