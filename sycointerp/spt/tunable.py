"""What a fine-tuning run trains: per-head deltas (SPT, LoRA on heads), all weights (SFT), or peft
LoRA.

Every method is a :class:`Tunable` with the same four operations, so one training loop serves
them all: ``parameters()`` (what the optimizer sees), ``active()`` (a context manager during which
the model's forward includes the trainable parameters), ``merge()`` (write them into the
HuggingFace weights for good) and ``state()`` / ``load_state()`` (safetensors checkpoints).

:class:`HeadDeltas` (SPT) keeps one zero-initialised trainable tensor per head slice
(:func:`sycointerp.spt.slices.head_slices`) instead of training whole matrices with masked
gradients, so the optimizer state covers the selected slices only. While active, forward hooks on
the projection layers add each delta's contribution (``x @ delta`` on the slice's output features
for q/k/v, ``x[..., slice] @ delta`` for o), which equals running with ``W + delta`` merged (to
float rounding); ``merge()`` adds the deltas into exactly those slices, so every other weight stays
bit-identical. ``rank=r`` factorizes each delta as ``B @ A`` (LoRA restricted to the heads).

Deltas are float32 whatever the model's dtype, so AdamW's updates are not lost to bfloat16
rounding during training; the hooks cast each contribution to the layer's dtype, and ``merge()``
rounds ``W + delta`` once, to the weight's dtype. AdamW's weight decay acts on the deltas, so it
pulls the tuned slices back towards the original weights (not towards zero).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from sycointerp.heads import HeadSet
from sycointerp.spt.slices import HeadSlice, head_slices

__all__ = ["Tunable", "HeadDeltas", "FullWeights", "PeftLoRA", "frozen"]


@runtime_checkable
class Tunable(Protocol):
    """What the training loop trains: parameters, a context in which the forward uses them, merging
    into the model, and checkpoint state (see the module docstring).
    """

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates."""

    def n_trainable(self) -> int:
        """Number of trainable scalars."""

    def active(self):
        """A context manager during which the model's forward includes the trainable parameters."""

    def merge(self) -> None:
        """Write the trained parameters into the model's weights for good."""

    def state(self) -> dict[str, torch.Tensor]:
        """The trainable state as named tensors (a checkpoint)."""

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state`'s tensors."""


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Every model parameter has ``requires_grad=False`` inside; the previous flags come back
    after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _contribution(s: HeadSlice, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The layer-output change caused by ``delta`` on slice ``s`` for input ``x``."""
    if s.on_output:  # Linear delta [size, in] -> x @ delta.T; Conv1D delta [in, size] -> x @ delta
        return x @ (delta if s.conv1d else delta.T)
    part = x[..., s.start : s.start + s.size]  # Linear delta [out, size]; Conv1D delta [size, out]
    return part @ (delta if s.conv1d else delta.T)


class HeadDeltas:
    """Trainable per-head-slice deltas (full rank: SPT; ``rank``: LoRA restricted to the heads).

    Not an ``nn.Module`` on purpose: it refers to the model without owning its parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        heads: HeadSet,
        *,
        tune_kv: bool | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        self.model, self.heads, self.rank = model, heads, rank
        self.slices = head_slices(model, heads, tune_kv=tune_kv)
        gen = torch.Generator().manual_seed(seed)
        self.factors = nn.ParameterList()
        for s in self.slices:
            device = s.module.weight.device
            if rank is None:
                self.factors.append(nn.Parameter(torch.zeros(s.shape, device=device)))
            else:  # LoRA init: A random (Kaiming-uniform-like scale), B zero, so the delta
                # starts at 0
                a = (torch.rand((rank, s.shape[1]), generator=gen) * 2 - 1) / s.shape[1] ** 0.5
                self.factors.append(nn.Parameter(a.to(device)))
                self.factors.append(nn.Parameter(torch.zeros((s.shape[0], rank), device=device)))

    def delta(self, i: int) -> torch.Tensor:
        """Slice ``i``'s delta (``B @ A`` for low-rank deltas)."""
        if self.rank is None:
            return self.factors[i]
        return self.factors[2 * i + 1] @ self.factors[2 * i]

    def parameters(self) -> list[nn.Parameter]:
        """The deltas (or their low-rank factors)."""
        return list(self.factors)

    def n_trainable(self) -> int:
        """Number of trainable scalars of the deltas."""
        return sum(p.numel() for p in self.factors)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Hooks that add each delta's contribution to its projection's output."""
        by_module: dict[int, list[int]] = {}
        for i, s in enumerate(self.slices):
            by_module.setdefault(id(s.module), []).append(i)
        handles = []
        for indices in by_module.values():
            module = self.slices[indices[0]].module

            def hook(mod, args, output, indices=indices):
                out = output.clone()
                for i in indices:
                    s = self.slices[i]
                    change = _contribution(s, self.delta(i).to(args[0].dtype), args[0])
                    if s.on_output:
                        out[..., s.start : s.start + s.size] = (
                            out[..., s.start : s.start + s.size] + change
                        )
                    else:
                        out = out + change
                return out

            handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def merge(self) -> None:
        """Add every delta into its slice of the real weights (nothing else is written)."""
        for i, s in enumerate(self.slices):
            view = s.view()  # one rounding of W + delta to the weight's dtype (no-op for float32)
            view.copy_((view.float() + self.delta(i).float()).to(view.dtype))

    def state(self) -> dict[str, torch.Tensor]:
        """The deltas as named tensors."""
        return {f"factor.{i}": p.detach().cpu() for i, p in enumerate(self.factors)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Raises: ValueError: ``state`` holds other deltas (another head set, rank or model)."""
        if sorted(state) != sorted(f"factor.{i}" for i in range(len(self.factors))) or any(
            state[f"factor.{i}"].shape != p.shape for i, p in enumerate(self.factors)
        ):
            raise ValueError(
                "the checkpoint's deltas do not match these heads' slices (another head set, rank "
                "or model)"
            )
        with torch.no_grad():
            for i, p in enumerate(self.factors):
                p.copy_(state[f"factor.{i}"])

    def named_deltas(self) -> dict[str, torch.Tensor]:
        """``"layer.{l}.{role}.{index}"`` -> merged-orientation delta (for saving the tuned
        slices)."""
        return {
            f"layer.{s.layer}.{s.role}.{s.index}": self.delta(i).detach().cpu().contiguous()
            for i, s in enumerate(self.slices)
        }


class FullWeights:
    """Every weight trainable (the SFT baseline); the model changes in place, so merge is a
    no-op."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = [p for p in model.parameters()]

    def parameters(self) -> list[nn.Parameter]:
        """Every weight of the model."""
        return self.params

    def n_trainable(self) -> int:
        # Tied weights (embeddings = lm_head) count once.
        """Number of the model's scalars."""
        return sum(p.numel() for p in {id(p): p for p in self.params}.values())

    @contextmanager
    def active(self) -> Iterator[None]:
        """Unfreezes the model's weights inside the block (they are trained in place)."""
        flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p, flag in zip(self.params, flags):
                p.requires_grad_(flag)

    def merge(self) -> None:
        """Nothing to merge: the weights were trained in place."""
        return None

    def _named_parameters(self) -> dict[str, nn.Parameter]:
        """State-dict names (tied weights under each name) -> parameters; buffers left out."""
        return {
            n: p
            for n, p in self.model.state_dict(keep_vars=True).items()
            if isinstance(p, nn.Parameter)
        }

    def state(self) -> dict[str, torch.Tensor]:
        """Every weight as named tensors."""
        return {name: p.detach().cpu().clone() for name, p in self._named_parameters().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Raises: ValueError: ``state`` has other parameters than the model (another model's
        checkpoint)."""
        names = set(self._named_parameters())
        if set(state) != names:
            differ = sorted(names - set(state))[:3] or sorted(set(state) - names)[:3]
            raise ValueError(
                f"the checkpoint does not match this model's parameters (e.g. {differ})"
            )
        self.model.load_state_dict(
            state, strict=False
        )  # parameters only: buffers are not in the state


_ATTENTION_TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "c_attn",
    "c_proj",
    "query_key_value",
    "dense",
]


class PeftLoRA:
    """peft LoRA on every attention projection (the paper's LoRA baseline; rank 16 by default).

    The adapter layers are injected into ``model`` on construction; ``merge()`` folds them into
    the base weights and removes them (``merge_and_unload``), leaving a plain HuggingFace model.
    """

    def __init__(self, model: nn.Module, *, rank: int = 16, alpha: int = 32, seed: int = 0) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [
            t
            for t in _ATTENTION_TARGETS
            if t in names and not (t == "c_proj" and "c_attn" not in names)
        ]
        if getattr(model.config, "model_type", "") == "gpt2":
            targets = ["c_attn", "attn.c_proj"]
        torch.manual_seed(seed)
        conv1d = (
            getattr(model.config, "model_type", "") == "gpt2"
        )  # Conv1D weights are stored [in, out]
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=targets,
            lora_dropout=0.0,
            bias="none",
            fan_in_fan_out=conv1d,
        )
        self.model = inject_adapter_in_model(config, model)
        self.params = [p for n, p in self.model.named_parameters() if "lora_" in n]

    def parameters(self) -> list[nn.Parameter]:
        """The LoRA adapters' parameters."""
        return self.params

    def n_trainable(self) -> int:
        """Number of the adapters' scalars."""
        return sum(p.numel() for p in self.params)

    @contextmanager
    def active(self) -> Iterator[None]:
        """The adapted model's forward inside the block."""
        for p in self.params:
            p.requires_grad_(True)
        yield

    @torch.no_grad()
    def merge(self) -> None:
        """Merge the adapters into the attention projections and remove them."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, child, module.get_base_layer())

    def state(self) -> dict[str, torch.Tensor]:
        """The adapters' parameters as named tensors."""
        return {
            n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if "lora_" in n
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state`'s tensors into the adapters."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)
