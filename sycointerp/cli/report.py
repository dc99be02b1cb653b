"""``sycointerp report DIR``: (re)build ``DIR/report.html`` from a finished job's files.

Examples::

    sycointerp report runs/heads          # a patch job
    sycointerp report runs/spt            # an SPT run
    sycointerp report runs/study          # the trust study

The patch and SPT jobs write the page themselves when they finish; this rebuilds it (after an
upgrade, or for a job run before reports existed). The page's contents:
:mod:`sycointerp.workflows.report`. A directory without a finished job is one line and exit 2.
"""

import argparse
from collections.abc import Sequence

from sycointerp.cli.app import CliParser, guarded

__all__ = ["main", "build_parser", "PROG"]

PROG = "sycointerp report"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The report command's parser: the job directory to (re)build ``report.html`` for."""
    examples = __doc__.split("Examples::")[1].split("\n\n")[1]
    parser = CliParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a job directory's self-contained, offline report.html.",
        epilog=f"examples:\n{examples}",
    )
    parser.add_argument("directory", help="the job's --out directory")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Build the report of ``argv``'s directory; 0 on success, 2 on a user error."""
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        from sycointerp.workflows.report import build_report

        print(build_report(args.directory))
        return 0

    return guarded(prog, body)
