"""``python -m sycointerp.patch``: the one module alias, for ``sycointerp patch`` (users type it).

Every command is reached through :mod:`sycointerp.cli.main` (``sycointerp <command>`` or
``python -m sycointerp <command>``); the aliases are listed there, in
:data:`~sycointerp.cli.main.ALIASES`.
"""

from sycointerp.cli.main import run_alias

if __name__ == "__main__":
    raise SystemExit(run_alias(__spec__.name if __spec__ else "sycointerp.patch"))
