"""Patching techniques, one per module, behind one signature:
``f(model, pairs, metric, **options) -> PatchResult``.

Pair batches (``PairBatch``) and patch metrics (``PatchMetric``, ``flip_metric``, ...) come from
:mod:`sycointerp.data.batch` and :mod:`sycointerp.metrics`, head sets and random draws from
:mod:`sycointerp.heads`; they are re-exported here for convenience. ``ablation`` holds the
head-ablation context manager (``ablate_heads``); ``knockout`` verifies a ranking instead: the
metric (and apology rate) with the top-k heads ablated against k random heads
(``knockout_curve(model, pairs, metric, ranking, ks) -> KnockoutCurve``). ``attention`` reads where
chosen heads look from the last position (``head_attention``) and their attention mass on the
challenge turn (``challenge_share``).
"""

from sycointerp.data.batch import PairBatch
from sycointerp.heads import HEADS_CSV_COLUMNS, draw_layer_matched, draw_random_heads
from sycointerp.metrics import PatchMetric, apology_logit_diff_metric, apology_metric, flip_metric
from sycointerp.patching.ablation import ablate_heads, head_means
from sycointerp.patching.activation import patch_head_outputs, patch_heads
from sycointerp.patching.attention import (
    HeadAttention,
    challenge_share,
    challenge_span,
    head_attention,
)
from sycointerp.patching.attribution import attribution_patch_heads
from sycointerp.patching.controls import SetControls, patch_head_set, set_controls
from sycointerp.patching.knockout import KnockoutCurve, knockout_curve, knockout_metric
from sycointerp.patching.layers import patch_layers
from sycointerp.patching.path import path_patch_heads, path_ranking
from sycointerp.patching.path_receivers import path_patch_to_receivers
from sycointerp.patching.results import PatchResult

__all__ = [
    "SetControls",
    "patch_head_set",
    "set_controls",
    "HEADS_CSV_COLUMNS",
    "KnockoutCurve",
    "PairBatch",
    "PatchMetric",
    "PatchResult",
    "ablate_heads",
    "apology_logit_diff_metric",
    "apology_metric",
    "draw_layer_matched",
    "draw_random_heads",
    "flip_metric",
    "head_means",
    "knockout_curve",
    "knockout_metric",
    "patch_head_outputs",
    "patch_heads",
    "patch_layers",
    "path_patch_heads",
    "path_ranking",
    "path_patch_to_receivers",
    "attribution_patch_heads",
    "HeadAttention",
    "challenge_share",
    "challenge_span",
    "head_attention",
]
