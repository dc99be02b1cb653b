import json

import pytest

from sycointerp.data import (
    DataError,
    Question,
    build_pairs,
    load_builtin,
    load_questions_jsonl,
    save_questions_jsonl,
)
from sycointerp.data.pairs import answer_token_ids

DOMAINS = {"geography", "science", "arithmetic", "everyday", "history"}


def test_builtin_set_is_large_varied_and_unique():
    qs = load_builtin()
    # SmolLM2 answers 374 of the 620 correctly first (60%): a held-out half keeps 181 of them,
    # a 70% held-out split (seed 0) 264 (README, the trust study; generation batches of 64)
    assert len(qs) >= 600
    assert {q.domain for q in qs} == DOMAINS
    for domain in DOMAINS:
        assert sum(q.domain == domain for q in qs) >= 120, domain
    assert len({q.id for q in qs}) == len(qs)
    assert len({q.question for q in qs}) == len(qs)
    assert all(q.stem and q.source == "builtin" for q in qs)


def test_builtin_gold_and_wrong_first_tokens_differ(tokenizer):
    """Every built-in item passes the tokenization rule in the real chat context."""
    pairs = build_pairs(load_builtin(), tokenizer)
    for pair in pairs:
        gold, wrong = pair.answer_ids
        assert gold != wrong
        assert (
            tokenizer.decode([gold]).strip()[:1].lower() == pair.question.answer.strip()[:1].lower()
        )


def test_builtin_domain_filter():
    assert {q.domain for q in load_builtin(["history"])} == {"history"}
    with pytest.raises(DataError, match="unknown domain"):
        load_builtin(["astrology"])


def test_question_validation():
    with pytest.raises(DataError, match="non-empty"):
        Question("", "a", "b")
    with pytest.raises(DataError, match="both"):
        Question("q?", "Paris", "paris")
    with pytest.raises(DataError, match="labels"):
        Question("q?", "a", "b", choices=("a", "b"), labels=("A",), letter="A", wrong_letter="B")
    with pytest.raises(DataError, match="not among labels"):
        Question(
            "q?", "a", "b", choices=("a", "b"), labels=("A", "B"), letter="C", wrong_letter="B"
        )


def test_question_rendering():
    q = Question("What is the capital of France?", "Paris", "Lyon", stem="The capital of France is")
    assert q.first_answer() == "The capital of France is Paris."
    assert q.first_answer(correct=False) == "The capital of France is Lyon."
    mc = Question(
        "Pick", "x", "y", choices=("x", "y"), labels=("A", "B"), letter="A", wrong_letter="B"
    )
    assert mc.first_answer() == "The answer is (A)."
    assert mc.user_text().endswith(
        "(A) x\n(B) y\nPlease answer just with the letter of the correct answer."
    )


def test_jsonl_round_trip(tmp_path):
    qs = load_builtin()[:5] + [
        Question(
            "Pick", "x", "y", choices=("x", "y"), labels=("A", "B"), letter="A", wrong_letter="B"
        )
    ]
    path = tmp_path / "q.jsonl"
    save_questions_jsonl(qs, path)
    assert load_questions_jsonl(path) == qs
    assert len(load_questions_jsonl(path, limit=2)) == 2


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", r"q.jsonl:2: invalid JSON"),
        (
            json.dumps({"question": "q?", "answer": "a"}),
            r"q.jsonl:2: missing field\(s\) \['wrong'\]",
        ),
        (
            json.dumps({"question": "q?", "answer": "a", "wrong": "b", "colour": 1}),
            r"q.jsonl:2: unknown field",
        ),
        (json.dumps([1, 2]), r"q.jsonl:2: expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "q.jsonl"
    path.write_text(
        json.dumps({"question": "q?", "answer": "a", "wrong": "b"}) + "\n" + line + "\n"
    )
    with pytest.raises(DataError, match=match):
        load_questions_jsonl(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no questions"):
        load_questions_jsonl(tmp_path / "e.jsonl")
    with pytest.raises(DataError, match="file not found"):
        load_questions_jsonl(tmp_path / "missing.jsonl")


def test_answers_sharing_first_token_are_refused(tokenizer):
    q = Question("What year?", "1945", "1918", stem="It ended in")
    with pytest.raises(DataError, match="share their first token"):
        answer_token_ids(tokenizer, "It ended in", q, " ")
    ok = Question("What year?", "1945", "2001", stem="It ended in")
    shared, gold, wrong = answer_token_ids(tokenizer, "It ended in", ok, " ")
    assert (
        tokenizer.decode(shared) == " "
        and tokenizer.decode([gold]) == "1"
        and tokenizer.decode([wrong]) == "2"
    )
