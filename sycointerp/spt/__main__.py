"""``python -m sycointerp.spt``: tune the sycophancy heads (and baselines) and evaluate before and after.

Examples::

    python -m sycointerp.spt --heads-file runs/heads/heads.csv --out runs/spt          # SPT vs base
    python -m sycointerp.spt --methods base,sft,lora,random,spt --kl-text wiki.txt --out runs/spt
    torchrun --standalone --nproc_per_node=2 -m sycointerp.spt --out runs/spt      # data-parallel

Options can also come from a TOML file (``--config``; sections [model] [data] [heads] [train]
[eval] [run]); flags override it. The output layout is described in
:mod:`sycointerp.spt.experiment`. User errors print one line and exit 2; a training failure (e.g. a
NaN loss) prints one line and exits 1, keeping the last checkpoint.
"""

import argparse
import sys
from collections.abc import Sequence

from sycointerp._config import job_parser, resolve_args
from sycointerp.spt.config import SPTConfig

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    examples = __doc__.split("Examples::")[1].split("\n\n")[1]
    return job_parser(
        "python -m sycointerp.spt",
        "Supervised Pinpoint Tuning of the heads that drive sycophancy, "
        "with baselines and an evaluation before and after.",
        f"examples:\n{examples}",
        SPTConfig,
        "runs/spt",
        "run",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sycointerp.patch import _setup_logging

    _setup_logging(args)
    from sycointerp._config import ConfigError
    from sycointerp.data.questions import DataError
    from sycointerp.job.run import OutputError
    from sycointerp.models import ModelLoadError
    from sycointerp.spt.experiment import results_table, run_experiment
    from sycointerp.spt.heads import UnsupportedArchitecture
    from sycointerp.spt.train import CheckpointError, TrainingError

    try:
        config = resolve_args(args, SPTConfig)
        report = run_experiment(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    except (
        ConfigError,
        OutputError,
        DataError,
        ModelLoadError,
        UnsupportedArchitecture,
        CheckpointError,
    ) as err:
        print(f"python -m sycointerp.spt: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"python -m sycointerp.spt: training failed: {err}", file=sys.stderr)
        return 1
    if not args.quiet and report is not None:
        print(results_table(report["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
