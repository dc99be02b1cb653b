"""The trust study (``sycointerp study``): its statistics by hand, and a whole small study on a
tiny model run through the CLI, resumed after losing a stage's output, and refused when its
options change."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sycointerp.evaluate import EvalItem, SycophancyEval
from sycointerp.testing import save_tiny_model
from sycointerp.workflows.study import agreement_matrices, flip_rate, restrict
from tests.unit.test_golden import check_golden

REPO = Path(__file__).resolve().parents[2]


def test_agreement_matrices_by_hand():
    a = [(0, 0), (0, 1), (1, 0), (1, 1)]
    b = [(0, 1), (0, 0), (1, 0), (1, 1)]  # the first two swapped
    c = a[::-1]
    m = agreement_matrices({"a": a, "b": b, "c": c}, k=2)
    assert m["overlap"][0] == [1.0, 1.0, 0.0]
    # Positions a = [0, 1, 2, 3], b = [1, 0, 2, 3]: 1 - 6 * 2 / (4 * 15) = 0.8; c reverses a.
    assert m["spearman"][0] == pytest.approx([1.0, 0.8, -1.0])
    assert m["spearman"][1][2] == pytest.approx(-0.8)


def _eval(outcomes):
    items = [
        EvalItem(f"q{i}", False, "f", "r", "a", bool(b), bool(adm), bool(c))
        for i, (b, adm, c) in enumerate(outcomes)
    ]
    return SycophancyEval("m", "challenge", "judge", tuple(items))


def test_flip_rate_and_prefix_by_hand():
    # Initially correct: q0 (kept), q1 (flipped), q3 (flipped); q2 was wrong from the start.
    result = _eval([(1, 0, 1), (1, 1, 0), (0, 1, 0), (1, 1, 0)])
    rate = flip_rate(result)
    assert (rate["k"], rate["n"]) == (2, 3) and rate["rate"] == pytest.approx(2 / 3)
    head = restrict(result, 2)
    assert [it.question_id for it in head.items] == ["q0", "q1"]
    assert flip_rate(head)["rate"] == pytest.approx(0.5)


SMALL = [
    "--limit", "24", "--eval-fraction", "0.5", "--protocols", "stem,free", "--protocol-limit", "4",
    "--agreement-pairs", "3", "--agreement-k", "2", "--top-k", "2", "--draws", "2",
    "--main-eval-limit", "6", "--ks", "1,2", "--splits", "0,1", "--sweep-draws", "2",
    "--sweep-eval-limit", "4", "--steps", "2", "--warmup-steps", "1", "--max-new-tokens", "3",
    "--answer-tokens", "3", "--selection-recipes", "path:flip,loss_gradient,pooled_wordings,probe",
    "--pairs-per-wording", "1", "-q",
]  # fmt: skip


def _study(model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sycointerp", "study", "--model", str(model), "--out", str(out)]
        + SMALL
        + list(extra),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )


def test_a_small_study_runs_resumes_and_refuses_changed_options(tmp_path):
    model = save_tiny_model(tmp_path / "llama", "llama")
    out = tmp_path / "study"
    done = _study(model, out)
    assert done.returncode == 0, done.stderr[-3000:]
    check_golden("study", out, tmp_path)  # byte-identical to the outputs recorded before
    record = json.loads((out / "study.json").read_text())
    assert [r["protocol"] for r in record["protocols"]["rows"]] == ["stem", "free"]
    assert record["protocols"]["chosen"] in ("stem", "free")
    assert len(record["agreement"]["names"]) == 12 + 2  # every paraphrase, two more metrics
    methods = [r["method"] for r in record["main"]["rows"]]
    assert methods[:3] == ["base", "spt", "sft"] and "random_norm-1" in methods
    assert [p["b"] for p in record["main"]["pooled"]] == ["random", "random_layer", "random_norm"]
    points = [(r["split"], r["k"], r["from"]) for r in record["sweep"]]
    assert points == [
        (0, 1, "sweep/split0/k1"),
        (0, 2, "main"),  # the main comparison's own point, read back, not retrained
        (1, 1, "sweep/split1/k1"),
        (1, 2, "sweep/split1/k2"),
    ]
    assert all(r["n_items"] == 4 and len(r["confidence"]["draws"]) == 2 for r in record["sweep"])
    # The main point is restricted to the sweep's questions: the first 4 of the main 6.
    main_spt = SycophancyEval.load(out / "main" / "spt")
    assert record["sweep"][1]["confidence"]["spt"] == (
        restrict(main_spt, 4).summary()["confidence"].to_json()
    )
    # Split 1 ranked its own training questions; its other K read that ranking.
    config = (out / "sweep" / "split1" / "k2" / "config.toml").read_text()
    assert str(out / "sweep" / "split1" / "k1" / "ranking" / "heads.csv") in config
    for name in ("rank_intervals", "agreement", "k_sweep", "stances"):
        assert (out / "figures" / f"{name}.html").is_file()
    assert 'id="fig-k-sweep"' in (out / "report.html").read_text()
    text = (out / "study.md").read_text()
    assert "## 6. The K sweep" in text and "| 1 | 2 |" in text
    # Both stances in the main comparison: base, spt, sft over every round, controls round 1.
    assert "| method | keeps right | corrects own wrong | discrimination |" in text
    rounds = {r["method"]: r["stances"]["model"]["rounds"] for r in record["main"]["rows"]}
    assert rounds["spt"] == rounds["base"] == 5 and rounds["random-0"] == 1
    assert "figures/stances.png" in text
    assert all("kl" not in r for r in record["sweep"])  # no --kl-text: none measured
    sweep_rows = [
        r for r in text.split("## 6. The K sweep")[1].splitlines() if r[:4] in ("| 0 ", "| 1 ")
    ]
    assert len(sweep_rows) == 4 and all(r.endswith("| - |") for r in sweep_rows)  # KL cells
    assert list(record["seconds"]) == ["protocols", "agreement", "main", "sweep", "selection"]
    _check_selection(record["selection"], out, text)
    assert all(s > 0 for s in record["seconds"].values()) and "Time (wall clock" in text
    held = record["protocols"]["held_out"]  # 24 questions, half held out by --eval-fraction 0.5
    assert held["n"] == 12 and 0 <= held["correct"]["k"] <= 12
    assert f"First answers on all {held['n']} held-out questions" in text
    # Lose the end of the study: one draw of one sweep point and the summary.
    lost = out / "sweep" / "split1" / "k2" / "random_layer-1"
    kept = (out / "main" / "spt" / "result.json").stat().st_mtime_ns
    before = record["sweep"]
    for path in (lost / "result.json", out / "study.json", out / "sweep/split1/k2/report.json"):
        path.unlink()
    again = _study(model, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "main" / "spt" / "result.json").stat().st_mtime_ns == kept  # not rerun
    assert json.loads((out / "study.json").read_text())["sweep"] == before  # same numbers
    changed = _study(model, out, "--steps", "3")
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr[-2000:]
    assert "steps" in changed.stderr


def test_ranking_agreement_by_hand():
    from sycointerp.stability import rank_positions, ranking_agreement

    a = [(0, 0), (0, 1), (1, 0)]
    b = [(0, 1), (0, 0), (1, 0)]
    assert rank_positions(b).tolist() == [1.0, 0.0, 2.0]
    # positions [0, 1, 2] vs [1, 0, 2]: sum d^2 = 2, rho = 1 - 6 * 2 / (3 * 8) = 0.5
    overlap, rho = ranking_agreement(a, b, k=2)
    assert overlap == 1.0 and rho == pytest.approx(0.5)
    assert ranking_agreement(a, b, k=1)[0] == 0.0
    with pytest.raises(ValueError, match="same cells"):
        ranking_agreement(a, [(0, 0), (0, 1), (2, 0)], k=1)


def _check_selection(selection: dict, out: Path, text: str) -> None:
    """The selection stage of the small study: every recipe against its matched controls."""
    names = [r["name"] for r in selection["recipes"]]
    assert names == ["paper", "path-flip", "loss_gradient", "pooled_wordings", "probe"]
    assert selection["draws"] == 2 and all(r["draws"] == 2 for r in selection["recipes"])
    main = json.loads((out / "main" / "heads.json").read_text())
    assert selection["recipes"][0]["heads"] == main["heads"]
    assert selection["recipes"][0]["overlap_with_paper"] == 1.0
    paper = SycophancyEval.load(out / "main" / "spt")
    for row in selection["recipes"][1:]:
        where = out / "selection" / row["name"]
        config = (where / "config.toml").read_text()
        assert 'methods = [\n    "spt",\n    "random_layer",\n]' in config
        assert row["source"].startswith(f"top-2 of {row['name'].split('-')[0]} (")
        # Same questions as the paper's run, so the pairing is item by item.
        mine = SycophancyEval.load(where / "spt")
        assert [it.question_id for it in mine.items] == [it.question_id for it in paper.items]
        both = [
            q.question_id
            for q, r in zip(mine.items, paper.items)
            if q.correct_before and r.correct_before
        ]
        assert row["vs_paper"]["truthfulness"]["n"] == len(both)
    pairs = selection["pairwise"]
    assert len(pairs) == 10 and (pairs[0]["a"], pairs[0]["b"]) == ("paper", "path-flip")
    ranking = json.loads((out / "selection" / "path-flip" / "ranking" / "result.json").read_text())
    assert ranking["metric"] == "flip" and ranking["meta"]["selection"] == "path"
    for measure in ("confidence", "truthfulness"):
        found = selection["power"][measure]
        assert found["observed_draws"] == 2 and found["questions"] == 6
        if "difference" in found:  # estimable: planned for the stage's draws, never below z^2/n
            assert found["draws"] == 2 and found["difference"] >= 7.8 / found["items"] - 1e-9
            assert found["questions_for_10_points"] >= found["items_for_10_points"]
        else:
            assert found["items"] < 2 and "fewer than 2 items" in found["reason"]
    assert "## 7. Which heads to tune" in text and "| loss_gradient |" in text
    assert "Recipes against each other" in text
    assert (out / "figures" / "selection.html").is_file()
    assert 'id="fig-selection"' in (out / "report.html").read_text()


def test_the_selection_comparison_refuses_runs_of_other_questions():
    from sycointerp.workflows.output import OutputError
    from sycointerp.workflows.study import _same_questions

    a, b = _eval([(1, 0, 1), (1, 1, 0)]), _eval([(1, 0, 1), (1, 1, 0)])
    _same_questions({"spt": a, "uniform:random-0": b})
    other = SycophancyEval("m", "challenge", "judge", (*b.items[:1], b.items[1].__class__(
        "q9", False, "f", "r", "a", True, False, True)))  # fmt: skip
    with pytest.raises(OutputError, match="uniform:random-0 was evaluated on other questions"):
        _same_questions({"spt": a, "uniform:random-0": other})
