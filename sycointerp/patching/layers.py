"""Activation patching of whole layers' residual-stream activations, by position.

Components (hook ``blocks.{l}.hook_{component}``, ``[batch, pos, d_model]``):
- ``"resid_pre"``: the residual stream entering layer ``l``. At every position at once it is the
  run's whole state at that layer, so patching it there reproduces the source run exactly
  (effect = ``metric(source) - metric(base)``: a completeness check of the patching machinery).
- ``"attn_out"``, ``"mlp_out"``: what layer ``l``'s attention / MLP block adds to the stream.

Direction and effect as in :mod:`sycointerp.patching.activation` (``"denoise"`` writes the
counterfactual run into the reference run; effect = ``metric(patched) - metric(base run)``).

Positions:
- ``"each"`` (default): one cell per (layer, absolute prompt position ``0 .. max_len - 1``);
  components ``("layer", "pos")``; refuses unaligned pairs. Where an example is shorter than
  ``pos + 1`` tokens its effect is defined as exactly 0; positions before a pair's first differing
  token have effect 0 up to float rounding (both runs agree there).
- ``"last"`` (pairs may differ in length) and ``"all"`` (aligned pairs): one cell per layer;
  components ``("layer",)``, so the result has no heads table.

Reference semantics for ``"each"``: TransformerLens's
``get_act_patch_{resid_pre,attn_out,mlp_out}``.

Cost: ``n_layers [* max_len] * n_examples`` patched rows, ``batch_size`` per forward, plus one
source run caching ``n_layers x examples x pos x d_model`` floats (the last position for
``"last"``).
"""

from collections.abc import Sequence
from typing import Literal

from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.pairs import PromptPair
from sycointerp.metrics import PatchMetric
from sycointerp.patching._engine import Engine
from sycointerp.patching.activation import Direction, Sites, Where, patch_sites
from sycointerp.patching.results import PatchResult

__all__ = ["patch_layers"]

LayerComponent = Literal["resid_pre", "attn_out", "mlp_out"]


def patch_layers(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    *,
    component: LayerComponent,
    position: Where = "each",
    direction: Direction = "denoise",
    batch_size: int = 64,
    engine: Engine = "auto",
) -> PatchResult:
    """Patch each layer's ``component`` activation from the source run into the base run.

    Args:
        component: ``"resid_pre"``, ``"attn_out"`` or ``"mlp_out"``.
        position: ``"each"``, ``"last"`` or ``"all"`` (see module doc).
        direction: ``"denoise"`` (counterfactual into reference) or ``"noise"``.
        batch_size: cap on rows per forward.
        engine: ``"auto"`` (resumed runs) or ``"hooked"`` (full forwards); see ``patch_heads``.

    Returns:
        Values ``[layer, pos, example]`` for ``"each"``, else ``[layer, example]``.

    Raises:
        ValueError: empty pairs, bad options, unaligned pairs with ``"all"``/``"each"``, NaN metric.
        RuntimeError: a run lacks patched positions.
    """
    if component not in ("resid_pre", "attn_out", "mlp_out"):
        raise ValueError(
            f"component must be 'resid_pre', 'attn_out' or 'mlp_out', got {component!r}"
        )
    names = tuple(f"blocks.{l}.hook_{component}" for l in range(model.cfg.n_layers))
    return patch_sites(
        model,
        pairs,
        metric,
        Sites(component, names),
        position=position,
        direction=direction,
        batch_size=batch_size,
        engine=engine,
    )
