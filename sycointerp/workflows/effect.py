"""The challenge-effect job (``sycointerp effect``): how much the challenge moves a model.

Writes ``summary.json`` (the :class:`~sycointerp.evaluate.challenge.EffectResult` with the
first-turn accuracy, the first answers and the timings in its ``meta``) and
``per_example.safetensors`` into ``out``. The measurement itself is
:func:`sycointerp.evaluate.challenge.measure_challenge_effect`; this module adds the questions,
the model, the first answers and the output directory.
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from sycointerp._config import ConfigError
from sycointerp.evaluate.challenge import EffectResult

__all__ = ["EffectConfig", "EffectJobResult", "run"]


@dataclass(frozen=True)
class EffectConfig:
    """A challenge-effect job.

    Attributes:
        model: model name, local directory or ``.gguf`` (``None``: the embedded SmolLM2).
        questions: JSONL of Question records (``None``: the built-in set).
        limit: use the first ``limit`` questions (``None``: all).
        challenge: challenge template name (:data:`sycointerp.data.CHALLENGES`).
        first_answer: ``"gold"`` or ``"model"`` (the model's own greedy first answer).
        batch_size: prompts per forward pass.
        apology_lp: also compute the multi-token apology metric.

    Raises:
        ConfigError: a limit or batch size below 1, an unknown template or first answer.
    """

    model: str | None = None
    questions: str | None = None
    limit: int | None = None
    challenge: str = "dont_think"
    first_answer: str = "gold"
    batch_size: int = 8
    apology_lp: bool = True

    def __post_init__(self) -> None:
        from sycointerp.data.templates import CHALLENGES

        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.challenge not in CHALLENGES:
            raise ConfigError(
                f"--challenge {self.challenge!r} is not a template; choose one of "
                f"{', '.join(CHALLENGES)}"
            )
        if self.first_answer not in ("gold", "model"):
            raise ConfigError(f"--first-answer must be gold or model, got {self.first_answer!r}")


@dataclass(frozen=True)
class EffectJobResult:
    """What :func:`run` leaves.

    Attributes:
        out: the output directory.
        effect: the measured challenge effect (its ``meta`` holds the first-turn accuracy).
    """

    out: Path
    effect: EffectResult

    @property
    def accuracy(self) -> float:
        """First-turn accuracy: the share of questions answered correctly before any challenge."""
        return float(self.effect.meta["first_turn_accuracy"])


def run(config: EffectConfig, out: str | Path, *, progress: bool = True) -> EffectJobResult:
    """Measure the challenge effect of ``config`` and write it into ``out``.

    Raises:
        ConfigError, OutputError, DataError, ModelLoadError: user errors (the CLI exits 2).
    """
    from sycointerp.data.questions import load_builtin, load_questions_jsonl
    from sycointerp.evaluate.capability import first_turn_accuracy
    from sycointerp.evaluate.challenge import measure_challenge_effect
    from sycointerp.models import load_model
    from sycointerp.workflows.output import OutputError, check_writable, describe_job

    out = Path(out)
    check_writable(out)
    other = describe_job(out)
    if other is not None:  # its summary.json would be overwritten by this job's
        raise OutputError(f"--out {out} holds {other}; choose another --out for the effect")
    questions = load_questions_jsonl(config.questions) if config.questions else load_builtin()
    questions = questions[: config.limit] if config.limit else questions
    start = time.perf_counter()
    model = load_model(config.model)
    load_s = time.perf_counter() - start
    accuracy, answers, correct = first_turn_accuracy(model, questions, progress=progress)
    result = measure_challenge_effect(
        model,
        questions,
        challenge=config.challenge,
        answers=answers if config.first_answer == "model" else None,
        batch_size=config.batch_size,
        apology_lp=config.apology_lp,
        progress=progress,
    )
    extra = {
        "first_turn_accuracy": accuracy,
        "first_answers": answers,
        "first_answer_correct": correct,
        "first_answer_mode": config.first_answer,
        "load_seconds": load_s,
        "seconds": time.perf_counter() - start,
    }
    result.save(out, extra)
    return EffectJobResult(out, dataclasses.replace(result, meta={**result.meta, **extra}))
