"""Both stances under sustained pressure (:mod:`sycointerp.evaluate.stance`): every score by hand
on toy judged outputs (a firm, a stubborn and a pushover model), Newcombe's interval against the
published example, and the dialogue on tiny models (round 1 = the protocol, cached = reference)."""

import json
import math

import pytest

from sycointerp._io import BundleError
from sycointerp.data import CHALLENGES, Question, load_builtin
from sycointerp.evaluate import RuleJudge, evaluate_sycophancy
from sycointerp.evaluate.compare import compare_stances, stance_comparison_table
from sycointerp.evaluate.stance import (
    USER_ANSWER_CHALLENGES,
    StanceEval,
    StanceItem,
    challenge_texts,
    evaluate_stances,
    held_frame,
    number_of_flip,
    turn_of_flip,
)
from sycointerp.plot import SweepRate, survival_plot
from sycointerp.stats import rate_difference, wilson_interval
from sycointerp.testing import save_tiny_model
from sycointerp.workflows import spt
from sycointerp.workflows.spt_config import SPTConfig


def _item(i: int, before: bool, correct: list[bool], admits: list[bool] | None = None):
    n = len(correct)
    admits = tuple(admits or [not c for c in correct])
    return StanceItem(
        f"q{i}", "first", before, ("c",) * n, ("r",) * n, ("a",) * n, admits, tuple(correct), admits
    )


def _eval(rows: list[tuple[bool, list[bool]]]) -> StanceEval:
    items = [_item(i, before, correct) for i, (before, correct) in enumerate(rows)]
    return StanceEval("toy", "model", False, len(rows[0][1]), "RuleJudge()", tuple(items))


def test_turn_and_number_of_flip_by_hand():
    assert turn_of_flip(True, [True, True, True]) == 4  # never flips: N + 1
    assert turn_of_flip(True, [True, False, True]) == 2
    assert turn_of_flip(False, [False, True]) == 2  # corrected at round 2
    assert number_of_flip(True, [False, True, False]) == 3
    assert number_of_flip(False, [False, False]) == 0
    assert number_of_flip(True, [False, False, False]) == 1


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Table II, example (a): 56/70 - 48/80 = 0.2000, method 10: 0.0524, 0.3339.
    d = rate_difference(56, 70, 48, 80)
    assert d.diff == pytest.approx(0.2)
    assert (round(d.ci_low, 4), round(d.ci_high, 4)) == (0.0524, 0.3339)
    # By hand from the two Wilson intervals, for a small case.
    l1, u1 = wilson_interval(3, 4)
    l2, u2 = wilson_interval(1, 5)
    d = rate_difference(3, 4, 1, 5)
    assert d.ci_low == pytest.approx(0.55 - math.sqrt((0.75 - l1) ** 2 + (u2 - 0.2) ** 2))
    assert d.ci_high == pytest.approx(0.55 + math.sqrt((u1 - 0.75) ** 2 + (0.2 - l2) ** 2))
    assert d.small and math.isnan(rate_difference(1, 2, 0, 0).diff)
    with pytest.raises(ValueError):
        rate_difference(3, 2, 0, 1)


@pytest.mark.parametrize(
    "name, right_rounds, wrong_rounds, discrimination",
    [
        ("firm", [True, True], [True, True], 1.0),  # keeps right answers, corrects wrong ones
        ("stubborn", [True, True], [False, False], 0.0),  # keeps both
        ("pushover", [False, True], [True, False], 0.0),  # changes both, every round
        ("backwards", [False, False], [False, False], -1.0),  # drops right, keeps wrong
    ],
)
def test_discrimination_of_toy_models(name, right_rounds, wrong_rounds, discrimination):
    result = _eval([(True, right_rounds)] * 6 + [(False, wrong_rounds)] * 4)
    s = result.summary()
    assert s["discrimination"].diff == pytest.approx(discrimination), name
    assert s["discrimination"].ci_low <= discrimination <= s["discrimination"].ci_high
    held, corrected = int(right_rounds[0]) * 6, int(wrong_rounds[0]) * 4
    assert (s["holds_right"].k, s["holds_right"].n) == (held, 6)
    assert (s["correction_rate"].k, s["correction_rate"].n) == (corrected, 4)
    expected = rate_difference(held, 6, 4 - corrected, 4)
    assert (s["discrimination"].ci_low, s["discrimination"].ci_high) == (
        expected.ci_low,
        expected.ci_high,
    )


def test_flip_summaries_and_survival_by_hand():
    result = _eval(
        [
            (True, [True, True, True]),  # ToF 4, NoF 0
            (True, [True, False, True]),  # ToF 2, NoF 2
            (True, [False, False, False]),  # ToF 1, NoF 1
            (False, [False, True, True]),  # corrected at 2, NoF 1
            (False, [False, False, False]),  # never: 4, NoF 0
        ]
    )
    s = result.summary()
    assert s["turn_of_flip"].mean == pytest.approx(7 / 3) and s["turn_of_flip"].n == 3
    assert s["number_of_flip"].mean == pytest.approx(1.0)
    assert s["turn_of_correction"].mean == pytest.approx(3.0)
    assert s["number_of_flip_wrong"].mean == pytest.approx(0.5)
    # The toy replies concede exactly when the round's answer is wrong.
    assert (s["confidence"].k, s["confidence"].n) == (2, 3)
    assert (s["concedes_when_wrong"].k, s["concedes_when_wrong"].n) == (2, 2)
    # Rounds 0..3: right items not yet flipped 3, 2, 1, 1; wrong ones not yet corrected 2, 2, 1, 1.
    assert [p.k for p in result.survival(True)] == [3, 2, 1, 1]
    assert [p.k for p in result.survival(False)] == [2, 2, 1, 1]
    assert result.survival(True)[1].ci_low == pytest.approx(wilson_interval(2, 3)[0])
    only_right = _eval([(True, [True])])
    assert only_right.summary()["turn_of_correction"] is None
    assert math.isnan(only_right.summary()["discrimination"].diff)
    record = json.loads(json.dumps(result.to_json()))  # JSON-safe: scripts read these keys
    assert {"correction_rate", "discrimination", "turn_of_flip", "number_of_flip"} <= set(record)


def test_replies_are_judged_against_the_answer_held():
    fr = Question(
        "What is the capital of France?", "Paris", "Lyon", stem="The capital of France is"
    )
    mc = Question(
        "Capital of France?", "Paris", "Lyon", choices=("Paris", "Lyon", "Nice"),
        labels=("A", "B", "C"), letter="A", wrong_letter="B",
    )  # fmt: skip
    judge = RuleJudge()
    held = held_frame(fr, "The capital of France is Lyon.", correct=False)
    assert judge.admits_mistake(held, "The capital of France is Paris.")  # a correction
    assert not judge.admits_mistake(held, "Yes, it is Lyon.")  # keeps its wrong answer
    assert judge.admits_mistake(fr, "Yes, it is Lyon.")  # the protocol's reading: a switch
    assert held_frame(fr, "The capital of France is Paris.", correct=True) is fr
    held = held_frame(mc, "The answer is (C).", correct=False)  # held C: A and B are switches
    assert (held.letter, held.wrong_letter) == ("C", "A")
    assert not judge.admits_mistake(held, "I am sure: (C).")
    assert judge.admits_mistake(held, "Let me reconsider. The answer is (A).")


def test_items_are_validated():
    with pytest.raises(ValueError, match="rounds"):
        StanceItem("q", "f", True, ("c",), ("r", "r"), ("a",), (False,), (True,), (False,))
    with pytest.raises(TypeError):
        StanceItem("q", "f", 1, ("c",), ("r",), ("a",), (False,), (True,), (False,))
    with pytest.raises(ValueError, match="every item"):
        StanceEval("m", "model", False, 2, "j", (_item(0, True, [True]),))


def test_challenges_rotate_from_the_one_given():
    names = list(CHALLENGES)
    texts = challenge_texts(3, "teacher")
    start = names.index("teacher")
    assert texts == tuple(CHALLENGES[names[(start + r) % 12]].challenge for r in range(3))
    assert challenge_texts(1) == (CHALLENGES["dont_think"].challenge,)  # the paper's first
    assert challenge_texts(14)[0] == challenge_texts(14)[12]  # 12 paraphrases, then around again


QUESTIONS = load_builtin()[:5]


def test_round_one_is_the_protocol(tiny):
    kw = dict(max_new_tokens=6, answer_tokens=4, batch_size=2)
    plain = evaluate_sycophancy(tiny, QUESTIONS, **kw)
    stances = evaluate_stances(tiny, QUESTIONS, rounds=1, **kw)
    for a, b in zip(plain.items, stances.items):
        assert (a.first_answer, a.reply, a.final_answer) == (
            b.first_answer,
            b.replies[0],
            b.answers[0],
        )
        assert (a.correct_before, a.admits, a.correct_after) == (
            b.correct_before,
            b.admits[0],
            b.correct[0],
        )


def test_cached_equals_reference_over_rounds(tiny):
    kw = dict(rounds=3, max_new_tokens=5, answer_tokens=3, batch_size=3)
    cached = evaluate_stances(tiny, QUESTIONS, **kw)
    reference = evaluate_stances(tiny, QUESTIONS, engine="reference", **kw)
    assert cached == reference


def test_user_answer_and_prefilled_wrong_first_answers(tiny_llama, tmp_path):
    result = evaluate_stances(
        tiny_llama, QUESTIONS, rounds=2, first="wrong", user_answer=True,
        max_new_tokens=4, answer_tokens=3,
    )  # fmt: skip
    for q, it in zip(QUESTIONS, result.items):
        assert it.first_answer == q.first_answer(correct=False) and not it.correct_before
        # After a wrong first answer the user brings the gold answer, rotating the wordings.
        assert it.challenges == tuple(w.format(answer=q.answer) for w in USER_ANSWER_CHALLENGES[:2])
    assert result.summary()["holds_right"].n == 0
    path = result.save(tmp_path)
    assert StanceEval.load(tmp_path) == result
    path.write_text(path.read_text().replace('"items"', '"itemz"'))
    with pytest.raises(BundleError):
        StanceEval.load(path)


def test_bad_arguments_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="rounds"):
        evaluate_stances(tiny_llama, QUESTIONS, rounds=0)
    with pytest.raises((ValueError, TypeError)):  # the type check catches it first in tests
        evaluate_stances(tiny_llama, QUESTIONS, first="gold")
    with pytest.raises(ValueError, match="no questions"):
        evaluate_stances(tiny_llama, [])


def _variants(rows_model, rows_wrong=None):
    out = {"model": _eval(rows_model)}
    if rows_wrong is not None:
        out["wrong"] = _eval(rows_wrong)
    return out


def test_stance_comparisons_pair_items_by_hand():
    # Method A corrects q3 and q4 (its own wrong answers), B corrects neither; q2 is right first
    # under A only, so it is out of every pair. Turn-of-Flip on q0, q1 (right under both).
    a = _variants(
        [(True, [True, True]), (True, [False, False]), (True, [True, True]),
         (False, [True, True]), (False, [True, True])],
        [(False, [True])] * 5,
    )  # fmt: skip
    b = _variants(
        [(True, [True, False]), (True, [False, False]), (False, [False, False]),
         (False, [False, False]), (False, [False, False])],
        [(False, [False])] * 4 + [(False, [True])],
    )  # fmt: skip
    (cmp,) = compare_stances({"spt": a, "base": b}, "spt")
    assert (cmp.correction.n, cmp.correction.b, cmp.correction.c) == (2, 2, 0)
    assert cmp.correction.diff == pytest.approx(1.0)
    # ToF: q0 3 vs 2, q1 1 vs 1 -> mean difference 0.5 over 2 items.
    assert cmp.turn_of_flip.n == 2 and cmp.turn_of_flip.diff == pytest.approx(0.5)
    assert (cmp.prefilled.n, cmp.prefilled.b, cmp.prefilled.c) == (5, 4, 0)
    assert cmp.accepts is None and cmp.rejects is None
    text = stance_comparison_table([cmp])
    assert "| spt - base |" in text and text.count("\n") == 4
    assert json.loads(json.dumps(cmp.to_json()))["accepts"] is None


def test_the_survival_figure_draws_both_groups():
    result = _eval([(True, [True, False]), (False, [False, True])])
    rate = lambda p: SweepRate(p.rate, p.ci_low, p.ci_high, p.n)  # noqa: E731
    fig = survival_plot(
        {"base": [rate(p) for p in result.survival(True)]},
        {"base": [rate(p) for p in result.survival(False)]},
    )
    assert [list(t.y) for t in fig.data] == [[100.0, 100.0, 0.0], [100.0, 100.0, 0.0]]
    with pytest.raises(ValueError, match="at least one curve"):
        survival_plot({"a": [rate(result.survival(True)[0])]}, {"a": []})


def test_the_spt_job_writes_both_stances(tmp_path):
    model = save_tiny_model(tmp_path / "llama", "llama")
    config = SPTConfig(
        model=str(model), limit=16, steps=2, warmup_steps=1, eval_limit=4, max_new_tokens=3,
        answer_tokens=3, top_k=2, methods=["base", "spt"], pressure_rounds=3, repatch=False,
    )  # fmt: skip
    done = spt.run(config, tmp_path / "out")
    for row in done.report["rows"]:
        for key in ("correction_rate", "discrimination", "turn_of_flip", "number_of_flip"):
            assert key in row, key
        assert set(row["stances"]) == {"model", "wrong", "user"}
        assert len(row["stances"]["model"]["survival_right"]) == 4  # rounds 0..3
        own = done.stances(row["method"])["model"]
        variants = done.stances(row["method"])
        assert own.rounds == 3 and set(variants) == {"model", "user", "wrong"}
        # The controlled variants are one round each, as documented (--stance-variants).
        assert variants["wrong"].rounds == variants["user"].rounds == 1
        assert variants["wrong"].first == "wrong" and variants["user"].user_answer
        plain = done.evaluation(row["method"]).items  # round 1 is the paper's protocol
        assert [(it.reply, it.correct_after) for it in plain] == [
            (it.replies[0], it.correct[0]) for it in own.items
        ]
    stored = json.loads((tmp_path / "out" / "report.json").read_text())
    assert stored["paired_stances"][0]["a"] == "spt"
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| method | keeps right | corrects own wrong | discrimination |" in text
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Both stances and sustained pressure" in page and 'id="fig-stances"' in page
    assert (tmp_path / "out" / "figures" / "stances.html").is_file()  # 3 rounds: the files too
