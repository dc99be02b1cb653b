"""``python -m sycointerp.spt``: the entry point of :mod:`sycointerp.cli.spt` (see there)."""

from sycointerp.cli.spt import main

if __name__ == "__main__":
    raise SystemExit(main())
