"""The fine-tuning loop shared by SPT and its baselines: AdamW, warmup + decay, accumulation,
checkpoints.

Built on Hugging Face ``accelerate`` for processes and devices: under ``torchrun`` (or ``accelerate
launch``) each process takes a disjoint share of every global batch and the gradients are summed
across processes before the optimizer step (``accelerator.reduce``), so N processes compute the
same update as one process on the whole batch (to float rounding).

Conventions:
- One step = one global batch of ``batch_size x grad_accum x processes`` examples, drawn in a
  seeded permutation of the examples (a new one each epoch), so the data order depends only on
  ``seed`` and the step: a resumed run sees the same batches.
- The loss is the summed next-token cross-entropy over the label tokens of the global batch divided
  by their number (token mean over the whole batch, independent of how it is split).
- Schedule: linear warmup over ``warmup_steps`` to ``lr``, then polynomial decay (power
  ``decay_power``; 1 = linear) to 0 at ``steps``; gradients clipped to ``max_grad_norm``.
- Checkpoints (every ``checkpoint_every`` steps and at the end; none when 0) go to
  ``checkpoint_dir/checkpoint``: ``trainable.safetensors`` + ``optimizer.safetensors`` (AdamW
  moments) + ``progress.json``, no pickle; a new checkpoint replaces the old by directory renames,
  so a crash keeps one whole checkpoint. A run given an existing checkpoint resumes after its step.
- A non-finite loss or gradient norm stops training with :class:`TrainingError` before the
  optimizer step, so the weights and the last good checkpoint stay finite.
- Randomness inside the forward (dropout) is reseeded from ``seed``, the step and the process
  index at every step (the global torch RNG), so a run is reproducible and resumes exactly.
- A checkpoint records the global batch and seed; resuming with others (e.g. another number of
  processes) is refused, since the data order would silently change.
"""

import inspect
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sycointerp._io import fsync_tree
from sycointerp.errors import UserError
from sycointerp.spt.data import TrainExample, collate, loss_tokens
from sycointerp.spt.tunable import Tunable, frozen

__all__ = ["CheckpointError", "TrainConfig", "TrainReport", "TrainingError", "loss_sum", "train"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says where the last good checkpoint
    is."""


class CheckpointError(UserError):
    """The checkpoint to resume from belongs to another run (settings, processes, heads or
    model)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings (defaults: the paper's released lr, decay and weight decay)."""

    steps: int = 120
    lr: float = 3e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    decay_power: float = 1.0
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")
        if self.checkpoint_every < 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError("checkpoint_every and weight_decay must be >= 0, max_grad_norm > 0")


@dataclass(frozen=True)
class TrainReport:
    """What a run did: per-step losses, wall time, typical step time (median after the first step),
    trainable parameters, optimizer state bytes."""

    losses: tuple[float, ...]
    seconds: float
    step_seconds: float
    n_trainable: int
    optimizer_bytes: int
    n_examples: int
    processes: int
    resumed_from: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-serializable dict (losses, timings, trainable count, optimizer
        memory)."""
        return asdict(self)


def _lr_factor(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.steps - config.warmup_steps)
        return max(0.0, 1 - (step - config.warmup_steps) / span) ** config.decay_power

    return factor


def _batch_indices(n: int, step: int, global_batch: int, seed: int) -> list[int]:
    """The example indices of ``step``'s global batch (seeded permutation per epoch, wrapping)."""
    out: list[int] = []
    position = step * global_batch
    while len(out) < global_batch:
        epoch, offset = divmod(position, n)
        perm = torch.randperm(
            n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        ).tolist()
        take = perm[offset : offset + global_batch - len(out)]
        out += take
        position += len(take)
    return out


def loss_sum(
    model: torch.nn.Module, examples: Sequence[TrainExample], pad_id: int, device
) -> torch.Tensor:
    """Summed next-token cross-entropy over the label tokens of ``examples``.

    Only the positions that predict a label in some row are unembedded (``logits_to_keep``, where
    the model takes it): the full-vocabulary unembedding and softmax of the prompt positions,
    about three quarters of a dialogue, would be computed and thrown away. The loss and its
    gradients equal the all-position computation's (the kept positions are the only ones with
    a non-ignored target).
    """
    ids, mask, labels = (t.to(device) for t in collate(examples, pad_id))
    targets = labels[:, 1:]
    keep = (targets != -100).any(0).nonzero().flatten()
    if _takes_logits_to_keep(model):
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, keep]
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets[:, keep].flatten(), ignore_index=-100, reduction="sum"
    )


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (PEFT-unwrapped) HuggingFace model's forward accepts ``logits_to_keep``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.ndim > 0
    )


def _save_checkpoint(
    directory: Path,
    tunable: Tunable,
    optimizer: torch.optim.Optimizer,
    step: int,
    losses: list[float],
    run_key: dict[str, int],
) -> None:
    tmp, final, old = (
        directory / "checkpoint.tmp",
        directory / "checkpoint",
        directory / "checkpoint.old",
    )
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in tunable.state().items()}, tmp / "trainable.safetensors"
    )
    moments = {}
    for i, p in enumerate(tunable.parameters()):
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                moments[f"{key}.{i}"] = state[key].detach().cpu().contiguous()
        if "step" in state:
            moments[f"step.{i}"] = torch.as_tensor(state["step"], dtype=torch.float64).reshape(1)
    save_file(moments, tmp / "optimizer.safetensors")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "losses": losses, **run_key}))
    fsync_tree(tmp)  # complete on disk before it takes the checkpoint's name
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_tree(directory)
    shutil.rmtree(old, ignore_errors=True)


def _find_checkpoint(directory: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):  # .old survives a crash between the two renames
        if (directory / name / "progress.json").is_file():
            return directory / name
    return None


def _load_checkpoint(
    path: Path, tunable: Tunable, optimizer: torch.optim.Optimizer, run_key: dict[str, int]
) -> tuple[int, list[float]]:
    """Raises: CheckpointError: the checkpoint was made with another global batch, seed or
    tunable, or one of its files is corrupt."""
    try:
        progress = json.loads((path / "progress.json").read_text())
        moments = load_file(path / "optimizer.safetensors")
        trainable = load_file(path / "trainable.safetensors")
    except Exception as err:  # json / safetensors raise their own types for a corrupt file
        raise CheckpointError(
            f"the checkpoint in {path} is unreadable ({type(err).__name__}: {err}); delete it to "
            "start this method again"
        ) from None
    saved = {k: progress.get(k) for k in run_key}
    if saved != run_key:
        raise CheckpointError(
            f"the checkpoint in {path} was made with {saved}, this run has {run_key} (another "
            "number of processes, batch size, accumulation or seed); resume it with the same "
            "settings or delete the checkpoint"
        )
    try:
        tunable.load_state(trainable)
    except ValueError as err:
        raise CheckpointError(
            f"{path}: {err}; delete the checkpoint to start this method again"
        ) from None
    for i, p in enumerate(tunable.parameters()):
        if f"exp_avg.{i}" in moments:
            optimizer.state[p] = {
                "exp_avg": moments[f"exp_avg.{i}"].to(p.device),
                "exp_avg_sq": moments[f"exp_avg_sq.{i}"].to(p.device),
                "step": torch.tensor(float(moments[f"step.{i}"][0])),
            }
    return progress["step"], list(progress["losses"])


def _last_good(ckpt_dir: Path | None) -> str:
    found = _find_checkpoint(ckpt_dir) if ckpt_dir else None
    if found is None:
        return "; no checkpoint was written (set checkpoint_every to keep one)"
    step = json.loads((found / "progress.json").read_text())["step"]
    return f"; the last good checkpoint (step {step}) is in {found}"


def train(
    model: torch.nn.Module,
    tunable: Tunable,
    examples: Sequence[TrainExample],
    config: TrainConfig,
    *,
    pad_id: int,
    checkpoint_dir: str | Path | None = None,
    accelerator: Any | None = None,
    progress: bool = False,
) -> TrainReport:
    """Train ``tunable`` on ``examples`` (see the module docstring); the model is left in eval mode.

    Args:
        model: the HuggingFace causal LM whose forward the tunable modifies.
        tunable: :class:`~sycointerp.spt.tunable.HeadDeltas`, ``FullWeights`` or ``PeftLoRA``.
        examples: tokenized dialogues (:func:`~sycointerp.spt.data.tokenize_dialogues`).
        config: optimization settings.
        pad_id: padding token id.
        checkpoint_dir: where checkpoints go (and are resumed from); ``None`` for none.
        accelerator: an ``accelerate.Accelerator`` (default: a new one; CPU unless CUDA is there).
        progress: show a progress bar (main process only).

    Raises:
        ValueError: no examples.
        TrainingError: a non-finite loss or gradient.
        CheckpointError: the checkpoint in ``checkpoint_dir`` belongs to another run.
    """
    if not examples:
        raise ValueError("no training examples")
    from accelerate import Accelerator

    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    world, rank = acc.num_processes, acc.process_index
    params = list(tunable.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start, losses = 0, []
    micro, global_batch = config.batch_size, config.batch_size * config.grad_accum * world
    run_key = {"global_batch": global_batch, "processes": world, "seed": config.seed}
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    found = _find_checkpoint(ckpt_dir) if ckpt_dir else None
    if found is not None:
        start, losses = _load_checkpoint(found, tunable, optimizer, run_key)
    factor = _lr_factor(config)
    # Offset by the resumed step rather than replaying scheduler steps before any optimizer step.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factor(s + start))
    device = next(model.parameters()).device
    model.train()
    began, step_times = time.perf_counter(), []
    try:
        with frozen(model), tunable.active():
            bar = tqdm(
                range(start, config.steps),
                desc="training",
                disable=not progress or rank != 0,
                initial=start,
                total=config.steps,
            )
            for step in bar:
                t0 = time.perf_counter()
                torch.manual_seed(
                    config.seed * 1_000_003 + step * world + rank
                )  # dropout, per step
                batch = _batch_indices(len(examples), step, global_batch, config.seed)
                n_tokens = loss_tokens([examples[i] for i in batch])
                total = torch.zeros((), device=device)
                for a in range(config.grad_accum):
                    lo = (a * world + rank) * micro
                    mine = [examples[i] for i in batch[lo : lo + micro]]
                    loss = loss_sum(model, mine, pad_id, device) / n_tokens
                    loss.backward()
                    total = total + loss.detach()
                if world > 1:
                    for p in params:
                        p.grad = acc.reduce(
                            p.grad if p.grad is not None else torch.zeros_like(p), "sum"
                        )
                    total = acc.reduce(total, "sum")
                value = float(total)
                norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
                if not (math.isfinite(value) and math.isfinite(norm)):
                    what = (
                        f"the loss became {value}"
                        if not math.isfinite(value)
                        else f"the gradient norm became {norm}"
                    )
                    raise TrainingError(
                        f"{what} at step {step}{_last_good(ckpt_dir)}; lower the learning rate"
                    )
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(value)
                step_times.append(time.perf_counter() - t0)
                bar.set_postfix(loss=f"{value:.4f}")
                every = config.checkpoint_every
                if (
                    ckpt_dir
                    and rank == 0
                    and every
                    and ((step + 1) % every == 0 or step + 1 == config.steps)
                ):
                    _save_checkpoint(ckpt_dir, tunable, optimizer, step + 1, losses, run_key)
    finally:
        model.eval()
    acc.wait_for_everyone()
    # The first step also allocates the optimizer state: the typical step is the median of the rest.
    typical = statistics.median(step_times[1:] or step_times) if step_times else 0.0
    return TrainReport(
        tuple(losses),
        time.perf_counter() - began,
        typical,
        tunable.n_trainable(),
        _optimizer_bytes(optimizer),
        len(examples),
        world,
        start,
        asdict(config),
    )
