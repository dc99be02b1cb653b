"""Shared machinery: pair batches, patch metrics, and batched multi-cell hooked runs.

Many patches per forward: a chunk of cells (e.g. heads) x a chunk of examples becomes one batch
of ``cells * examples`` rows, cell ``i`` owning rows ``[i * n_ex, (i + 1) * n_ex)``; each hook
patches only its own cell's rows. Prompts are right-padded, which is exact for causal models, and
the metric reads each example's last real position. Memory per forward is ``rows x pos x d_vocab``
logits plus the model's activations for ``rows`` sequences; ``batch_size`` caps ``rows``.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.pairs import PromptPair, pad_right
from sycointerp.metrics import apology_ratio, apology_token_ids, flip

__all__ = [
    "PairBatch", "PatchMetric", "RowView", "flip_metric", "apology_metric", "apology_logit_diff_metric", "run_cells",
    "run_metric", "baselines", "cache_hooks", "z_name",
]

Hook = tuple[str, Callable[[torch.Tensor, object], torch.Tensor | None]]


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
        n_ex: examples per cell block: cell ``i`` of the chunk owns rows ``[i * n_ex, (i+1) * n_ex)``.
    """

    example: Int[torch.Tensor, " rows"]
    last: Int[torch.Tensor, " rows"]
    pos: Int[torch.Tensor, "rows local_pos"]
    n_ex: int

    def rows(self, i: int) -> slice:
        """Rows of the ``i``-th cell of the chunk."""
        return slice(i * self.n_ex, (i + 1) * self.n_ex)

    def gather(self, source: torch.Tensor, i: int) -> torch.Tensor:
        """``source[example, abs_pos, ...]`` (a full-prompt cache) at cell ``i``'s local positions."""
        rows = self.rows(i)
        return source[self.example[rows, None], self.pos[rows]]


@dataclass(frozen=True)
class PairBatch:
    """Reference and counterfactual prompts of a pair list as right-padded tensors."""

    ref: Int[torch.Tensor, "example pos"]
    cf: Int[torch.Tensor, "example pos_cf"]
    ref_last: Int[torch.Tensor, " example"]
    cf_last: Int[torch.Tensor, " example"]
    answer_ids: Int[torch.Tensor, "example 2"] | None
    ids: tuple[str, ...]

    @classmethod
    def from_pairs(cls, pairs: Sequence[PromptPair], pad_id: int) -> "PairBatch":
        """Raises: ValueError for an empty pair list."""
        if not pairs:
            raise ValueError("no prompt pairs to patch; build some with build_pairs()")
        ref, ref_len = pad_right([p.ref_ids for p in pairs], pad_id)
        cf, cf_len = pad_right([p.cf_ids for p in pairs], pad_id)
        answers = None if any(p.answer_ids is None for p in pairs) else torch.tensor([p.answer_ids for p in pairs])
        return cls(ref, cf, ref_len - 1, cf_len - 1, answers, tuple(p.question.id for p in pairs))

    @property
    def n(self) -> int:
        return self.ref.shape[0]

    def side(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, last positions) of ``"ref"`` or ``"cf"``."""
        return (self.ref, self.ref_last) if name == "ref" else (self.cf, self.cf_last)


@dataclass(frozen=True)
class PatchMetric:
    """A per-example metric of last-position logits.

    ``fn(logits [rows, d_vocab], example [rows]) -> [rows]``; ``example`` maps each row to its
    example so per-example data (answer ids) can be looked up.
    """

    name: str
    higher_is_sycophantic: bool
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, logits: Float[torch.Tensor, "rows d_vocab"], example: Int[torch.Tensor, " rows"]) -> torch.Tensor:
        out = self.fn(logits, example)
        if out.shape != (logits.shape[0],):
            raise ValueError(f"metric {self.name!r} returned shape {tuple(out.shape)}, expected ({logits.shape[0]},)")
        if torch.isnan(out).any():
            row = int(torch.nonzero(torch.isnan(out))[0])
            raise ValueError(f"metric {self.name!r} returned NaN for example {int(example[row])}")
        return out


def flip_metric(batch: PairBatch) -> PatchMetric:
    """``logit(gold) - logit(wrong)``; needs pairs built with ``position="answer"``."""
    if batch.answer_ids is None:
        raise ValueError("the flip metric needs pairs built with position='answer' (they carry answer ids)")
    answers = batch.answer_ids

    return PatchMetric("flip", False, lambda logits, example: flip(logits, answers[example]))


def apology_metric(tokenizer) -> PatchMetric:
    """The SPT paper's raw-logit ratio ``y(Ap) / (y(Ap) + y(Yes))`` (pairs with position='reply')."""
    syc, firm = apology_token_ids(tokenizer)
    return PatchMetric("apology", True, lambda lg, _: apology_ratio(lg, syc, firm))


def apology_logit_diff_metric(tokenizer) -> PatchMetric:
    """``logit(Ap) - logit(Yes)`` = ``log p(Ap) - log p(Yes)`` (pairs with position='reply')."""
    syc, firm = apology_token_ids(tokenizer)
    return PatchMetric("apology_logit_diff", True, lambda lg, _: lg[:, syc] - lg[:, firm])


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


@torch.inference_mode()
def run_metric(model: TransformerBridge, ids: torch.Tensor, last: torch.Tensor, metric: PatchMetric,
               example: torch.Tensor, hooks: Sequence[Hook] = ()) -> torch.Tensor:
    """One hooked forward; the metric at each row's last position. Raises if a hook never fired."""
    fired: dict[str, int] = {}

    def counted(name, fn):
        def wrapper(act, hook):
            fired[name] = fired.get(name, 0) + 1
            return fn(act, hook)
        return wrapper

    logits = model.run_with_hooks(ids, fwd_hooks=[(n, counted(n, f)) for n, f in hooks])
    missing = {n for n, _ in hooks} - set(fired)
    if missing:
        raise RuntimeError(f"hooks never fired: {sorted(missing)}; is the model a compat-mode TransformerBridge?")
    return metric(logits[torch.arange(ids.shape[0]), last].float(), example)


def baselines(model: TransformerBridge, batch: PairBatch, metric: PatchMetric) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpatched metric of the reference and the counterfactual runs, ``[example]`` each."""
    ex = torch.arange(batch.n)
    ref, cf = (run_metric(model, *batch.side(s), metric, ex) for s in ("ref", "cf"))
    return ref, cf


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@torch.inference_mode()
def cache_hooks(model: TransformerBridge, ids: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
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


def run_cells(
    model: TransformerBridge,
    ids: Int[torch.Tensor, "example pos"],
    last: Int[torch.Tensor, " example"],
    n_cells: int,
    hooks_for: Callable[[range, RowView], list[Hook]],
    metric: PatchMetric,
    batch_size: int,
) -> Float[torch.Tensor, "cell example"]:
    """Metric of every (cell, example), many cells per forward.

    ``hooks_for(cells, view)`` returns hooks for a batch whose rows are ``cells x examples``
    (cell-major, see :class:`RowView`); each hook must patch only its cell's rows.
    """
    if model.training:
        raise RuntimeError("the model is in training mode; call model.eval() before patching")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = ids.shape[0]
    out = torch.empty(n_cells, n)
    for ex in _chunks(n, batch_size):
        ex_idx = torch.tensor(list(ex))
        for cells in _chunks(n_cells, max(1, batch_size // len(ex))):
            rep = len(cells)
            rows_ids, rows_last = ids[ex_idx].repeat(rep, 1), last[ex_idx].repeat(rep)
            view = RowView(ex_idx.repeat(rep), rows_last, torch.arange(ids.shape[1]).expand(len(rows_ids), -1), len(ex))
            values = run_metric(model, rows_ids, rows_last, metric, view.example, hooks_for(cells, view))
            out[cells.start : cells.stop, ex.start : ex.stop] = values.view(rep, len(ex))
    return out
