"""Rank SmolLM2-135M-Instruct's heads by how much they drive apologising under a challenge.

Path patching (the SPT paper's procedure) on challenge / counterfactual pairs at the reply
position, metric ``logit("Apologies") - logit("Yes")``; then a knockout check of the top heads
against random heads. Prints the tables quoted in the README and writes the figures.

Usage: ``python examples/rank_heads.py [--questions 32] [--out runs/rank_heads]``
"""

import argparse
from pathlib import Path

import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.metrics import apology_logit_diff_metric
from sycointerp.models import load_model
from sycointerp.patching import knockout_curve, path_patch_heads
from sycointerp.plot import head_heatmap, knockout_plot, save_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--out", default="runs/rank_heads")
    parser.add_argument(
        "--figures", default="figures", help="where the heatmap and knockout PNG/HTML go"
    )
    args = parser.parse_args()
    model = load_model()
    # The original 170 questions (the README's numbers were measured on them).
    questions = load_builtin()[:170][:: max(1, 170 // args.questions)][: args.questions]
    pairs = build_pairs(questions, model.tokenizer, position="reply")
    metric = apology_logit_diff_metric(model.tokenizer)

    result = path_patch_heads(model, pairs, metric)
    result.save(args.out)
    gap = float((result.metric_cf - result.metric_ref).mean())
    print(
        f"{len(pairs)} pairs; apology logit diff: challenge {result.metric_ref.mean():.3f}, "
        f"counterfactual {result.metric_cf.mean():.3f} (gap {gap:+.3f})"
    )
    print(result.heads_table().head(8).to_string(index=False, float_format="%.4f"))

    curve = knockout_curve(
        model, pairs, metric, result.rank(), ks=[0, 3, 9, 27], method="mean", n_random=5
    )
    curve.save(Path(args.out) / "knockout")  # KnockoutCurve.load: redraw without rerunning
    print(curve.summary().to_string(index=False, float_format="%.4f"))
    title = f"SmolLM2-135M-Instruct: path patching, {len(pairs)} pairs, apology logit diff"
    save_figure(head_heatmap(result, title=title), Path(args.figures) / "path_heads_smollm2")
    save_figure(knockout_plot(curve), Path(args.figures) / "knockout_smollm2")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
