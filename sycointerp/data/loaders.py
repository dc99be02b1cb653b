"""Loaders for public question sets, each producing :class:`Question` records.

- SycophancyEval ``are_you_sure.jsonl`` (Sharma et al. 2023), from a local file, a local dataset
  directory or a HuggingFace hub dataset id (through ``datasets``);
- TruthfulQA's CSV, converted to multiple choice (best answer + up to three incorrect answers,
  shuffled with a per-question seed so the gold letter is not always ``A``);
- ARC-style JSONL (AI2 layout:
  ``{"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}``).

The wrong answer of a multiple-choice record is drawn among the other choices with a seeded RNG
(``seed`` argument), so loading is deterministic. Every malformed record raises :class:`DataError`
naming the file and line.
"""

import csv
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sycointerp.data.questions import DataError, Question, iter_jsonl, require_nonempty

__all__ = [
    "ARE_YOU_SURE_SOURCES",
    "load_are_you_sure",
    "load_truthfulqa_csv",
    "load_arc_jsonl",
]

ARE_YOU_SURE_SOURCES = (
    "mmlu_mc_cot",
    "math_mc_cot",
    "aqua_mc",
    "truthful_qa_mc",
    "trivia_qa",
    "truthful_qa",
)
MC_SOURCES = ("mmlu_mc_cot", "math_mc_cot", "aqua_mc", "truthful_qa_mc")
_OPTION = re.compile(r"^\s*\(([A-Za-z0-9])\)\s*(.*\S)\s*$")


def _pick_wrong(labels: tuple[str, ...], gold: str, rng: random.Random) -> str:
    return rng.choice([lab for lab in labels if lab != gold])


def _mc_question(
    where: str,
    question: str,
    labels: list[str],
    texts: list[str],
    gold: str,
    rng: random.Random,
    **meta: Any,
) -> Question:
    if gold not in labels:
        raise DataError(f"{where}: gold label {gold!r} is not among the choice labels {labels}")
    if len(labels) < 2:
        raise DataError(f"{where}: a multiple-choice record needs at least two choices")
    wrong = _pick_wrong(tuple(labels), gold, rng)
    try:
        return Question(
            question=question,
            answer=texts[labels.index(gold)],
            wrong=texts[labels.index(wrong)],
            choices=tuple(texts),
            labels=tuple(labels),
            letter=gold,
            wrong_letter=wrong,
            **meta,
        )
    except DataError as err:
        raise DataError(f"{where}: {err}") from err


# --------------------------------------------------------------------------- SycophancyEval


def _parse_options(where: str, answers: str) -> tuple[list[str], list[str]]:
    labels, texts = [], []
    for line in answers.splitlines():
        if not line.strip():
            continue
        match = _OPTION.match(line)
        if not match:
            raise DataError(f"{where}: cannot parse answer option {line!r}; expected '(A) text'")
        labels.append(match.group(1).upper())
        texts.append(match.group(2))
    return labels, texts


def _are_you_sure_record(where: str, record: Any, rng: random.Random) -> Question:
    if not isinstance(record, Mapping) or not isinstance(record.get("base"), Mapping):
        raise DataError(f"{where}: expected an object with a 'base' object (SycophancyEval schema)")
    base = record["base"]
    dataset = base.get("dataset", "?")
    question = base.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: base.question is missing or empty")
    meta = {
        "source": f"are_you_sure/{dataset}",
        "id": str(base.get("id", where.rsplit(":", 1)[-1])),
    }
    if "correct_letter" in base:
        if not isinstance(base.get("answers"), str):
            raise DataError(f"{where}: base.answers must be the '(A) ...\\n(B) ...' string")
        labels, texts = _parse_options(where, base["answers"])
        return _mc_question(
            where, question, labels, texts, str(base["correct_letter"]).upper(), rng, **meta
        )
    gold = base.get("correct_answer", base.get("answer"))
    if isinstance(gold, list):
        gold = gold[0] if gold else None
    wrong = base.get("incorrect_answer")
    if not gold or not wrong:
        raise DataError(
            f"{where}: free-form record ({dataset}) without both a correct and an incorrect "
            f"answer; restrict to the multiple-choice sources with sources={MC_SOURCES}"
        )
    try:
        return Question(question=question, answer=str(gold), wrong=str(wrong), **meta)
    except DataError as err:
        raise DataError(f"{where}: {err}") from err


def _are_you_sure_rows(path_or_id: str | Path) -> Iterable[tuple[str, Any]]:
    path = Path(path_or_id).expanduser()
    if path.is_file():
        return iter_jsonl(path)
    if path.is_dir() and not (path / "are_you_sure.jsonl").is_file():
        raise DataError(f"{path}: directory has no are_you_sure.jsonl")
    if path.is_dir() or re.fullmatch(r"[\w.-]+/[\w.-]+", str(path_or_id)):
        import datasets

        try:
            table = datasets.load_dataset(
                str(path_or_id), data_files="are_you_sure.jsonl", split="train"
            )
        except Exception as err:  # datasets raises many unrelated types for a missing dataset
            raise DataError(
                f"could not load are_you_sure.jsonl from dataset {path_or_id!r} ({err}); pass a "
                "local path to are_you_sure.jsonl, or check the hub id (meg-tong/sycophancy-eval) "
                "and network"
            ) from err
        return ((f"{path_or_id}[{i}]", row) for i, row in enumerate(table))
    raise DataError(
        f"{path_or_id}: file not found; pass a path to are_you_sure.jsonl or a hub dataset id"
    )


def load_are_you_sure(
    path_or_id: str | Path,
    *,
    sources: Iterable[str] | None = MC_SOURCES,
    limit: int | None = None,
    seed: int = 0,
) -> list[Question]:
    """Load SycophancyEval's ``are_you_sure`` records.

    Args:
        path_or_id: a local ``are_you_sure.jsonl``, a directory holding one, or a hub dataset id
            such as ``meg-tong/sycophancy-eval``.
        sources: keep only these ``base.dataset`` values (default: the multiple-choice ones, whose
            records carry a gold letter); ``None`` keeps all.
        limit: stop after this many questions.
        seed: seed for choosing each multiple-choice record's wrong letter.

    Raises:
        DataError: missing file, malformed record (with its line), unknown source, or nothing left.
    """
    wanted = None if sources is None else set(sources)
    if wanted is not None and wanted - set(ARE_YOU_SURE_SOURCES):
        raise DataError(
            f"unknown source(s) {sorted(wanted - set(ARE_YOU_SURE_SOURCES))}; choose from "
            f"{ARE_YOU_SURE_SOURCES}"
        )
    rng = random.Random(seed)
    out: list[Question] = []
    for where, record in _are_you_sure_rows(path_or_id):
        base = record.get("base") if isinstance(record, Mapping) else None
        if not isinstance(base, Mapping):  # refuse it before the source filter could skip it
            raise DataError(
                f"{where}: expected an object with a 'base' object (SycophancyEval schema)"
            )
        dataset = base.get("dataset")
        if wanted is not None and dataset not in wanted:
            continue
        out.append(_are_you_sure_record(where, record, rng))
        if limit is not None and len(out) >= limit:
            break
    return require_nonempty(out, str(path_or_id))


# --------------------------------------------------------------------------- TruthfulQA

_TQA_COLUMNS = ("Question", "Best Answer", "Incorrect Answers")


def load_truthfulqa_csv(
    path: str | Path, *, n_choices: int = 4, limit: int | None = None, seed: int = 0
) -> list[Question]:
    """Load TruthfulQA's CSV as multiple-choice questions.

    Each question keeps its best answer and its first ``n_choices - 1`` incorrect answers
    (';'-separated in the CSV), shuffled with ``Random(seed + row)``.

    Raises:
        DataError: missing file or columns, a row without incorrect answers, or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path to TruthfulQA.csv")
    if n_choices < 2:
        raise DataError(f"n_choices must be >= 2, got {n_choices}")
    out: list[Question] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _TQA_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; is this TruthfulQA.csv?")
            for row_number, row in enumerate(reader, start=2):
                out.append(
                    _truthfulqa_row(
                        f"{path}:{row_number}", row, n_choices, random.Random(seed + row_number)
                    )
                )
                if limit is not None and len(out) >= limit:
                    break
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror})") from None
    return require_nonempty(out, str(path))


def _truthfulqa_row(
    where: str, row: Mapping[str, str], n_choices: int, rng: random.Random
) -> Question:
    best = (row.get("Best Answer") or "").strip()
    incorrect = [a.strip() for a in (row.get("Incorrect Answers") or "").split(";") if a.strip()]
    if not best or not incorrect:
        raise DataError(
            f"{where}: needs a 'Best Answer' and at least one 'Incorrect Answers' entry"
        )
    texts = [best, *incorrect[: n_choices - 1]]
    rng.shuffle(texts)
    labels = [chr(ord("A") + i) for i in range(len(texts))]
    gold = labels[texts.index(best)]
    return _mc_question(
        where,
        row["Question"].strip(),
        labels,
        texts,
        gold,
        rng,
        source="truthfulqa",
        id=where.rsplit(":", 1)[-1],
        domain=(row.get("Category") or None),
    )


# --------------------------------------------------------------------------- ARC


def load_arc_jsonl(path: str | Path, *, limit: int | None = None, seed: int = 0) -> list[Question]:
    """Load an ARC-style JSONL (AI2 layout). Labels are compared as strings (some items use 1-4).

    Raises:
        DataError: missing file, invalid JSON, a record without stem/choices/answerKey (with its
            line), or no records.
    """
    path = Path(path)
    rng = random.Random(seed)
    out: list[Question] = []
    for where, record in iter_jsonl(path):
        try:
            stem = record["question"]["stem"]
            choices = record["question"]["choices"]
            labels = [str(c["label"]) for c in choices]
            texts = [str(c["text"]) for c in choices]
            gold = str(record["answerKey"])
        except (KeyError, TypeError) as err:
            raise DataError(
                f"{where}: expected {{question: {{stem, choices: [{{text, label}}]}}, answerKey}}; "
                f"missing {err}"
            ) from err
        out.append(
            _mc_question(
                where, stem, labels, texts, gold, rng, source="arc", id=str(record.get("id", ""))
            )
        )
        if limit is not None and len(out) >= limit:
            break
    return require_nonempty(out, str(path))
