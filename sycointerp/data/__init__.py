"""Questions, dataset loaders, challenge templates and prompt pairs.

Names load on first use (``sycointerp.data.templates`` and ``.questions`` need no torch, so a
CLI's ``--help`` and config validation stay fast).
"""

from sycointerp._lazy import lazy_namespace

_HOMES = {
    "sycointerp.data.loaders": "load_arc_jsonl load_are_you_sure load_truthfulqa_csv",
    "sycointerp.data.pairs": "PromptPair build_pairs require_aligned",
    "sycointerp.chat": "DEFAULT_SYSTEM",
    "sycointerp.data.questions": (
        "DataError Question load_builtin load_questions_jsonl save_questions_jsonl"
    ),
    "sycointerp.data.templates": "CHALLENGES ChallengeTemplate get_challenge",
}
__all__, __getattr__, __dir__ = lazy_namespace("sycointerp.data", _HOMES)
