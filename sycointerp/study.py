"""``python -m sycointerp.study``: the entry point of :mod:`sycointerp.cli.study` (see there)."""

from sycointerp.cli.study import main

if __name__ == "__main__":
    raise SystemExit(main())
