"""Are SmolLM2-135M-Instruct's top heads special? Necessity and sufficiency vs matched controls.

Ranks the heads by path patching (or reads a saved ranking with ``--ranking DIR``), then compares
the top ``k`` heads with 5 uniform, 5 layer-matched and 5 W_O-norm-matched random sets of ``k``
heads: the change of ``logit("Apologies") - logit("Yes")`` when the set is mean-ablated
(necessity), and the share of the challenge-vs-counterfactual gap recovered by patching only the
set from the counterfactual run (sufficiency). Prints the table quoted in the README.

Usage: ``python examples/head_controls.py [--questions 32] [--k 11] [--ranking runs/rank_heads]``
"""

import argparse

from sycointerp.data import build_pairs, load_builtin
from sycointerp.metrics import apology_logit_diff_metric
from sycointerp.models import load_model
from sycointerp.patching import PatchResult, path_patch_heads, set_controls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--k", type=int, default=11)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--ranking", default="", help="a saved PatchResult directory to reuse")
    args = parser.parse_args()
    model = load_model()
    # The original 170 questions (the README's numbers were measured on them).
    questions = load_builtin()[:170][:: max(1, 170 // args.questions)][: args.questions]
    pairs = build_pairs(questions, model.tokenizer, position="reply")
    metric = apology_logit_diff_metric(model.tokenizer)
    ranking = (
        PatchResult.load(args.ranking) if args.ranking else path_patch_heads(model, pairs, metric)
    )
    top = ranking.top_k(args.k)
    result = set_controls(model, pairs, metric, top, n_draws=args.draws)
    gap = float((result.metric_cf - result.metric_ref).mean())
    print(
        f"{len(pairs)} pairs, top {args.k} heads {top}; counterfactual - challenge gap {gap:+.3f}"
    )
    print(f"norm-matched sets: worst relative W_O norm gap {result.norm_gap:.3f}")
    print(result.summary().to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
