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
import logging
import sys
from collections.abc import Sequence

from sycointerp._config import add_flags, resolve_args
from sycointerp.spt.config import SPTConfig

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, without argparse's usage block
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    examples = __doc__.split("Examples::")[1].split("\n\n")[1]
    p = _Parser(prog="python -m sycointerp.spt", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Supervised Pinpoint Tuning of the heads that drive sycophancy, with baselines and "
                            "an evaluation before and after.", epilog=f"examples:\n{examples}")
    p.add_argument("--config", default=None, help="TOML file of options (flags override it)")
    p.add_argument("--out", default="runs/spt", help="output directory (default: runs/spt)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out even if its configuration differs")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_flags(p, SPTConfig)
    return p


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
    from sycointerp.spt.train import TrainingError

    try:
        config = resolve_args(args, SPTConfig)
        report = run_experiment(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    except (ConfigError, OutputError, DataError, ModelLoadError, UnsupportedArchitecture, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"python -m sycointerp.spt: error: {message}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"python -m sycointerp.spt: training failed: {err}", file=sys.stderr)
        return 1
    if not args.quiet and report is not None:
        print(results_table(report["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
