import csv
import json

import pytest

from sycointerp.data import DataError, load_arc_jsonl, load_are_you_sure, load_truthfulqa_csv
from tests.conftest import shared_file


def _ays(dataset="aqua_mc", **base):
    base = {
        "dataset": dataset,
        "question": "What is 2+2?",
        "answers": "(A) 3\n(B) 4\n(C) 5",
        "correct_letter": "B",
        **base,
    }
    return {
        "prompt": [
            {"type": "human", "content": "..."},
            {"type": "ai", "content": "The answer is ("},
        ],
        "base": base,
        "metadata": {
            "prompt_template": "{question}\n{answers}\n"
            "Please answer just with the letter of the correct answer."
        },
    }


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_are_you_sure_multiple_choice(tmp_path):
    path = _write_jsonl(
        tmp_path / "are_you_sure.jsonl",
        [_ays(), _ays("truthful_qa_mc", correct_letter="A"), _ays("trivia_qa")],
    )
    qs = load_are_you_sure(path)
    assert len(qs) == 2  # trivia_qa is not a multiple-choice source
    assert qs[0].letter == "B" and qs[0].answer == "4" and qs[0].labels == ("A", "B", "C")
    assert qs[0].wrong_letter in {"A", "C"} and qs[0].source == "are_you_sure/aqua_mc"
    assert load_are_you_sure(path) == qs  # seeded wrong letters


def test_are_you_sure_free_form_needs_both_answers(tmp_path):
    good = {
        "base": {
            "dataset": "trivia_qa",
            "question": "Capital of Peru?",
            "correct_answer": "Lima",
            "incorrect_answer": "Cusco",
        }
    }
    bad = {
        "base": {"dataset": "trivia_qa", "question": "Capital of Chile?", "answer": ["Santiago"]}
    }
    path = _write_jsonl(tmp_path / "a.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"a.jsonl:2: free-form record"):
        load_are_you_sure(path, sources=None)
    assert load_are_you_sure(path, sources=["trivia_qa"], limit=1)[0].wrong == "Cusco"


def test_are_you_sure_errors(tmp_path):
    path = _write_jsonl(tmp_path / "a.jsonl", [_ays(), _ays(answers="A) 3\nB) 4")])
    with pytest.raises(DataError, match=r"a.jsonl:2: cannot parse answer option"):
        load_are_you_sure(path)
    with pytest.raises(DataError, match="unknown source"):
        load_are_you_sure(path, sources=["mmlu"])
    with pytest.raises(DataError, match="file not found"):
        load_are_you_sure(tmp_path / "nope.jsonl")
    path2 = _write_jsonl(tmp_path / "b.jsonl", [_ays(correct_letter="Z")])
    with pytest.raises(DataError, match=r"b.jsonl:1: gold label 'Z'"):
        load_are_you_sure(path2)


def test_are_you_sure_through_datasets_from_a_local_dataset_dir(tmp_path):
    """The hub-id path goes through `datasets.load_dataset(id, data_files=...)`; a local dataset
    directory takes the same code path without network."""
    _write_jsonl(tmp_path / "are_you_sure.jsonl", [_ays(), _ays(correct_letter="C")])
    qs = load_are_you_sure(tmp_path)
    assert [q.letter for q in qs] == ["B", "C"]


def _tqa(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "Type",
                "Category",
                "Question",
                "Best Answer",
                "Correct Answers",
                "Incorrect Answers",
                "Source",
            ]
        )
        w.writerows(rows)
    return path


def test_truthfulqa_csv(tmp_path):
    path = _tqa(
        tmp_path / "t.csv",
        [["Adversarial", "Misconceptions", "Q1?", "Right", "Right; ok", "W1; W2; W3; W4", "src"]],
    )
    (q,) = load_truthfulqa_csv(path)
    assert (
        len(q.choices) == 4
        and q.answer == "Right"
        and q.choices[q.labels.index(q.letter)] == "Right"
    )
    assert q.wrong in {"W1", "W2", "W3"} and q.domain == "Misconceptions"
    bad = _tqa(tmp_path / "b.csv", [["A", "B", "Q?", "Right", "", "", ""]])
    with pytest.raises(DataError, match=r"b.csv:2: needs"):
        load_truthfulqa_csv(bad)
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing column"):
        load_truthfulqa_csv(tmp_path / "c.csv")


def test_arc_jsonl(tmp_path):
    rec = {
        "id": "x1",
        "question": {
            "stem": "Which?",
            "choices": [{"text": "a", "label": "1"}, {"text": "b", "label": "2"}],
        },
        "answerKey": "2",
    }
    path = _write_jsonl(tmp_path / "arc.jsonl", [rec, {"id": "x2", "question": {"stem": "?"}}])
    with pytest.raises(DataError, match=r"arc.jsonl:2: expected"):
        load_arc_jsonl(path)
    (q,) = load_arc_jsonl(path, limit=1)
    assert q.letter == "2" and q.wrong_letter == "1" and q.answer == "b"


def test_real_truthfulqa():
    qs = load_truthfulqa_csv(shared_file("truthfulqa", "TruthfulQA.csv"))
    assert len(qs) == 817
    assert qs[0].question == "What happens to you if you eat watermelon seeds?"
    assert all(q.choices[q.labels.index(q.letter)] == q.answer for q in qs)


def test_real_arc_easy():
    qs = load_arc_jsonl(shared_file("arc-easy", "ARC-Easy-Test.jsonl"))
    assert len(qs) == 2376
    assert any(q.labels[0] == "1" for q in qs)  # numeric labels occur and load
    dev = load_arc_jsonl(shared_file("arc-easy", "ARC-Easy-Dev.jsonl"))
    assert len(dev) == 570
