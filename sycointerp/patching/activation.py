"""Activation patching of attention-head activations, many cells per forward.

Components (hook ``blocks.{l}.attn.hook_{component}``):
- ``"z"`` (head outputs) and ``"q"`` (queries): one cell per query head.
- ``"k"`` and ``"v"``: one cell per *key/value* head. In compat mode the hooks hold
  ``[batch, pos, n_key_value_heads, d_head]`` (grouped-query attention is not expanded; checked),
  so patching KV head ``g`` changes every query head of its group; components
  ``("layer", "kv_head")``.
- ``"pattern"``: attention weights ``[batch, head, q_pos, k_pos]``; a cell replaces whole query
  rows (the weights over every key) at the patched positions, one cell per query head.

Direction: ``"denoise"`` runs the reference (challenge) prompt and writes the counterfactual run's
activation into it; ``"noise"`` runs the counterfactual and writes the reference's. Effect =
``metric(patched) - metric(base run)`` per example (``kind="absolute"``).

Positions:
- ``"last"``: the final position only (the one the metric reads); pairs may differ in length.
- ``"all"``: every position at once; refuses unaligned pairs.
- ``"each"``: one cell per absolute prompt position ``0 .. max_len - 1`` (components gain
  ``"pos"``); refuses unaligned pairs. Where an example is shorter than ``pos + 1`` tokens there
  is nothing to patch and its effect is defined as exactly 0. Positions before a pair's first
  differing token hold the same activations in both runs (causal attention), so their effect is 0
  up to float rounding.
- A pattern row holds one weight per key *position*, so rows of prompts of different lengths do
  not correspond: pattern patching refuses unaligned pairs at every position, ``"last"`` included.

Cost: ``n_layers * n_cells_per_layer * n_examples`` patched rows (cells per layer: heads, times
``max_len`` for ``"each"``), ``batch_size`` rows per forward, plus one source run that caches only
the patched hook at every layer: ``n_layers x examples x pos x heads x d_head`` floats
(``x pos`` more for patterns: ``heads x pos x pos``); the last position only for ``"last"``.

Speed: by default a patched run resumes the cached base run at the patched layer (see
``_resume``) and recomputes only the positions the patch can change: the last position for
``"last"``; from the first token where the pair differs for ``"all"`` (before it the two runs are
identical, so patching there changes nothing); every position for ``"each"``. Hooks address
positions only through ``RowView``. Pattern patching needs every key position from 0 in the
hooked tensors (pattern keys are read as positions ``0, 1, ...``), so it runs full forwards;
``"each"`` needs its patched position; a run that lacks them raises ``RuntimeError`` rather than
patching less than asked.

Reference semantics: those of TransformerLens's ``get_act_patch_attn_head_*_all_pos`` (``"all"``)
and ``get_act_patch_attn_head_*_by_pos`` (``"each"``, axes reordered to layer, head, pos), which
run one forward per cell and index k/v by query head, so they only apply to MHA models.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.batch import PairBatch
from sycointerp.data.pairs import PromptPair, require_aligned
from sycointerp.metrics import PatchMetric
from sycointerp.patching._engine import (
    Engine,
    Progress,
    RowView,
    Source,
    cell_progress,
    observe,
    run_cells,
)
from sycointerp.patching.results import PatchResult

__all__ = ["patch_heads", "patch_head_outputs", "patch_head_list", "patch_sites", "Sites"]

Direction = Literal["denoise", "noise"]
Where = Literal["last", "all", "each"]
HeadComponent = Literal["z", "q", "k", "v", "pattern"]


@dataclass(frozen=True)
class Sites:
    """What an activation-patching run patches: one hook per layer, optionally split into units.

    Attributes:
        label: component name used in the result's method, e.g. ``"z"``, ``"resid_pre"``.
        names: one hook name per layer.
        unit: name of the unit axis (``"head"``, ``"kv_head"``), ``None`` to patch whole
            activations.
        n_units: expected size of the unit axis (checked against the cached source run).
        unit_first: the hook tensor is ``[batch, unit, pos, ...]`` (attention patterns), not
            ``[batch, pos, unit, ...]``; its last axis is then the key position.
    """

    label: str
    names: tuple[str, ...]
    unit: str | None = None
    n_units: int = 1
    unit_first: bool = False


def patch_heads(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    *,
    component: HeadComponent = "z",
    position: Where = "last",
    direction: Direction = "denoise",
    batch_size: int = 64,
    engine: Engine = "auto",
    progress: Progress = False,
) -> PatchResult:
    """Patch each head's ``component`` activation from the source run into the base run.

    Args:
        component: ``"z"``, ``"q"``, ``"pattern"`` (per query head) or ``"k"``, ``"v"`` (per KV
            head).
        position: ``"last"``, ``"all"`` or ``"each"`` (see module doc).
        direction: ``"denoise"`` (counterfactual into reference) or ``"noise"``.
        batch_size: cap on rows per forward.
        engine: ``"auto"`` resumes the cached base run at the patched layer, recomputing only the
            positions a patch can change (the last one; from the first differing token for
            ``"all"``); ``"hooked"`` runs full forwards (the plain path, same numbers). Pattern
            patching always runs full forwards.
        progress: ``True`` shows a bar counting patched cells, one per value of the result
            (``layers x heads (x positions) x examples``), with the rate and the time left; a
            callable gets the counts instead (see ``_engine.Progress``). Results are the same.

    Returns:
        Values ``[layer, head | kv_head, (pos,) example]``.

    Raises:
        ValueError: empty pairs, bad options, unaligned pairs where alignment is needed, NaN metric.
        RuntimeError: hooks hold an unexpected number of heads, or a run lacks patched positions.
    """
    if component not in ("z", "q", "k", "v", "pattern"):
        raise ValueError(f"component must be 'z', 'q', 'k', 'v' or 'pattern', got {component!r}")
    n_heads = model.cfg.n_heads
    if component in ("k", "v"):
        n_heads = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    names = tuple(f"blocks.{l}.attn.hook_{component}" for l in range(model.cfg.n_layers))
    sites = Sites(
        component,
        names,
        "kv_head" if component in ("k", "v") else "head",
        n_heads,
        component == "pattern",
    )
    return patch_sites(
        model,
        pairs,
        metric,
        sites,
        position=position,
        direction=direction,
        batch_size=batch_size,
        engine=engine,
        progress=progress,
    )


def patch_head_outputs(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    *,
    position: Where = "last",
    direction: Direction = "denoise",
    batch_size: int = 64,
    engine: Engine = "auto",
    progress: Progress = False,
) -> PatchResult:
    """``patch_heads(..., component="z")``: patch each head's output (``hook_z``)."""
    return patch_heads(
        model,
        pairs,
        metric,
        component="z",
        position=position,
        direction=direction,
        batch_size=batch_size,
        engine=engine,
        progress=progress,
    )


def patch_sites(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    sites: Sites,
    *,
    position: Where,
    direction: Direction,
    batch_size: int,
    engine: Engine = "auto",
    progress: Progress = False,
) -> PatchResult:
    """Patch every (layer, unit[, position]) cell of ``sites`` (the engine behind the patchers).

    ``progress`` counts patched cells, one per value of the result (see :func:`patch_heads`).

    Returns:
        Values ``[layer, (unit,) (pos,) example]``; components named accordingly.

    Raises:
        ValueError: empty pairs, bad options, unaligned pairs where alignment is needed, NaN metric.
        RuntimeError: a hook holds an unexpected number of units, or a run lacks patched positions.
    """
    if position not in ("last", "all", "each") or direction not in ("denoise", "noise"):
        raise ValueError(
            f"position must be 'last'/'all'/'each' and direction 'denoise'/'noise', "
            f"got {position!r}, {direction!r}"
        )
    _check_alignment(pairs, sites, position)
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    base, src = ("ref", "cf") if direction == "denoise" else ("cf", "ref")
    base_ids, base_last = batch.side(base)
    # At the last position the source side runs beside each example chunk's base run, resumed
    # from its shared prefix (run_cells' Source); elsewhere the patches need the source's whole
    # prompt, cached by one forward first.
    beside = position == "last" and not sites.unit_first
    source, metric_src = (
        ({}, None) if beside else _source_cache(model, *batch.side(src), sites, position, metric)
    )
    L, U = len(sites.names), sites.n_units
    P = base_ids.shape[1] if position == "each" else 1

    def hooks_for(cells: range, view: RowView):
        todo: dict[int, list[tuple[int, int, int]]] = {}
        for i, cell in enumerate(cells):
            layer, rest = divmod(cell, U * P)
            todo.setdefault(layer, []).append((i, *divmod(rest, P)))
        hooks = []
        for l, cells_l in todo.items():
            name = sites.names[l]
            values = _checked_units(view.source[name], name, sites) if beside else source[name]
            hooks.append((name, _patch_hook(values, view, cells_l, sites, position, beside)))
        return hooks

    resume = (
        {}
        if sites.unit_first
        else {  # pattern keys must start at 0: full hooked runs
            "first_layer": lambda cell: cell // (U * P),
            "start": {
                "last": base_last,
                "all": batch.shared_prefix,
                "each": torch.zeros_like(base_last),
            }[position],
        }
    )
    method = f"activation/{sites.label}/{position}/{direction}"
    with cell_progress(progress, L * U * P * batch.n, method) as advance:
        patched, metric_base, metric_beside = run_cells(
            model,
            base_ids,
            base_last,
            L * U * P,
            hooks_for,
            metric,
            batch_size,
            engine=engine,
            source=Source(*batch.side(src), tuple(sites.names)) if beside else None,
            advance=advance,
            **resume,
        )
    metric_src = metric_beside if beside else metric_src
    metric_ref, metric_cf = (
        (metric_base, metric_src) if base == "ref" else (metric_src, metric_base)
    )
    values = (patched - metric_base).view(L, U, P, batch.n)
    if position == "each":
        values[:, :, torch.arange(P)[:, None] > base_last[None, :]] = (
            0.0  # no such position: effect 0
        )
    shape = (L,) + ((U,) if sites.unit else ()) + ((P,) if position == "each" else ()) + (batch.n,)
    components = (
        ("layer",)
        + ((sites.unit,) if sites.unit else ())
        + (("pos",) if position == "each" else ())
    )
    return PatchResult.measured(
        values.reshape(shape), metric_ref, metric_cf, method, metric, batch.ids, model, components
    )


def patch_head_list(
    model: TransformerBridge,
    batch: PairBatch,
    metric: PatchMetric,
    heads: Sequence[tuple[int, int]],
    *,
    position: Literal["last", "all"] = "last",
    direction: Direction = "denoise",
    batch_size: int = 64,
    engine: Engine = "auto",
    progress: Progress = False,
) -> Float[torch.Tensor, "cell example"]:
    """Patched metric minus base metric of only the listed ``(layer, head)`` outputs (``hook_z``).

    The semantics of ``patch_heads(component="z")`` for a subset of heads (e.g. to verify a ranking
    exactly). Rows follow ``heads``' order. ``progress`` counts patched cells, ``len(heads) x
    examples`` (see :func:`patch_heads`).

    Raises:
        ValueError: a head out of range, bad options, NaN metric.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    bad = [(l, h) for l, h in heads if not (0 <= l < L and 0 <= h < H)]
    if bad or not heads:
        raise ValueError(
            f"heads must be a non-empty list of (layer < {L}, head < {H}) pairs; bad: {bad[:3]}"
        )
    if position not in ("last", "all") or direction not in ("denoise", "noise"):
        raise ValueError(
            f"position must be 'last'/'all' and direction 'denoise'/'noise', got {position!r}, "
            f"{direction!r}"
        )
    if position == "all" and (
        batch.ref.shape != batch.cf.shape or not torch.equal(batch.ref_last, batch.cf_last)
    ):
        raise ValueError(
            "position='all' needs aligned pairs (equal token counts); build them with align=True"
        )
    order = sorted(range(len(heads)), key=lambda i: heads[i])  # layer order, for resumed runs
    sites = Sites("z", tuple(f"blocks.{l}.attn.hook_z" for l in range(L)), "head", H)
    base, src = ("ref", "cf") if direction == "denoise" else ("cf", "ref")
    base_ids, base_last = batch.side(base)
    source, _ = _source_cache(model, *batch.side(src), sites, position, metric)

    def hooks_for(cells: range, view: RowView):
        todo: dict[int, list[tuple[int, int, int]]] = {}
        for i, cell in enumerate(cells):
            layer, head = heads[order[cell]]
            todo.setdefault(layer, []).append((i, head, 0))
        return [
            (sites.names[l], _patch_hook(source[sites.names[l]], view, t, sites, position))
            for l, t in todo.items()
        ]

    start = base_last if position == "last" else batch.shared_prefix
    with cell_progress(progress, len(heads) * batch.n, f"activation/z/{position}") as advance:
        patched, base_metric, _ = run_cells(
            model,
            base_ids,
            base_last,
            len(heads),
            hooks_for,
            metric,
            batch_size,
            engine=engine,
            first_layer=lambda cell: heads[order[cell]][0],
            start=start,
            advance=advance,
        )
    out = torch.empty_like(patched)
    out[torch.tensor(order)] = patched - base_metric
    return out


def _check_alignment(pairs: Sequence[PromptPair], sites: Sites, position: str) -> None:
    if position != "last":
        require_aligned(pairs)
    elif sites.unit_first:
        try:
            require_aligned(pairs)
        except ValueError as err:
            raise ValueError(
                f"{sites.label} patching needs aligned pairs even at the last position: a "
                f"pattern row has one weight per key position. {err}"
            ) from None


def _source_cache(
    model: TransformerBridge,
    ids: torch.Tensor,
    last: torch.Tensor,
    sites: Sites,
    position: str,
    metric: PatchMetric,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The source run's activations, ``[example, pos, (unit,) ...]`` (``pos`` dropped for
    "last"), and its unpatched metric, from one forward."""
    out = {}
    cached, metric_src = observe(model, ids, last, metric, torch.arange(len(last)), sites.names)
    for name, act in cached.items():
        act = act.transpose(1, 2) if sites.unit_first else act
        _checked_units(act[:, 0], name, sites)
        out[name] = act[torch.arange(len(last)), last] if position == "last" else act
    return out, metric_src


def _checked_units(act: torch.Tensor, name: str, sites: Sites) -> torch.Tensor:
    """``act`` (``[example, (unit,) ...]`` at one position), refused when it holds another
    number of units than the sites patch.

    Raises:
        RuntimeError: expanded activations (e.g. KV heads repeated per query head).
    """
    if sites.unit and act.shape[1] != sites.n_units:
        raise RuntimeError(
            f"{name} holds {act.shape[1]} heads per position, expected {sites.n_units} "
            f"{sites.unit}s; patching one {sites.unit} needs unexpanded activations"
        )
    return act


def _patch_hook(
    source: torch.Tensor,
    view: RowView,
    todo: list[tuple[int, int, int]],
    sites: Sites,
    position: str,
    chunk: bool = False,
) -> Callable[[torch.Tensor, object], torch.Tensor]:
    """A hook writing ``source`` into the rows of each ``(chunk cell, unit, pos)`` in ``todo``;
    ``chunk``: ``source`` holds the chunk's examples only (``view.source``), not every
    example."""

    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        act = act.clone()  # activations may alias tensors used elsewhere; never write in place
        target = act.transpose(1, 2) if sites.unit_first else act  # a view: writes land in act
        src = _fit_keys(source, target.shape[-1]) if sites.unit_first else source
        for i, unit, pos in todo:
            if sites.unit_first:
                _require_from_zero(view, i, sites.label)
            _write(target, view, i, src, position, (unit,) if sites.unit else (), pos, chunk)
        return act

    return hook


def _write(
    target: torch.Tensor,
    view: RowView,
    i: int,
    source: torch.Tensor,
    position: str,
    unit: tuple[int, ...],
    pos: int,
    chunk: bool = False,
) -> None:
    """Overwrite cell ``i``'s rows of ``target`` ``[rows, local_pos, (unit,) ...]`` at its
    positions (``chunk``: ``source`` is indexed by the chunk's examples, in order)."""
    rows = view.rows(i)
    if position == "all":
        target[(rows, slice(None), *unit)] = view.gather(source, i)[
            (slice(None), slice(None), *unit)
        ]
        return
    r = torch.arange(rows.start, rows.stop)
    ex = torch.arange(len(r)) if chunk else view.example[rows]
    if position == "last":
        target[(r, view.last[rows], *unit)] = source[(ex, *unit)]
        return
    local, inside = _local_position(view, i, pos)
    target[(r[inside], local[inside], *unit)] = source[(ex[inside], pos, *unit)]


def _local_position(view: RowView, i: int, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Local index of absolute position ``pos`` in cell ``i``'s rows, and which rows reach ``pos``.

    Raises:
        RuntimeError: a row reaches ``pos`` but the run did not recompute it.
    """
    rows = view.rows(i)
    positions = view.pos[rows]
    match = positions == pos
    inside = positions.gather(1, view.last[rows, None])[:, 0] >= pos
    if (inside & ~match.any(-1)).any():
        raise RuntimeError(
            f"position {pos} is not recomputed in this patched run; by-position patching "
            "needs every patched position in the hooked activations"
        )
    # First match: positions past a row's end are clamped to its last one, which comes first.
    return match.int().argmax(-1), inside


def _require_from_zero(view: RowView, i: int, label: str) -> None:
    if (view.pos[view.rows(i), 0] != 0).any():
        raise RuntimeError(
            f"{label} patching at these positions needs runs that recompute every position from 0; "
            "this run starts later"
        )


def _fit_keys(
    source: Float[torch.Tensor, "*batch k_src"], n_keys: int
) -> Float[torch.Tensor, "*batch k"]:
    """Pattern rows resized to ``n_keys`` key positions.

    Exact for causal rows: every weight beyond a row's own query position is 0, and a patched
    query position is always below the hooked tensor's key count.
    """
    width = source.shape[-1]
    return source[..., :n_keys] if n_keys <= width else F.pad(source, (0, n_keys - width))
