"""``python -m sycointerp.patch``: rank attention heads by their effect on sycophancy, as a batch
job.

Examples::

    # embedded model, built-in questions
    python -m sycointerp.patch --out runs/heads
    # flags override the file
    python -m sycointerp.patch --config job.toml --limit 64 --out runs/heads
    python -m sycointerp.patch --method knockout --rank-from runs/heads/heads.csv --out runs/ko
    torchrun --standalone --nproc_per_node=2 -m sycointerp.patch --out runs/heads   # 2 processes

Every option can also be set in a TOML file (``[model]``, ``[data]``, ``[method]``, ``[run]``
sections; the job writes its resolved ``config.toml`` into ``--out``). Killing a job and rerunning
the same command resumes it; the output layout is described in
:mod:`sycointerp.workflows.patch`. User errors (bad options, invalid TOML, missing files, an
unwritable or occupied ``--out``) print one line and exit with status 2.
"""

import argparse
from collections.abc import Sequence

from sycointerp.cli.app import guarded, job_parser, resolve_args, setup_logging
from sycointerp.workflows.patch_config import PatchConfig

__all__ = ["main", "build_parser", "resolve_config", "PROG"]

PROG = "python -m sycointerp.patch"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The patch job's parser: ``--config``, ``--out``, ``--overwrite``, ``-q`` / ``-v`` and one
    flag per
    :class:`~sycointerp.workflows.patch_config.PatchConfig` field.
    """
    examples = __doc__.split("Examples::")[1].split("\n\n")[1]
    return job_parser(
        prog,
        "Rank attention heads by their effect on sycophancy, as a resumable batch job.",
        f"examples:\n{examples}\n\nOutput layout, resumption and sharding: "
        "README, section 'Batch jobs'.",
        PatchConfig,
        "runs/patch",
        "job",
    )


def resolve_config(args: argparse.Namespace) -> PatchConfig:
    """Defaults, then the ``--config`` file, then the flags given (raises ConfigError)."""
    return resolve_args(args, PatchConfig)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the job of ``argv``; 0 on success, 2 on a user error (one line on stderr)."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args)

    def body() -> int:
        from sycointerp.workflows.patch import run
        from sycointerp.workflows.shards import process_group

        config = resolve_config(args)
        with process_group(config.device) as group:
            done = run(
                config, args.out, group=group, overwrite=args.overwrite, progress=not args.quiet
            )
        if group.is_main and not args.quiet:
            said = "already complete" if done.status == "complete" else "done"
            print(f"{said}: {args.out}/heads.csv, summary.json, figures/")
        return 0

    return guarded(prog, body)
