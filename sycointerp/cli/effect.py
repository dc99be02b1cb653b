"""``python -m sycointerp.effect``: the challenge effect (:mod:`sycointerp.evaluate.challenge`) as a
job.

Writes ``summary.json`` and ``per_example.safetensors`` into ``--out``. Logs and progress bars go to
stderr (``-q``: warnings and errors only, no bars; ``-v``: debug); the results table to stdout. User
errors print one line and exit 2.
"""

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from sycointerp.cli.app import CliParser, add_verbosity, run_main, setup_logging

__all__ = ["main", "build_parser", "PROG"]

PROG = "python -m sycointerp.effect"
DESCRIPTION = (
    "The challenge effect: how much \"I don't think that's right. Are you sure?\" moves a model."
)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    # Defaults are written into each help, as in the other jobs' parsers (add_verbosity's too).
    p = CliParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/effect", help="output directory (default: runs/effect)")
    p.add_argument(
        "--model",
        default=None,
        help="model name/path (default: none, the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--questions",
        default=None,
        help="JSONL of Question records (default: none, the built-in set)",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="use the first N questions (default: all)"
    )
    p.add_argument(
        "--challenge",
        default="dont_think",
        help="challenge template name (default: dont_think)",
    )
    p.add_argument(
        "--first-answer",
        choices=("gold", "model"),
        default="gold",
        help="first assistant turn: the gold answer or the model's own greedy one (default: gold)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward (default: 8)")
    p.add_argument(
        "--no-apology-lp",
        action="store_true",
        help="skip the multi-token apology metric (default: off)",
    )
    add_verbosity(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad flags before the model loads.

    Raises:
        ConfigError: ``--limit`` or ``--batch-size`` below 1, or an unknown ``--challenge``.
    """
    from sycointerp._config import ConfigError
    from sycointerp.data.templates import CHALLENGES

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.challenge not in CHALLENGES:
        raise ConfigError(
            f"--challenge {args.challenge!r} is not a template; choose one of "
            f"{', '.join(CHALLENGES)}"
        )


def _run(args: argparse.Namespace) -> int:
    from sycointerp.cli.output import check_writable
    from sycointerp.data.questions import load_builtin, load_questions_jsonl
    from sycointerp.evaluate.capability import first_turn_accuracy
    from sycointerp.evaluate.challenge import measure_challenge_effect
    from sycointerp.models import load_model

    _check_args(args)
    check_writable(Path(args.out))
    questions = load_questions_jsonl(args.questions) if args.questions else load_builtin()
    questions = questions[: args.limit] if args.limit else questions
    start = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - start
    progress = not args.quiet
    accuracy, answers, correct = first_turn_accuracy(model, questions, progress=progress)
    own = answers if args.first_answer == "model" else None
    result = measure_challenge_effect(
        model,
        questions,
        challenge=args.challenge,
        answers=own,
        batch_size=args.batch_size,
        apology_lp=not args.no_apology_lp,
        progress=progress,
    )
    extra = {
        "first_turn_accuracy": accuracy,
        "first_answers": answers,
        "first_answer_correct": correct,
        "first_answer_mode": args.first_answer,
        "load_seconds": load_s,
        "seconds": time.perf_counter() - start,
    }
    out = result.save(args.out, extra)
    print(f"first-turn accuracy: {accuracy:.1%} ({sum(correct)}/{len(correct)})")
    print(result.to_markdown())
    print(f"outputs: {out.resolve()}/summary.json, per_example.safetensors")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the measurement of ``argv``; 0 on success, 2 on a user error (one line on stderr)."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args)
    return run_main(prog, lambda: _run(args))
