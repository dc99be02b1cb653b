"""Tiny random models of every supported chat-model family, and what the toolkit does with each.

Each :class:`Family` builds a 2-layer random model from its transformers config class, with the
family's attention layout at toy size (grouped-query attention where the family's chat models use
it, the family's own head size where it differs from ``d_model / n_heads``, soft-capping, sliding
windows, QK-norm, fused projections), and SmolLM2's chat tokenizer, offline. The unit tests
(``tests/unit/test_families.py``) prove patching and SPT head slicing on every family against plain
references; ``scripts/support_table.py`` turns their outcomes into the README's support table.

``Family.refuses`` lists what the toolkit refuses for a family, and why; a refusal is tested like
a capability (the error must name the model type and the reason), never silently approximated.

- **gemma2**: the final logits are soft-capped after ``lm_head`` and layers alternate sliding and
  full attention, so resumed runs (``engine="resume"``) refuse; ``engine="auto"`` runs full hooked
  forwards instead (same numbers, slower).
- **olmo2**: normalizes queries and keys over *all* heads at once (``q_norm`` / ``k_norm`` of width
  ``n_heads x d_head``): changing one head's W_Q / W_K rows rescales every head's queries / keys,
  so SPT's per-head slices are not head-local and :func:`~sycointerp.spt.slices.head_slices`
  refuses. Its norms come after attention (no ``ln1`` / ``ln2``), so path patching, which freezes
  each later layer's attention input at ``blocks.{l}.ln1.hook_in``, refuses too.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, PretrainedConfig

from sycointerp.models import Compat, boot_bridge, embedded_tokenizer

__all__ = [
    "Family",
    "FAMILIES",
    "Capability",
    "tiny_family_config",
    "tiny_family_hf",
    "tiny_family_model",
]

Capability = Literal["patching", "path", "spt"]

D_MODEL, N_HEADS, N_LAYERS = 64, 4, 2


@dataclass(frozen=True)
class Family:
    """One model family at toy size.

    Attributes:
        name: the registry key (the HuggingFace ``model_type``, which refusals name).
        label: how users know it (``"Llama 2/3"``).
        architecture: the ``*ForCausalLM`` class name, set in the config as real checkpoints do
            (TransformerLens picks its adapter from it).
        attention: the attention layout in words (MHA/GQA, separate/fused, Linear/Conv1D, extras).
        make_config: ``vocab_size -> config`` of the tiny model.
        resumable: whether resumed patching runs apply (else ``engine="auto"`` runs full forwards).
        refuses: capability -> why the toolkit refuses it for this family.
        notes: anything else a user should know.
    """

    name: str
    label: str
    architecture: str
    attention: str
    make_config: Callable[[int], PretrainedConfig]
    resumable: bool = True
    refuses: dict[Capability, str] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        bad = set(self.refuses) - {"patching", "path", "spt"}
        if bad:
            raise ValueError(f"family {self.name!r}: unknown capabilities {sorted(bad)}")


def _sizes(**extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": D_MODEL,
        "intermediate_size": 2 * D_MODEL,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": N_HEADS,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        **extra,
    }


def _llama(vocab: int) -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, **_sizes(num_key_value_heads=2))


def _mistral(vocab: int) -> PretrainedConfig:
    from transformers import MistralConfig

    # Mistral-7B-Instruct v0.2/v0.3 dropped v0.1's 4096-token sliding window.
    return MistralConfig(vocab_size=vocab, **_sizes(num_key_value_heads=2, sliding_window=None))


def _qwen2(vocab: int) -> PretrainedConfig:
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, **_sizes(num_key_value_heads=2))  # q/k/v carry biases


def _qwen3(vocab: int) -> PretrainedConfig:
    from transformers import Qwen3Config

    # Qwen3's head size is not d_model / n_heads (0.6B: 16 x 128 > 1024); 24 here.
    return Qwen3Config(vocab_size=vocab, **_sizes(num_key_value_heads=2, head_dim=24))


def _gemma2(vocab: int) -> PretrainedConfig:
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=vocab,
        **_sizes(
            num_key_value_heads=2,
            head_dim=24,
            sliding_window=16,
            query_pre_attn_scalar=24,
            tie_word_embeddings=True,
        ),
    )


def _phi3(vocab: int) -> PretrainedConfig:
    from transformers import Phi3Config

    return Phi3Config(vocab_size=vocab, **_sizes(num_key_value_heads=2))  # Phi-3-medium-style GQA


def _olmo2(vocab: int) -> PretrainedConfig:
    from transformers import Olmo2Config

    return Olmo2Config(vocab_size=vocab, **_sizes(num_key_value_heads=N_HEADS))


def _gpt2(vocab: int) -> PretrainedConfig:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab,
        n_positions=512,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def _gpt_neox(vocab: int) -> PretrainedConfig:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, **_sizes(rotary_pct=0.25))


_SEPARATE = "separate q/k/v/o Linear"
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("llama", "Llama 2/3, SmolLM2", "LlamaForCausalLM", f"GQA, {_SEPARATE}", _llama),
        Family(
            "mistral",
            "Mistral",
            "MistralForCausalLM",
            f"GQA, {_SEPARATE}",
            _mistral,
            notes="v0.1's sliding window (4096) makes patching run full hooked forwards",
        ),
        Family(
            "qwen2",
            "Qwen2 / Qwen2.5",
            "Qwen2ForCausalLM",
            f"GQA, {_SEPARATE}, q/k/v biases",
            _qwen2,
        ),
        Family(
            "qwen3",
            "Qwen3",
            "Qwen3ForCausalLM",
            f"GQA, {_SEPARATE}, per-head QK-norm, d_head != d_model/n_heads",
            _qwen3,
        ),
        Family(
            "gemma2",
            "Gemma 2",
            "Gemma2ForCausalLM",
            f"GQA, {_SEPARATE}, attention and final-logit soft-capping, alternating sliding "
            "window, d_head != d_model/n_heads",
            _gemma2,
            resumable=False,
            notes=(
                "patching runs full hooked forwards: resumed runs refuse soft-capped logits and "
                "sliding windows"
            ),
        ),
        Family("phi3", "Phi-3", "Phi3ForCausalLM", "GQA, fused Linear qkv_proj [q | k | v]", _phi3),
        Family(
            "olmo2",
            "OLMo 2",
            "Olmo2ForCausalLM",
            f"MHA, {_SEPARATE}, QK-norm across all heads, post-norms only",
            _olmo2,
            refuses={
                "path": "no pre-attention norm (blocks.{l}.ln1.hook_in does not exist)",
                "spt": (
                    "q_norm / k_norm span all heads, so a head's W_Q / W_K slice changes every head"
                ),
            },
        ),
        Family(
            "gpt2",
            "GPT-2",
            "GPT2LMHeadModel",
            "MHA, fused Conv1D c_attn [q | k | v], learned positions",
            _gpt2,
        ),
        Family(
            "gpt_neox",
            "GPT-NeoX / Pythia",
            "GPTNeoXForCausalLM",
            "MHA, fused Linear query_key_value interleaved per head, partial rotary, parallel "
            "residual",
            _gpt_neox,
            resumable=False,
            notes="patching runs full hooked forwards (resumed runs do not know its layout)",
        ),
    ]
}


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def tiny_family_config(family: str) -> PretrainedConfig:
    """The tiny config of ``family`` (vocabulary = SmolLM2's tokenizer, pad id = its pad id).

    Raises:
        ValueError: an unknown family.
    """
    fam, tokenizer = _family(family), embedded_tokenizer()
    config = fam.make_config(len(tokenizer))
    config.architectures = [fam.architecture]
    config.pad_token_id = tokenizer.pad_token_id
    return config


def tiny_family_hf(family: str, seed: int = 0) -> torch.nn.Module:
    """The plain HuggingFace model of ``family`` (eval mode, float32, eager attention), what SPT
    trains.

    Equal seeds give bit-identical weights.

    Raises:
        ValueError: an unknown family.
    """
    config = tiny_family_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    return model.eval()


def tiny_family_model(family: str, seed: int = 0, compat: Compat = "hooks") -> TransformerBridge:
    """:func:`tiny_family_hf` booted as a hooked TransformerBridge with SmolLM2's chat tokenizer
    (offline).

    Raises:
        ValueError: an unknown family.
    """
    return boot_bridge(
        tiny_family_hf(family, seed), embedded_tokenizer(), f"tiny-{family}", compat, "cpu"
    )
