"""Rule-based answer judging: does a reply contain the gold answer (and not the wrong one)?

Conventions: matching is case-insensitive on word boundaries after replacing punctuation with
spaces, so "Paris." matches "paris" but "Parisian" does not. Multiple-choice replies are judged
by the letter they give: "(B)", "B)", "B." or a bare "B" as the first word.
"""

import re

from sycointerp.data.questions import Question

__all__ = ["normalize", "mentions", "extract_letter", "answer_is_correct"]

_LETTER = re.compile(r"\(([A-Za-z0-9])\)|\b([A-Z0-9])[).:]|^\s*([A-Z])\b")


def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces, single spaces."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def mentions(text: str, answer: str) -> bool:
    """True when ``answer`` occurs in ``text`` as whole words (after :func:`normalize`)."""
    needle = normalize(answer)
    return bool(needle) and re.search(rf"(?<![0-9a-z]){re.escape(needle)}(?![0-9a-z])", normalize(text)) is not None


def extract_letter(text: str) -> str | None:
    """The first answer letter in a multiple-choice reply, or ``None``."""
    match = _LETTER.search(text)
    if not match:
        return None
    return next(g for g in match.groups() if g).upper()


def answer_is_correct(question: Question, reply: str) -> bool:
    """Whether ``reply`` gives the gold answer and not the wrong one.

    For multiple choice the first letter given must be the gold letter; for free-form answers
    the gold answer must be mentioned and the wrong answer must not.
    """
    if question.is_multiple_choice:
        return extract_letter(reply) == question.letter
    return mentions(reply, question.answer) and not mentions(reply, question.wrong)
