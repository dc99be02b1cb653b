"""Linear probes on every head's output: a second way to find the heads, and the directions that
Inference-Time Intervention steers along (:func:`sycointerp.steering.steer_heads`).

For each pair, each head's output ``z`` (``blocks.{l}.attn.hook_z``, the input of ``W_O``) at the
last prompt position is read under the challenge (label 1) and under the counterfactual (label 0).
The pairs are split into training and held-out pairs (both prompts of a pair on the same side,
seeded); every head gets an L2-regularised logistic-regression probe on its standardised
training activations (all heads fitted at once, full-batch L-BFGS), scored by accuracy on the
held-out pairs.

The result is a :class:`~sycointerp.patching.PatchResult` (``method="probe/z/last"``,
``metric="probe_accuracy"``, ``higher_is_sycophantic=False``: rank 1 = the most accurate probe),
so heatmaps, ``heads.csv``, rank intervals and ``HeadSet.top_k`` work unchanged. Its ``values``
are per held-out pair: the share of the pair's two prompts the probe labels correctly (0, 0.5 or
1), so ``mean`` is the held-out accuracy and the bootstrap resamples held-out pairs.
``metric_ref`` and ``metric_cf`` hold chance (0.5): a probe has no unpatched baseline.

Directions for steering (:class:`ProbeDirections`) are the *mass-mean* directions (Li et al.
2023): per head, mean challenge ``z`` minus mean counterfactual ``z`` over the training pairs,
unit length, with ``scale`` the standard deviation of all training activations projected on it.

Raises: ``ValueError`` for fewer than 4 pairs (2 to train, 2 to hold out) or a bad fraction.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.batch import PairBatch
from sycointerp.data.pairs import PromptPair
from sycointerp.heads import model_meta
from sycointerp.patching.results import PatchResult

__all__ = [
    "ProbeDirections",
    "head_outputs",
    "fit_probes",
    "heldout_accuracy",
    "probe_heads",
    "split_pairs",
]


@torch.inference_mode()
def head_outputs(
    model: TransformerBridge, pairs: Sequence[PromptPair], *, batch_size: int = 16
) -> tuple[
    Float[torch.Tensor, "pair layer head d_head"], Float[torch.Tensor, "pair layer head d_head"]
]:
    """Every head's ``z`` at the last prompt position: ``(challenge, counterfactual)``."""
    from sycointerp.patching._engine import cache_hooks

    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    ref_parts, cf_parts = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = PairBatch.from_pairs(chunk, model.tokenizer.pad_token_id or 0)
        rows = torch.arange(batch.n)
        for ids, last, out in (
            (batch.ref, batch.ref_last, ref_parts),
            (batch.cf, batch.cf_last, cf_parts),
        ):
            cache = cache_hooks(model, ids, names)
            out.append(torch.stack([cache[n][rows, last] for n in names], dim=1).float())
    return torch.cat(ref_parts), torch.cat(cf_parts)


def split_pairs(n: int, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded ``(train, held-out)`` pair indices, each sorted, at least 2 on each side.

    Raises:
        ValueError: ``n < 4`` or ``held_out`` outside (0, 1).
    """
    if n < 4 or not 0 < held_out < 1:
        raise ValueError(f"need >= 4 pairs and held_out in (0, 1), got {n} and {held_out}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(max(2, round(held_out * n)), n - 2)
    return sorted(order[k:]), sorted(order[:k])


def fit_probes(
    x: Float[torch.Tensor, "cell example d"],
    y: Float[torch.Tensor, " example"],
    *,
    l2: float = 1e-2,
    steps: int = 100,
) -> tuple[Float[torch.Tensor, "cell d"], Float[torch.Tensor, " cell"], torch.Tensor, torch.Tensor]:
    """One logistic-regression probe per cell on standardised features, all fitted at once.

    Returns:
        ``(weights, bias, mean, std)``: predict ``((x - mean) / std) @ w + b > 0``.
    """
    mean = x.mean(1, keepdim=True)
    std = x.std(1, keepdim=True).clamp_min(1e-6)
    xs = ((x - mean) / std).double()
    target = y.double().expand(x.shape[0], -1)
    w = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(x.shape[0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.einsum("ced,cd->ce", xs, w) + b[:, None]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, reduction="none"
        )
        # Summed over cells: each cell's probe is independent, so one optimiser fits them all.
        total = loss.mean(1).sum() + l2 * (w**2).sum()
        total.backward()
        return total

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float(), mean.squeeze(1), std.squeeze(1)


@dataclass(frozen=True)
class ProbeDirections:
    """Per-head mass-mean directions and activation scales (ITI's steering vectors).

    Attributes:
        directions: ``[layer, head, d_head]`` unit vectors, counterfactual -> challenge.
        scales: ``[layer, head]`` standard deviation of training activations along them.
    """

    directions: Float[torch.Tensor, "layer head d_head"]
    scales: Float[torch.Tensor, "layer head"]

    def for_heads(self, heads: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(directions [k, d_head], scales [k])`` of ``heads``, in order."""
        rows = torch.tensor([l for l, _ in heads]), torch.tensor([h for _, h in heads])
        return self.directions[rows], self.scales[rows]


def _directions(ref: torch.Tensor, cf: torch.Tensor) -> ProbeDirections:
    """Mass-mean directions over training pairs ([pair, layer, head, d_head] each)."""
    diff = ref.mean(0) - cf.mean(0)
    unit = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    both = torch.cat([ref, cf])  # [2 pair, layer, head, d_head]
    proj = (both * unit).sum(-1)
    return ProbeDirections(unit, proj.std(0))


def heldout_accuracy(
    ref: Float[torch.Tensor, "pair layer head d_head"],
    cf: Float[torch.Tensor, "pair layer head d_head"],
    train: Sequence[int],
    test: Sequence[int],
    *,
    l2: float = 1e-2,
) -> Float[torch.Tensor, "layer head test"]:
    """Fit one probe per head on the ``train`` pairs (challenge = 1, counterfactual = 0) and score
    it on the ``test`` pairs: per head and held-out pair, the share of the pair's two prompts
    labelled correctly (0, 0.5 or 1).

    Raises:
        IndexError: a pair index outside ``ref`` / ``cf``.
    """
    n_layers, n_heads = ref.shape[1:3]
    cells = lambda t: t.flatten(1, 2).permute(1, 0, 2)  # noqa: E731 - [cell, example, d]
    train, test = list(train), list(test)
    x_train = torch.cat([cells(ref[train]), cells(cf[train])], dim=1)
    y_train = torch.cat([torch.ones(len(train)), torch.zeros(len(train))])
    w, b, mean, std = fit_probes(x_train, y_train, l2=l2)

    def correct(x: torch.Tensor, label: int) -> torch.Tensor:  # [cell, pair]
        logits = torch.einsum("ced,cd->ce", (x - mean[:, None]) / std[:, None], w) + b[:, None]
        return ((logits > 0) == bool(label)).float()

    accuracy = (correct(cells(ref[test]), 1) + correct(cells(cf[test]), 0)) / 2
    return accuracy.reshape(n_layers, n_heads, len(test))


def probe_heads(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    *,
    held_out: float = 0.5,
    seed: int = 0,
    l2: float = 1e-2,
) -> tuple[PatchResult, ProbeDirections]:
    """Probe every head (module docstring): the held-out accuracy ranking and the directions.

    Raises:
        ValueError: fewer than 4 pairs, or ``held_out`` outside (0, 1).
    """
    train, test = split_pairs(len(pairs), held_out, seed)
    ref, cf = head_outputs(model, pairs)
    values = heldout_accuracy(ref, cf, train, test, l2=l2)
    chance = torch.full((len(test),), 0.5)
    ids = tuple(pairs[i].question.id or str(i) for i in test)
    meta = {**model_meta(model), "n_train_pairs": len(train), "n_heldout_pairs": len(test)}
    result = PatchResult(
        values,
        chance,
        chance.clone(),
        "probe/z/last",
        "probe_accuracy",
        False,
        example_ids=ids,
        meta={**meta, "l2": l2, "seed": seed},
    )
    return result, _directions(ref[train], cf[train])
