"""The application layer: thin command-line front ends over :mod:`sycointerp.workflows`.

Each command parses its flags (and ``--config`` TOML) into its workflow's configuration, runs the
workflow, and turns the outcome into an exit code: 0 done, 2 a user error (one line on stderr),
1 a fault of the machine or of training. No model, tensor or training logic lives here.

- :mod:`~sycointerp.cli.main`: the ``sycointerp`` command and its aliases (``python -m
  sycointerp.patch``);
- :mod:`~sycointerp.cli.app`: parsers built from a config's fields, logging, :func:`guarded`;
- one module per command: ``patch``, ``spt``, ``study``, ``effect``, ``report``.
"""
