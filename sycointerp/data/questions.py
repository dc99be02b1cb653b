"""The :class:`Question` record, the built-in question set, and the plain JSONL question format.

A question has a gold answer and one plausible wrong answer; the flip metric compares the logits
of their first tokens after the challenge. Multiple-choice questions also carry their choices,
their labels (``A``, ``B``, ...), and the gold / wrong labels; the model then answers with a label,
written ``(B)``, as in SycophancyEval.

JSONL schema (one object per line; ``question``, ``answer`` and ``wrong`` are required)::

    {"question": "What is the capital of France?", "answer": "Paris", "wrong": "Lyon",
     "stem": "The capital of France is", "id": "geo-001", "domain": "geography",
     "source": "builtin", "choices": ["Paris", "Lyon"], "labels": ["A", "B"],
     "letter": "A", "wrong_letter": "B"}
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sycointerp.errors import DataError

__all__ = ["DataError", "Question", "load_builtin", "load_questions_jsonl", "save_questions_jsonl"]

MC_STEM = "The answer is"


@dataclass(frozen=True)
class Question:
    """One factual question with a gold and a wrong answer.

    Attributes:
        question: the question text shown to the user (without choices).
        answer: the gold answer text.
        wrong: a plausible wrong answer (same type as the gold one).
        stem: optional beginning of the assistant's answer sentence ("The capital of France is");
            the answer follows it after a space.
        choices: answer texts for multiple-choice questions (empty for free-form).
        labels: the labels of ``choices`` (``A``, ``B``, ...), same length.
        letter: gold label (multiple choice only).
        wrong_letter: wrong label (multiple choice only).
        id: identifier, unique within a dataset.
        source: where the record came from (``builtin``, ``truthfulqa``, ``arc``, ...).
        domain: optional topic.
    """

    question: str
    answer: str
    wrong: str
    stem: str | None = None
    choices: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    letter: str | None = None
    wrong_letter: str | None = None
    id: str = ""
    source: str = "custom"
    domain: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("question", "answer", "wrong"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(
                    f"question {self.id or self.question!r}: field {name!r} must be a non-empty "
                    "string"
                )
        if self.answer.strip().lower() == self.wrong.strip().lower():
            raise DataError(
                f"question {self.id or self.question!r}: gold and wrong answers are both "
                f"{self.answer!r}"
            )
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.choices:
            self._validate_choices()

    def _validate_choices(self) -> None:
        where = f"question {self.id or self.question!r}"
        if len(self.labels) != len(self.choices):
            raise DataError(f"{where}: {len(self.choices)} choices but {len(self.labels)} labels")
        if self.letter not in self.labels or self.wrong_letter not in self.labels:
            raise DataError(
                f"{where}: letter {self.letter!r} / wrong_letter {self.wrong_letter!r} not among "
                f"labels {self.labels}"
            )
        if self.letter == self.wrong_letter:
            raise DataError(f"{where}: gold and wrong letter are both {self.letter!r}")

    @property
    def is_multiple_choice(self) -> bool:
        """Whether the question lists lettered choices (answers are then letters)."""
        return bool(self.choices)

    def response(self, correct: bool = True) -> str:
        """What the assistant says after the stem: the answer text, or ``(B)`` for multiple
        choice."""
        if self.is_multiple_choice:
            return f"({self.letter if correct else self.wrong_letter})"
        return self.answer if correct else self.wrong

    @property
    def answer_stem(self) -> str | None:
        """The stem to use (multiple choice defaults to "The answer is")."""
        if self.stem:
            return self.stem
        return MC_STEM if self.is_multiple_choice else None

    def user_text(self, instruction: str | None = None) -> str:
        """The first user turn: question, choices (if any) and the answer instruction."""
        if self.is_multiple_choice:
            options = "\n".join(f"({lab}) {text}" for lab, text in zip(self.labels, self.choices))
            instr = instruction or "Please answer just with the letter of the correct answer."
            return f"{self.question}\n{options}\n{instr}"
        return f"{self.question} {instruction or 'Answer briefly.'}"

    def first_answer(self, correct: bool = True) -> str:
        """The first assistant turn: ``stem + " " + response + "."`` (or the bare response)."""
        stem = self.answer_stem
        body = f"{stem} {self.response(correct)}" if stem else self.response(correct)
        return body if body.endswith((".", "!", "?")) else body + "."

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-serializable dict (the JSONL schema of
        :func:`load_questions_jsonl`)."""
        record = {k: v for k, v in asdict(self).items() if v not in (None, (), [], {}, "")}
        for key in ("choices", "labels"):
            if key in record:
                record[key] = list(record[key])
        return record


_FIELDS = {f for f in Question.__dataclass_fields__}


def question_from_record(record: Any, where: str) -> Question:
    """Build a Question from a JSON object, with ``where`` ("file:line") in every error."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("question", "answer", "wrong") if k not in record]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {missing}; see the Question JSONL schema in the README"
        )
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise DataError(
            f"{where}: unknown field(s) {unknown}; allowed: {sorted(_FIELDS - {'extra'})}"
        )
    for key in ("choices", "labels"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"{where}: field {key!r} must be a list of strings, got {value!r}")
    for key in ("stem", "letter", "wrong_letter", "domain"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {record[key]!r}")
    for key in ("id", "source"):
        if key in record and not isinstance(record[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {record[key]!r}")
    record = {k: tuple(v) if k in ("choices", "labels") else v for k, v in record.items()}
    try:
        return Question(**record)
    except (TypeError, DataError) as err:
        raise DataError(f"{where}: {err}") from err


def iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ("file:line", parsed object) for every non-blank line.

    Raises:
        DataError: the file is missing or a line is not valid JSON.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start} of the "
                    "line); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from err


def require_nonempty(questions: list[Question], source: str) -> list[Question]:
    """Return ``questions`` unchanged when there is at least one.

    Raises:
        DataError: none, naming ``source``.
    """
    if not questions:
        raise DataError(f"{source}: no questions found (empty file or every record filtered out)")
    return questions


def load_questions_jsonl(path: str | Path, limit: int | None = None) -> list[Question]:
    """Load a JSONL file of Question records (schema in this module's docstring).

    Raises:
        DataError: missing file, invalid JSON, malformed record (with file:line), or no records.
    """
    path = Path(path)
    out: list[Question] = []
    seen: dict[str, str] = {}
    for where, record in iter_jsonl(path):
        question = question_from_record(record, where)
        if question.id and question.id in seen:
            raise DataError(
                f"{where}: id {question.id!r} is also used at {seen[question.id]}; ids must be "
                "unique (results and resumed jobs are keyed by them)"
            )
        seen[question.id] = where
        out.append(question)
        if limit is not None and len(out) >= limit:
            break
    return require_nonempty(out, str(path))


def save_questions_jsonl(questions: Iterable[Question], path: str | Path) -> None:
    """Write questions as JSONL (the inverse of :func:`load_questions_jsonl`)."""
    Path(path).write_text(
        "".join(json.dumps(q.to_json()) + "\n" for q in questions), encoding="utf-8"
    )


def load_builtin(domains: Iterable[str] | None = None) -> list[Question]:
    """The built-in question set written for this project (five domains, short factual answers).

    Args:
        domains: keep only these domains (``geography``, ``science``, ``arithmetic``,
            ``everyday``, ``history``); all by default.

    Raises:
        DataError: an unknown domain was asked for.
    """
    text = resources.files("sycointerp.data").joinpath("questions.json").read_text(encoding="utf-8")
    records = json.loads(text)
    questions = [
        question_from_record({**r, "source": "builtin"}, f"questions.json:{i}")
        for i, r in enumerate(records)
    ]
    if domains is None:
        return questions
    wanted = set(domains)
    known = {q.domain for q in questions}
    if wanted - known:
        raise DataError(f"unknown domain(s) {sorted(wanted - known)}; choose from {sorted(known)}")
    return [q for q in questions if q.domain in wanted]
