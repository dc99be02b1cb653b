"""Shared machinery of the patching techniques: batched multi-cell patched runs and hook helpers.

Pair batches live in :mod:`sycointerp.data.batch`, patch metrics in :mod:`sycointerp.metrics`.

Many patches per forward: a chunk of cells (e.g. heads) x a chunk of examples becomes one batch
of ``cells * examples`` rows, cell ``i`` owning rows ``[i * n_ex, (i + 1) * n_ex)``; each hook
patches only its own cell's rows (addressed through :class:`RowView`). Prompts are right-padded,
which is exact for causal models, and the metric reads each example's last real position.

Two engines compute the same numbers:
- ``"hooked"``: one full hooked forward per chunk. Memory per forward: ``rows x pos x d_vocab``
  logits plus the model's activations for ``rows x pos`` tokens; ``batch_size`` caps ``rows``.
- ``"resume"`` (the default where the caller says where its patches act): one base forward per
  example chunk builds a :class:`~sycointerp.patching._resume.ResumeState`; each chunk of cells
  then restarts it at its first patched layer and recomputes only the positions from ``start``,
  unembedding only the metric's tokens. Memory: the state, ``n_ex x n_layers x (2 x n_kv_heads x
  prefix x d_head + suffix x d_model)`` floats, plus per resumed layer ``n_ex x n_heads x F x
  (prefix + F)`` attention weights and ``n_ex x F x d_mlp`` activations, where ``F = cells x
  suffix <= max(64, suffix)`` folded positions per example. ``batch_size`` caps ``cells x n_ex``.

Progress (:data:`Progress`) is counted in patched cells, one per (cell, example): one value of the
result. Reporting never changes what is computed.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.batch import PairBatch, agreeing_prefix
from sycointerp.metrics import PatchMetric
from sycointerp.patching._resume import (
    ResumeState,
    build_state,
    last_logits,
    require_hooks,
    resume_logits,
    resume_tokens,
    supports_resume,
    unfold_hook,
)

__all__ = [
    "RowView",
    "Source",
    "CellRun",
    "run_cells",
    "run_metric",
    "observe",
    "unpatched_metric",
    "baselines",
    "cache_hooks",
    "checked_hooks",
    "z_name",
    "Engine",
    "Progress",
    "cell_progress",
]

Hook = tuple[str, Callable[[torch.Tensor, object], torch.Tensor | None]]

Progress = bool | Callable[[int, int], None]
"""How a patching call reports its progress, in patched cells (one per (cell, example)):
``False`` not at all; ``True`` a tqdm bar on stderr with the rate and the time left; a callable
``report(cells, total)`` is called after each forward with the cells it finished and the call's
total (e.g. to drive a caller's own bar over many calls)."""


@contextmanager
def cell_progress(progress: Progress, total: int, desc: str) -> Iterator[Callable[[int], None]]:
    """An ``advance(cells)`` callback that reports a call of ``total`` cells through ``progress``.

    Args:
        progress: see :data:`Progress`.
        total: the call's patched cells.
        desc: the bar's label (e.g. the result's method).
    """
    if callable(progress):
        yield lambda cells: progress(cells, total)
        return
    with tqdm(total=total, desc=desc, unit="cell", disable=not progress) as bar:
        yield bar.update


@dataclass(frozen=True)
class RowView:
    """How a chunk's hooks address rows and positions.

    A patched forward may recompute only some positions (e.g. the last one); hooks must address
    positions through this view, never assume the activation spans the whole prompt.

    Attributes:
        example: ``[rows]`` the example each row belongs to (global index into the pair list).
        last: ``[rows]`` local index of each row's metric (last) position in the hooked tensors.
        pos: ``[rows, local_pos]`` absolute prompt position of every local position (positions
            past a row's end are clamped to its last position; they never reach the metric).
        n_ex: examples per cell block: cell ``i`` of the chunk owns rows
            ``[i * n_ex, (i+1) * n_ex)``.
        base: hook name -> ``[n_ex, ...]`` the unpatched base run's activation at each of the
            chunk's examples' metric position (chunk order: row ``i * n_ex + j`` is example
            ``j``), for the names :func:`run_cells` was asked to observe.
        source: hook name -> ``[n_ex, ...]`` the :class:`Source` side's activation at each of
            the chunk's examples' source metric position (same order), for its names.
    """

    example: Int[torch.Tensor, " rows"]
    last: Int[torch.Tensor, " rows"]
    pos: Int[torch.Tensor, "rows local_pos"]
    n_ex: int
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    source: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, i: int) -> slice:
        """Rows of the ``i``-th cell of the chunk."""
        return slice(i * self.n_ex, (i + 1) * self.n_ex)

    def gather(self, source: torch.Tensor, i: int) -> torch.Tensor:
        """``source[example, abs_pos, ...]`` (a full-prompt cache) at cell ``i``'s local
        positions."""
        rows = self.rows(i)
        return source[self.example[rows, None], self.pos[rows]]


@dataclass(frozen=True)
class Source:
    """The other side of a pair, run unpatched beside each example chunk's base run: the
    activations the patches write (``names``, at each example's ``last`` position) and its
    metric.

    With resumed runs it starts where its prompt first differs from the base's (the challenge
    text, near the end), reading the earlier positions from the base run's cached keys/values
    (:func:`~sycointerp.patching._resume.resume_tokens`), instead of a full forward.

    Attributes:
        ids: ``[example, pos]`` its prompts, row ``e`` paired with the base's row ``e``.
        last: ``[example]`` its metric positions.
        names: hook names whose activation at ``last`` the hooks read (``view.source``).
    """

    ids: Int[torch.Tensor, "example pos"]
    last: Int[torch.Tensor, " example"]
    names: tuple[str, ...] = ()


class CellRun(NamedTuple):
    """What :func:`run_cells` measured: ``patched`` ``[cell, example]``, the unpatched ``base``
    ``[example]`` and, with a :class:`Source`, its unpatched metric ``source`` ``[example]``."""

    patched: Float[torch.Tensor, "cell example"]
    base: Float[torch.Tensor, " example"]
    source: Float[torch.Tensor, " example"] | None = None


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


@contextmanager
def checked_hooks(model: TransformerBridge, hooks: Sequence[Hook]) -> Iterator[None]:
    """Register ``hooks`` for the block; on a clean exit, raise if any of them never fired."""
    fired: set[str] = set()

    def counted(name, fn):
        def wrapper(act, hook):
            fired.add(name)
            return fn(act, hook)

        return wrapper

    with model.hooks(fwd_hooks=[(n, counted(n, f)) for n, f in hooks]):
        yield
    missing = {n for n, _ in hooks} - fired
    if missing:
        raise RuntimeError(
            f"hooks never fired: {sorted(missing)}; is the model a compat-mode TransformerBridge?"
        )


@torch.inference_mode()
def run_metric(
    model: TransformerBridge,
    ids: torch.Tensor,
    last: torch.Tensor,
    metric: PatchMetric,
    example: torch.Tensor,
    hooks: Sequence[Hook] = (),
) -> torch.Tensor:
    """One hooked forward; the metric at each row's last position. Raises if a hook never fired."""
    with checked_hooks(model, hooks):
        logits = model(ids)
    return metric(logits[torch.arange(ids.shape[0]), last].float(), example)


@torch.inference_mode()
def observe(
    model: TransformerBridge,
    ids: torch.Tensor,
    last: torch.Tensor,
    metric: PatchMetric,
    example: torch.Tensor,
    names: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One unpatched forward: the activations of ``names`` (whole prompts) and the metric at each
    row's last position.

    Where resumed runs are supported the decoder stack runs and only the last position is
    unembedded (:func:`~sycointerp.patching._resume.last_logits`); otherwise a full hooked
    forward. Same numbers up to float rounding (tests: 1e-5).

    Raises:
        RuntimeError: a name that is not a hook of the model, or a hook that never fired.
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(x: torch.Tensor, hook=None) -> None:
            captured[name] = x.detach().clone()

        return hook

    require_hooks(model, names)
    with checked_hooks(model, [(n, keep(n)) for n in names]):
        if supports_resume(model):
            logits = last_logits(model, ids, last, metric.token_ids)
        else:
            logits = model(ids)[torch.arange(ids.shape[0]), last]
    return {n: captured[n] for n in names}, metric(logits.float(), example)


def unpatched_metric(
    model: TransformerBridge,
    ids: torch.Tensor,
    last: torch.Tensor,
    metric: PatchMetric,
    batch_size: int = 64,
) -> Float[torch.Tensor, " example"]:
    """The metric of unpatched runs of ``ids``, ``batch_size`` examples per forward."""
    return torch.cat(
        [
            observe(model, ids[c.start : c.stop], last[c.start : c.stop], metric, _range(c))[1]
            for c in _chunks(ids.shape[0], batch_size)
        ]
    )


def baselines(
    model: TransformerBridge, batch: PairBatch, metric: PatchMetric, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpatched metric of the reference and the counterfactual runs, ``[example]`` each
    (``batch_size`` examples per forward)."""
    return tuple(
        unpatched_metric(model, *batch.side(name), metric, batch_size) for name in ("ref", "cf")
    )


def _range(c: range) -> torch.Tensor:
    return torch.arange(c.start, c.stop)


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@torch.inference_mode()
def cache_hooks(
    model: TransformerBridge, ids: torch.Tensor, names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Activations of ``names`` for ``ids`` (only those names are cached).

    Raises:
        RuntimeError: a name is not a hook of the model.
    """
    wanted = set(names)
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n in wanted)
    missing = wanted - set(cache.keys())
    if missing:
        raise RuntimeError(f"hooks not found in the model: {sorted(missing)[:3]}")
    return {n: cache[n] for n in names}


Engine = Literal["auto", "resume", "hooked"]
# Positions per example in one resumed forward (cells x recomputed positions). The folded
# attention computes every cell against every other's keys (masked), so more cells per forward
# waste attention work; fewer pay per-forward overhead. All-position head patching on SmolLM2
# (16 pairs, suffix 26): 2 cells per forward 97 s, 3 cells 98 s, 4 cells 106 s, 1 cell 104 s.
_MAX_FOLDED = 64


def run_cells(
    model: TransformerBridge,
    ids: Int[torch.Tensor, "example pos"],
    last: Int[torch.Tensor, " example"],
    n_cells: int,
    hooks_for: Callable[[range, RowView], list[Hook]],
    metric: PatchMetric,
    batch_size: int,
    *,
    first_layer: Callable[[int], int] | None = None,
    start: Int[torch.Tensor, " example"] | None = None,
    engine: Engine = "auto",
    base_hooks: Sequence[str] = (),
    source: Source | None = None,
    advance: Callable[[int], None] = lambda cells: None,
) -> CellRun:
    """Metric of every (cell, example), many cells per forward, and of the unpatched runs.

    ``hooks_for(cells, view)`` returns hooks for a batch whose rows are ``cells x examples``
    (cell-major, see :class:`RowView`); each hook must patch only its cell's rows. Each example
    chunk runs unpatched once (the resumed runs' cached base run, or one :func:`observe` for the
    hooked engine): it gives the unpatched metric and ``view.base``, the activations of
    ``base_hooks`` at the examples' metric positions, so callers need no forward of their own.

    Args:
        first_layer: ``cell -> the earliest layer its hooks change`` (cells in non-decreasing
            order); resumed runs start there. ``None``: layer 0.
        start: ``[example]`` the earliest position any cell's hooks change; resumed runs take
            earlier positions from the cached base run. ``None``: position 0.
        engine: ``"resume"`` restarts a cached base run (see ``_resume``; exact), ``"hooked"``
            runs full hooked forwards (the plain path), ``"auto"`` resumes where supported and
            where the caller declared ``first_layer`` or ``start``.
        base_hooks: hook names whose unpatched activations the hooks read through ``view.base``.
        source: the pair's other side, run unpatched per example chunk (see :class:`Source`);
            the hooks read its activations through ``view.source``.
        advance: called after each forward with the (cell, example) values it computed, e.g.
            :func:`cell_progress`'s callback.

    Returns:
        :class:`CellRun`: ``[cell, example]`` patched metrics, ``[example]`` unpatched ones, and
        the source's unpatched ones (``None`` without a source).

    Raises:
        RuntimeError: training mode, or a hook that never fired.
        ValueError: ``batch_size < 1``, unknown engine, or resume on an unsupported model.
    """
    if model.training:
        raise RuntimeError("the model is in training mode; call model.eval() before patching")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if engine not in ("auto", "resume", "hooked"):
        raise ValueError(f"engine must be 'auto', 'resume' or 'hooked', got {engine!r}")
    declared = first_layer is not None or start is not None
    if engine == "resume" and not declared:
        raise ValueError(
            "engine='resume' needs first_layer or start (where the cells' patches act)"
        )
    resume = engine == "resume" or (engine == "auto" and declared and supports_resume(model))
    n = ids.shape[0]
    start = torch.zeros(n, dtype=torch.long) if start is None else start
    out, base = torch.empty(n_cells, n), torch.empty(n)
    source_metric = None if source is None else torch.empty(n)
    for ex in _chunks(n, batch_size):
        ex_idx = torch.arange(ex.start, ex.stop)
        state, seen, base[ex_idx] = _base_run(
            model, ids[ex_idx], start[ex_idx], last[ex_idx], metric, ex_idx, base_hooks, resume
        )
        other: dict[str, torch.Tensor] = {}
        if source is not None:
            other, source_metric[ex_idx] = _source_run(model, source, ex_idx, state, metric)
        per_chunk = max(1, batch_size // len(ex))
        if state is not None:  # folded attention is quadratic in cells x suffix: keep it small
            per_chunk = min(per_chunk, max(1, _MAX_FOLDED // state.suffix))
        for cells in _chunks(n_cells, per_chunk):
            from_layer = min(map(first_layer, cells)) if first_layer else 0
            values = _run_chunk(
                model, ids, last, ex_idx, cells, hooks_for, metric, state, from_layer, (seen, other)
            )
            out[cells.start : cells.stop, ex.start : ex.stop] = values.view(len(cells), len(ex))
            advance(len(cells) * len(ex))
    return CellRun(out, base, source_metric)


def _source_run(
    model: TransformerBridge,
    source: Source,
    ex_idx: torch.Tensor,
    state: ResumeState | None,
    metric: PatchMetric,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The source side of an example chunk, unpatched: its activations of ``source.names`` at
    its metric positions and its metric. Resumed from the base run's state where the prompts
    share a prefix within it, else one :func:`observe`."""
    ids, last = source.ids[ex_idx], source.last[ex_idx]
    if state is None or state.ids is None:
        cached, value = observe(model, ids, last, metric, ex_idx, source.names)
        rows = torch.arange(len(ex_idx))
        return {n: x[rows, last] for n, x in cached.items()}, value
    same = agreeing_prefix(ids, state.ids)
    # Recompute at least the last position, and never start past the base state's own start
    # (its cached keys end there for the shortest rows).
    start = torch.minimum(torch.minimum(same, last), state.start)
    local = last - start
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(x: torch.Tensor, hook=None) -> None:
            kept[name] = x[torch.arange(x.shape[0]), local.to(x.device)].detach().clone()

        return hook

    require_hooks(model, source.names)
    with torch.inference_mode(), checked_hooks(model, [(n, keep(n)) for n in source.names]):
        logits = resume_tokens(model, state, ids, start, last, metric.token_ids)
    return kept, metric(logits.float(), ex_idx)


def _base_run(model, ids, start, last, metric, example, names, resume):
    """One unpatched run of an example chunk: ``(resume state or None, activations of names at
    the metric positions, metric)``."""
    if resume:
        state = build_state(model, ids, start, last, metric.token_ids, names)
        return state, state.observed, metric(state.logits.float(), example)
    cached, value = observe(model, ids, last, metric, example, names)
    rows = torch.arange(ids.shape[0])
    return None, {n: x[rows, last] for n, x in cached.items()}, value


def _run_chunk(
    model, ids, last, ex_idx, cells, hooks_for, metric, state, from_layer, observed
) -> torch.Tensor:
    """One forward for ``cells x ex_idx`` rows: resumed from ``state`` or a full hooked run.
    ``observed``: the base and source activations the hooks read (``view.base``,
    ``view.source``)."""
    rep = len(cells)
    example = ex_idx.repeat(rep)
    if state is None:
        view = RowView(
            example,
            last[example],
            torch.arange(ids.shape[1]).expand(len(example), -1),
            len(ex_idx),
            *observed,
        )
        return run_metric(model, ids[example], view.last, metric, example, hooks_for(cells, view))
    local = torch.arange(len(ex_idx)).repeat(rep)
    view = RowView(
        example,
        state.last[local] - state.start[local],
        state.positions(local),
        len(ex_idx),
        *observed,
    )
    hooks = [
        (name, unfold_hook(name, fn, rep, state.suffix)) for name, fn in hooks_for(cells, view)
    ]
    with torch.inference_mode(), checked_hooks(model, hooks):
        logits = resume_logits(model, state, rep, from_layer, metric.token_ids)
    return metric(logits.float(), example)
