"""The SPT experiment's inference-time baselines, ``caa`` and ``iti``: steering instead of tuning,
its coefficient chosen on the training pairs only (registered in :mod:`sycointerp.spt.methods`).

- ``caa``: the residual stream entering block ``steer_layer`` (the middle block by default) is
  shifted by ``alpha`` x the mean challenge-minus-counterfactual vector of the training pairs
  (:func:`sycointerp.steering.caa_vector`).
- ``iti``: the top-K heads by held-out probe accuracy on the training pairs (K = the run's number
  of tuned heads; :func:`sycointerp.probing.probe_heads`) are shifted by ``alpha`` x their
  activation scale along their mass-mean direction.

Coefficient choice (training pairs only; the evaluation questions are never seen): for each
``alpha`` of ``caa_alphas`` / ``iti_alphas``, the mean apology logit difference of the steered
challenge prompts at the reply position (the last token rerun from a cached unsteered run). The
chosen ``alpha`` is the smallest in size that brings it down to the unsteered counterfactual's
mean (the challenge's effect removed); when none does, the one with the lowest mean. The sweep
is kept in the method's ``result.json`` (``"steering"``).
"""

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from sycointerp.data.questions import Question
from sycointerp.heads import Head

__all__ = ["Steer", "prepare_caa", "prepare_iti", "choose_alpha"]

# positions ("last" during generation, "all" for plain text) -> the steering context
Steer = Callable[[str], AbstractContextManager]


def choose_alpha(alphas: list[float], means: list[float], target: float) -> float:
    """The smallest ``|alpha|`` whose mean reaches ``target`` (<=); else the lowest mean's alpha.

    Raises:
        ValueError: empty or unequal lists.
    """
    if not alphas or len(alphas) != len(means):
        raise ValueError("need one mean per alpha, and at least one alpha")
    reaching = [a for a, m in zip(alphas, means) if m <= target]
    if reaching:
        return min(reaching, key=abs)
    return alphas[min(range(len(means)), key=lambda i: means[i])]


@torch.inference_mode()
def _steered_means(model, pairs, metric, steers: list[Steer], batch_size: int = 32) -> list[float]:
    """Mean metric of the challenge prompts under each ``steer("last")``.

    Steering at ``"last"`` changes nothing before each prompt's last token, so one unsteered run
    per chunk caches every layer's keys/values of the earlier positions, and each steering reruns
    only the last token through every layer (a one-position resumed run, in which the forward's
    last position is each prompt's own last token whatever the padding). Equal to one full
    forward per prompt (test); architectures without resumed runs take those full forwards,
    batching only prompts of equal length. The resumed run starts at the first layer from the
    cached residual stream, so a steering hooked before it (the embeddings) would not fire there;
    both baselines steer inside the layers.
    """
    from sycointerp.chat import pad_right
    from sycointerp.metrics import last_logits_equal_length
    from sycointerp.patching._resume import build_state, resume_logits, supports_resume

    prompts = [p.ref_ids for p in pairs]
    rows = torch.arange(len(prompts))
    if not supports_resume(model):
        means = []
        for steer in steers:
            with steer("last"):
                logits = last_logits_equal_length(model, prompts, batch_size=16)
            means.append(float(metric(logits, rows).mean()))
        return means
    sums = [0.0] * len(steers)
    for start in range(0, len(prompts), batch_size):
        ids, lengths = pad_right(
            prompts[start : start + batch_size], model.tokenizer.pad_token_id or 0
        )
        last = torch.as_tensor(lengths) - 1
        state = build_state(model, ids, last, last, metric.token_ids)
        for i, steer in enumerate(steers):
            with steer("last"):
                logits = resume_logits(model, state, 1, 0, metric.token_ids)
            sums[i] += float(metric(logits.float(), rows[start : start + len(last)]).sum())
    return [total / len(prompts) for total in sums]


def _pairs_and_metric(model, train_qs: list[Question], options: Mapping[str, Any]):
    from sycointerp.data.pairs import build_pairs
    from sycointerp.metrics import apology_logit_diff_metric

    tok = model.tokenizer
    pairs = build_pairs(train_qs, tok, position="reply", system=options["system"] or None)
    return pairs, apology_logit_diff_metric(tok)


def _choose(
    model, pairs, metric, alphas: list[float], make, record: dict[str, Any], toward: bool = False
) -> Steer:
    """Sweep ``alphas`` on the training pairs; the chosen steering (``record`` gets the sweep).
    Steering toward sycophancy (``toward``, an induction experiment) takes the alpha with the
    highest mean instead."""
    base = _baselines(model, pairs, metric)
    means = _steered_means(model, pairs, metric, [make(a) for a in alphas])
    if toward:
        chosen = alphas[max(range(len(means)), key=lambda i: means[i])]
        record["toward_sycophancy"] = True
    else:
        chosen = choose_alpha(alphas, means, base["counterfactual"])
    record.update({"alphas": alphas, "challenge_means": means, **base, "alpha": chosen})
    return make(chosen)


def prepare_caa(
    model,
    train_qs: list[Question],
    k: int,
    options: Mapping[str, Any],
    *,
    save_dir: Path | None = None,
    reference: list[Head] | None = None,
) -> tuple[Steer, dict[str, Any]]:
    """CAA: the residual stream entering block ``options["steer_layer"]`` (-1: the middle one)
    shifted by ``alpha`` x the mean challenge-minus-counterfactual vector of the training pairs,
    ``alpha`` chosen among ``options["caa_alphas"]``. Returns the steering and its record.

    ``k``, ``save_dir`` and ``reference`` are the shared signature's; CAA steers no heads.
    """
    from sycointerp.steering import caa_vector, steer_residual

    pairs, metric = _pairs_and_metric(model, train_qs, options)
    record: dict[str, Any] = {"n_train_pairs": len(pairs)}
    layer = options["steer_layer"] if options["steer_layer"] >= 0 else model.cfg.n_layers // 2
    vector = caa_vector(model, pairs, layer)
    record.update({"layer": layer, "vector_norm": float(vector.norm())})

    def make(alpha: float) -> Steer:
        return lambda positions: steer_residual(model, vector, layer, alpha, positions=positions)

    toward = bool(options.get("steer_toward", False))
    return _choose(model, pairs, metric, options["caa_alphas"], make, record, toward), record


def prepare_iti(
    model,
    train_qs: list[Question],
    k: int,
    options: Mapping[str, Any],
    *,
    save_dir: Path | None = None,
    reference: list[Head] | None = None,
) -> tuple[Steer, dict[str, Any]]:
    """ITI: the top-``k`` heads by held-out probe accuracy on the training pairs shifted by
    ``alpha`` x their activation scale along their mass-mean direction, ``alpha`` chosen among
    ``options["iti_alphas"]``. Returns the steering and its record.

    The probe ranking is saved to ``save_dir / "probe"`` (a patch result: heatmaps, ``heads.csv``
    and head sets work on it unchanged) and, given the path-patching ``reference`` ranking of
    every head, the record holds their agreement: top-``k`` overlap and Spearman.
    """
    from sycointerp.heads import HeadSet
    from sycointerp.probing import probe_heads
    from sycointerp.steering import steer_heads

    pairs, metric = _pairs_and_metric(model, train_qs, options)
    record: dict[str, Any] = {"n_train_pairs": len(pairs)}
    ranking, directions = probe_heads(model, pairs, seed=options["seed"])
    heads = HeadSet.top_k(ranking, k).heads
    dirs, scales = directions.for_heads(heads)
    record["heads"] = [list(h) for h in heads]
    record["probe_accuracy"] = [float(ranking.mean[h]) for h in heads]
    if save_dir is not None:
        ranking.save(save_dir / "probe")
    if reference is not None:
        record["agreement"] = _agreement(ranking.rank(), reference, k)

    def make(alpha: float) -> Steer:
        return lambda positions: steer_heads(model, heads, dirs, scales, alpha, positions=positions)

    toward = bool(options.get("steer_toward", False))
    return _choose(model, pairs, metric, options["iti_alphas"], make, record, toward), record


def _agreement(probe: list[Head], reference: list[Head], k: int) -> dict[str, Any]:
    """How the probe ranking agrees with the path-patching one (both over every head)."""
    from sycointerp.stability import ranking_agreement

    overlap, rho = ranking_agreement(probe, reference, k)
    return {"reference": "path patching", "k": k, "top_k_overlap": overlap, "spearman": rho}


@torch.inference_mode()
def _baselines(model, pairs, metric) -> dict[str, float]:
    """Unsteered means of the challenge and counterfactual prompts (right padding is exact
    without steering)."""
    from sycointerp.metrics import last_logits

    pad = model.tokenizer.pad_token_id or 0
    rows = torch.arange(len(pairs))
    ref = metric(last_logits(model, [p.ref_ids for p in pairs], pad_id=pad), rows)
    cf = metric(last_logits(model, [p.cf_ids for p in pairs], pad_id=pad), rows)
    return {"challenge": float(ref.mean()), "counterfactual": float(cf.mean())}
