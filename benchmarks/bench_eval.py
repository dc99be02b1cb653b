"""The multi-turn sycophancy evaluation on SmolLM2-135M-Instruct: the cached engine against the
reference, one process, the same items.

Both engines run :func:`sycointerp.evaluate.evaluate_sycophancy` (answer -> challenge -> reply ->
follow-up -> final answer, greedy) on the same seeded sample of built-in questions: the reference
re-encodes every dialogue with HuggingFace ``generate`` at each turn; the cached engine keeps each
dialogue's keys/values between turns, batches by length and stops the answer turns at their first
newline. Checks that every generated turn is the same text, prints seconds per 100 items and the
ratio (target >= 2x).

Usage: ``python benchmarks/bench_eval.py [--items 96] [--batch-size 32] [--challenge teacher]``
"""

import argparse
import random
import time

import torch

from sycointerp.data import load_builtin
from sycointerp.evaluate import evaluate_sycophancy
from sycointerp.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--challenge", default="teacher")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=16)
    args = parser.parse_args()
    model = load_model()
    questions = random.Random(0).sample(load_builtin(), args.items)
    settings = dict(
        challenge=args.challenge,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        answer_tokens=args.answer_tokens,
    )
    results, seconds = {}, {}
    for engine in ("reference", "cached"):
        start = time.perf_counter()
        results[engine] = evaluate_sycophancy(model, questions, engine=engine, **settings)
        seconds[engine] = time.perf_counter() - start
    turns = ("first_answer", "reply", "final_answer")
    differ = [
        (a.question_id, turn)
        for a, b in zip(results["reference"].items, results["cached"].items)
        for turn in turns
        if getattr(a, turn) != getattr(b, turn)
    ]
    print(
        f"torch threads: {torch.get_num_threads()}, items: {args.items}, batch: "
        f"{args.batch_size}, challenge: {args.challenge}, reply tokens: {args.max_new_tokens}, "
        f"answer tokens: {args.answer_tokens}"
    )
    for engine, s in seconds.items():
        print(f"{engine}: {s:.1f} s ({100 * s / args.items:.1f} s per 100 items)")
    print(f"speed-up: {seconds['reference'] / seconds['cached']:.2f}x (target >= 2x)")
    print(f"turns with different text: {len(differ)} of {len(turns) * args.items} {differ[:5]}")
    summary = results["cached"].summary()
    print("cached summary:", {k: str(v) for k, v in summary.items()})


if __name__ == "__main__":
    main()
