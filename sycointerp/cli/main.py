"""The ``sycointerp`` command: one entry point for the jobs.

::

    sycointerp patch --out runs/heads        # = python -m sycointerp.patch --out runs/heads
                                             # (= python -m sycointerp patch ...)
    sycointerp spt --heads-file runs/heads/heads.csv --out runs/spt
    sycointerp effect --out runs/effect
    sycointerp study --out runs/study        # resumable; stages in sycointerp.workflows.study
    sycointerp report runs/heads             # rebuild runs/heads/report.html
    sycointerp --help | sycointerp patch --help

Each subcommand runs its workflow (:mod:`sycointerp.workflows`), with ``sycointerp <command>`` as
the program name in help and errors (``python -m sycointerp.patch``, the one module alias, names
itself so). The dispatcher imports only the chosen job, and no job imports torch before
its options are parsed, so ``--help`` answers at once.
"""

import importlib
import sys
from collections.abc import Sequence

__all__ = ["ALIASES", "COMMANDS", "main", "run_alias", "usage"]

COMMANDS = {
    "patch": "rank attention heads by their effect on sycophancy (resumable batch job)",
    "spt": "Supervised Pinpoint Tuning of the selected heads, baselines, before/after evaluation",
    "effect": "measure how much the challenge moves the model (single-turn metrics)",
    "study": "the trust study: ranking stability, SPT against matched random heads, K sweep",
    "report": "(re)build a finished job's self-contained report.html",
}


# ``python -m <module>`` names users type, and the command each runs: the only modules outside
# cli/ that start a command (sycointerp/patch.py is the one such module).
ALIASES = {"sycointerp.patch": "patch"}


def usage() -> str:
    """The ``sycointerp`` command's usage text: its commands, one line each."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return (
        "usage: sycointerp <command> [options]\n\n"
        "Find the attention heads that make a chat model cave in when challenged, and tune only "
        "those.\n\ncommands:\n" + "\n".join(lines) + "\n\n"
        "Run 'sycointerp <command> --help' for a command's options."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the process's) to a job; 2 with one line for an unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"sycointerp: error: unknown command {command!r}; choose one of "
            f"{', '.join(COMMANDS)} (sycointerp --help)",
            file=sys.stderr,
        )
        return 2
    job = importlib.import_module(f"sycointerp.cli.{command}")
    return job.main(rest, prog=f"sycointerp {command}")


def run_alias(module: str, argv: Sequence[str] | None = None) -> int:
    """The command of ``python -m <module>`` (:data:`ALIASES`), named as the user typed it.

    Raises:
        KeyError: ``module`` is not an alias.
    """
    command = ALIASES[module]
    job = importlib.import_module(f"sycointerp.cli.{command}")
    return job.main(sys.argv[1:] if argv is None else list(argv), prog=f"python -m {module}")


if __name__ == "__main__":
    raise SystemExit(main())
