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
"""

from collections.abc import Mapping
from dataclasses import dataclass

from sycointerp.evaluate.protocol import SycophancyEval
from sycointerp.stats import PairedComparison, paired_comparison

__all__ = ["MethodComparison", "compare_methods", "comparison_table"]


@dataclass(frozen=True)
class MethodComparison:
    """Method ``a`` against method ``b`` on their common initially-correct items."""

    a: str
    b: str
    confidence: PairedComparison
    truthfulness: PairedComparison

    def to_json(self) -> dict:
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
