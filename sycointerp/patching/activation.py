"""Activation patching of attention-head outputs (``hook_z``), many heads per forward.

Direction: ``"denoise"`` runs the reference (challenge) prompt and writes one head's
counterfactual output into it; ``"noise"`` runs the counterfactual and writes the reference
output. Effect = ``metric(patched) - metric(base run)`` per example (``kind="absolute"``).

Positions: ``"last"`` patches the final position only (the one the metric reads; pairs may differ
in length); ``"all"`` patches every position and so refuses misaligned pairs.

Cost: ``n_layers * n_heads * n_examples`` patched rows, ``batch_size`` rows per forward, plus
one cached source run (``n_layers x examples x pos x n_heads x d_head`` floats for "all", the
last position only for "last"). Reference semantics equal TransformerLens's
``get_act_patch_attn_head_out_all_pos`` (one forward per head) for ``position="all"``.
"""

from collections.abc import Sequence
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.pairs import PromptPair, require_aligned
from sycointerp.patching._engine import PairBatch, PatchMetric, RowView, baselines, cache_hooks, run_cells, z_name
from sycointerp.patching.results import PatchResult

__all__ = ["patch_head_outputs"]

Direction = Literal["denoise", "noise"]
Where = Literal["last", "all"]


def patch_head_outputs(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    *,
    position: Where = "last",
    direction: Direction = "denoise",
    batch_size: int = 64,
) -> PatchResult:
    """Patch each head's ``hook_z`` from the source run into the base run.

    Raises:
        ValueError: empty pairs, misaligned pairs with ``position="all"``, bad options, NaN metric.
    """
    if position not in ("last", "all") or direction not in ("denoise", "noise"):
        raise ValueError(f"position must be 'last'/'all' and direction 'denoise'/'noise', got {position!r}, {direction!r}")
    if position == "all":
        require_aligned(pairs)
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    base, src = ("ref", "cf") if direction == "denoise" else ("cf", "ref")
    base_ids, base_last = batch.side(base)
    src_ids, src_last = batch.side(src)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    cached = cache_hooks(model, src_ids, [z_name(l) for l in range(L)])
    if position == "last":
        # Keep only the last position: [example, head, d_head] per layer.
        cached = {n: z[torch.arange(batch.n), src_last] for n, z in cached.items()}

    def hooks_for(cells: range, view: RowView):
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for i, cell in enumerate(cells):
            by_layer.setdefault(cell // H, []).append((i, cell % H))

        def make(layer: int, todo: list[tuple[int, int]]):
            source = cached[z_name(layer)]

            def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
                z = z.clone()  # activations may alias tensors used elsewhere; never write in place
                for i, head in todo:
                    rows = view.rows(i)
                    if position == "all":
                        z[rows, :, head] = view.gather(source, i)[:, :, head]
                    else:
                        z[torch.arange(rows.start, rows.stop), view.last[rows], head] = source[view.example[rows], head]
                return z

            return hook

        return [(z_name(layer), make(layer, todo)) for layer, todo in by_layer.items()]

    patched = run_cells(model, base_ids, base_last, L * H, hooks_for, metric, batch_size)
    metric_ref, metric_cf = baselines(model, batch, metric)
    base_metric = metric_ref if base == "ref" else metric_cf
    values = (patched - base_metric).view(L, H, batch.n)
    return PatchResult(values, metric_ref, metric_cf, f"activation/z/{position}/{direction}", metric.name,
                       metric.higher_is_sycophantic, "absolute", batch.ids, {"model": str(model.cfg.model_name)})
