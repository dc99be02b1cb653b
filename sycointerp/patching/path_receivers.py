"""Path patching, sender head -> receiver heads' query/key/value inputs (IOI-style).

For every sender head ``s = (l_s, h_s)`` and a fixed set of receivers (heads at later layers),
on the reference (challenge) run:
  1. *pass 1*: the sender's output (``hook_z``) takes the counterfactual run's value; everything
     else that could carry the change is frozen to the reference run: every later layer's
     attention input (``ln1.hook_in``), except at receiver layers, whose attention *outputs*
     (all heads' ``hook_z``) are frozen instead, and every MLP input (``ln2.hook_in``) from
     ``l_s`` on. So each receiver layer's residual stream is the reference one plus the sender's
     direct contribution only, and the receivers' ``hook_q`` / ``hook_k`` / ``hook_v`` are
     recorded;
  2. *pass 2*: a plain reference run in which only the receivers' q/k/v take the recorded
     values; everything downstream runs live. Effect = ``metric(pass 2) - metric(ref)``.
Receivers at or below the sender's layer cannot be reached; such senders score exactly 0.

Receivers are ``(layer, head)`` query heads for ``"q"`` and ``(layer, kv_head)`` key/value
heads for ``"k"``/``"v"`` (grouped-query models share a key/value head across its group).

Positions: ``"last"`` patches the sender and the receivers at the last position only (pairs may
differ in length); ``"all"`` at every position (aligned pairs only; the runs agree before the
first differing token, so only later positions are recomputed).

Cost: two patched runs per sender (each resumed at its first changed layer), plus the recorded
receiver activations: ``senders x examples x positions x receivers x d_head`` floats.
"""

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.batch import PairBatch
from sycointerp.data.pairs import PromptPair, require_aligned
from sycointerp.metrics import PatchMetric
from sycointerp.patching._engine import (
    Engine,
    Hook,
    Progress,
    RowView,
    cache_hooks,
    cell_progress,
    run_cells,
    unpatched_metric,
    z_name,
)
from sycointerp.patching.path import attn_in_name, mlp_in_name, require_norm_inputs
from sycointerp.patching.results import PatchResult

__all__ = ["path_patch_to_receivers"]

Receiver = Literal["q", "k", "v"]
Where = Literal["last", "all"]


def _check(
    model: TransformerBridge, receivers: Sequence[tuple[int, int]], component: str, position: str
) -> None:
    if component not in ("q", "k", "v") or position not in ("last", "all"):
        raise ValueError(
            f"component must be 'q'/'k'/'v' and position 'last'/'all', got {component!r}, "
            f"{position!r}"
        )
    n = (
        model.cfg.n_heads
        if component == "q"
        else (getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    )
    unit = "head" if component == "q" else "kv_head"
    bad = [r for r in receivers if not (0 <= r[0] < model.cfg.n_layers and 0 <= r[1] < n)]
    if not receivers or bad:
        raise ValueError(
            f"receivers must be a non-empty list of (layer < {model.cfg.n_layers}, {unit} < {n}); "
            f"bad: {bad[:3]}"
        )


def path_patch_to_receivers(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    metric: PatchMetric,
    receivers: Sequence[tuple[int, int]],
    *,
    component: Receiver = "q",
    position: Where = "last",
    batch_size: int = 64,
    engine: Engine = "auto",
    progress: Progress = False,
) -> PatchResult:
    """Score every sender head by its path to the receivers' ``component`` inputs (see module doc).

    ``progress``: ``True`` shows a bar counting patched cells, two per (sender, example) (one per
    pass), with the rate and the time left; a callable gets the counts instead (see
    ``_engine.Progress``). Results are the same.

    Returns:
        ``[layer, head, example]`` effects of each sender; ``meta["receivers"]`` lists the
        receivers.

    Raises:
        ValueError: empty pairs or receivers, a receiver out of range, bad options, unaligned
            pairs with ``position="all"``, NaN metric, a model without ``ln1`` / ``ln2`` input hooks
            (OLMo 2).
    """
    _check(model, receivers, component, position)
    if position == "all":
        require_aligned(pairs)
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    by_layer: dict[int, list[int]] = {}
    for layer, head in sorted(set(receivers)):
        by_layer.setdefault(layer, []).append(head)
    names = (
        [z_name(l) for l in range(L)]
        + [attn_in_name(l) for l in range(L)]
        + [mlp_in_name(l) for l in range(L)]
    )
    require_norm_inputs(model, names[L:])
    ref = _positions(cache_hooks(model, batch.ref, names), batch.ref_last, position)
    z_cf = _positions(
        cache_hooks(model, batch.cf, [z_name(l) for l in range(L)]), batch.cf_last, position
    )
    start = batch.ref_last if position == "last" else batch.shared_prefix
    recorded: dict[tuple[int, int, int, int], torch.Tensor] = {}

    def later(sender_layer: int) -> list[int]:
        return [l for l in by_layer if l > sender_layer]

    def record(cells: range, view: RowView) -> list[Hook]:
        return _pass1_hooks(cells, view, H, L, by_layer, component, position, ref, z_cf, recorded)

    def replay(cells: range, view: RowView) -> list[Hook]:
        return _pass2_hooks(cells, view, H, by_layer, component, position, recorded)

    method = f"path/{component}/{position}"
    with cell_progress(progress, 2 * L * H * batch.n, method) as advance:
        common = dict(engine=engine, start=start, advance=advance)
        run_cells(
            model,
            batch.ref,
            batch.ref_last,
            L * H,
            record,
            metric,
            batch_size,
            first_layer=lambda c: c // H,
            **common,
        )
        patched, metric_ref, _ = run_cells(
            model,
            batch.ref,
            batch.ref_last,
            L * H,
            replay,
            metric,
            batch_size,
            first_layer=lambda c: min(later(c // H), default=L - 1),
            **common,
        )
    metric_cf = unpatched_metric(model, batch.cf, batch.cf_last, metric)
    values = (patched - metric_ref).view(L, H, batch.n)
    values[max(by_layer) :] = 0.0  # no receiver after these senders: nothing was patched
    receivers = [list(r) for r in sorted(set(receivers))]
    return PatchResult.measured(
        values, metric_ref, metric_cf, method, metric, batch.ids, model, receivers=receivers
    )


def _positions(
    cache: dict[str, torch.Tensor], last: torch.Tensor, position: str
) -> dict[str, torch.Tensor]:
    """Full-prompt caches for ``"all"``; the last position only (``[example, 1, ...]``) for
    ``"last"``."""
    if position == "all":
        return cache
    rows = torch.arange(len(last))
    return {n: x[rows, last][:, None] for n, x in cache.items()}


def _write(
    act: torch.Tensor,
    view: RowView,
    i: int,
    source: torch.Tensor,
    position: str,
    unit: int | slice = slice(None),
) -> None:
    """Overwrite cell ``i``'s rows of ``act`` ``[rows, local_pos, ...]`` with ``source`` at its
    positions."""
    rows = view.rows(i)
    if position == "all":
        act[rows, :, unit] = view.gather(source, i)[:, :, unit]
    else:
        r = torch.arange(rows.start, rows.stop)
        act[r, view.last[rows], unit] = source[view.example[rows], 0][:, unit]


def _hook(fn: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor, object], torch.Tensor]:
    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        act = act.clone()  # never write in place: norm inputs alias the residual stream
        fn(act)
        return act

    return hook


def _pass1_hooks(
    cells, view, H, L, by_layer, component, position, ref, z_cf, recorded
) -> list[Hook]:
    senders = [(i, c // H, c % H) for i, c in enumerate(cells)]
    first = min(ls for _, ls, _ in senders)
    key = (int(view.example[0]), cells.start)

    def z_hook(layer: int):
        def fn(z):
            for i, ls, hs in senders:
                if layer == ls:
                    _write(z, view, i, z_cf[z_name(layer)], position, hs)
                elif layer > ls and layer in by_layer:  # receiver layer: attention output stays ref
                    _write(z, view, i, ref[z_name(layer)], position)

        return _hook(fn)

    def freeze(name: str, layer: int, attn: bool):
        def fn(x):
            for i, ls, _ in senders:
                if (layer > ls and layer not in by_layer) if attn else layer >= ls:
                    _write(x, view, i, ref[name], position)

        return _hook(fn)

    def capture(layer: int):
        def hook(act, hook=None):
            for i, ls, _ in senders:
                if layer > ls:
                    recorded[(*key, i, layer)] = act[view.rows(i)][:, :, by_layer[layer]].clone()

        return hook

    hooks = [(z_name(l), z_hook(l)) for l in range(first, L)]
    hooks += [
        (attn_in_name(l), freeze(attn_in_name(l), l, True))
        for l in range(first + 1, L)
        if l not in by_layer
    ]
    hooks += [(mlp_in_name(l), freeze(mlp_in_name(l), l, False)) for l in range(first, L)]
    hooks += [(f"blocks.{l}.attn.hook_{component}", capture(l)) for l in by_layer if l > first]
    return hooks


def _pass2_hooks(cells, view, H, by_layer, component, position, recorded) -> list[Hook]:
    senders = [(i, c // H) for i, c in enumerate(cells)]
    key = (int(view.example[0]), cells.start)

    def replay(layer: int):
        def fn(act):
            for i, ls in senders:
                if layer > ls:
                    rows, heads = view.rows(i), by_layer[layer]
                    value = recorded.pop((*key, i, layer))
                    if position == "all":
                        act[rows, :, heads] = value
                    else:
                        r, last = torch.arange(rows.start, rows.stop)[:, None], view.last[rows]
                        act[r, last[:, None], torch.tensor(heads)] = value[
                            torch.arange(len(r)), last
                        ]

        return _hook(fn)

    reachable = {l for l in by_layer if any(l > ls for _, ls in senders)}
    return [(f"blocks.{l}.attn.hook_{component}", replay(l)) for l in sorted(reachable)]
