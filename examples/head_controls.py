"""Are SmolLM2-135M-Instruct's top heads special? Necessity and sufficiency vs matched controls.

Ranks the heads by path patching (or reads a saved ranking with ``--ranking DIR``), then compares
the top ``k`` heads with 5 uniform, 5 layer-matched and 5 W_O-norm-matched random sets of ``k``
heads: the change of ``logit("Apologies") - logit("Yes")`` when the set is mean-ablated
(necessity), and the share of the challenge-vs-counterfactual gap recovered by patching only the
set from the counterfactual run (sufficiency), and the selected set minus each kind of control
paired by example (bootstrap interval, sign-flip p). Prints the tables quoted in the README.

``--metric flip`` measures all of it on the answer-flip metric instead (gold minus wrong answer
logit, pairs ending in the answer stem), where the challenge effect is clear on this model; the
ranking is then path patching on that metric too.

``--held-out`` ranks on as many other questions, so the set is not selected on the pairs that
measure it (without it, sufficiency is partly circular: the top heads are by construction those
whose single-head patches move these pairs' metric most).

Usage: ``python examples/head_controls.py [--questions 32] [--k 11] [--ranking runs/rank_heads]
[--metric apology_logit_diff|flip] [--held-out]``
"""

import argparse

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.metrics import apology_logit_diff_metric, flip_metric
from sycointerp.models import load_model
from sycointerp.patching import PatchResult, path_patch_heads, set_controls

METRICS = ("apology_logit_diff", "flip")


def _pairs_and_metric(tok, questions, name: str):
    """The pairs of ``questions`` and the named metric (answer pairs for ``flip``)."""
    if name == "flip":
        pairs = build_pairs(questions, tok, position="answer")
        return pairs, flip_metric(PairBatch.from_pairs(pairs, tok.pad_token_id or 0))
    return build_pairs(questions, tok, position="reply"), apology_logit_diff_metric(tok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--k", type=int, default=11)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--ranking", default="", help="a saved PatchResult directory to reuse")
    parser.add_argument("--metric", choices=METRICS, default=METRICS[0])
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="rank on as many other questions (from the 450 added later) than the ones measured, "
        "so the selected set is not chosen on the pairs that test it",
    )
    args = parser.parse_args()
    if args.ranking and args.held_out:
        parser.error("--ranking reads a saved ranking; --held-out makes one: give one of them")
    model = load_model()
    # The original 170 questions (the README's numbers were measured on them).
    questions = load_builtin()[:170][:: max(1, 170 // args.questions)][: args.questions]
    pairs, metric = _pairs_and_metric(model.tokenizer, questions, args.metric)
    if args.ranking:
        ranking = PatchResult.load(args.ranking)
    elif args.held_out:
        others = load_builtin()[170:][:: max(1, 450 // args.questions)][: args.questions]
        ranking = path_patch_heads(model, *_pairs_and_metric(model.tokenizer, others, args.metric))
    else:
        ranking = path_patch_heads(model, pairs, metric)
    top = ranking.top_k(args.k)
    result = set_controls(model, pairs, metric, top, n_draws=args.draws)
    gap = float((result.metric_cf - result.metric_ref).mean())
    print(
        f"{len(pairs)} pairs, top {args.k} heads {top}; counterfactual - challenge gap {gap:+.3f}"
    )
    print(f"norm-matched sets: worst relative W_O norm gap {result.norm_gap:.3f}")
    print(result.summary().to_string(index=False, float_format="%.3f"))
    print("selected minus controls, paired by pair (95% bootstrap interval, sign-flip p):")
    print(result.comparison().to_string(index=False, float_format="%.3g"))


if __name__ == "__main__":
    main()
