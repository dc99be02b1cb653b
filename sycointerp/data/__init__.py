"""Questions, dataset loaders, challenge templates and prompt pairs."""

from sycointerp.data.loaders import load_arc_jsonl, load_are_you_sure, load_truthfulqa_csv
from sycointerp.data.pairs import DEFAULT_SYSTEM, PromptPair, build_pairs, require_aligned
from sycointerp.data.questions import (
    DataError,
    Question,
    load_builtin,
    load_questions_jsonl,
    save_questions_jsonl,
)
from sycointerp.data.templates import CHALLENGES, ChallengeTemplate, get_challenge

__all__ = [
    "CHALLENGES",
    "ChallengeTemplate",
    "DEFAULT_SYSTEM",
    "DataError",
    "PromptPair",
    "Question",
    "build_pairs",
    "get_challenge",
    "load_arc_jsonl",
    "load_are_you_sure",
    "load_builtin",
    "load_questions_jsonl",
    "load_truthfulqa_csv",
    "require_aligned",
    "save_questions_jsonl",
]
