"""Probes beside path patching, and Confidence against the steering coefficient (CAA and ITI).

On SmolLM2-135M-Instruct, with the SPT job's data: challenge / counterfactual pairs of the paper's
challenge on training questions (split 50 / 50, seed 0, as ``sycointerp spt``), then

1. every head ranked twice, by path patching (the apology logit difference) and by linear probes
   on ``hook_z`` (held-out accuracy at telling the challenge from the counterfactual): both
   heatmaps side by side, and the rankings' top-K overlap and Spearman correlation;
2. the multi-turn evaluation on held-out questions (the study's protocol: the teacher challenge,
   final answer generated freely) under CAA at the middle block and ITI on the top-K probe
   heads, for a few coefficients each: Confidence and Truthfulness against the coefficient,
   with Wilson 95% intervals. Coefficient 0 is the unsteered model, shared by both lines.

Prints the tables quoted in the README, writes ``--out/steering.json`` and the figures.

Usage: ``python examples/steering.py [--pairs 64] [--eval 60] [--out runs/steering]``
"""

import argparse
import json
from pathlib import Path

import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.evaluate import evaluate_sycophancy
from sycointerp.heads import HeadSet
from sycointerp.metrics import apology_logit_diff_metric
from sycointerp.models import load_model
from sycointerp.patching import path_patch_heads
from sycointerp.plot import coefficient_plot, save_figure, side_by_side_heatmaps
from sycointerp.probing import probe_heads
from sycointerp.spt.data import split_questions
from sycointerp.stability import ranking_agreement
from sycointerp.steering import caa_vector, steer_heads, steer_residual

K = 11  # heads steered by ITI: 4% of SmolLM2's 270, as SPT tunes


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="training pairs ranked and probed")
    parser.add_argument("--eval", type=int, default=60, help="held-out questions evaluated")
    parser.add_argument("--caa", default="-1,-2,-4", help="CAA coefficients (besides 0)")
    parser.add_argument("--iti", default="-2,-5,-10", help="ITI coefficients (besides 0)")
    parser.add_argument("--out", default="runs/steering")
    parser.add_argument("--figures", default="figures", help="where the PNG/HTML figures go")
    return parser.parse_args()


def _rates(result) -> dict:
    summary = result.summary()
    return {m: summary[m].to_json() for m in ("confidence", "truthfulness", "apology_rate")}


def main() -> None:
    args = _arguments()
    model = load_model()
    train_qs, eval_qs = split_questions(load_builtin(), eval_fraction=0.5, seed=0)
    pairs = build_pairs(train_qs[: args.pairs], model.tokenizer, position="reply")
    path = path_patch_heads(model, pairs, apology_logit_diff_metric(model.tokenizer))
    probe, directions = probe_heads(model, pairs)
    overlap, rho = ranking_agreement(probe.rank(), path.rank(), K)
    print(
        f"probe vs path patching, {len(pairs)} pairs: top-{K} overlap {overlap:.2f}, "
        f"Spearman {rho:.2f}"
    )
    print(
        "probe top heads (held-out accuracy):",
        ", ".join(f"{l}.{h} {float(probe.mean[l, h]):.2f}" for l, h in probe.top_k(K)),
    )
    titles = ["path patching", "linear probes on z"]  # the colour bars name the measures
    title = f"SmolLM2-135M-Instruct, {len(pairs)} training pairs: path patching vs probes"
    fig = side_by_side_heatmaps([path, probe], titles, title=title, top_k=K)
    save_figure(fig, Path(args.figures) / "probe_vs_path_smollm2", width=1400, height=700)

    layer = model.cfg.n_layers // 2
    vector = caa_vector(model, pairs, layer)
    heads = HeadSet.top_k(probe, K).heads
    dirs, scales = directions.for_heads(heads)
    steerings = {
        "caa": lambda a: steer_residual(model, vector, layer, a),
        "iti": lambda a: steer_heads(model, heads, dirs, scales, a),
    }

    def evaluate():  # the study's protocol: teacher challenge, final answer generated freely
        return evaluate_sycophancy(
            model,
            eval_qs[: args.eval],
            challenge="teacher",
            final_stem=False,
            batch_size=32,
            max_new_tokens=32,
            answer_tokens=16,
        )

    base = _rates(evaluate())
    rows = [{"method": m, "alpha": 0.0, **base} for m in steerings]
    for method, alphas in (("caa", args.caa), ("iti", args.iti)):
        for alpha in (float(a) for a in alphas.split(",")):
            with steerings[method](alpha):
                rows.append({"method": method, "alpha": alpha, **_rates(evaluate())})
            print(
                f"{method} alpha {alpha:+g}: Confidence {rows[-1]['confidence']['rate']:.3f}, "
                f"Truthfulness {rows[-1]['truthfulness']['rate']:.3f}"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "pairs": len(pairs),
        "k": K,
        "overlap": overlap,
        "spearman": rho,
        "layer": layer,
        "probe_heads": [list(h) for h in heads],
        "rows": rows,
    }
    (out / "steering.json").write_text(json.dumps(record, indent=2))
    for measure in ("confidence", "truthfulness"):
        save_figure(
            coefficient_plot(rows, measure=measure),
            Path(args.figures) / f"steering_{measure}_smollm2",
        )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
