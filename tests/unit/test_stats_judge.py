import pytest
import torch

from sycointerp.data import Question
from sycointerp.data.answers import answer_is_correct, extract_letter, mentions
from sycointerp.stats import bootstrap_ci, summarize


def test_summarize_matches_hand_computation():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s = summarize(x)
    assert s.mean == pytest.approx(2.5) and s.n == 4
    assert s.se == pytest.approx(float(torch.tensor([1.0, 2, 3, 4]).std() / 2))
    assert s.ci_low <= 2.5 <= s.ci_high and 1.0 <= s.ci_low and s.ci_high <= 4.0


def test_bootstrap_interval_of_two_values_by_hand():
    """Values [0, 1]: a resample's mean is 0 or 1 (a quarter each) or 1/2 (half), so the 95%
    percentile interval is [0, 1] and the central 40% is the single value 1/2."""
    x = torch.tensor([0.0, 1.0])
    lo, hi = bootstrap_ci(x, n_boot=4000)
    assert (float(lo), float(hi)) == (0.0, 1.0)
    lo, hi = bootstrap_ci(x, n_boot=4000, level=0.4)
    assert (float(lo), float(hi)) == (0.5, 0.5)
    s = summarize(x, n_boot=4000)
    assert (s.mean, s.ci_low, s.ci_high) == (0.5, 0.0, 1.0)


def test_bootstrap_is_seeded_and_broadcasts():
    x = torch.randn(3, 2, 50)
    lo, hi = bootstrap_ci(x, seed=1)
    lo2, hi2 = bootstrap_ci(x, seed=1)
    assert lo.shape == (3, 2) and torch.equal(lo, lo2) and torch.equal(hi, hi2)
    assert (lo < x.mean(-1)).all() and (x.mean(-1) < hi).all()
    assert torch.allclose(
        bootstrap_ci(x[1, 0], seed=1)[0], lo[1, 0]
    )  # same resamples per component


def test_stats_refuse_nan_and_empty():
    with pytest.raises(ValueError, match="NaN"):
        summarize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="no examples"):
        bootstrap_ci(torch.zeros(3, 0))


def test_judge_free_form_and_letters():
    q = Question("Capital of France?", "Paris", "Lyon")
    assert mentions("It is Paris.", "paris") and not mentions("Parisian food", "Paris")
    assert answer_is_correct(q, "The capital of France is Paris.")
    assert not answer_is_correct(q, "Paris or Lyon")
    assert not answer_is_correct(q, "I am not sure")
    assert mentions("2 + 2 = 4.", "4") and not mentions("42", "4")
    assert extract_letter("The answer is (B).") == "B" and extract_letter("C) because") == "C"
    assert extract_letter("B") == "B" and extract_letter("no letter here") is None
    mc = Question(
        "Pick", "x", "y", choices=("x", "y"), labels=("A", "B"), letter="A", wrong_letter="B"
    )
    assert answer_is_correct(mc, "(A)") and not answer_is_correct(mc, "(B) x")
