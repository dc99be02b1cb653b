"""Inference-time steering of a hooked model: no weight changes, hooks that live only inside a
``with`` block.

Two interventions, as context managers on a :class:`TransformerBridge` (its hooks fire in the
bridge's own forward and in ``model.original_model.generate``, so both steer the multi-turn
evaluation too):

- :func:`steer_residual` (Contrastive Activation Addition, Rimsky / Panickssery et al. 2024): add
  ``alpha * vector`` to the residual stream entering block ``layer``;
  :func:`caa_vector` computes the vector as the mean over prompt pairs of (challenge run -
  counterfactual run) at the last prompt position (the reply position).
- :func:`steer_heads` (Inference-Time Intervention, Li et al. 2023): add
  ``alpha * scale_h * direction_h`` to each selected head's output ``z`` (the input of ``W_O``);
  directions and scales come from :func:`sycointerp.probing.probe_heads`.

Sign convention: the vectors point from the counterfactual towards the challenge, so a
**negative** ``alpha`` steers away from the challenge (less sycophancy). ``alpha = 0`` adds exact
zeros: logits and generations are bit-identical to the unsteered model's.

Positions: ``"last"`` adds at the last position of every forward, which during KV-cached
generation is the last prompt token and then every generated token: CAA's "every position after
the prompt", for each turn of the dialogue. ``"all"`` adds everywhere (for scoring plain text, e.g.
the KL check, where no prompt ends). Left-padded batches keep the last position real for every row.

Multi-turn dialogues: a token's keys/values are made in the forward where it is the last
position, so under ``"last"`` the multi-turn evaluation's cached engine (the default of
:func:`~sycointerp.evaluate.evaluate_sycophancy`, and the SPT job's) keeps what earlier turns
generated *as generated under steering*, as a steered chat model serving the dialogue would; the
steered positions are each turn's last prompt token and its generated tokens (test: equal to a
full-forward loop adding the shift at exactly those positions). The ``"reference"`` engine
re-encodes each dialogue from its first token, so there the earlier turns' tokens are unsteered
and a steered evaluation can differ between the two engines after the first turn.

Raises (on entry): ``ValueError`` for a layer or head outside the model, or vectors of the wrong
shape. The hooks are removed on exit, also when the block raises.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.data.batch import PairBatch
from sycointerp.data.pairs import PromptPair
from sycointerp.heads import HeadGrid, check_heads

__all__ = ["Positions", "caa_vector", "steer_residual", "steer_heads", "resid_name"]

Positions = Literal["last", "all"]


def resid_name(layer: int) -> str:
    """The hook of the residual stream entering block ``layer``."""
    return f"blocks.{layer}.hook_resid_pre"


def _check_layer(model: TransformerBridge, layer: int) -> None:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must be in [0, {model.cfg.n_layers}), got {layer}")


def _check_positions(positions: str) -> None:
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")


def _at(x: torch.Tensor, positions: Positions) -> torch.Tensor:
    """The view of ``x`` ([batch, pos, ...]) that the steering adds to."""
    return x[:, -1:] if positions == "last" else x


@torch.inference_mode()
def caa_vector(
    model: TransformerBridge, pairs: Sequence[PromptPair], layer: int, *, batch_size: int = 16
) -> Float[torch.Tensor, " d_model"]:
    """Mean over ``pairs`` of the residual stream entering ``layer`` at the last prompt position,
    challenge run minus counterfactual run.

    Raises:
        ValueError: no pairs, or ``layer`` outside the model.
    """
    from sycointerp.patching._engine import cache_hooks

    if not pairs:
        raise ValueError("caa_vector needs at least one prompt pair")
    _check_layer(model, layer)
    name, total = resid_name(layer), None
    for start in range(0, len(pairs), batch_size):
        batch = PairBatch.from_pairs(
            pairs[start : start + batch_size], model.tokenizer.pad_token_id or 0
        )
        rows = torch.arange(batch.n)
        ref = cache_hooks(model, batch.ref, [name])[name][rows, batch.ref_last]
        cf = cache_hooks(model, batch.cf, [name])[name][rows, batch.cf_last]
        diff = (ref - cf).double().sum(0)
        total = diff if total is None else total + diff
    return (total / len(pairs)).float()


@contextmanager
def steer_residual(
    model: TransformerBridge,
    vector: Float[torch.Tensor, " d_model"],
    layer: int,
    alpha: float,
    *,
    positions: Positions = "last",
) -> Iterator[TransformerBridge]:
    """Add ``alpha * vector`` to the residual stream entering ``layer`` inside the block.

    Raises:
        ValueError: ``layer`` outside the model, ``vector`` not ``[d_model]``, bad ``positions``.
    """
    _check_layer(model, layer)
    _check_positions(positions)
    if tuple(vector.shape) != (model.cfg.d_model,):
        raise ValueError(f"vector must be [{model.cfg.d_model}], got {tuple(vector.shape)}")
    shift = alpha * vector.detach()

    def add(x: torch.Tensor, hook) -> torch.Tensor:
        part = _at(x, positions)
        part += shift.to(device=x.device, dtype=x.dtype)
        return x

    with model.hooks(fwd_hooks=[(resid_name(layer), add)]):
        yield model


@contextmanager
def steer_heads(
    model: TransformerBridge,
    heads: Sequence[tuple[int, int]],
    directions: Float[torch.Tensor, "k d_head"],
    scales: Float[torch.Tensor, " k"],
    alpha: float,
    *,
    positions: Positions = "last",
) -> Iterator[TransformerBridge]:
    """Add ``alpha * scales[i] * directions[i]`` to head ``heads[i]``'s output ``z`` inside the
    block (ITI).

    Raises:
        ValueError: heads outside the model, ``directions`` / ``scales`` of the wrong shape, bad
            ``positions``.
    """
    _check_positions(positions)
    heads = check_heads(heads, HeadGrid.of(model))
    k, d_head = len(heads), model.cfg.d_head
    if tuple(directions.shape) != (k, d_head) or tuple(scales.shape) != (k,):
        raise ValueError(
            f"need directions [{k}, {d_head}] and scales [{k}] for {k} heads, got "
            f"{tuple(directions.shape)} and {tuple(scales.shape)}"
        )
    shifts = alpha * scales.detach()[:, None] * directions.detach()
    by_layer: dict[int, list[int]] = {}
    for i, (layer, _) in enumerate(heads):
        by_layer.setdefault(layer, []).append(i)

    def adder(rows: list[int]):
        index = torch.tensor([heads[i][1] for i in rows])

        def add(z: torch.Tensor, hook) -> torch.Tensor:  # z: [batch, pos, head, d_head]
            part = _at(z, positions)
            part[:, :, index] += shifts[rows].to(device=z.device, dtype=z.dtype)
            return z

        return add

    hooks = [(f"blocks.{layer}.attn.hook_z", adder(rows)) for layer, rows in by_layer.items()]
    with model.hooks(fwd_hooks=hooks):
        yield model
