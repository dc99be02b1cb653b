"""Is a head set special? Necessity and sufficiency of the selected heads against matched controls.

A ranking's top heads are a finding only if they beat random heads that share their obvious
properties. Three kinds of control set, ``n_draws`` of each (seeded, :mod:`sycointerp.heads`):

- ``"uniform"``: as many heads drawn uniformly from the whole model;
- ``"layer_matched"``: the same number of heads in each layer as the selected set;
- ``"norm_matched"``: for each selected head another head whose ``W_O`` Frobenius norm is within
  ``tolerance`` (relative) of it; where no unused head is that close, the closest unused one
  (the achieved worst relative gap is recorded, so a loose match is visible).

For the selected set and every control set, with ``metric`` read at the last position:

- **necessity**: the metric with the set mean-ablated (:func:`~sycointerp.patching.knockout_metric`)
  minus the unablated metric, per example;
- **sufficiency**: the metric with *only* the set's outputs (``hook_z`` at the last position)
  taken from the counterfactual run, minus the reference metric, per example; its share of the
  whole challenge effect is ``mean(patched - ref) / mean(cf - ref)`` (a ratio of means: per-example
  ratios explode where an example's own effect is near zero), with a bootstrap interval over
  examples.

The selected set is compared with each kind of control *paired by example*
(:meth:`SetControls.comparison`): per example, the selected set's change minus the mean change
over that kind's draws, for necessity and for sufficiency, with a paired bootstrap interval and a
sign-flip p-value over examples (:func:`~sycointerp.stats.paired_difference`). The interval
resamples examples, not draws: with few draws it does not cover the draw-to-draw spread, which
``summary()`` reports as the draws' SD.

Sign conventions are the metric's: for apology metrics a necessary set's ablation *lowers* the
value, and a sufficient set moves the reference towards the counterfactual.

Cost: per set one ablated pass and one patched pass over the pairs (plus one pass caching the
counterfactual ``hook_z`` of the layers involved); ``1 + 3 n_draws`` sets.
"""

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge

from sycointerp._registry import Registry
from sycointerp.data.batch import PairBatch
from sycointerp.data.pairs import PromptPair
from sycointerp.heads import (
    Head,
    HeadGrid,
    check_heads,
    draw_layer_matched,
    draw_random_heads,
    heads_by_layer,
)
from sycointerp.metrics import PatchMetric
from sycointerp.patching._engine import baselines, cache_hooks, run_metric, z_name
from sycointerp.patching.knockout import knockout_metric
from sycointerp.stats import paired_difference

__all__ = [
    "CONTROL_KINDS",
    "ControlKind",
    "SetControls",
    "control_sets",
    "norm_matched_draws",
    "patch_head_set",
    "set_controls",
    "w_o_norms",
]

# A kind's draws: (selected heads, head grid, number of draws, seed, W_O norms [layer, head],
# tolerance) -> (the draws, the worst relative norm gap, or None for kinds that match no norm).
Draw = Callable[
    [Sequence[Head], HeadGrid, int, int, torch.Tensor, float],
    tuple[tuple[tuple[Head, ...], ...], float | None],
]


@dataclass(frozen=True)
class ControlKind:
    """A kind of random control head set.

    Attributes:
        name: ``uniform``, ``layer_matched``, ``norm_matched`` or a registered one.
        label: how a head set of this kind is described ("layer-matched random").
        draw: see :data:`Draw`; seeded, deterministic, never the selected heads themselves
            except where the kind allows it (``uniform``, the paper's control).
        uses_norms: whether ``draw`` reads the W_O norms (others get an empty tensor, so a
            caller computes the norms only when needed).
    """

    name: str
    label: str
    draw: Draw
    uses_norms: bool = False


def _uniform(selected, grid, n_draws, seed, norms, tolerance):
    (draws,) = draw_random_heads(grid.n_layers, grid.n_heads, [len(selected)], n_draws, seed)
    return draws, None


def _layer_matched(selected, grid, n_draws, seed, norms, tolerance):
    return draw_layer_matched(selected, grid, n_draws, seed), None


def _norm_matched(selected, grid, n_draws, seed, norms, tolerance):
    return norm_matched_draws(selected, norms, n_draws, seed, tolerance)


CONTROL_KINDS: Registry[ControlKind] = Registry("control kind")
CONTROL_KINDS.register(ControlKind("uniform", "random", _uniform))
CONTROL_KINDS.register(ControlKind("layer_matched", "layer-matched random", _layer_matched))
CONTROL_KINDS.register(
    ControlKind("norm_matched", "W_O-norm-matched random", _norm_matched, uses_norms=True)
)


def w_o_norms(model: TransformerBridge) -> Float[torch.Tensor, "layer head"]:
    """Frobenius norm of every head's ``W_O`` block (``[d_head, d_model]``): the one W_O norm
    of the package (norm-matched controls here and in the SPT job)."""
    return model.W_O.detach().float().flatten(2).norm(dim=-1).cpu()


def norm_matched_draws(
    selected: Sequence[Head],
    norms: torch.Tensor,
    n_draws: int,
    seed: int = 0,
    tolerance: float = 0.1,
) -> tuple[tuple[tuple[Head, ...], ...], float]:
    """``n_draws`` sets matching each selected head's ``W_O`` norm, and the worst relative gap.

    Each selected head gets a partner drawn uniformly among the unused heads outside the selected
    set whose norm is within ``tolerance`` (relative) of its own; failing that, the closest unused
    head.

    Raises:
        ValueError: invalid heads, ``n_draws < 1``, or more selected heads than others.
    """
    n_layers, n_heads = norms.shape
    selected = check_heads(selected, HeadGrid(n_layers, n_heads, n_heads))
    chosen = set(selected)
    others = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in chosen]
    if n_draws < 1 or len(others) < len(chosen):
        raise ValueError("need n_draws >= 1 and fewer selected heads than other heads")
    rng, worst, draws = random.Random(seed), 0.0, []
    for _ in range(n_draws):
        free, picked = list(others), []
        for layer, head in selected:
            target = float(norms[layer, head])
            gap = {hd: abs(float(norms[hd]) - target) / max(target, 1e-12) for hd in free}
            close = [hd for hd in free if gap[hd] <= tolerance]
            partner = rng.choice(close) if close else min(free, key=lambda hd: (gap[hd], hd))
            worst = max(worst, gap[partner])
            free.remove(partner)
            picked.append(partner)
        draws.append(tuple(sorted(picked)))
    return tuple(draws), worst


def control_sets(
    model: TransformerBridge,
    selected: Sequence[Head],
    n_draws: int = 5,
    seed: int = 0,
    tolerance: float = 0.1,
) -> tuple[dict[str, tuple[tuple[Head, ...], ...]], float]:
    """Every registered kind of control (:data:`CONTROL_KINDS`): ``{kind: draws}``, and the norm
    match's worst relative gap."""
    grid, norms = HeadGrid.of(model), w_o_norms(model)
    out, gaps = {}, []
    for kind in CONTROL_KINDS.values():
        out[kind.name], gap = kind.draw(selected, grid, n_draws, seed, norms, tolerance)
        gaps += [] if gap is None else [gap]
    return out, max(gaps, default=0.0)


@torch.inference_mode()
def patch_head_set(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    heads: Sequence[Head],
    *,
    batch_size: int = 16,
) -> Float[torch.Tensor, " example"]:
    """The metric of the reference run with the listed heads' ``hook_z`` at the last position
    replaced, all at once, by the counterfactual run's (at its own last position).

    Raises:
        ValueError: no heads, heads out of range or repeated, or no pairs.
    """
    by_layer = heads_by_layer(heads, HeadGrid.of(model))
    if not by_layer:
        raise ValueError("patch_head_set needs at least one head")
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    names = [z_name(l) for l in by_layer]
    out = []
    for start in range(0, batch.n, batch_size):
        rows = torch.arange(start, min(start + batch_size, batch.n))
        cached = cache_hooks(model, batch.cf[rows].to(model.cfg.device), names)
        sources = {
            l: cached[z_name(l)][torch.arange(len(rows)), batch.cf_last[rows]] for l in by_layer
        }
        last = batch.ref_last[rows]
        hooks = [(z_name(l), _write_last(sources[l], hs, last)) for l, hs in by_layer.items()]
        ids = batch.ref[rows].to(model.cfg.device)
        out.append(run_metric(model, ids, last, metric, rows, hooks))
    return torch.cat(out).cpu()


def _write_last(source: torch.Tensor, heads: list[int], last: torch.Tensor):
    index = torch.tensor(heads)

    def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
        z = z.clone()  # never write into an activation in place
        rows = torch.arange(z.shape[0], device=z.device)[:, None]
        z[rows, last.to(z.device)[:, None], index.to(z.device)[None, :]] = source[:, index].to(
            z.dtype
        )
        return z

    return hook


@dataclass(frozen=True, eq=False)
class SetControls:
    """Necessity and sufficiency of a selected head set and of its matched controls.

    Attributes:
        selected: the selected heads.
        controls: ``{kind: draws}`` control sets.
        necessity: ``{"selected" | kind: [draw, example]}`` metric change under mean ablation
            (one draw for ``"selected"``).
        sufficiency: same shape, metric change from patching only the set from the counterfactual.
        metric_ref, metric_cf: ``[example]`` unpatched metrics.
        norm_gap: worst relative ``W_O`` norm gap of the norm-matched sets.
        metric: metric name.
    """

    selected: tuple[Head, ...]
    controls: dict[str, tuple[tuple[Head, ...], ...]]
    necessity: dict[str, torch.Tensor]
    sufficiency: dict[str, torch.Tensor]
    metric_ref: torch.Tensor
    metric_cf: torch.Tensor
    norm_gap: float
    metric: str

    def share(
        self, values: torch.Tensor, *, n_boot: int = 2000, seed: int = 0
    ) -> tuple[float, float, float]:
        """``mean(values) / mean(cf - ref)`` over examples, with a 95% bootstrap interval."""
        gap = self.metric_cf - self.metric_ref
        n = gap.shape[0]
        idx = torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))
        boot = values.double()[idx].mean(-1) / gap.double()[idx].mean(-1)
        low, high = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64))
        full = float(gap.double().mean())
        point = float(values.double().mean()) / full if full else math.nan
        return point, float(low), float(high)

    def summary(self) -> pd.DataFrame:
        """One row per set kind: mean necessity, sufficiency share (per draw averaged), draws."""
        rows = []
        for kind in ("selected", *self.controls):
            nec, suf = self.necessity[kind], self.sufficiency[kind]
            shares = [self.share(suf[d])[0] for d in range(suf.shape[0])]
            point, low, high = self.share(suf.mean(0))
            rows.append(
                {
                    "set": kind,
                    "draws": nec.shape[0],
                    "necessity": float(nec.double().mean()),
                    "necessity_draw_sd": float(nec.double().mean(-1).std())
                    if nec.shape[0] > 1
                    else math.nan,
                    "sufficiency_share": point,
                    "share_ci_low": low,
                    "share_ci_high": high,
                    "share_draw_min": min(shares),
                    "share_draw_max": max(shares),
                }
            )
        return pd.DataFrame(rows)

    def comparison(self, *, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
        """Selected minus each kind of control, paired by example (module docstring).

        One row per control kind and measure (``"necessity"``, ``"sufficiency"``): ``diff`` (the
        mean over examples of the selected set's change minus the draws' mean change, in metric
        units), its bootstrap interval, the sign-flip ``p_value`` and ``small`` (fewer than
        :data:`~sycointerp.stats.SMALL_SAMPLE` examples).

        Raises:
            ValueError: a non-finite change (:func:`~sycointerp.stats.paired_difference`).
        """
        rows = []
        for kind in self.controls:
            for measure, values in (
                ("necessity", self.necessity),
                ("sufficiency", self.sufficiency),
            ):
                selected = values["selected"][0].tolist()
                controls = values[kind].double().mean(0).tolist()
                d = paired_difference(selected, controls, n_boot=n_boot, seed=seed)
                rows.append(
                    {
                        "control": kind,
                        "measure": measure,
                        "selected": d.mean_a,
                        "controls_mean": d.mean_b,
                        "diff": d.diff,
                        "ci_low": d.ci_low,
                        "ci_high": d.ci_high,
                        "p_value": d.p_value,
                        "n": d.n,
                        "small": d.small,
                    }
                )
        return pd.DataFrame(rows)


def set_controls(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    selected: Sequence[Head],
    *,
    n_draws: int = 5,
    seed: int = 0,
    tolerance: float = 0.1,
    batch_size: int = 16,
) -> SetControls:
    """Necessity and sufficiency of ``selected`` and of ``n_draws`` controls of each kind.

    Raises:
        ValueError: invalid heads, ``n_draws < 1``, no pairs.
    """
    selected = check_heads(selected, HeadGrid.of(model))
    controls, gap = control_sets(model, selected, n_draws, seed, tolerance)
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    ref, cf = (t.cpu() for t in baselines(model, batch, metric, batch_size))
    necessity, sufficiency = {}, {}
    for kind, draws in {"selected": (selected,), **controls}.items():
        necessity[kind] = torch.stack(
            [knockout_metric(model, pairs, metric, d, batch_size=batch_size) - ref for d in draws]
        )
        sufficiency[kind] = torch.stack(
            [patch_head_set(model, pairs, metric, d, batch_size=batch_size) - ref for d in draws]
        )
    return SetControls(selected, controls, necessity, sufficiency, ref, cf, gap, metric.name)
