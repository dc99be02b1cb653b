"""SPT training data: "insist" and "revise" dialogues, tokenized with the loss on the last turn
only.

- **insist**: the first answer is correct; the user challenges it (one of the challenge
  paraphrases); the assistant keeps the answer and ends "I'm sure my previous answer is correct."
- **revise**: the first answer is wrong; the user challenges it; the assistant apologises for the
  mistake and gives the correct answer.

Both come from :class:`~sycointerp.data.Question` records; the challenge text of each dialogue is
drawn (seeded) from ``CHALLENGES`` (12 paraphrases of "I don't think that's right. Are you sure?").
Labels are ``-100`` everywhere except the tokens of the final assistant turn (its content and the
end-of-turn token), so the model learns the reply, not the prompt.

Evaluation questions must never be trained on: :func:`check_disjoint` refuses overlapping sets
(same id or the same normalized question text) and :func:`split_questions` makes a seeded split.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

from sycointerp.chat import DEFAULT_SYSTEM
from sycointerp.data.answers import normalize
from sycointerp.data.questions import DataError, Question
from sycointerp.data.templates import CHALLENGES

__all__ = [
    "Dialogue",
    "TrainExample",
    "build_dialogues",
    "tokenize_dialogues",
    "check_disjoint",
    "split_questions",
    "collate",
    "loss_tokens",
    "INSIST_ENDING",
]

INSIST_ENDING = "I'm sure my previous answer is correct."
REVISE_OPENING = "I apologize for the mistake in my previous answer."


@dataclass(frozen=True)
class Dialogue:
    """A chat whose last message is the assistant turn to learn."""

    question_id: str
    kind: str  # "insist" or "revise"
    messages: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class TrainExample:
    """Token ids and labels (``-100`` = no loss) of one dialogue."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    question_id: str
    kind: str

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError("input_ids and labels differ in length")
        if all(t == -100 for t in self.labels):
            raise ValueError(f"example {self.question_id!r} has no label token (was it truncated?)")


def _sentence(question: Question, correct: bool) -> str:
    stem = question.answer_stem
    response = question.response(correct)
    return f"{stem} {response}." if stem else f"{response}."


def build_dialogues(
    questions: Sequence[Question],
    *,
    kinds: Sequence[str] = ("insist", "revise"),
    seed: int = 0,
    system: str | None = DEFAULT_SYSTEM,
) -> list[Dialogue]:
    """One dialogue per question and kind, challenges drawn from the paraphrases with ``seed``.

    Raises:
        DataError: no questions or an unknown kind.
    """
    if not questions:
        raise DataError("no training questions: SPT needs a non-empty question set")
    if not kinds or set(kinds) - {"insist", "revise"}:
        raise DataError(
            f"kinds must be a non-empty subset of ('insist', 'revise'), got {list(kinds)}"
        )
    rng = random.Random(seed)
    challenges = [t.challenge for t in CHALLENGES.values()]
    out = []
    for q in questions:
        for kind in kinds:
            first = _sentence(q, correct=kind == "insist")
            reply = (
                f"Yes. {_sentence(q, True)} {INSIST_ENDING}"
                if kind == "insist"
                else f"{REVISE_OPENING} {_sentence(q, True)}"
            )
            head = [{"role": "system", "content": system}] if system else []
            messages = head + [
                {"role": "user", "content": q.user_text()},
                {"role": "assistant", "content": first},
                {"role": "user", "content": rng.choice(challenges)},
                {"role": "assistant", "content": reply},
            ]
            out.append(Dialogue(q.id, kind, tuple(messages)))
    return out


def _ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], generation_prompt: bool
) -> list[int]:
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_dialogues(
    tokenizer: PreTrainedTokenizerBase, dialogues: Sequence[Dialogue], *, max_length: int = 512
) -> list[TrainExample]:
    """Chat-template token ids with labels on the final assistant turn only.

    The prompt (everything before the last assistant turn, plus the generation prompt) must be a
    token prefix of the full dialogue; templates that rewrite earlier turns are refused.

    Raises:
        DataError: no chat template, a template whose prompt is not a prefix, a dialogue longer
            than ``max_length``.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; SPT dialogues need a chat model")
    out = []
    for d in dialogues:
        prompt = _ids(tokenizer, d.messages[:-1], True)
        full = _ids(tokenizer, d.messages, False)
        if full[: len(prompt)] != prompt:
            raise DataError(
                "the chat template renders the prompt differently inside the full dialogue; "
                "cannot mask the loss to the last turn"
            )
        # Trailing newline tokens after the end-of-turn token carry no reply; keep them unlabelled.
        end = len(full)
        while end > len(prompt) and tokenizer.decode(full[end - 1 : end]).strip() == "":
            end -= 1
        if len(full) > max_length:
            raise DataError(
                f"dialogue of question {d.question_id!r} has {len(full)} tokens > "
                f"max_length={max_length}"
            )
        labels = [-100] * len(prompt) + full[len(prompt) : end] + [-100] * (len(full) - end)
        out.append(TrainExample(tuple(full), tuple(labels), d.question_id, d.kind))
    return out


def loss_tokens(examples: Sequence[TrainExample]) -> int:
    """Tokens that carry a loss in ``examples``: the shifted labels that are not ``-100``.

    The training step divides its summed loss by this count (a per-token mean over the whole
    batch, however it is split into micro-batches), and the loss-gradient selection recipe
    normalises the same way.
    """
    return sum(sum(t != -100 for t in e.labels[1:]) for e in examples)


def collate(
    examples: Sequence[TrainExample], pad_id: int
) -> tuple[
    Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]
]:
    """Right-padded ``(input_ids, attention_mask, labels)``."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], mask[i, :n], labels[i, :n] = (
            torch.tensor(e.input_ids),
            1,
            torch.tensor(e.labels),
        )
    return ids, mask, labels


def _key(q: Question) -> str:
    return normalize(q.question)


def check_disjoint(
    train: Sequence[Question], held_out: Sequence[Question], *, by_id: bool = True
) -> None:
    """Refuse training questions that also appear in the evaluation set.

    Args:
        train: the training questions.
        held_out: the evaluation questions.
        by_id: also refuse shared ids (right for two parts of one dataset; sets from different
            files compare by text only, since their ids may coincide by chance).

    Raises:
        DataError: a shared id or a shared normalized question text (the message lists a few).
    """
    held_ids = {q.id for q in held_out if q.id} if by_id else set()
    held_text = {_key(q) for q in held_out}
    clash = [
        q.id or q.question for q in train if (q.id and q.id in held_ids) or _key(q) in held_text
    ]
    if clash:
        raise DataError(
            f"{len(clash)} training question(s) also appear in the evaluation set (e.g. "
            f"{clash[:3]}); split the data with split_questions or remove them"
        )


def split_questions(
    questions: Sequence[Question], *, eval_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Question], list[Question]]:
    """A seeded ``(train, eval)`` split, both in dataset order; duplicates of a text stay on one
    side.

    Raises:
        DataError: fewer than 2 distinct questions or ``eval_fraction`` outside (0, 1).
    """
    if not 0 < eval_fraction < 1:
        raise DataError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    keys = sorted({_key(q) for q in questions})
    if len(keys) < 2:
        raise DataError(
            "need at least 2 distinct questions to split into training and evaluation sets"
        )
    rng = random.Random(seed)
    rng.shuffle(keys)
    n_eval = min(len(keys) - 1, max(1, round(len(keys) * eval_fraction)))
    held = set(keys[:n_eval])
    return [q for q in questions if _key(q) not in held], [q for q in questions if _key(q) in held]
