"""sycointerp: find the attention heads that make a chat model cave in when challenged, and tune
only those.

The names below are loaded on first use, so ``import sycointerp`` (and every ``sycointerp
<command> --help``) stays fast: torch and TransformerLens load only when a model does.
Layers (imports go one way, downward; ``tests/unit/test_layers.py`` enforces it):

- ground: :mod:`~sycointerp.chat`, :mod:`~sycointerp.data`, :mod:`~sycointerp.models`,
  :mod:`~sycointerp.provenance`, :mod:`~sycointerp.stats`, :mod:`~sycointerp.stability`,
  :mod:`~sycointerp.testing`, ``_io``, ``_lazy``, ``_config``, ``_registry``, ``errors``;
- analysis: :mod:`~sycointerp.metrics`, :mod:`~sycointerp.generate`, :mod:`~sycointerp.heads`,
  :mod:`~sycointerp.patching`, :mod:`~sycointerp.evaluate`, :mod:`~sycointerp.plot`;
- tuning: :mod:`~sycointerp.spt`;
- workflows: :mod:`~sycointerp.workflows` (the ``patch``, ``spt``, ``effect``, ``study`` and
  ``report`` jobs as library calls);
- applications: :mod:`~sycointerp.cli` (thin front ends, behind the ``sycointerp`` command).
"""

from sycointerp._lazy import lazy_namespace

__version__ = "0.5.1"

_HOMES = {
    "sycointerp.data": (
        "CHALLENGES ChallengeTemplate DataError PromptPair Question build_pairs load_arc_jsonl "
        "load_are_you_sure load_builtin load_questions_jsonl load_truthfulqa_csv"
    ),
    "sycointerp.errors": "UserError",
    "sycointerp.models": "ModelLoadError load_model",
    "sycointerp.testing": "tiny_model",
    "sycointerp.evaluate.challenge": "EffectResult measure_challenge_effect",
    "sycointerp.evaluate.capability": "first_turn_accuracy",
    "sycointerp.heads": "HeadGrid HeadSet read_heads_csv",
}
__all__, __getattr__, __dir__ = lazy_namespace("sycointerp", _HOMES)
