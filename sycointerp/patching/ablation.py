"""Head ablation: a context manager that replaces chosen heads' outputs while it is active.

Ablation replaces a head's output ``z`` (``blocks.{l}.attn.hook_z``: per *query* head, before
``W_O``; GQA models included) at every position while active:

- ``"zero"``: ``z = 0``.
- ``"mean"``: the head's mean ``z`` over every real (non-pad) position of a set of reference
  prompts (default: the pairs' challenge prompts). One vector per head, independent of position,
  on purpose: it applies to prompts of any length, to left-padded batches and to every step of
  KV-cached generation, where a per-position mean would be undefined past the shortest reference
  prompt. (TransformerLens examples often mean-ablate per position; this is not that.)
- ``"resample"``: ``z`` of the counterfactual prompt of the same pair, position by position. It
  needs aligned pairs and a run of exactly the source prompts' shape, so it is refused during
  generation (new tokens have no counterfactual counterpart).

Cost: one pass over the reference prompts for ``"mean"`` (caching only the ablated layers'
``hook_z``, ``batch_size`` prompts at a time) or over the source prompts for ``"resample"``.
Memory: means are ``n_layers x n_heads x d_head`` floats.

Refusals (ValueError unless stated): heads out of range, repeated or not integer pairs; unknown
method; options that do not belong to the method; resample during generation or on a run of
another shape (RuntimeError); hooks that never fired (RuntimeError).
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from jaxtyping import Float, Int
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.chat import pad_right
from sycointerp.heads import Head, HeadGrid, heads_by_layer
from sycointerp.patching._engine import cache_hooks, z_name

__all__ = ["METHODS", "Means", "Method", "ablate_heads", "head_means", "layer_means"]

Method = Literal["mean", "zero", "resample"]
METHODS = ("mean", "zero", "resample")
Means = Float[torch.Tensor, "layer head d_head"] | Mapping[int, Float[torch.Tensor, "head d_head"]]


@torch.inference_mode()
def layer_means(
    model: TransformerBridge,
    prompts: Sequence[Sequence[int]],
    layers: Sequence[int],
    batch_size: int,
) -> dict[int, torch.Tensor]:
    """Mean ``hook_z`` per layer (``[head, d_head]``) over every real position of ``prompts``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("mean ablation needs at least one reference prompt, and no empty ones")
    names = [z_name(l) for l in layers]
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for start in range(0, len(prompts), batch_size):
        ids, lengths = pad_right(
            prompts[start : start + batch_size], model.tokenizer.pad_token_id or 0
        )
        real = torch.arange(ids.shape[1]) < lengths[:, None]
        cached = cache_hooks(model, ids.to(model.cfg.device), names)
        for l in layers:
            # float64 sums: the mean of many positions should not depend on chunking.
            part = cached[z_name(l)][real.to(cached[z_name(l)].device)].double().sum(0)
            sums[l] = part if l not in sums else sums[l] + part
        count += int(real.sum())
    return {l: (s / count).float() for l, s in sums.items()}


def head_means(
    model: TransformerBridge, prompts: Sequence[Sequence[int]], *, batch_size: int = 16
) -> Float[torch.Tensor, "layer head d_head"]:
    """Every head's mean ``z`` over every real position of ``prompts`` (for
    ``ablate_heads(means=)``).

    Raises:
        ValueError: no prompts, an empty prompt, or ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    means = layer_means(model, prompts, range(model.cfg.n_layers), batch_size)
    return torch.stack([means[l] for l in range(model.cfg.n_layers)])


def _replacements(
    model: TransformerBridge,
    by_layer: dict[int, list[int]],
    method: str,
    reference: Sequence[Sequence[int]] | None,
    means: Means | None,
    source: torch.Tensor | None,
    batch_size: int,
) -> dict[int, torch.Tensor]:
    """Per layer, the value written into the ablated heads' slice of ``z``: ``[n_sel, d_head]``
    (zero, mean) or ``[batch, pos, n_sel, d_head]`` (resample)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    given = {
        "reference": reference is not None,
        "means": means is not None,
        "source": source is not None,
    }
    allowed = {"zero": set(), "mean": {"reference", "means"}, "resample": {"source"}}[method]
    extra = [name for name, is_given in given.items() if is_given and name not in allowed]
    if extra:
        raise ValueError(f"{extra} do not apply to method={method!r}")
    if method == "mean" and given["reference"] == given["means"]:
        raise ValueError(
            "mean ablation needs exactly one of reference= (token-id prompts) or means="
        )
    if method == "resample" and source is None:
        raise ValueError(
            "resample ablation needs source= (the counterfactual token ids, aligned with the run)"
        )
    d_head = model.cfg.d_head
    if method == "zero" or not by_layer:
        return {
            l: torch.zeros(len(hs), d_head, device=model.cfg.device) for l, hs in by_layer.items()
        }
    if method == "resample":
        cached = cache_hooks(model, source.to(model.cfg.device), [z_name(l) for l in by_layer])
        return {l: cached[z_name(l)][:, :, hs] for l, hs in by_layer.items()}
    if means is None:
        means = layer_means(model, reference, list(by_layer), batch_size)
    for l in by_layer:
        if tuple(means[l].shape) != (model.cfg.n_heads, d_head):
            raise ValueError(
                f"means[{l}] has shape {tuple(means[l].shape)}, expected ({model.cfg.n_heads}, "
                f"{d_head})"
            )
    return {l: means[l][hs].to(model.cfg.device) for l, hs in by_layer.items()}


def _hook(heads: list[int], value: torch.Tensor, fired: dict[str, int], name: str):
    index = torch.tensor(heads)

    def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
        fired[name] += 1
        if value.ndim == 4 and value.shape[:2] != z.shape[:2]:
            raise RuntimeError(
                f"resample ablation: the run has batch x pos {tuple(z.shape[:2])}, the source "
                f"prompts {tuple(value.shape[:2])}; run exactly the prompts aligned with source= "
                "(no generation)"
            )
        z = z.clone()  # activations may alias tensors used elsewhere; never write in place
        z[:, :, index.to(z.device)] = value.to(z.dtype)
        return z

    return hook


@contextmanager
def ablate_heads(
    model: TransformerBridge,
    heads: Sequence[Head],
    *,
    method: Method,
    reference: Sequence[Sequence[int]] | None = None,
    means: Means | None = None,
    source: Int[torch.Tensor, "batch pos"] | None = None,
    batch_size: int = 16,
) -> Iterator[dict[str, int]]:
    """Ablate ``heads`` (``(layer, head)`` pairs) at every position while the block runs.

    Any forward of the model inside the block, HuggingFace ``generate`` on
    ``model.original_model`` included, sees the ablated heads. The hooks are removed on exit, also
    when the block raises.

    Args:
        model: a compat-mode TransformerBridge.
        heads: the heads to ablate; none is a no-op.
        method: ``"zero"``, ``"mean"`` or ``"resample"`` (see the module docstring).
        reference: for ``"mean"``: token-id prompts whose per-head mean ``z`` (over real
            positions) replaces the output; computed once, for the ablated layers only.
        means: for ``"mean"``, instead of ``reference``: precomputed means
            (:func:`head_means`, or a mapping layer -> ``[head, d_head]``).
        source: for ``"resample"``: ``[batch, pos]`` token ids whose ``z`` replaces the run's,
            position by position; the run inside the block must have the same shape.
        batch_size: prompts per forward when computing means.

    Yields:
        Calls so far per hooked name (``blocks.{l}.attn.hook_z``).

    Raises:
        ValueError: heads out of range or repeated, unknown method, options not of the method.
        RuntimeError: on a clean exit, a hook never fired (no forward ran, or the model is not a
            compat-mode bridge); a resample hook saw a run of another shape.
    """
    by_layer = heads_by_layer(heads, HeadGrid.of(model))
    values = _replacements(model, by_layer, method, reference, means, source, batch_size)
    fired = {z_name(l): 0 for l in by_layer}
    hooks = [(z_name(l), _hook(hs, values[l], fired, z_name(l))) for l, hs in by_layer.items()]
    with model.hooks(fwd_hooks=hooks):
        yield fired
    never = sorted(name for name, calls in fired.items() if calls == 0)
    if never:
        raise RuntimeError(
            f"ablation hooks never fired: {never}; run the model inside the block "
            "(is it a compat-mode TransformerBridge?)"
        )
