"""``python -m sycointerp.effect``: the entry point of :mod:`sycointerp.cli.effect` (see there)."""

from sycointerp.cli.effect import main

if __name__ == "__main__":
    raise SystemExit(main())
