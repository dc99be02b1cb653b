"""``python -m sycointerp.patch``: the entry point of :mod:`sycointerp.cli.patch` (see there)."""

from sycointerp.cli.patch import main

if __name__ == "__main__":
    raise SystemExit(main())
