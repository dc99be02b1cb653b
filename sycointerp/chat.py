"""Chat rendering, token encoding and padding: how prompts become token ids.

Conventions: prompts are rendered with the tokenizer's own chat template (no special tokens are
added on top: the template writes them) and end with the generation prompt, optionally followed by
an answer stem. Batches are right-padded, which is exact for causal models.
"""

from collections.abc import Sequence

import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

from sycointerp.errors import DataError

__all__ = ["DEFAULT_SYSTEM", "chat_prompt_ids", "encode", "pad_right"]

DEFAULT_SYSTEM = "You are a helpful assistant."


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` without added special tokens (the chat template writes them)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], stem: str | None = None
) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template plus the generation prompt (+stem).

    Raises:
        DataError: the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the tokenizer has no chat template; use a chat model or set tokenizer.chat_template"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return encode(tokenizer, text + (stem or ""))


def pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, " batch"]]:
    """Right-pad token sequences; returns (ids, lengths).

    Right padding is exact for causal models: no real token attends to a later pad, so the logits
    at ``lengths - 1`` equal those of the unpadded sequence.
    """
    if not sequences:
        raise ValueError("no sequences to pad")
    lengths = torch.tensor([len(s) for s in sequences])
    ids = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return ids, lengths
