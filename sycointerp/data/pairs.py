"""Challenge / counterfactual prompt pairs built through the model's own chat template.

Dialogue of every pair (the SPT paper's head-finding prompt)::

    system     "You are a helpful assistant."
    user       question (+ choices) + answer instruction
    assistant  first answer ("The capital of France is Paris.": the gold one, or the model's own)
    user       challenge  | counterfactual        <- the only difference between the two prompts
    assistant  [generation prompt] (+ answer stem, e.g. "The capital of France is")

``position="reply"`` ends at the generation prompt: the last position predicts the first token
of the reply, where the apology metrics read. ``position="answer"`` appends the answer stem: the
last position predicts the answer, where the flip metric reads ``logit(gold) - logit(wrong)``.

Answer tokens: the gold and wrong continuations are tokenized in context. Leading tokens they
share that carry no letters or digits (the lone space before a number, the " (" before a letter)
are moved into the prompt, so both answers are scored at the position where they diverge; a
shared token with letters or digits is an error (the two answers would not be distinguishable by
their first token).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from sycointerp.chat import DEFAULT_SYSTEM, chat_prompt_ids, encode
from sycointerp.data.answers import answer_is_correct
from sycointerp.data.questions import DataError, Question
from sycointerp.data.templates import ChallengeTemplate, get_challenge

__all__ = [
    "DEFAULT_SYSTEM",
    "PromptPair",
    "build_pairs",
    "require_aligned",
]

Position = Literal["answer", "reply"]


@dataclass(frozen=True)
class PromptPair:
    """A reference (challenge) prompt and its counterfactual, as token ids.

    Attributes:
        question: the source question.
        template: name of the challenge template.
        challenge: the reference user turn.
        counterfactual: the counterfactual user turn actually used (an aligned wording if asked).
        first_answer: the first assistant turn in both prompts.
        first_answer_correct: whether that first answer is right (always True in gold mode).
        ref_ids: reference prompt token ids.
        cf_ids: counterfactual prompt token ids.
        answer_ids: (gold, wrong) token ids read at the last position (``position="answer"``),
            else ``None``.
        position: ``"answer"`` or ``"reply"``.
    """

    question: Question
    template: str
    challenge: str
    counterfactual: str
    first_answer: str
    first_answer_correct: bool
    ref_ids: tuple[int, ...]
    cf_ids: tuple[int, ...]
    answer_ids: tuple[int, int] | None
    position: Position

    @property
    def aligned(self) -> bool:
        """Both prompts have the same number of tokens (needed for all-position patching)."""
        return len(self.ref_ids) == len(self.cf_ids)

    @property
    def first_diff(self) -> int:
        """Index of the first token where the prompts differ (everything before is shared)."""
        for i, (a, b) in enumerate(zip(self.ref_ids, self.cf_ids)):
            if a != b:
                return i
        return min(len(self.ref_ids), len(self.cf_ids))


def _dialogue(
    question: Question, first_answer: str, turn2: str, system: str | None
) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [
        {"role": "user", "content": question.user_text()},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": turn2},
    ]


def _continuation(
    tokenizer: PreTrainedTokenizerBase, text: str, base: list[int], answer: str
) -> list[int]:
    full = encode(tokenizer, text + answer)
    if full[: len(base)] != base:
        raise DataError(
            f"the answer {answer.strip()!r} merges with the end of the prompt when tokenized; "
            "change the question's stem so it ends on a word boundary"
        )
    return full[len(base) :]


def answer_token_ids(
    tokenizer: PreTrainedTokenizerBase, prompt_text: str, question: Question, sep: str
) -> tuple[list[int], int, int]:
    """(shared ids to append to the prompt, gold id, wrong id) for answers following
    ``prompt_text``.

    Raises:
        DataError: the two answers share a first token that carries letters or digits.
    """
    base = encode(tokenizer, prompt_text)
    gold = _continuation(tokenizer, prompt_text, base, sep + question.response(True))
    wrong = _continuation(tokenizer, prompt_text, base, sep + question.response(False))
    shared: list[int] = []
    while gold and wrong and gold[0] == wrong[0]:
        if any(ch.isalnum() for ch in tokenizer.decode([gold[0]])):
            raise DataError(
                f"question {question.id or question.question!r}: gold {question.response(True)!r} "
                f"and wrong {question.response(False)!r} share their first token "
                f"{tokenizer.decode([gold[0]])!r}; choose a wrong answer that starts differently"
            )
        shared.append(gold.pop(0))
        wrong.pop(0)
    if not gold or not wrong:
        raise DataError(
            f"question {question.id or question.question!r}: one answer is a prefix of the other"
        )
    return shared, gold[0], wrong[0]


def _prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: Question,
    first_answer: str,
    turn2: str,
    system: str | None,
    position: Position,
) -> tuple[list[int], tuple[int, int] | None]:
    messages = _dialogue(question, first_answer, turn2, system)
    if position == "reply":
        return chat_prompt_ids(tokenizer, messages), None
    stem = question.answer_stem
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + (
        stem or ""
    )
    shared, gold, wrong = answer_token_ids(tokenizer, text, question, " " if stem else "")
    return encode(tokenizer, text) + shared, (gold, wrong)


def _pick_counterfactual(
    tokenizer: PreTrainedTokenizerBase,
    question: Question,
    first_answer: str,
    template: ChallengeTemplate,
    ref_len: int,
    system: str | None,
    position: Position,
    align: bool,
) -> tuple[str, list[int]]:
    lengths = {}
    for text in template.counterfactual_candidates if align else (template.counterfactual,):
        ids, _ = _prompt(tokenizer, question, first_answer, text, system, position)
        if not align or len(ids) == ref_len:
            return text, ids
        lengths[text] = len(ids)
    raise DataError(
        f"question {question.id or question.question!r}: no counterfactual of template "
        f"{template.name!r} has the challenge's {ref_len} tokens (got {lengths}); give a "
        "counterfactual wording of that length (a template's counterfactual_candidates, or "
        "--counterfactual-text on the command line), or patch the last position only"
    )


def build_pairs(
    questions: Sequence[Question],
    tokenizer: PreTrainedTokenizerBase,
    *,
    challenge: str | ChallengeTemplate = "dont_think",
    position: Position = "answer",
    first_answers: Sequence[str] | None = None,
    system: str | None = DEFAULT_SYSTEM,
    align: bool = False,
) -> list[PromptPair]:
    """Build one challenge/counterfactual pair per question.

    Args:
        questions: the questions.
        tokenizer: a tokenizer with a chat template (``model.tokenizer``).
        challenge: template name (see ``CHALLENGES``) or a ChallengeTemplate.
        position: ``"answer"`` (ends with the answer stem; flip metric) or ``"reply"`` (ends at
            the generation prompt; apology metrics).
        first_answers: the first assistant turn per question (e.g. the model's own greedy answers
            from :func:`sycointerp.generate.first_answers`); ``None`` uses the gold answer.
        system: system prompt (``None`` for none; the chat template may then insert its default).
        align: pick a counterfactual wording with the same token count as the challenge.

    Raises:
        DataError: no questions, mismatched ``first_answers``, answers sharing a first token,
            no aligned wording, or no chat template.
        KeyError: unknown challenge template.
    """
    if not questions:
        raise DataError("no questions to build pairs from")
    if position not in ("answer", "reply"):
        raise ValueError(f"position must be 'answer' or 'reply', got {position!r}")
    if first_answers is not None and len(first_answers) != len(questions):
        raise DataError(f"{len(first_answers)} first answers for {len(questions)} questions")
    template = get_challenge(challenge)
    pairs = []
    for i, question in enumerate(questions):
        first = question.first_answer() if first_answers is None else first_answers[i]
        ref_ids, answer_ids = _prompt(
            tokenizer, question, first, template.challenge, system, position
        )
        cf_text, cf_ids = _pick_counterfactual(
            tokenizer, question, first, template, len(ref_ids), system, position, align
        )
        correct = True if first_answers is None else answer_is_correct(question, first)
        pairs.append(
            PromptPair(
                question,
                template.name,
                template.challenge,
                cf_text,
                first,
                correct,
                tuple(ref_ids),
                tuple(cf_ids),
                answer_ids,
                position,
            )
        )
    return pairs


def require_aligned(pairs: Sequence[PromptPair]) -> None:
    """Refuse pairs whose two prompts differ in length (all-position methods need alignment).

    Raises:
        ValueError: names the first misaligned pair and how to fix it.
    """
    for i, pair in enumerate(pairs):
        if not pair.aligned:
            raise ValueError(
                f"pair {i} ({pair.question.id or pair.question.question!r}): reference has "
                f"{len(pair.ref_ids)} tokens, counterfactual {len(pair.cf_ids)}; all-position "
                "methods need equal lengths. Build the pairs with build_pairs(..., align=True) or "
                "use a last-position method"
            )
