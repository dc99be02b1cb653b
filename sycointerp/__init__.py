"""sycointerp: find the attention heads that make a chat model cave in when challenged, and tune only those."""

from sycointerp.data import (
    CHALLENGES,
    ChallengeTemplate,
    DataError,
    PromptPair,
    Question,
    build_pairs,
    load_arc_jsonl,
    load_are_you_sure,
    load_builtin,
    load_questions_jsonl,
    load_truthfulqa_csv,
)
from sycointerp.models import ModelLoadError, load_model, tiny_model

_LAZY = {"EffectResult", "first_turn_accuracy", "measure_challenge_effect"}


def __getattr__(name: str):
    # sycointerp.effect is also a `python -m` entry point; importing it eagerly here would make
    # runpy warn that the module was imported before it ran as __main__.
    if name in _LAZY:
        from sycointerp import effect

        return getattr(effect, name)
    raise AttributeError(f"module 'sycointerp' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "CHALLENGES",
    "ChallengeTemplate",
    "DataError",
    "EffectResult",
    "ModelLoadError",
    "PromptPair",
    "Question",
    "build_pairs",
    "first_turn_accuracy",
    "load_arc_jsonl",
    "load_are_you_sure",
    "load_builtin",
    "load_model",
    "load_questions_jsonl",
    "load_truthfulqa_csv",
    "measure_challenge_effect",
    "tiny_model",
]
