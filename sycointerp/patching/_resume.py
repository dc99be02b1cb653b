"""Resumed runs: restart a cached base run at a given layer, recomputing only some positions.

A patch at layer ``l`` and positions ``>= s`` changes nothing at earlier layers or earlier
positions (causal attention). So a patched run need not start from the tokens: it can start from
the base run's residual stream entering layer ``l`` at positions ``s..last``, while attention
reads positions ``< s`` from the base run's KV cache. For last-position patches that is one
position per row instead of the whole prompt, and ``L - l`` layers instead of ``L``.

The arithmetic is the model's own: the underlying HuggingFace decoder layers run (TransformerLens
wraps them in place, so every hook still fires), with a read-only view of the cached keys and
values and an explicit 4-D mask (prefix keys before each row's start, causal within the
suffix). Results equal a full forward up to float rounding (tests: 1e-5 on tiny models).

Two shortcuts keep a resumed chunk to the work the metric can see. A layer whose attention holds
no hooked hook point runs the HuggingFace attention module the bridge wraps, where that module
computes the same thing (Llama-style projections wrapped in place; not GPT-2's split ``c_attn``);
the bridge's step-by-step reimplementation, kept where hooks need it, costs about twice as much.
And the MLP runs only at positions that can reach the metric: not at the padding past an
example's end (suffixes differ in length), and in the last layer only at the metric position.
A layer whose MLP holds a hooked hook point runs it everywhere. Everything the metric reads is
exact; but activations downstream of a skipped MLP *at the skipped positions* (e.g.
``hook_resid_post`` past an example's end, or the last layer's at non-metric positions; OLMo-2's
``hook_mlp_out``, which sits outside its MLP) are not the model's, so a hook must not read them
there. The patching techniques never do: their hooks write, or record and replay at the same
positions.

Placed models (``device_map``, including layers offloaded to CPU or disk): every cached tensor
stays where the layer that made it runs (a layer's prefix keys/values, residual inputs and
observed activations on that layer's device), each layer is called as a module so that the
placement's own hooks move its inputs and bring offloaded weights in, and an offloaded
``lm_head``'s weight (a placeholder outside its forward) is filled for the unembedding, so the
numbers are bit for bit the unplaced model's. Tests: disk and CPU offload of tiny MHA and GQA
models and of SmolLM2, every engine method, to 1e-5.

Supported: decoder stacks reachable as ``model.model.layers`` (Llama, Mistral, Qwen2, SmolLM,
Gemma, ... with ``rotary_emb``) or ``transformer.h`` (GPT-2). Others fall back to full hooked
forwards (:func:`supports_resume` says which).

Memory: the state holds, per example, every layer's prefix keys and values
(``2 x n_layers x n_kv_heads x prefix x d_head`` floats) and the residual stream at the suffix
positions (``n_layers x suffix x d_model``); a resumed chunk of ``rows`` rows additionally holds,
per layer, the prefix keys/values gathered for its rows (``2 x rows x n_kv_heads x (prefix +
suffix) x d_head``, freed after the layer) and its activations (``rows x suffix x d_model``).
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate.utils import align_module_device
from jaxtyping import Float, Int
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

from sycointerp._compat import CACHE_ARG, output_cache
from sycointerp.models import run_device

__all__ = [
    "ResumeState",
    "supports_resume",
    "build_state",
    "resume_logits",
    "resume_tokens",
    "last_logits",
    "require_hooks",
    "unfold_hook",
]


@dataclass(frozen=True)
class _Parts:
    layers: torch.nn.ModuleList
    norm: torch.nn.Module
    rotary: torch.nn.Module | None
    lm_head: torch.nn.Module
    decoder: torch.nn.Module


# Architectures whose decoder layers are known to resume exactly. Others fall back to full
# hooked forwards: e.g. GPT-J / GPT-NeoX / Bloom lay their blocks out differently, Gemma-2/3
# soft-cap the final logits after lm_head and use sliding windows per layer type.
_RESUMABLE = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "olmo", "olmo2"}
# Rotary types whose frequencies depend on the longest position seen would differ on a suffix.
_POSITION_DEPENDENT_ROPE = {"dynamic", "longrope"}


def _config_blocks_resume(config) -> str | None:
    """Why this HuggingFace config cannot resume exactly, or None (the numerical reasons first: they
    say more than the allowlist)."""
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return "the final logits are soft-capped or scaled after lm_head"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True):
        return f"sliding-window attention (window {window}) is not expressed in the resumed mask"
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    if (
        isinstance(rope, dict)
        and (rope.get("rope_type") or rope.get("type")) in _POSITION_DEPENDENT_ROPE
    ):
        return "its rotary scaling depends on the longest position"
    if getattr(config, "model_type", None) not in _RESUMABLE:
        return (
            f"model type {getattr(config, 'model_type', None)!r} is not in the resumable set "
            f"{sorted(_RESUMABLE)}"
        )
    return None


def _parts(model: TransformerBridge) -> _Parts | None:
    hf = getattr(model, "original_model", None)
    if hf is None or _config_blocks_resume(hf.config) is not None:
        return None
    base = getattr(hf, "model", None) or getattr(hf, "transformer", None)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
    head = getattr(hf, "lm_head", None)
    if layers is None or norm is None or head is None or len(layers) != model.cfg.n_layers:
        return None
    return _Parts(layers, norm, getattr(base, "rotary_emb", None), head, base)


def supports_resume(model: TransformerBridge) -> bool:
    """Whether resumed runs are available (and exact) for this model's architecture and config."""
    return _parts(model) is not None


def _refusal(model: TransformerBridge) -> ValueError:
    """The error for a model resumed runs do not support: its model type and the reason."""
    hf = getattr(model, "original_model", None)
    config = getattr(hf, "config", None)
    if config is None:
        return ValueError(
            "resumed runs need a bridge over a HuggingFace model (model.original_model); "
            "use engine='hooked'"
        )
    why = _config_blocks_resume(config)
    if why is None:
        why = "its module layout is not recognised"
    return ValueError(
        f"resumed runs do not support {type(hf).__name__} (model type "
        f"{getattr(config, 'model_type', None)!r}): {why}; use engine='hooked'"
    )


class _ReadOnlyPrefix:
    """The ``Cache.update`` interface over cached prefix keys/values; never stores anything.

    Patched rows must not write into the shared cache: each call returns the prefix followed by
    the chunk's fresh keys/values, and forgets them.
    """

    def __init__(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]):
        self._keys, self._values = keys, values

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        return torch.cat([self._keys[layer_idx], key], dim=2), torch.cat(
            [self._values[layer_idx], value], dim=2
        )


@dataclass(frozen=True)
class ResumeState:
    """A base run cached for resuming (see module doc).

    Attributes:
        start: ``[example]`` first recomputed position of each example.
        last: ``[example]`` each example's metric position (``>= start``).
        keys / values: per layer ``[example, kv_head, prefix, d_head]`` (post-rotary) keys/values
            of positions ``< max(start)``.
        resid: per layer ``[example, suffix, d_model]`` residual stream entering the layer at
            positions ``start + j`` (clamped to the prompt's width).
        logits: ``[example, d_vocab]`` the base run's logits at each ``last`` position (only the
            requested vocabulary columns; the others NaN, as :func:`resume_logits`).
        observed: hook name -> ``[example, ...]`` the base run's activation at each ``last``
            position, for the names :func:`build_state` was asked to observe.
        ids: ``[example, pos]`` the tokens of the base run (what the prefix keys/values are of).
    """

    start: Int[torch.Tensor, " example"]
    last: Int[torch.Tensor, " example"]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    resid: tuple[torch.Tensor, ...]
    logits: Float[torch.Tensor, "example d_vocab"]
    observed: dict[str, torch.Tensor]
    ids: Int[torch.Tensor, "example pos"] | None = None

    @property
    def prefix(self) -> int:
        return self.keys[0].shape[2]

    @property
    def suffix(self) -> int:
        return self.resid[0].shape[1]

    def positions(self, example: Int[torch.Tensor, " rows"]) -> Int[torch.Tensor, "rows suffix"]:
        """Absolute positions of each row's local positions (clamped to the row's last)."""
        pos = self.start[example, None] + torch.arange(self.suffix)
        return torch.minimum(pos, self.last[example, None])


@torch.inference_mode()
def build_state(
    model: TransformerBridge,
    ids: Int[torch.Tensor, "example pos"],
    start: Int[torch.Tensor, " example"],
    last: Int[torch.Tensor, " example"],
    token_ids: Sequence[int] | None = None,
    observe: Sequence[str] = (),
) -> ResumeState:
    """Run ``ids`` once, keeping what resumed runs need, the base logits at each ``last``
    position (only ``token_ids``' columns where given) and the activations of the hooks named in
    ``observe`` at that position: the unpatched run a caller needs besides, from the same forward.

    Raises:
        ValueError: a start after its example's last position.
        RuntimeError: a name in ``observe`` that is not a hook of the model, or never fired.
    """
    if (start > last).any() or (start < 0).any():
        bad = int(torch.nonzero((start > last) | (start < 0))[0])
        raise ValueError(
            f"example {bad}: resume start {int(start[bad])} is outside [0, {int(last[bad])}]"
        )
    parts = _parts(model)
    if parts is None:
        raise _refusal(model)
    L = model.cfg.n_layers
    prefix = int(start.max())
    suffix = int((last - start).max()) + 1
    pos = torch.minimum(start[:, None] + torch.arange(suffix), last[:, None])
    rows = torch.arange(ids.shape[0])[:, None]
    captured: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(x: torch.Tensor, hook=None) -> None:
            captured[layer] = (
                x[rows, pos].detach().clone()
            )  # only the suffix positions are ever resumed

        return hook

    at_last: dict[str, torch.Tensor] = {}

    def look(name: str):
        def hook(x: torch.Tensor, hook=None) -> None:
            at_last[name] = x[torch.arange(x.shape[0]), last.to(x.device)].detach().clone()

        return hook

    require_hooks(model, observe)
    hooks = [(f"blocks.{l}.hook_resid_pre", keep(l)) for l in range(L)]
    # The decoder stack without lm_head: no [example, pos, d_vocab] logits are ever materialised.
    with model.hooks(fwd_hooks=hooks + [(n, look(n)) for n in observe]):
        out = parts.decoder(input_ids=ids.to(model.cfg.device), use_cache=True)
    missing = set(observe) - set(at_last)
    if missing:
        raise RuntimeError(f"hooks never fired: {sorted(missing)[:3]}")
    cache = output_cache(out)
    keys = tuple(cache.layers[l].keys[:, :, :prefix].clone() for l in range(L))
    values = tuple(cache.layers[l].values[:, :, :prefix].clone() for l in range(L))
    resid = tuple(captured[l] for l in range(L))
    logits = _unembed(parts.lm_head, _final_at(out, last), token_ids)
    return ResumeState(start, last, keys, values, resid, logits, at_last, ids.cpu())


def require_hooks(model: TransformerBridge, names: Sequence[str]) -> None:
    """Refuse hook names the model does not have.

    Raises:
        RuntimeError: a name that is not a hook of the model (naming up to three).
    """
    unknown = [n for n in names if n not in model.hook_dict]
    if unknown:
        raise RuntimeError(f"hooks not found in the model: {sorted(unknown)[:3]}")


def _final_at(out, last: torch.Tensor) -> torch.Tensor:
    """The decoder's output (after the final norm) at each row's ``last`` position."""
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


@torch.inference_mode()
def last_logits(
    model: TransformerBridge,
    ids: Int[torch.Tensor, "example pos"],
    last: Int[torch.Tensor, " example"],
    token_ids: Sequence[int] | None = None,
) -> Float[torch.Tensor, "example d_vocab"]:
    """Logits at each example's ``last`` position from one run of the decoder stack (hooks fire
    as in a full forward), unembedding only that position (and only ``token_ids``' columns, the
    others NaN, as :func:`resume_logits`): a full forward's ``[example, pos, d_vocab]`` logits
    are never built (on SmolLM2 the unembedding is ~30% of a forward of 76 tokens).

    Raises:
        ValueError: an architecture resumed runs do not support.
    """
    parts = _parts(model)
    if parts is None:
        raise _refusal(model)
    out = parts.decoder(input_ids=ids.to(model.cfg.device), use_cache=False)
    return _unembed(parts.lm_head, _final_at(out, last), token_ids)


def _mask(state: ResumeState, rep: int, dtype: torch.dtype) -> torch.Tensor:
    """``[example, 1, rep*suffix, prefix + rep*suffix]`` additive mask of a folded chunk (0 where
    a query sees a key, the dtype's minimum elsewhere).

    Prefix keys before the example's start; within the suffix, each cell's block of positions
    sees only its own block (causally): cells never see each other.
    """
    n, P, S = len(state.start), state.prefix, state.suffix
    prefix = (torch.arange(P) < state.start[:, None])[:, None, :].expand(n, rep * S, P)
    own = torch.block_diag(*[torch.ones(S, S, dtype=torch.bool).tril()] * rep)[None].expand(
        n, -1, -1
    )
    visible = torch.cat([prefix, own], dim=-1)[:, None]
    # Additive: HuggingFace's eager attention adds the mask to the scores (a bool mask would be
    # added as 0/1); SDPA and TransformerLens's attention accept the same float mask.
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)


# Hooked activations of a folded chunk are [example, rep*suffix, ...] (positions at dim 1); the
# hooks were written for [rep*example rows, suffix, ...]. Attention patterns and scores put
# positions elsewhere and would need the key axis remapped too: resumed runs refuse them.
_ATTENTION_LAYOUT = ("hook_pattern", "hook_attn_scores", "hook_rot_q", "hook_rot_k")


def unfold_hook(name: str, fn: Callable, rep: int, suffix: int) -> Callable:
    """Wrap a rows-layout hook so it runs on a folded chunk's activations.

    Raises:
        ValueError: a hook whose activation does not have positions at dim 1.
    """
    if name.endswith(_ATTENTION_LAYOUT):
        raise ValueError(
            f"hook {name!r} is not supported by resumed runs (positions are not at dim 1); "
            "use engine='hooked'"
        )

    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        if (
            act.ndim < 3 or act.shape[1] != rep * suffix
        ):  # block activations: [example, pos, features...]
            raise ValueError(
                f"hook {name!r} got shape {tuple(act.shape)}, not [example, {rep * suffix} "
                "positions, ...]; resumed runs support hooks inside the decoder blocks only (use "
                "engine='hooked')"
            )
        n, rest = act.shape[0], act.shape[2:]
        rows = act.reshape(n, rep, suffix, *rest).transpose(0, 1).reshape(rep * n, suffix, *rest)
        out = fn(rows, hook)
        out = rows if out is None else out
        return (
            out.reshape(rep, n, suffix, *rest)
            .transpose(0, 1)
            .reshape(n, rep * suffix, *rest)
            .contiguous()
        )

    return hook


def resume_logits(
    model: TransformerBridge,
    state: ResumeState,
    rep: int,
    from_layer: int,
    token_ids: Sequence[int] | None = None,
) -> Float[torch.Tensor, "rows d_vocab"]:
    """Logits at each row's metric position for ``rep`` copies of the state, resumed at
    ``from_layer``.

    The copies (one per patched cell) are folded into the position axis, ``[example, rep *
    suffix]``, so every copy shares its example's prefix keys/values instead of replicating
    them; the mask keeps copies apart. Rows of the result are cell-major (``i * n_ex + e``).
    Hooks must be registered through :func:`unfold_hook`. With ``token_ids`` only those
    vocabulary columns are computed; the others are NaN, so a metric that reads an undeclared
    token fails loudly instead of reading garbage.

    Raises:
        ValueError: an architecture resumed runs do not support.
    """
    parts = _parts(model)
    if parts is None:
        raise _refusal(model)
    n, S = len(state.start), state.suffix
    hidden = state.resid[from_layer].repeat(1, rep, 1)
    pos = (state.start[:, None] + torch.arange(S)).repeat(1, rep).to(hidden.device)
    kwargs = {
        "attention_mask": _mask(state, rep, hidden.dtype).to(hidden.device),
        "use_cache": True,
        CACHE_ARG: _ReadOnlyPrefix(state.keys, state.values),
    }
    if parts.rotary is not None:
        kwargs.update(position_ids=pos, position_embeddings=parts.rotary(hidden, pos))
    local_last = (state.last - state.start)[None, :] + S * torch.arange(rep)[
        :, None
    ]  # [rep, example]
    rows = torch.arange(n).repeat(rep)
    live = (torch.arange(S) <= (state.last - state.start)[:, None]).repeat(1, rep)
    at_last = torch.zeros_like(live)
    at_last[rows, local_last.flatten()] = True
    L = len(parts.layers)
    for i in range(from_layer, L):
        layer = parts.layers[i]
        with _mlp_on_rows(layer, at_last if i == L - 1 else live), _plain_attention(layer):
            out = layer(hidden, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    final = parts.norm(hidden[rows, local_last.flatten()])
    return _unembed(parts.lm_head, final, token_ids)


def resume_tokens(
    model: TransformerBridge,
    state: ResumeState,
    ids: Int[torch.Tensor, "example pos"],
    start: Int[torch.Tensor, " example"],
    last: Int[torch.Tensor, " example"],
    token_ids: Sequence[int] | None = None,
) -> Float[torch.Tensor, "example d_vocab"]:
    """Logits at each ``last`` position of *other* prompts ``ids`` that share their first
    ``start`` tokens with the state's base run: only positions ``start..last`` run, from the
    embeddings up, reading the earlier positions' keys/values from the state.

    The counterfactual side of a patching run differs from the base only in the challenge text,
    near the end, so it costs the suffix instead of a full forward. Hooks fire as in a resumed
    run with one copy (activations ``[example, suffix, ...]``, local position ``p - start``).
    Columns outside ``token_ids`` are NaN, as :func:`resume_logits`.

    Raises:
        ValueError: an unsupported architecture, a state without its tokens, a ``start`` past the
            state's prefix or its example's ``last``, or prompts that differ from the base run
            before ``start`` (the cached keys would be another prompt's).
    """
    parts = _parts(model)
    if parts is None:
        raise _refusal(model)
    if state.ids is None or len(start) != len(state.start):
        raise ValueError("resume_tokens needs a state built by build_state for these examples")
    if (start > last).any() or (start < 0).any() or int(start.max()) > state.prefix:
        raise ValueError(
            f"starts {start.tolist()} must lie in [0, last] and within the state's prefix of "
            f"{state.prefix} positions"
        )
    width = int(start.max())
    before = torch.arange(width) < start[:, None]
    if width and (ids[:, :width][before] != state.ids[:, :width][before]).any():
        raise ValueError("the prompts differ from the state's base run before their start")
    suffix = int((last - start).max()) + 1
    pos = torch.minimum(start[:, None] + torch.arange(suffix), last[:, None])
    hidden = _embed(parts, ids[torch.arange(len(ids))[:, None], pos], pos)
    keys = tuple(k[:, :, :width] for k in state.keys)
    values = tuple(v[:, :, :width] for v in state.values)
    derived = ResumeState(
        start, last, keys, values, (hidden,) * len(parts.layers), state.logits, {}
    )
    return resume_logits(model, derived, 1, 0, token_ids)


def _embed(parts: _Parts, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The residual stream entering the first layer for ``tokens`` at absolute ``positions``:
    the token embedding, plus the learned position embedding where the model has one (GPT-2;
    rotary models add positions inside attention)."""
    decoder = parts.decoder
    embed = getattr(decoder, "embed_tokens", None) or decoder.wte
    device = run_device(embed) or tokens.device
    hidden = embed(tokens.to(device))
    learned = getattr(decoder, "wpe", None)
    if learned is not None:
        hidden = hidden + learned(positions.to(device))
    return hidden


def _hooked(module: torch.nn.Module) -> bool:
    """Whether any TransformerLens hook point inside ``module`` has a hook registered."""
    return any(
        isinstance(m, HookPoint) and bool(m._forward_hooks or m._forward_pre_hooks)
        for m in module.modules()
    )


@contextmanager
def _plain_attention(layer: torch.nn.Module) -> Iterator[None]:
    """Run ``layer``'s attention as the HuggingFace module it wraps, not as TransformerLens's
    reimplementation, while none of its hook points is hooked.

    The bridge recomputes attention step by step so that its score and pattern hooks fire, with
    compatibility-mode masking on top (fully-masked-row checks, NaN scrubs): about twice the time
    of HuggingFace's own eager or SDPA attention on a resumed chunk. With no hook inside it the
    two compute the same numbers (HuggingFace's is the reference the bridge reproduces), so the
    layer's attention is swapped for the wrapped module for the call and put back on exit. Needs
    the additive float mask (:func:`_mask`), which both accept.
    """
    swap = _attention_swap(layer)
    if swap is None:
        yield
        return
    decoder, name, bridge, plain = swap
    decoder._modules[name] = plain
    try:
        yield
    finally:
        decoder._modules[name] = bridge


def _attention_swap(layer: torch.nn.Module) -> tuple | None:
    """``(decoder layer, attention's child name, bridge, HuggingFace module)`` where swapping is
    exact (one attention bridge, none of its hook points hooked, same arithmetic), else None."""
    decoder = getattr(layer, "original_component", None)
    found = [
        (name, child)
        for name, child in (decoder.named_children() if decoder is not None else ())
        if isinstance(child, AttentionBridge)
    ]
    if len(found) != 1:
        return None
    name, bridge = found[0]
    plain = getattr(bridge, "original_component", None)
    if plain is None or _hooked(bridge) or not _same_arithmetic(bridge, plain):
        return None
    return decoder, name, bridge, plain


def _same_arithmetic(bridge: torch.nn.Module, plain: torch.nn.Module) -> bool:
    """Whether the HuggingFace attention ``plain`` computes what ``bridge`` does.

    Only when the bridge's projections are ``plain``'s own modules, wrapped in place (Llama-style
    ``q_proj``/``k_proj``/``v_proj``/``o_proj``): GPT-2's bridge splits the fused ``c_attn`` into
    copies, and weight processing (``compat="processed"``) folds the layer norm into those
    copies only, so HuggingFace's ``c_attn`` would compute something else. Not under the
    bridge's split-input modes (``use_split_qkv_input`` / ``use_attn_in``), which fork the
    residual before the layer norm, nor for attention kernels that take no additive mask.
    """
    config = getattr(bridge, "config", None)
    if getattr(config, "use_split_qkv_input", False) or getattr(config, "use_attn_in", False):
        return False
    implementation = getattr(getattr(plain, "config", None), "_attn_implementation", None)
    if implementation not in ("eager", "sdpa"):
        return False
    own = {id(m) for m in plain.modules()}
    projections = [getattr(bridge._modules.get(n), "original_component", None) for n in "qkvo"]
    return all(p is not None and id(p) in own for p in projections)


@contextmanager
def _mlp_on_rows(layer: torch.nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """Run ``layer``'s MLP only at the positions of ``keep`` (``[example, pos]`` bool); its output
    elsewhere is 0.

    A resumed chunk's positions past an example's end (padding to the longest suffix) and, in the
    last layer, every position but the metric's, cannot reach the metric: causal attention never
    reads later positions, and the last layer's outputs are read only at the metric position.
    The MLP, three quarters of a layer's matmuls, is position-wise, so skipping it there changes
    nothing the metric reads (about 15% less MLP work for all-position head patching on SmolLM2).
    Activations at the skipped positions are then not the model's, so a layer whose MLP holds a
    hooked hook point (someone reads or writes inside it) runs it on every position.
    """
    mlp = getattr(layer, "mlp", None)
    if mlp is None or _hooked(mlp) or bool(keep.all()):
        yield
        return

    packed = []

    def pack(module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.shape[:2] != keep.shape:
            return None  # not the layout this chunk was built for: run it whole
        packed.append(True)
        return (x[keep.to(x.device)][None], *args[1:])

    def unpack(module, args, out):
        if not packed:
            return None
        packed.clear()
        full = out.new_zeros(*keep.shape, out.shape[-1])
        full[keep.to(out.device)] = out[0]
        return full

    handles = [mlp.register_forward_pre_hook(pack), mlp.register_forward_hook(unpack)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _unembed(
    lm_head: torch.nn.Module, x: torch.Tensor, token_ids: Sequence[int] | None
) -> torch.Tensor:
    """``lm_head(x)``, only ``token_ids``' columns where given (the others NaN)."""
    if token_ids is None or not isinstance(getattr(lm_head, "weight", None), torch.Tensor):
        return lm_head(x)
    # An offloaded lm_head's weight is a meta placeholder that its placement hook fills only
    # inside forward; align_module_device fills it for this block (a no-op when not offloaded),
    # so the arithmetic is the same as on an unplaced model, bit for bit. The hook sits on the
    # HuggingFace module the bridge wraps.
    with align_module_device(getattr(lm_head, "original_component", lm_head)):
        weight = lm_head.weight
        ids = torch.tensor(sorted(set(token_ids)))
        bias = lm_head.bias[ids] if getattr(lm_head, "bias", None) is not None else None
        x = x.to(weight.device)  # the final norm may sit on another device than lm_head
        out = torch.full(
            (x.shape[0], weight.shape[0]), float("nan"), dtype=x.dtype, device=x.device
        )
        out[:, ids] = F.linear(x, weight[ids], bias)
    return out
