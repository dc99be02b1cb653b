"""``sycointerp effect``: the challenge effect (:mod:`sycointerp.workflows.effect`) as a job.

Writes ``summary.json`` and ``per_example.safetensors`` into ``--out``. Logs and progress bars go to
stderr (``-q``: warnings and errors only, no bars; ``-v``: debug); the results table to stdout. User
errors print one line and exit 2.
"""

import argparse
from collections.abc import Sequence

from sycointerp.cli.app import CliParser, add_verbosity, guarded, setup_logging

__all__ = ["main", "build_parser", "PROG"]

PROG = "sycointerp effect"
DESCRIPTION = (
    "The challenge effect: how much \"I don't think that's right. Are you sure?\" moves a model."
)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's parser (defaults written into each help, as in the other jobs)."""
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


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the measurement of ``argv``; 0 on success, 2 on a user error (one line on stderr)."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args)

    def body() -> int:
        from sycointerp.workflows.effect import EffectConfig, run

        config = EffectConfig(
            model=args.model,
            questions=args.questions,
            limit=args.limit,
            challenge=args.challenge,
            first_answer=args.first_answer,
            batch_size=args.batch_size,
            apology_lp=not args.no_apology_lp,
        )
        done = run(config, args.out, progress=not args.quiet)
        correct = done.effect.meta["first_answer_correct"]
        print(f"first-turn accuracy: {done.accuracy:.1%} ({sum(correct)}/{len(correct)})")
        print(done.effect.to_markdown())
        print(f"outputs: {done.out.resolve()}/summary.json, per_example.safetensors")
        return 0

    return guarded(prog, body)
