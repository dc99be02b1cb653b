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

from sycointerp._config import job_parser, resolve_args
from sycointerp.job.config import JobConfig

__all__ = ["main", "build_parser"]

log = logging.getLogger("sycointerp.patch")


def build_parser() -> argparse.ArgumentParser:
    examples = __doc__.split("Examples::")[1].split("\n\n")[1]
    return job_parser(
        "python -m sycointerp.patch",
        "Rank attention heads by their effect on sycophancy, as a resumable batch job.",
        f"examples:\n{examples}\n\nOutput layout, resumption and sharding: "
        "README, section 'Batch jobs'.",
        JobConfig,
        "runs/patch",
        "job",
    )


def resolve_config(args: argparse.Namespace) -> JobConfig:
    """Defaults, then the ``--config`` file, then the flags given (raises ConfigError)."""
    return resolve_args(args, JobConfig)


def _setup_logging(args: argparse.Namespace) -> None:
    # Third-party INFO chatter (transformers, kaleido's browser) stays out of the job log unless -v.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
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
    from sycointerp.job.shards import ChunkMismatch, process_group
    from sycointerp.models import ModelLoadError

    try:
        config = resolve_config(args)
        with process_group(config.device) as group:
            status = run_job(
                config, args.out, group=group, overwrite=args.overwrite, progress=not args.quiet
            )
    except (ConfigError, OutputError, DataError, ModelLoadError, ChunkMismatch) as err:
        print(f"python -m sycointerp.patch: error: {err}", file=sys.stderr)
        return 2
    if group.is_main and not args.quiet:
        done = "already complete" if status == "complete" else "done"
        print(f"{done}: {args.out}/heads.csv, summary.json, figures/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
