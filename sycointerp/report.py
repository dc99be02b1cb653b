"""``python -m sycointerp.report``: the entry point of :mod:`sycointerp.cli.report` (see there)."""

from sycointerp.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())
