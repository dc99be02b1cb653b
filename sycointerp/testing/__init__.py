"""Tiny random models for tests and offline runs: SmolLM2's real chat tokenizer, random weights.

:func:`tiny_model` gives a bridge in seconds (Llama-style GQA or GPT-2-style MHA);
:func:`save_tiny_model` writes the same model as a local HuggingFace directory, so the CLIs can run
end to end offline. :mod:`sycointerp.testing.families` has one tiny configuration per supported
model family. These live here, not in :mod:`sycointerp.models`, because nothing but tests and
demos should reach for random weights.
"""

import os
from pathlib import Path
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from sycointerp.models import Compat, boot_bridge, embedded_tokenizer

__all__ = ["TinyArch", "save_tiny_model", "tiny_model"]

TinyArch = Literal["llama", "gpt2"]


def _tiny_config(
    arch: TinyArch, vocab: int, n_layers: int, d_model: int, n_heads: int, n_kv: int
) -> Any:
    from transformers import GPT2Config, LlamaConfig

    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_positions=512,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    raise ValueError(f"unknown tiny arch {arch!r}; choose 'llama' (GQA) or 'gpt2' (MHA)")


def _tiny_hf(
    arch: TinyArch, seed: int, n_layers: int, d_model: int, n_heads: int, n_kv: int
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    tokenizer = embedded_tokenizer()
    config = _tiny_config(arch, len(tokenizer), n_layers, d_model, n_heads, n_kv)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    return model, tokenizer


def _tiny_sizes(arch: TinyArch, d_model: int, n_heads: int, n_kv_heads: int | None) -> int:
    """The KV head count, after checking that the sizes divide."""
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    n_kv = n_kv_heads if n_kv_heads is not None else max(1, n_heads // 2)
    if arch == "llama" and n_heads % n_kv:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv}")
    return n_kv


def save_tiny_model(
    directory: str | os.PathLike[str],
    arch: TinyArch = "llama",
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
) -> Path:
    """Write :func:`tiny_model`'s HuggingFace model and tokenizer to ``directory``
    (``save_pretrained``).

    ``load_model(directory)`` then loads it like any local model (bit-identical to
    ``tiny_model(arch, seed=seed, ...)``): the way to run the CLI or a pipeline end to end offline
    in seconds.

    Raises:
        ValueError: as :func:`tiny_model`.
    """
    n_kv = _tiny_sizes(arch, d_model, n_heads, n_kv_heads)
    model, tokenizer = _tiny_hf(arch, seed, n_layers, d_model, n_heads, n_kv)
    out = Path(directory)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_model(
    arch: TinyArch = "llama",
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    compat: Compat = "hooks",
) -> TransformerBridge:
    """A small random model with SmolLM2's real chat tokenizer, for fast deterministic tests.

    Args:
        arch: ``"llama"`` (grouped-query attention: ``n_kv_heads`` defaults to ``n_heads // 2``)
            or ``"gpt2"`` (multi-head attention, fused Conv1D QKV, LayerNorm, learned positions).
        seed: torch seed for the random weights; equal seeds give bit-identical models.
        n_layers: decoder layers.
        d_model: residual stream width.
        n_heads: query heads per layer.
        n_kv_heads: key/value heads per layer (``None``: the architecture's default).
        compat: as in :func:`load_model`.

    Raises:
        ValueError: unknown arch, or head counts that do not divide.
    """
    n_kv = _tiny_sizes(arch, d_model, n_heads, n_kv_heads)
    model, tokenizer = _tiny_hf(arch, seed, n_layers, d_model, n_heads, n_kv)
    return boot_bridge(model, tokenizer, f"tiny-{arch}", compat, "cpu")
