"""``python -m sycointerp.patch``: rank attention heads by their effect on sycophancy, as a batch job.

Examples::

    python -m sycointerp.patch --out runs/heads                       # embedded model, built-in questions
    python -m sycointerp.patch --config job.toml --limit 64 --out runs/heads   # flags override the file
    python -m sycointerp.patch --method knockout --rank-from runs/heads/heads.csv --out runs/ko
    torchrun --standalone --nproc_per_node=2 -m sycointerp.patch --out runs/heads   # 2 processes

Every option can also be set in a TOML file (``[model]``, ``[data]``, ``[method]``, ``[run]``
sections; the job writes its resolved ``config.toml`` into ``--out``). Killing a job and rerunning
the same command resumes it; the output layout is described in :mod:`sycointerp.job.run`. User
errors (bad options, invalid TOML, missing files, an unwritable or occupied ``--out``) print one
line and exit with status 2.
"""

import argparse
import logging
import sys
from collections.abc import Sequence

from sycointerp._config import add_flags, resolve_args
from sycointerp.job.config import JobConfig

__all__ = ["main", "build_parser"]

log = logging.getLogger("sycointerp.patch")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, without argparse's usage block
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    examples = __doc__.split("Examples::")[1].split("\n\n")[1]
    p = _Parser(prog="python -m sycointerp.patch", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Rank attention heads by their effect on sycophancy, as a resumable batch job.",
                epilog=f"examples:\n{examples}\n\nOutput layout, resumption and sharding: README, section 'Batch jobs'.")
    p.add_argument("--config", default=None, help="TOML file of options (flags override it)")
    p.add_argument("--out", default="runs/patch", help="output directory (default: runs/patch)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the job in --out even if its configuration differs")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_flags(p, JobConfig)
    return p


def resolve_config(args: argparse.Namespace) -> JobConfig:
    """Defaults, then the ``--config`` file, then the flags given (raises ConfigError)."""
    return resolve_args(args, JobConfig)


def _setup_logging(args: argparse.Namespace) -> None:
    # Third-party INFO chatter (transformers, kaleido's browser) stays out of the job log unless -v.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.getLogger("sycointerp").setLevel(level)
    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    from sycointerp.data.questions import DataError
    from sycointerp.job.config import ConfigError
    from sycointerp.job.run import OutputError, run_job
    from sycointerp.job.shards import process_group
    from sycointerp.models import ModelLoadError

    try:
        config = resolve_config(args)
        with process_group(config.device) as group:
            status = run_job(config, args.out, group=group, overwrite=args.overwrite, progress=not args.quiet)
    except (ConfigError, OutputError, DataError, ModelLoadError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"python -m sycointerp.patch: error: {message}", file=sys.stderr)
        return 2
    if group.is_main and not args.quiet:
        done = "already complete" if status == "complete" else "done"
        print(f"{done}: {args.out}/heads.csv, summary.json, figures/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
