"""``sycointerp spt``: tune the sycophancy heads (and baselines) and evaluate before and
after.

Examples::

    sycointerp spt --heads-file runs/heads/heads.csv --out runs/spt          # SPT vs base
    sycointerp spt --methods base,sft,lora,random,spt --kl-text wiki.txt --out runs/spt
    torchrun --standalone --nproc_per_node=2 -m sycointerp spt --out runs/spt       # data-parallel

Options can also come from a TOML file (``--config``; sections ``[model]`` ``[data]``
``[heads]`` ``[train]`` ``[eval]`` ``[run]``); flags override it. The output layout is described in
:mod:`sycointerp.workflows.spt`. User errors print one line and exit 2; a training failure (e.g. a
NaN loss) prints one line and exits 1, keeping the last checkpoint.
"""

import argparse
import sys
from collections.abc import Sequence

from sycointerp.cli.app import guarded, job_parser, resolve_args, setup_logging
from sycointerp.workflows.spt_config import SPTConfig

__all__ = ["main", "build_parser", "PROG"]

PROG = "sycointerp spt"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The SPT command's parser: ``--config``, ``--out``, ``--overwrite``, ``-q`` / ``-v`` and one
    flag
    per :class:`~sycointerp.workflows.spt_config.SPTConfig` field.
    """
    examples = __doc__.split("Examples::")[1].split("\n\n")[1]
    return job_parser(
        prog,
        "Supervised Pinpoint Tuning of the heads that drive sycophancy, with baselines and an "
        "evaluation before and after.",
        f"examples:\n{examples}",
        SPTConfig,
        "runs/spt",
        "run",
    )


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the experiment of ``argv``; 0 on success, 2 on a user error, 1 if training failed."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args)

    def body() -> int:
        from sycointerp.spt.train import TrainingError
        from sycointerp.workflows.spt import results_table, run

        config = resolve_args(args, SPTConfig)
        try:
            done = run(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
        except TrainingError as err:
            print(f"{prog}: training failed: {err}", file=sys.stderr)
            return 1
        if not args.quiet:
            print(results_table(done.report["rows"]))
        return 0

    return guarded(prog, body)
