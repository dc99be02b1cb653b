"""Path patching, sender head -> final residual stream, as in the SPT paper.

For every head (L, h), on the reference (challenge) run:
  1. its output (``hook_z``) at the last position is replaced by the counterfactual run's;
  2. every later layer's *attention input* at the last position (``blocks.{l}.ln1.hook_in``,
     l > L: the copy of the residual stream that feeds attention, not the stream itself) is frozen
     to the reference run's value, so the change reaches the logits only through the residual
     stream and the later MLPs (which stay live);
  3. with ``freeze_mlps=True`` the MLP inputs (``ln2.hook_in``) at the last position of layers
     >= L are frozen too, leaving only the direct path to the logits.
Effect = ``metric(patched) - metric(ref)`` (``kind="absolute"``); ``PatchResult.as_relative``
gives the paper's ``(F_patched - F_ref) / F_ref``.

Only the last position is patched, so the pairs may differ in length. Models without a norm before
each sublayer (OLMo 2 normalizes after attention and MLP) have no ``ln1`` / ``ln2`` hooks and are
refused.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.batch import PairBatch
from sycointerp.data.pairs import PromptPair
from sycointerp.metrics import PatchMetric
from sycointerp.patching._engine import (
    Engine,
    Progress,
    RowView,
    Source,
    cell_progress,
    run_cells,
    z_name,
)
from sycointerp.patching.results import PatchResult

__all__ = ["path_patch_heads", "path_ranking", "attn_in_name", "mlp_in_name", "require_norm_inputs"]


def attn_in_name(layer: int) -> str:
    """The hook name of layer ``layer``'s attention input (the residual stream it reads)."""
    return f"blocks.{layer}.ln1.hook_in"


def mlp_in_name(layer: int) -> str:
    """The hook name of layer ``layer``'s MLP input."""
    return f"blocks.{layer}.ln2.hook_in"


def path_patch_heads(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    *,
    freeze_mlps: bool = False,
    batch_size: int = 64,
    engine: Engine = "auto",
    progress: Progress = False,
) -> PatchResult:
    """Score every head by patching its path to the final residual stream (see module doc).

    Every patch touches only the last position at layers >= the sender's, so the default engine
    resumes the cached reference run at the sender's layer for that one position (see
    ``_engine.run_cells``); ``engine="hooked"`` runs full forwards instead (same numbers).

    Args:
        freeze_mlps: also freeze the MLP inputs from the sender's layer on (direct path only).
        batch_size: cap on rows per forward.
        engine: ``"auto"`` (resumed runs where supported) or ``"hooked"``.
        progress: ``True`` shows a bar counting patched cells, ``layers x heads x examples``,
            with the rate and the time left; a callable gets the counts instead (see
            ``_engine.Progress``). Results are the same.

    Raises:
        ValueError: empty pairs, NaN metric, a model without ``ln1`` / ``ln2`` input hooks (OLMo 2).
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    frozen_names = [attn_in_name(l) for l in range(L)] + (
        [mlp_in_name(l) for l in range(L)] if freeze_mlps else []
    )
    require_norm_inputs(model, frozen_names)
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    # One unpatched run per side and example chunk: the reference's (run_cells' base run) gives
    # the frozen inputs and its metric; the counterfactual's (the source, resumed from the
    # reference's shared prefix) gives what the patches write and its metric.
    source = Source(batch.cf, batch.cf_last, tuple(z_name(l) for l in range(L)))

    def hooks_for(cells: range, view: RowView):
        senders = [(i, cell // H, cell % H) for i, cell in enumerate(cells)]

        def at_last(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            rows = view.rows(i)
            return torch.arange(rows.start, rows.stop), view.last[rows]

        def patch_z(layer: int):
            def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
                z = z.clone()
                for i, sl, head in senders:
                    if sl == layer:
                        rows, last = at_last(i)
                        z[rows, last, head] = view.source[z_name(layer)][:, head]
                return z

            return hook

        def freeze(name: str, layer: int, from_layer_after_sender: bool):
            def hook(x: torch.Tensor, hook=None) -> torch.Tensor:
                # Never write in place: the norm's input is the residual stream tensor itself, and
                # an in-place write would freeze the stream, not just this layer's attention input.
                x = x.clone()
                for i, sl, _ in senders:
                    if layer > sl or (not from_layer_after_sender and layer == sl):
                        rows, last = at_last(i)
                        x[rows, last] = view.base[name]
                return x

            return hook

        min_layer = min(sl for _, sl, _ in senders)
        hooks = [(z_name(l), patch_z(l)) for l in sorted({sl for _, sl, _ in senders})]
        hooks += [
            (attn_in_name(l), freeze(attn_in_name(l), l, True)) for l in range(min_layer + 1, L)
        ]
        if freeze_mlps:
            hooks += [
                (mlp_in_name(l), freeze(mlp_in_name(l), l, False)) for l in range(min_layer, L)
            ]
        return hooks

    method = "path/resid" + ("/frozen-mlps" if freeze_mlps else "")
    with cell_progress(progress, L * H * batch.n, method) as advance:
        patched, metric_ref, metric_cf = run_cells(
            model,
            batch.ref,
            batch.ref_last,
            L * H,
            hooks_for,
            metric,
            batch_size,
            first_layer=lambda cell: cell // H,
            start=batch.ref_last,
            engine=engine,
            base_hooks=frozen_names,
            source=source,
            advance=advance,
        )
    values = (patched - metric_ref).view(L, H, batch.n)
    return PatchResult.measured(values, metric_ref, metric_cf, method, metric, batch.ids, model)


def require_norm_inputs(model: TransformerBridge, names: Sequence[str]) -> None:
    """Refuse models without a norm before each sublayer (e.g. OLMo 2, whose norms follow
    attention).

    Raises:
        ValueError: a frozen hook the model lacks, naming its model type.
    """
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        config = getattr(getattr(model, "original_model", None), "config", None)
        raise ValueError(
            "path patching freezes each later layer's attention (and MLP) input at "
            "blocks.{l}.ln1.hook_in (ln2.hook_in); model type "
            f"{getattr(config, 'model_type', None)!r} has no {missing[0]} (no norm before its "
            "sublayers), so it cannot be path-patched exactly"
        )


def path_ranking(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    directory: str | Path | None = None,
    *,
    batch_size: int = 64,
    progress: Progress = False,
) -> PatchResult:
    """Rank every head by path patching, with a disk cache: the one helper the SPT experiment
    (choosing heads, re-patching the tuned model) and the study's agreement stage share.

    Args:
        model: as :func:`path_patch_heads`.
        pairs: as :func:`path_patch_heads`.
        metric: as :func:`path_patch_heads`.
        batch_size: as :func:`path_patch_heads`.
        progress: as :func:`path_patch_heads`.
        directory: where the result is saved; when it already holds one it is read back instead
            of recomputed (the caller names a directory per model, pairs and metric).

    Raises:
        BundleError: ``directory`` holds a corrupt result.
        ValueError: as :func:`path_patch_heads`.
    """
    if directory is not None and (Path(directory) / "result.json").is_file():
        return PatchResult.load(directory)
    result = path_patch_heads(model, pairs, metric, batch_size=batch_size, progress=progress)
    if directory is not None:
        result.save(directory)
    return result
