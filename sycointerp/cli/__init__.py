"""The application layer: the command-line jobs and what they share.

Shared by every job:

- :mod:`~sycointerp.cli.app`: argument parsing (TOML config + flags), logging, user
  errors -> exit 2;
- :mod:`~sycointerp.cli.output`: the output directory's lifecycle (new / resume /
  complete / refuse);
- :mod:`~sycointerp.cli.inputs`: a job's questions from its configuration;
- :mod:`~sycointerp.cli.shards`: chunked, resumable, torchrun-sharded computation.

The jobs, none of which imports another: ``patch`` (:mod:`~sycointerp.cli.patch`,
:mod:`~sycointerp.cli.patch_config`, :mod:`~sycointerp.cli.patch_job`), ``spt``
(:mod:`~sycointerp.cli.spt`, :mod:`~sycointerp.cli.spt_config`, :mod:`~sycointerp.cli.spt_job`),
``effect`` (:mod:`~sycointerp.cli.effect`), ``report`` (:mod:`~sycointerp.cli.report`) and
``study`` (:mod:`~sycointerp.cli.study`, which composes ``spt`` runs). The ``sycointerp`` command
(:mod:`~sycointerp.cli.main`) dispatches to them; ``python -m sycointerp.patch``,
``python -m sycointerp.spt`` and ``python -m sycointerp.effect`` are thin entry points too.
"""
