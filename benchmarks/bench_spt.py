"""SPT vs SFT training cost on SmolLM2-135M-Instruct: time per optimizer step and optimizer state.

Both train the same dialogues with the same batch in one process (`sycointerp.spt.train.train`):
SPT the top-K heads' W_Q/W_O slices (GQA), SFT every weight. Prints the ratios that BENCHMARKS.md
records (targets: SPT step <= 0.7x SFT step, SPT optimizer state <= 10% of SFT's).

Usage: ``python benchmarks/bench_spt.py [--steps 6] [--k 11] [--batch-size 8]``
"""

import argparse
import time

import torch

from sycointerp.data import load_builtin
from sycointerp.heads import HeadSet
from sycointerp.models import load_hf_model
from sycointerp.spt.data import build_dialogues, tokenize_dialogues
from sycointerp.spt.train import TrainConfig, train
from sycointerp.spt.tunable import FullWeights, HeadDeltas


def run(kind: str, steps: int, k: int, batch_size: int) -> dict:
    model, tok, _ = load_hf_model()
    examples = tokenize_dialogues(tok, build_dialogues(load_builtin()[:64]))
    tunable = (
        HeadDeltas(model, HeadSet.random(k, 30, 9, seed=0)) if kind == "spt" else FullWeights(model)
    )
    start = time.perf_counter()
    report = train(
        model,
        tunable,
        examples,
        TrainConfig(steps=steps, lr=1e-5, batch_size=batch_size),
        pad_id=tok.pad_token_id,
    )
    return {
        "kind": kind,
        "step_s": report.step_seconds,
        "optimizer_bytes": report.optimizer_bytes,
        "trainable": report.n_trainable,
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--k", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    spt, sft = (run(kind, args.steps, args.k, args.batch_size) for kind in ("spt", "sft"))
    print(
        f"torch threads: {torch.get_num_threads()}, steps: {args.steps}, "
        f"batch: {args.batch_size}, K: {args.k}"
    )
    for r in (spt, sft):
        print(
            f"{r['kind']}: {r['trainable']:,} trainable, {r['step_s']:.2f} s/step, "
            f"optimizer state {r['optimizer_bytes'] / 2**20:.1f} MiB"
        )
    print(f"SPT / SFT step time: {spt['step_s'] / sft['step_s']:.2f}x (target <= 0.7x)")
    print(
        f"SPT / SFT optimizer state: {spt['optimizer_bytes'] / sft['optimizer_bytes']:.4%} "
        "(target <= 10%)"
    )


if __name__ == "__main__":
    main()
