"""``python -m sycointerp``: the ``sycointerp`` command (:mod:`sycointerp.cli.main`)."""

from sycointerp.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
