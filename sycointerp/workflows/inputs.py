"""A job's questions from its configuration: dataset kind, path, source filter, seeded sample."""

import dataclasses
import random
from pathlib import Path

from sycointerp._config import TomlConfig
from sycointerp.data.questions import DataError, Question

__all__ = ["load_job_questions"]


def _read_dataset(config: TomlConfig) -> list[Question]:
    from sycointerp.data import (
        load_arc_jsonl,
        load_are_you_sure,
        load_builtin,
        load_questions_jsonl,
        load_truthfulqa_csv,
    )

    path, seed = config.data_path, config.seed
    if config.dataset == "builtin":
        return load_builtin()
    if (
        config.dataset != "are_you_sure" and not Path(path).is_file()
    ):  # are_you_sure also takes hub ids
        raise DataError(f"data_path {path} does not exist or is not a file; check --data-path")
    if config.dataset == "jsonl":
        return load_questions_jsonl(path)
    if config.dataset == "are_you_sure":
        sources = getattr(config, "sources", None)
        return (
            load_are_you_sure(path, sources=sources, seed=seed)
            if sources
            else load_are_you_sure(path, seed=seed)
        )
    if config.dataset == "truthfulqa":
        return load_truthfulqa_csv(path, seed=seed)
    return load_arc_jsonl(path, seed=seed)


def load_job_questions(config: TomlConfig) -> list[Question]:
    """The job's questions: dataset, source filter, seeded sample of ``limit`` (in dataset order).

    ``config`` is a :class:`~sycointerp.workflows.patch_config.PatchConfig` or any config with
    ``dataset``, ``data_path``, ``seed``,
    ``limit`` (and optionally ``sources``) fields.

    Questions without an id get ``q{index}`` (their index in the dataset).

    Raises:
        DataError: a missing file, a malformed record, or a filter / dataset that leaves nothing.
    """
    questions = [
        q if q.id else dataclasses.replace(q, id=f"q{i}")
        for i, q in enumerate(_read_dataset(config))
    ]
    sources = getattr(config, "sources", None)
    if sources and config.dataset != "are_you_sure":
        kept = [q for q in questions if q.source in sources or q.domain in sources]
        if not kept:
            known = sorted(
                {q.source for q in questions} | {q.domain for q in questions if q.domain}
            )
            raise DataError(
                f"no question matches sources {sources}; known sources/domains: {known}"
            )
        questions = kept
    if not questions:
        raise DataError(f"dataset {config.dataset!r} holds no questions")
    _require_unique_ids(questions, config)
    if 0 < config.limit < len(questions):
        keep = sorted(random.Random(config.seed).sample(range(len(questions)), config.limit))
        questions = [questions[i] for i in keep]
    return questions


def _require_unique_ids(questions: list[Question], config: TomlConfig) -> None:
    """Results, chunks and evaluations are keyed by question id: two questions may not share one.

    Raises:
        DataError: naming the repeated id.
    """
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise DataError(
                f"dataset {config.dataset!r} ({config.data_path or 'built-in'}) uses the id "
                f"{q.id!r} twice; ids must be unique"
            )
        seen.add(q.id)
