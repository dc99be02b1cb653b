"""``sycointerp study``: the trust study.

Is the head ranking stable, and do the ranked heads beat matched random heads when tuned?
Resumable stage by stage.

Examples::

    sycointerp study --out runs/study                                  # the README's study
    sycointerp study --arc-path ARC-Easy-Test.jsonl --kl-text wiki.txt --out runs/study
    sycointerp study --main-eval-limit 0 --draws 5 --out runs/study_full      # full size

Options can also come from a TOML file (``--config``; sections ``[model]`` ``[data]``
``[protocols]`` ``[agreement]`` ``[main]`` ``[sweep]`` ``[train]`` ``[eval]``); flags override it.
Stages and output layout: :mod:`sycointerp.workflows.study`. An interrupted study resumes where it
stopped when run again with the same options. User errors print one line and exit 2.
"""

import argparse
import sys
from collections.abc import Sequence

from sycointerp.cli.app import guarded, job_parser, resolve_args, setup_logging
from sycointerp.workflows.study_config import StudyConfig

__all__ = ["main", "build_parser", "PROG"]

PROG = "sycointerp study"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The study command's parser: ``--config``, ``--out``, ``--overwrite``, ``-q`` / ``-v`` and one
    flag per :class:`~sycointerp.workflows.study_config.StudyConfig` field.
    """
    examples = __doc__.split("Examples::")[1].split("\n\n")[1]
    return job_parser(
        prog,
        "The trust study: ranking stability and agreement, SPT against matched random heads, "
        "the K sweep.",
        f"examples:\n{examples}",
        StudyConfig,
        "runs/study",
        "study",
    )


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run (or resume) the study of ``argv``; 0 on success, 2 on a user error, 1 if training
    failed."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args)

    def body() -> int:
        from sycointerp.spt.train import TrainingError
        from sycointerp.workflows.study import run

        config = resolve_args(args, StudyConfig)
        try:
            run(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
        except TrainingError as err:
            print(f"{prog}: training failed: {err}", file=sys.stderr)
            return 1
        if not args.quiet:
            print(f"{args.out}/study.md")
        return 0

    return guarded(prog, body)
