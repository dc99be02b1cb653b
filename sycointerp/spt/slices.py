"""Where each selected head (a :class:`~sycointerp.heads.HeadSet`) lives in the HuggingFace weights.

A head's parameters are slices of the attention projections (the SPT paper's W_Q, W_K, W_V, W_O):

- query: the ``d_head`` output features of ``q`` belonging to the head;
- key / value: the ``d_head`` output features of the head's *KV head* (``head // group`` in
  grouped-query attention, where ``group = n_heads // n_kv_heads`` query heads share one);
- output: the ``d_head`` input features of ``o`` that read the head's ``z``.

Layouts handled (``model.config.model_type``):

- separate ``q_proj / k_proj / v_proj / o_proj`` Linear layers (Llama, Mistral, Qwen2/3, Gemma 2/3,
  OLMo/OLMo 2, SmolLM2): rows of q/k/v (Linear weights are ``[out, in]``), columns of o;
- fused Linear ``qkv_proj`` (Phi-3): rows ``[q heads | k heads | v heads]``;
- fused Conv1D ``c_attn`` / ``c_proj`` (GPT-2): Conv1D weights are ``[in, out]``, so the head's
  q/k/v features are *columns* ``[q | k | v]`` of ``c_attn`` and its output features *rows* of
  ``c_proj``;
- fused, per-head interleaved ``query_key_value`` (GPT-NeoX / Pythia): rows
  ``[h0: q k v | h1: ...]``.

GQA rule (the paper's): with ``n_kv_heads < n_heads`` only W_Q and W_O are tuned by default, since
a KV slice is shared by a whole group; ``tune_kv=True`` opts in, and a KV head shared by two
selected heads is then one slice (tuned once). Biases are never tuned. Anything else raises
:class:`UnsupportedArchitecture` naming the family; nothing is guessed.

QK-norms: a per-head ``q_norm`` / ``k_norm`` (Qwen3, Gemma 3; width ``d_head``) keeps slices
head-local. OLMo 2 normalizes queries and keys over all heads at once (width ``n_heads x d_head``),
so one head's W_Q / W_K rows change every head's attention: refused.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sycointerp.errors import UserError
from sycointerp.heads import HeadSet, attention_dims

__all__ = ["HeadSlice", "UnsupportedArchitecture", "head_slices", "expected_trainable"]

Role = Literal["q", "k", "v", "o"]


class UnsupportedArchitecture(UserError):
    """The model's attention layout is not one SPT can slice per head; the message names it."""


@dataclass(frozen=True)
class HeadSlice:
    """One tuned block: ``module.weight.narrow(dim, start, size)``.

    ``on_output`` says whether the block is output features of the layer (q/k/v) or input
    features (o); ``conv1d`` whether the weight is stored ``[in, out]`` (GPT-2) instead of Linear's
    ``[out, in]``. Both decide how a delta on the block enters the layer's output.
    """

    layer: int
    role: Role
    index: int  # query head for q/o, KV head for k/v
    module: torch.nn.Module
    name: str
    dim: int
    start: int
    size: int
    on_output: bool
    conv1d: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """The slice's shape within its weight matrix."""
        full = list(self.module.weight.shape)
        full[self.dim] = self.size
        return tuple(full)

    def view(self) -> torch.Tensor:
        """The slice as a view of the weight (writes go to the model)."""
        return self.module.weight.narrow(self.dim, self.start, self.size)


_SEPARATE = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "olmo",
    "olmo2",
    "granite",
    "smollm3",
}


def _layers(model: torch.nn.Module, kind: str) -> torch.nn.ModuleList:
    base = (
        getattr(model, "model", None)
        or getattr(model, "transformer", None)
        or getattr(model, "gpt_neox", None)
    )
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise UnsupportedArchitecture(f"cannot find the decoder layers of model type {kind!r}")
    return layers


def _blocks(
    kind: str, attn: torch.nn.Module, n_heads: int, n_kv: int, d_head: int
) -> dict[str, tuple[torch.nn.Module, str, int, bool, bool]]:
    """Per role: (module, name, offset of head 0 on the sliced axis, on_output, conv1d)."""
    if kind in _SEPARATE:
        return {
            "q": (attn.q_proj, "q_proj", 0, True, False),
            "k": (attn.k_proj, "k_proj", 0, True, False),
            "v": (attn.v_proj, "v_proj", 0, True, False),
            "o": (attn.o_proj, "o_proj", 0, False, False),
        }
    if kind == "phi3":
        return {
            "q": (attn.qkv_proj, "qkv_proj", 0, True, False),
            "k": (attn.qkv_proj, "qkv_proj", n_heads * d_head, True, False),
            "v": (attn.qkv_proj, "qkv_proj", (n_heads + n_kv) * d_head, True, False),
            "o": (attn.o_proj, "o_proj", 0, False, False),
        }
    if kind == "gpt2":
        d_model = n_heads * d_head
        return {
            "q": (attn.c_attn, "c_attn", 0, True, True),
            "k": (attn.c_attn, "c_attn", d_model, True, True),
            "v": (attn.c_attn, "c_attn", 2 * d_model, True, True),
            "o": (attn.c_proj, "c_proj", 0, False, True),
        }
    raise UnsupportedArchitecture(
        f"SPT cannot slice heads of model type {kind!r}: supported are "
        f"{sorted(_SEPARATE | {'phi3', 'gpt2', 'gpt_neox'})}"
    )


def head_slices(
    model: torch.nn.Module, heads: HeadSet, *, tune_kv: bool | None = None
) -> list[HeadSlice]:
    """The weight blocks SPT tunes for ``heads`` in a HuggingFace causal LM.

    Args:
        model: a plain HuggingFace ``*ForCausalLM`` (not a TransformerBridge: the bridge wraps and,
            for fused layouts, splits the projections; SPT trains the real weights).
        heads: the selected heads.
        tune_kv: tune the K/V slices; default: yes for multi-head attention, no for GQA.

    Raises:
        UnsupportedArchitecture: a layout this module does not know.
        ValueError: ``heads`` made for another head grid.
    """
    config = model.config
    kind = getattr(config, "model_type", "?")
    n_layers, n_heads, n_kv, _, d_head = attention_dims(config)
    if (heads.n_layers, heads.n_heads) != (n_layers, n_heads):
        raise ValueError(
            f"the head set is for {heads.n_layers} x {heads.n_heads} heads, the model has "
            f"{n_layers} x {n_heads}; rank heads on this model"
        )
    tune_kv = (n_kv == n_heads) if tune_kv is None else tune_kv
    layers = _layers(model, kind)
    out: list[HeadSlice] = []
    seen_kv: set[tuple[int, int]] = set()
    for layer, head in heads.heads:
        attn = (
            getattr(layers[layer], "self_attn", None)
            or getattr(layers[layer], "attn", None)
            or getattr(layers[layer], "attention", None)
        )
        _require_head_local_norms(kind, attn, n_heads, n_kv, d_head)
        kv = head // (n_heads // n_kv)
        roles: list[tuple[Role, int]] = [("q", head), ("o", head)]
        if tune_kv and (layer, kv) not in seen_kv:
            seen_kv.add((layer, kv))
            roles += [("k", kv), ("v", kv)]
        out += [
            _slice(kind, attn, layer, role, index, n_heads, n_kv, d_head) for role, index in roles
        ]
    return out


def _require_head_local_norms(
    kind: str, attn: torch.nn.Module, n_heads: int, n_kv: int, d_head: int
) -> None:
    """Refuse QK-norms wider than one head (OLMo 2): they mix every head's queries or keys.

    A per-head norm (Qwen3, Gemma 3: width ``d_head``) keeps a head's slice head-local; a norm over
    ``n_heads x d_head`` features rescales every head by a statistic of all of them, so changing one
    head's W_Q / W_K rows changes every head's attention.

    Raises:
        UnsupportedArchitecture: a ``q_norm`` / ``k_norm`` whose width is not ``d_head``.
    """
    for name, heads in (("q_norm", n_heads), ("k_norm", n_kv)):
        norm = getattr(attn, name, None)
        if norm is None:
            continue
        weight = getattr(norm, "weight", None)
        width = weight.shape[-1] if isinstance(weight, torch.Tensor) else None
        if width != d_head:
            raise UnsupportedArchitecture(
                f"SPT cannot slice heads of model type {kind!r}: its {name} normalizes across all "
                f"{heads} heads at once (width {width}, d_head {d_head}), so one head's "
                f"W_{name[0].upper()} slice changes every head's attention; per-head tuning would "
                "not be head-local"
            )


def _slice(
    kind: str,
    attn: torch.nn.Module,
    layer: int,
    role: Role,
    index: int,
    n_heads: int,
    n_kv: int,
    d_head: int,
) -> HeadSlice:
    if kind == "gpt_neox":  # rows [head: q | k | v] interleaved per head
        if role == "o":
            return HeadSlice(
                layer, role, index, attn.dense, "dense", 1, index * d_head, d_head, False, False
            )
        offset = index * 3 * d_head + "qkv".index(role) * d_head
        return HeadSlice(
            layer,
            role,
            index,
            attn.query_key_value,
            "query_key_value",
            0,
            offset,
            d_head,
            True,
            False,
        )
    module, name, base, on_output, conv1d = _blocks(kind, attn, n_heads, n_kv, d_head)[role]
    # Linear [out, in]: output features are rows (dim 0).
    # Conv1D [in, out]: output features are columns.
    dim = (1 if conv1d else 0) if on_output else (0 if conv1d else 1)
    return HeadSlice(
        layer, role, index, module, name, dim, base + index * d_head, d_head, on_output, conv1d
    )


def expected_trainable(config: Any, k: int, *, tune_kv: bool | None = None) -> int:
    """The paper's count: ``K x 4 x d_model x d_head`` (MHA) or ``K x 2 x d_model x d_head`` (GQA
    default).

    With ``tune_kv`` on a GQA model the KV slices depend on which heads share a group, so this
    returns the upper bound (every selected head in its own group).
    """
    _, n_heads, n_kv, d_model, d_head = attention_dims(config)
    tune_kv = (n_kv == n_heads) if tune_kv is None else tune_kv
    return k * (4 if tune_kv else 2) * d_model * d_head


def unique_layers(slices: Iterable[HeadSlice]) -> list[int]:
    """The distinct layers of ``heads``, sorted."""
    return sorted({s.layer for s in slices})
