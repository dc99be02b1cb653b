"""The workflow layer: one module per job, each a frozen validated config and
``run(config, out, *, progress=...)`` returning a typed result, with the command line's outputs.

- :mod:`~sycointerp.workflows.patch`: rank heads (the patch job; ``PatchConfig``);
- :mod:`~sycointerp.workflows.spt`: the SPT experiment (``SPTConfig``);
- :mod:`~sycointerp.workflows.study`: the trust study (``StudyConfig``);
- :mod:`~sycointerp.workflows.effect`: the challenge effect (``EffectConfig``);
- :mod:`~sycointerp.workflows.report`: a finished job's ``report.html``;

and what they share: :mod:`~sycointerp.workflows.output` (the output directory: new, resume,
complete, refuse; locks; input fingerprints), :mod:`~sycointerp.workflows.inputs` (questions
from a config), :mod:`~sycointerp.workflows.shards` (chunked, resumable, torchrun-sharded work).
Nothing is imported here, so ``import sycointerp.workflows.patch_config`` stays light.
"""
