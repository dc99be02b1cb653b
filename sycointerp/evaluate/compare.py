"""Methods evaluated on the same items, compared paired (the SPT experiment's comparison table).

For two :class:`~sycointerp.evaluate.SycophancyEval` runs of the same questions, the comparison
uses the items *initially correct under both* (Confidence and Truthfulness are defined over
initially-correct items, and a tuned model may answer the first turn differently), aligned by
question id:

- Confidence: the reply does not admit a mistake;
- Truthfulness: the final answer is still correct.

Each gives a :class:`~sycointerp.stats.PairedComparison`: the difference of rates (A - B) with a
paired bootstrap interval and the exact McNemar p-value on the discordant items. Fewer than 20
common items are flagged. No correction for multiple comparisons is applied; the table says how
many comparisons it holds.

Several random draws of a control (:func:`compare_pooled`) are pooled per item: on the items
initially correct under the method and under *every* draw, the method's outcome (0 or 1) is
compared with the mean outcome of the draws on that item (a :class:`~sycointerp.stats.
PairedDifference`: paired bootstrap interval, sign-flip p-value). Pooling per item keeps the
items independent; stacking (item, draw) rows would count each item several times.

Both stances (:func:`compare_stances`): a method's stance runs against another's, each measure
paired on the items the two runs put in the same first-answer group (a tuned model may answer
the first turn differently): correction of its own wrong answers, Turn-of-Flip over the rounds,
and the controlled variants (prefilled wrong answers: every item; the user's answer).
"""

from collections.abc import Mapping
from dataclasses import dataclass

from sycointerp.evaluate.protocol import SycophancyEval
from sycointerp.evaluate.stance import StanceEval, StanceItem
from sycointerp.stats import (
    PairedComparison,
    PairedDifference,
    paired_comparison,
    paired_difference,
)

__all__ = [
    "MethodComparison",
    "PooledComparison",
    "compare_methods",
    "compare_pooled",
    "pooled_outcomes",
    "comparison_table",
    "pooled_table",
    "StanceComparison",
    "compare_stances",
    "stance_comparison_table",
]


@dataclass(frozen=True)
class MethodComparison:
    """Method ``a`` against method ``b`` on their common initially-correct items."""

    a: str
    b: str
    confidence: PairedComparison
    truthfulness: PairedComparison

    def to_json(self) -> dict:
        """The comparison as a JSON-serializable dict (``a``, ``b`` and both paired comparisons)."""
        return {
            "a": self.a,
            "b": self.b,
            "confidence": self.confidence.to_json(),
            "truthfulness": self.truthfulness.to_json(),
        }


def _pair(a: SycophancyEval, b: SycophancyEval, name_a: str, name_b: str) -> MethodComparison:
    items_b = {it.question_id: it for it in b.items}
    common = [
        (it, items_b[it.question_id])
        for it in a.items
        if it.question_id in items_b
        and it.correct_before
        and items_b[it.question_id].correct_before
    ]
    confidence = paired_comparison(
        [not x.admits for x, _ in common], [not y.admits for _, y in common]
    )
    truth = paired_comparison(
        [x.correct_after for x, _ in common], [y.correct_after for _, y in common]
    )
    return MethodComparison(name_a, name_b, confidence, truth)


def compare_methods(evals: Mapping[str, SycophancyEval], reference: str) -> list[MethodComparison]:
    """``reference`` against every other method of ``evals``, in their order.

    Raises:
        KeyError: ``reference`` is not among ``evals``.
    """
    ref = evals[reference]
    return [_pair(ref, ev, reference, name) for name, ev in evals.items() if name != reference]


def comparison_table(comparisons: list[MethodComparison]) -> str:
    """Markdown: one row per comparison, differences in points with intervals and p-values."""
    lines = [
        "Paired on the items initially correct under both methods "
        f"({len(comparisons)} comparisons, no multiple-comparison correction; 95% paired "
        "bootstrap intervals, exact McNemar):",
        "",
        "| comparison | items | Confidence A - B | Truthfulness A - B |",
        "|---|---|---|---|",
    ]
    for cmp in comparisons:
        lines.append(
            f"| {cmp.a} - {cmp.b} | {cmp.confidence.n} | {cmp.confidence} | {cmp.truthfulness} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class PooledComparison:
    """Method ``a`` against the per-item mean of the draws ``draws`` of control ``b``."""

    a: str
    b: str
    draws: tuple[str, ...]
    confidence: PairedDifference
    truthfulness: PairedDifference

    def to_json(self) -> dict:
        """The comparison as a JSON-serializable dict (``a``, ``b``, the draws and both
        differences)."""
        return {
            "a": self.a,
            "b": self.b,
            "draws": list(self.draws),
            "confidence": self.confidence.to_json(),
            "truthfulness": self.truthfulness.to_json(),
        }


def compare_pooled(
    evals: Mapping[str, SycophancyEval], reference: str, groups: Mapping[str, list[str]]
) -> list[PooledComparison]:
    """``reference`` against each group of draws (``{"random_layer": ["random_layer-0", ...]}``)
    pooled per item (module docstring).

    Raises:
        KeyError: ``reference`` or a draw is not among ``evals``.
        ValueError: an empty group.
    """
    out = []
    for name, members in groups.items():
        if not members:
            raise ValueError(f"control group {name!r} has no draws")
        outcomes = pooled_outcomes(evals, reference, members)
        confidence, truth = (
            paired_difference(x, [sum(row) / len(row) for row in ys])
            for x, ys in (outcomes["confidence"], outcomes["truthfulness"])
        )
        out.append(PooledComparison(reference, name, tuple(members), confidence, truth))
    return out


def pooled_outcomes(
    evals: Mapping[str, SycophancyEval], reference: str, members: list[str]
) -> dict[str, tuple[list[float], list[list[float]]]]:
    """Per item, ``reference``'s 0/1 outcome and each draw's, for ``"confidence"`` and
    ``"truthfulness"``, on the items initially correct under the reference and every draw (in
    the reference's order): what :func:`compare_pooled` compares and what a power computation
    (:func:`~sycointerp.stats.pooled_detectable_difference`) reads.

    Raises:
        KeyError: ``reference`` or a draw is not among ``evals``.
        ValueError: no draws.
    """
    if not members:
        raise ValueError("a control group needs at least one draw")
    ref = {it.question_id: it for it in evals[reference].items}
    draws = [{it.question_id: it for it in evals[m].items} for m in members]
    common = [
        q
        for q, it in ref.items()
        if it.correct_before and all(q in d and d[q].correct_before for d in draws)
    ]
    rules = {"confidence": lambda it: not it.admits, "truthfulness": lambda it: it.correct_after}
    return {
        metric: (
            [float(rule(ref[q])) for q in common],
            [[float(rule(d[q])) for d in draws] for q in common],
        )
        for metric, rule in rules.items()
    }


def pooled_table(comparisons: list[PooledComparison]) -> str:
    """Markdown: one row per control, the method against the draws' per-item mean."""
    lines = [
        "Against the random controls pooled per item (the method's outcome minus the mean outcome "
        "of the draws on the same item, over the items initially correct under the method and "
        "every draw; 95% paired bootstrap intervals, sign-flip p-values):",
        "",
        "| comparison | draws | items | Confidence A - B | Truthfulness A - B |",
        "|---|---|---|---|---|",
    ]
    for cmp in comparisons:
        lines.append(
            f"| {cmp.a} - {cmp.b} (pooled) | {len(cmp.draws)} | {cmp.confidence.n} | "
            f"{cmp.confidence} | {cmp.truthfulness} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ both stances


@dataclass(frozen=True)
class StanceComparison:
    """Method ``a`` against method ``b`` on the stance measures (:mod:`~sycointerp.evaluate.
    stance`), each paired on the items both runs put in the same group.

    Attributes:
        a, b: the method names.
        correction: corrected after round 1, on the items both answered wrong first.
        turn_of_flip: per-item Turn-of-Flip, on the items both answered right first (a
            :class:`~sycointerp.stats.PairedDifference`: higher is firmer).
        prefilled: corrected after a prefilled wrong first answer, on every common item (``None``
            without the ``wrong`` variant).
        accepts: the user's gold answer accepted after a wrong first answer (``None`` without
            the ``user`` variant).
        rejects: the user's wrong answer rejected after a right first answer (``None`` without
            the ``user`` variant).
    """

    a: str
    b: str
    correction: PairedComparison
    turn_of_flip: PairedDifference
    prefilled: PairedComparison | None
    accepts: PairedComparison | None
    rejects: PairedComparison | None

    def to_json(self) -> dict:
        """The comparison as a JSON-serializable dict (``None`` for a variant not run)."""
        out: dict = {"a": self.a, "b": self.b}
        for name in ("correction", "turn_of_flip", "prefilled", "accepts", "rejects"):
            value = getattr(self, name)
            out[name] = None if value is None else value.to_json()
        return out


def _common(
    a: StanceEval, b: StanceEval, right: bool | None
) -> list[tuple[StanceItem, StanceItem]]:
    """Items of both runs, aligned by id, in the same first-answer group (``None``: any)."""
    items_b = {it.question_id: it for it in b.items}
    return [
        (x, items_b[x.question_id])
        for x in a.items
        if x.question_id in items_b
        and (right is None or x.correct_before == items_b[x.question_id].correct_before == right)
    ]


def _corrected(a: StanceEval, b: StanceEval, right: bool | None) -> PairedComparison:
    pairs = _common(a, b, right)
    return paired_comparison([x.correct[0] for x, _ in pairs], [y.correct[0] for _, y in pairs])


def _stance_pair(
    a: Mapping[str, StanceEval], b: Mapping[str, StanceEval], names
) -> StanceComparison:
    right = _common(a["model"], b["model"], True)
    both = lambda v: v in a and v in b  # noqa: E731
    return StanceComparison(
        *names,
        correction=_corrected(a["model"], b["model"], False),
        turn_of_flip=paired_difference(
            [x.turn_of_flip for x, _ in right], [y.turn_of_flip for _, y in right]
        ),
        prefilled=_corrected(a["wrong"], b["wrong"], None) if both("wrong") else None,
        accepts=_corrected(a["user"], b["user"], False) if both("user") else None,
        rejects=_corrected(a["user"], b["user"], True) if both("user") else None,
    )


def compare_stances(
    evals: Mapping[str, Mapping[str, StanceEval]], reference: str
) -> list[StanceComparison]:
    """``reference`` against every other method on the stance measures; ``evals`` maps a method
    to its variants (``"model"`` required, ``"wrong"`` / ``"user"`` optional).

    Raises:
        KeyError: ``reference`` is not among ``evals``, or a method lacks the ``"model"`` variant.
    """
    ref = evals[reference]
    return [
        _stance_pair(ref, ev, (reference, name)) for name, ev in evals.items() if name != reference
    ]


def stance_comparison_table(comparisons: list[StanceComparison]) -> str:
    """Markdown: one row per comparison, differences in points (Turn-of-Flip in rounds)."""
    lines = [
        "Both stances, paired on the items in the same first-answer group under both methods "
        f"({len(comparisons)} comparisons, no multiple-comparison correction; 95% paired "
        "bootstrap intervals, exact McNemar or sign-flip p-values):",
        "",
        "| comparison | corrects own wrong answer A - B | Turn-of-Flip A - B (rounds) | "
        "corrects prefilled wrong A - B | accepts user's gold A - B | rejects user's wrong A - B |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        tof = c.turn_of_flip
        rounds = (
            "n/a (no common items)"
            if tof.n == 0
            else f"{tof.diff:+.2f} [{tof.ci_low:+.2f}, {tof.ci_high:+.2f}], p = {tof.p_value:.3g} "
            f"(n={tof.n})"
        )
        cells = [str(x) if x is not None else "-" for x in (c.prefilled, c.accepts, c.rejects)]
        lines.append(f"| {c.a} - {c.b} | {c.correction} | {rounds} | {' | '.join(cells)} |")
    return "\n".join(lines)
