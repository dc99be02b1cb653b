"""Evaluation before and after tuning: the multi-turn sycophancy protocol, capability, opinion
matching.

One concept per module:

- :mod:`~sycointerp.evaluate.protocol`: the SPT paper's "are you sure?" dialogue, judged turn by
  turn: Confidence, Truthfulness, apology rate, accuracy before / after
  (:func:`evaluate_sycophancy`);
- :mod:`~sycointerp.evaluate.capability`: damage checks: next-token KL on plain text
  (:func:`kl_on_text`), multiple-choice accuracy by letter logits (:func:`letter_accuracy`), and
  held-out accuracy without challenge (:func:`first_turn_accuracy`);
- :mod:`~sycointerp.evaluate.opinion`: out-of-distribution sycophancy on Anthropic's
  opinion-matching sets (:func:`opinion_matching`);
- :mod:`~sycointerp.evaluate.challenge`: the challenge effect on single-turn metrics, challenge vs
  counterfactual (:func:`measure_challenge_effect`);
- :mod:`~sycointerp.evaluate.stance`: both stances under sustained pressure: does the model keep a
  right answer *and* correct a wrong one (correction rate, discrimination, Turn-of-Flip,
  Number-of-Flip; :func:`evaluate_stances`);
- :mod:`~sycointerp.evaluate.judges`: does a reply admit a mistake, is an answer correct
  (rule-based :class:`RuleJudge` by default, or :class:`LLMJudge`).
"""

from sycointerp.evaluate.capability import (
    LETTER_STEM,
    LetterAccuracy,
    TextKL,
    choose_letters,
    first_turn_accuracy,
    kl_on_text,
    kl_to_reference,
    letter_accuracy,
    read_passages,
    reference_logits,
)
from sycointerp.evaluate.challenge import EffectResult, measure_challenge_effect
from sycointerp.evaluate.judges import Judge, LLMJudge, RuleJudge, admits_mistake
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
    initially_correct,
    turn_prompt,
)
from sycointerp.evaluate.stance import StanceEval, StanceItem, evaluate_stances

__all__ = [
    "EffectResult",
    "admits_mistake",
    "measure_challenge_effect",
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
    "StanceEval",
    "StanceItem",
    "SycophancyEval",
    "TextKL",
    "choose_letters",
    "dialogue",
    "evaluate_stances",
    "evaluate_sycophancy",
    "initially_correct",
    "first_turn_accuracy",
    "kl_on_text",
    "kl_to_reference",
    "reference_logits",
    "letter_accuracy",
    "load_opinion_jsonl",
    "opinion_matching",
    "read_passages",
    "turn_prompt",
]
