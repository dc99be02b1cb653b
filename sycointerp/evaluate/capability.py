"""General capability, so that damage from tuning is visible: KL on plain text and letter accuracy.

- :func:`kl_on_text`: mean next-token ``KL(original || tuned)`` over every position of plain-text
  passages (the SPT paper: 1,000 OpenWebText passages, first 128 tokens). ``original`` is the
  reference distribution; 0 means the tuned model predicts exactly as before. Passages are
  paragraphs (blocks of non-blank lines) of a text file, or strings given directly, tokenized
  with the tokenizer's own special tokens (BOS where it has one), cut to ``max_tokens``; passages
  shorter than ``min_tokens`` before the cut (headings) are skipped. The overall mean weighs every
  position equally; ``per_passage`` averages within each passage. Works with two TransformerBridges
  or two HuggingFace causal LMs (pass ``tokenizer=`` then); both must share the tokenizer.
- :func:`letter_accuracy`: multiple choice scored without generation: through the chat template
  with the assistant turn opened by ``"The answer is ("`` (SycophancyEval's prefill), the option
  whose label token has the highest logit is the model's choice. Label tokens are tokenized in
  context and must differ.
- Accuracy on held-out questions without a challenge, by greedy generation, is
  :func:`sycointerp.effect.first_turn_accuracy` (re-exported by :mod:`sycointerp.evaluate`).

Cost: one forward per ``batch_size`` passages and per model (KL); one forward per ``batch_size``
questions (letters). Batches are right-padded, which is exact for causal models.

Refusals (ValueError): no passages left after filtering, a lone string that is not a file,
``max_tokens < 2``, logits of different vocabularies, label tokens that merge with the stem or
coincide, no questions, a free-form question given to :func:`letter_accuracy`.
"""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.chat import DEFAULT_SYSTEM, chat_prompt_ids, pad_right
from sycointerp.data.answers import answer_is_correct
from sycointerp.data.questions import Question
from sycointerp.generate import first_answers
from sycointerp.metrics import LogitsModel, kl_divergence, last_logits
from sycointerp.stats import Proportion, proportion

__all__ = [
    "TextKL",
    "read_passages",
    "kl_on_text",
    "ReferenceLogits",
    "reference_logits",
    "reference_bytes",
    "kl_to_reference",
    "kl_text",
    "LetterAccuracy",
    "choose_letters",
    "letter_accuracy",
    "LETTER_STEM",
]

LETTER_STEM = "The answer is ("


def _tokenizer(model: torch.nn.Module, tokenizer):
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("this model carries no tokenizer; pass tokenizer=")
    return tok


# --------------------------------------------------------------------------- KL on plain text


def read_passages(path: str | Path) -> list[str]:
    """Paragraphs of a text file: blocks of consecutive non-blank lines, stripped.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    return [b.strip() for b in blocks if b.strip()]


@dataclass(frozen=True)
class TextKL:
    """Result of :func:`kl_on_text`; ``float(result)`` is the mean over all positions.

    Attributes:
        mean: mean KL over every scored position (nats).
        per_passage: mean KL within each passage.
        n_positions: positions scored per passage.
    """

    mean: float
    per_passage: Float[torch.Tensor, " passage"] = field(repr=False)
    n_positions: Int[torch.Tensor, " passage"] = field(repr=False)

    def __post_init__(self) -> None:
        if self.per_passage.shape != self.n_positions.shape or self.per_passage.ndim != 1:
            raise ValueError("per_passage and n_positions must be 1-D tensors of the same length")

    def __float__(self) -> float:
        return self.mean

    @property
    def n_passages(self) -> int:
        """Number of passages scored."""
        return int(self.per_passage.numel())

    def interval(
        self, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
    ) -> tuple[float, float]:
        """Percentile bootstrap interval of :attr:`mean` over passages: passages are resampled
        (seeded) and each resample's mean weights every passage by its scored positions, as
        :attr:`mean` does. It says how much the number depends on which passages were read, not
        how it varies with the tuning run.

        Raises:
            ValueError: ``level`` outside (0, 1) or ``n_boot < 1``.
        """
        if not 0 < level < 1 or n_boot < 1:
            raise ValueError(f"need level in (0, 1) and n_boot >= 1, got {level} and {n_boot}")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, self.n_passages, (n_boot, self.n_passages), generator=gen)
        weights = self.n_positions.double()[idx]
        boot = (self.per_passage.double()[idx] * weights).sum(-1) / weights.sum(-1)
        alpha = (1 - level) / 2
        low, high = torch.quantile(boot, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
        return float(low), float(high)


def kl_text(kl: float | str | None, ci: list[float | None] | None = None) -> str:
    """A KL cell: ``-`` not measured, ``n/a`` not finite (JSON null), else the value and, where
    recorded, its bootstrap interval over passages."""
    if isinstance(kl, str):
        return kl
    if kl is None or not math.isfinite(kl):
        return "n/a"
    if ci is None or any(c is None or not math.isfinite(c) for c in ci):
        return f"{kl:.2e}"
    return f"{kl:.2e} [{ci[0]:.2e}, {ci[1]:.2e}]"


def _passage_ids(
    tokenizer,
    texts: Sequence[str] | str | Path,
    max_tokens: int,
    min_tokens: int,
    n_passages: int | None,
) -> list[list[int]]:
    if isinstance(texts, (str, Path)):
        if not Path(texts).is_file():
            raise ValueError(
                f"{str(texts)[:60]!r} is not a file; pass a path to a text file or a list of "
                "passages"
            )
        texts = read_passages(texts)
    out = []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])
        if len(ids) >= min_tokens:
            out.append(ids[:max_tokens])
            if n_passages is not None and len(out) >= n_passages:
                break
    if not out:
        raise ValueError(
            f"no passage has >= {min_tokens} tokens; give longer text or lower min_tokens"
        )
    return out


def _check_kl_args(max_tokens: int, min_tokens: int, batch_size: int, n_passages) -> None:
    if (
        max_tokens < 2
        or min_tokens < 1
        or batch_size < 1
        or (n_passages is not None and n_passages < 1)
    ):
        raise ValueError(
            "need max_tokens >= 2, min_tokens >= 1, batch_size >= 1 and n_passages >= 1 (or None)"
        )


def _padded_batches(tok, passages: list[list[int]], batch_size: int):
    for start in range(0, len(passages), batch_size):
        yield pad_right(passages[start : start + batch_size], tok.pad_token_id or 0)


def _passage_kl(
    p_logits: Float[torch.Tensor, "batch pos vocab"],
    q_model: LogitsModel,
    ids: Int[torch.Tensor, "batch pos"],
    lengths: Int[torch.Tensor, " batch"],
) -> Float[torch.Tensor, " batch"]:
    """Summed KL over each passage's real (unpadded) positions, float64."""
    kl = kl_divergence(p_logits, q_model(ids).to(p_logits.device)).cpu()  # [batch, pos], float32
    real = torch.arange(ids.shape[1]) < lengths[:, None]
    return (kl.double() * real).sum(1)


def _text_kl(sums: list[torch.Tensor], counts: list[torch.Tensor]) -> TextKL:
    total, n = torch.cat(sums), torch.cat(counts)
    return TextKL(float(total.sum() / n.sum()), (total / n).float(), n)


@torch.inference_mode()
def kl_on_text(
    original: torch.nn.Module,
    tuned: torch.nn.Module,
    texts: Sequence[str] | str | Path,
    *,
    tokenizer=None,
    max_tokens: int = 128,
    min_tokens: int = 16,
    n_passages: int | None = 1000,
    batch_size: int = 8,
    progress: bool = False,
) -> TextKL:
    """Mean next-token ``KL(original || tuned)`` over passages of plain text.

    Runs both models batch by batch (memory: one batch of logits per model). To compare many
    tuned models with one original, :func:`reference_logits` once and :func:`kl_to_reference`
    per model give the same numbers with one forward per batch instead of two.

    Args:
        original: the reference model (bridge or HuggingFace causal LM).
        tuned: the model compared with it (same tokenizer and vocabulary).
        texts: a text file (split by :func:`read_passages`) or a list of passages.
        tokenizer: needed when ``original`` carries none (HuggingFace models).
        max_tokens: keep each passage's first ``max_tokens`` tokens.
        min_tokens: skip passages with fewer tokens than this (before the cut to ``max_tokens``).
        n_passages: use the first ``n_passages`` passages that qualify (``None``: all).
        batch_size: passages per forward pass.
        progress: show a progress bar.

    Raises:
        ValueError: see the module docstring.
    """
    _check_kl_args(max_tokens, min_tokens, batch_size, n_passages)
    tok = _tokenizer(original, tokenizer)
    passages = _passage_ids(tok, texts, max_tokens, min_tokens, n_passages)
    p_model, q_model = LogitsModel(original), LogitsModel(tuned)
    sums, counts = [], []
    batches = _padded_batches(tok, passages, batch_size)
    total = -(-len(passages) // batch_size)
    for ids, lengths in tqdm(batches, total=total, desc="KL", disable=not progress):
        sums.append(_passage_kl(p_model(ids), q_model, ids, lengths))
        counts.append(lengths)
    return _text_kl(sums, counts)


@dataclass(frozen=True)
class ReferenceLogits:
    """The original model's logits on fixed passages (:func:`reference_logits`).

    Attributes:
        batches: ``(ids, lengths, logits)`` per batch of passages, right-padded.
    """

    batches: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...] = field(repr=False)

    @property
    def nbytes(self) -> int:
        """Memory held by the kept base-model logits, in bytes."""
        return sum(logits.numel() * logits.element_size() for _, _, logits in self.batches)


def reference_bytes(n_passages: int, max_tokens: int, vocab: int) -> int:
    """Upper bound of a :class:`ReferenceLogits`' memory (float32 logits), to decide whether to
    keep one or stream with :func:`kl_on_text`."""
    return n_passages * max_tokens * vocab * 4


@torch.inference_mode()
def reference_logits(
    original: torch.nn.Module,
    texts: Sequence[str] | str | Path,
    *,
    tokenizer=None,
    max_tokens: int = 128,
    min_tokens: int = 16,
    n_passages: int | None = 1000,
    batch_size: int = 8,
) -> ReferenceLogits:
    """Run ``original`` once on the passages of :func:`kl_on_text` (same arguments, same
    batches) and keep its logits: ``passages x max_tokens x vocab`` float32 values in memory
    (40 passages of 128 tokens of a 49,152-token vocabulary: 1.0 GB).

    Raises:
        ValueError: as :func:`kl_on_text`.
    """
    _check_kl_args(max_tokens, min_tokens, batch_size, n_passages)
    tok = _tokenizer(original, tokenizer)
    passages = _passage_ids(tok, texts, max_tokens, min_tokens, n_passages)
    p_model = LogitsModel(original)
    batches = _padded_batches(tok, passages, batch_size)
    return ReferenceLogits(tuple((ids, n, p_model(ids)) for ids, n in batches))


@torch.inference_mode()
def kl_to_reference(reference: ReferenceLogits, tuned: torch.nn.Module) -> TextKL:
    """:func:`kl_on_text` against kept logits: one forward of ``tuned`` per batch; equal to
    ``kl_on_text(original, tuned, ...)`` with the arguments the reference was made with."""
    q_model = LogitsModel(tuned)
    sums = [_passage_kl(logits, q_model, ids, n) for ids, n, logits in reference.batches]
    return _text_kl(sums, [n for _, n, _ in reference.batches])


# --------------------------------------------------------------------------- letters


def _label_ids(tokenizer, text: str, labels: Sequence[str]) -> list[int]:
    base = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = []
    for label in labels:
        full = list(tokenizer(text + label, add_special_tokens=False)["input_ids"])
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(
                f"label {label!r} merges with the end of the prompt {text[-20:]!r} when tokenized; "
                "change the stem"
            )
        ids.append(full[len(base)])
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"labels {list(labels)} do not start with distinct tokens after {text[-20:]!r}"
        )
    return ids


def choose_letters(
    model: torch.nn.Module,
    messages: Sequence[list[dict[str, str]]],
    labels: Sequence[Sequence[str]],
    *,
    stem: str = LETTER_STEM,
    tokenizer=None,
    batch_size: int = 8,
) -> tuple[list[str], list[torch.Tensor]]:
    """The label with the highest next-token logit after each chat (+ generation prompt + ``stem``).

    Returns:
        (chosen label per chat, the logits of its labels per chat: 1-D tensors in label order).

    Raises:
        ValueError: no chats, mismatched lengths, or label tokens that merge or coincide.
    """
    if not messages or len(messages) != len(labels):
        raise ValueError(
            f"need one label list per chat and at least one chat, got {len(messages)} and "
            f"{len(labels)}"
        )
    tok = _tokenizer(model, tokenizer)
    prompts, ids = [], []
    for chat, labs in zip(messages, labels):
        prompts.append(chat_prompt_ids(tok, chat, stem))
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + stem
        ids.append(_label_ids(tok, text, labs))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    logits = last_logits(LogitsModel(model), prompts, batch_size=batch_size, pad_id=pad)
    picked = [logits[row, torch.tensor(i)] for row, i in enumerate(ids)]
    return [labs[int(p.argmax())] for labs, p in zip(labels, picked)], picked


@dataclass(frozen=True)
class LetterAccuracy:
    """Result of :func:`letter_accuracy`: the label chosen for each question and whether it is
    gold."""

    question_ids: tuple[str, ...]
    chosen: tuple[str, ...]
    correct: tuple[bool, ...]

    def __post_init__(self) -> None:
        if not len(self.question_ids) == len(self.chosen) == len(self.correct):
            raise ValueError("question_ids, chosen and correct must have the same length")

    @property
    def accuracy(self) -> Proportion:
        """The share of questions whose chosen letter is the gold one, with its Wilson interval."""
        return proportion(sum(self.correct), len(self.correct))


def letter_accuracy(
    model: torch.nn.Module,
    questions: Sequence[Question],
    *,
    stem: str = LETTER_STEM,
    system: str | None = DEFAULT_SYSTEM,
    tokenizer=None,
    batch_size: int = 8,
) -> LetterAccuracy:
    """Multiple-choice accuracy by letter logits (ARC-style), without generation.

    Raises:
        ValueError: no questions, a free-form question, or label tokens that merge or coincide.
    """
    if not questions:
        raise ValueError("no questions to score")
    free = [q.id or q.question for q in questions if not q.is_multiple_choice]
    if free:
        raise ValueError(
            f"letter_accuracy needs multiple-choice questions; {len(free)} are free-form (e.g. "
            f"{free[0]!r})"
        )
    chats = [
        ([{"role": "system", "content": system}] if system else [])
        + [{"role": "user", "content": q.user_text()}]
        for q in questions
    ]
    chosen, _ = choose_letters(
        model,
        chats,
        [q.labels for q in questions],
        stem=stem,
        tokenizer=tokenizer,
        batch_size=batch_size,
    )
    return LetterAccuracy(
        tuple(q.id for q in questions),
        tuple(chosen),
        tuple(c == q.letter for c, q in zip(chosen, questions)),
    )


def first_turn_accuracy(
    model: TransformerBridge,
    questions: Sequence[Question],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[float, list[str], list[bool]]:
    """Share of questions answered correctly in the first turn (greedy, through the chat template).

    Protocol: system "You are a helpful assistant.", the question + "Answer briefly.", then the
    assistant turn opens with the answer stem; greedy decoding for 24 tokens; correct when the
    gold answer is mentioned and the wrong one is not (letters for multiple choice).

    Returns:
        (accuracy, first answers, correctness per question).
    """
    answers = first_answers(model, questions, batch_size=batch_size, progress=progress)
    correct = [answer_is_correct(q, a) for q, a in zip(questions, answers)]
    return sum(correct) / len(correct), answers, correct
