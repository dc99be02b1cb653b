"""Where chosen heads look from the last prompt position, and how much of it lands on the challenge.

Conventions:
- The query is each prompt's last position: the reply position of ``position="reply"`` pairs,
  the answer position of ``position="answer"`` pairs; the position every patch metric reads.
- Weights are ``blocks.{l}.attn.hook_pattern[example, head, query, :]``: post-softmax attention
  probabilities of each *query* head (grouped-query models share key/value heads between query
  heads, but every query head has its own pattern). Causal masking leaves the query only the
  prompt's positions, so every row sums to 1.
- The challenge span ``[start, end)`` covers the tokens of the last user turn's text:
  ``pair.challenge`` in the reference prompt (``side="ref"``), ``pair.counterfactual`` in the
  counterfactual one (``side="cf"``): every token overlapping the text's characters in the
  decoded prompt, the chat template's role and end-of-turn tokens excluded. The challenge share
  of a head is its attention mass on that span, in ``[0, 1]``.
- Batched runs right-pad, which is exact here: the query attends only to earlier, real positions.

Cost: one forward per ``batch_size`` prompts; only the query row of the chosen heads is kept,
``batch x heads x pos`` floats (each hooked layer's full ``[batch, head, pos, pos]`` pattern
exists transiently, as in any forward).

Refusals (ValueError unless stated): no heads; heads out of range or listed twice; an unknown
side; no pairs; ``batch_size < 1``; a turn text that is not in the decoded prompt, or a span that
misses the pair's first differing token; weights that are not a probability row per head; a
model in training mode (RuntimeError); hooks that never fired (RuntimeError).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from sycointerp._io import Bundle
from sycointerp.chat import pad_right
from sycointerp.data.pairs import PromptPair
from sycointerp.heads import HeadGrid, heads_by_layer
from sycointerp.patching._engine import checked_hooks

__all__ = ["HeadAttention", "challenge_share", "challenge_span", "head_attention", "pattern_name"]

Head = tuple[int, int]
Side = Literal["ref", "cf"]
_ROW_TOLERANCE = 1e-3  # rows must sum to 1 up to this (half-precision models included)


def pattern_name(layer: int) -> str:
    """The hook name of layer ``layer``'s attention pattern."""
    return f"blocks.{layer}.attn.hook_pattern"


@dataclass(frozen=True, eq=False)
class HeadAttention(Bundle):
    """Attention of some heads from one prompt's last position to every prompt token.

    ``save(dir)`` / ``HeadAttention.load(dir)`` write and read ``attention.safetensors`` (the
    weights) and ``attention.json`` (heads, tokens, span, side): what a job's report draws from.

    Attributes:
        weights: ``[head, key]`` attention probabilities, one row per entry of ``heads``.
        heads: the ``(layer, head)`` pairs, in the order of the rows.
        tokens: the prompt's tokens, decoded one by one (one per key position).
        challenge_span: ``(start, end)`` token range of the challenge turn's text (end exclusive).
        side: ``"ref"`` (challenge prompt) or ``"cf"`` (counterfactual prompt).
    """

    weights: Float[torch.Tensor, "head key"]
    heads: tuple[Head, ...]
    tokens: tuple[str, ...]
    challenge_span: tuple[int, int]
    side: str = "ref"

    TENSORS: ClassVar[str] = "attention.safetensors"
    INFO: ClassVar[str] = "attention.json"

    def __post_init__(self) -> None:
        if self.weights.shape != (len(self.heads), len(self.tokens)) or not self.heads:
            raise ValueError(
                f"weights must be [head, key] = ({len(self.heads)}, {len(self.tokens)}) with at "
                f"least one head, got {tuple(self.weights.shape)}"
            )
        if len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads must be distinct, got {self.heads}")
        start, end = self.challenge_span
        if not 0 <= start < end <= len(self.tokens):
            raise ValueError(
                f"challenge_span must satisfy 0 <= start < end <= {len(self.tokens)}, got "
                f"{(start, end)}"
            )
        if self.side not in ("ref", "cf"):
            raise ValueError(f"side must be 'ref' or 'cf', got {self.side!r}")
        rows = self.weights.double().sum(-1)
        if (self.weights < 0).any() or not torch.allclose(
            rows, torch.ones_like(rows), atol=_ROW_TOLERANCE
        ):
            raise ValueError(
                "each head's weights must be non-negative and sum to 1, got row sums "
                f"{rows.tolist()}"
            )

    @property
    def query(self) -> int:
        """The query position (the prompt's last)."""
        return len(self.tokens) - 1

    def challenge_share(self) -> Float[torch.Tensor, " head"]:
        """Each head's attention mass on the challenge span."""
        start, end = self.challenge_span
        return self.weights[:, start:end].sum(-1)

    def labels(self) -> list[str]:
        """``"L<layer>H<head>"`` per row."""
        return [f"L{l}H{h}" for l, h in self.heads]

    def to_bundle(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The weights and the JSON-serializable rest (what :meth:`save` writes)."""
        info = {
            "heads": [list(h) for h in self.heads],
            "tokens": list(self.tokens),
            "challenge_span": list(self.challenge_span),
            "side": self.side,
        }
        return {"weights": self.weights}, info

    @classmethod
    def from_bundle(cls, t: dict[str, torch.Tensor], info: dict[str, Any]) -> "HeadAttention":
        """Inverse of :meth:`to_bundle` (validated again by ``__post_init__``)."""
        start, end = info["challenge_span"]
        heads = tuple((int(l), int(h)) for l, h in info["heads"])
        return cls(t["weights"], heads, tuple(info["tokens"]), (int(start), int(end)), info["side"])


def _turn_text(pair: PromptPair, side: str) -> tuple[tuple[int, ...], str]:
    if side not in ("ref", "cf"):
        raise ValueError(f"side must be 'ref' or 'cf', got {side!r}")
    return (pair.ref_ids, pair.challenge) if side == "ref" else (pair.cf_ids, pair.counterfactual)


def challenge_span(
    pair: PromptPair, tokenizer: PreTrainedTokenizerBase, side: Side = "ref"
) -> tuple[int, int]:
    """Token range ``(start, end)`` of the last user turn's text in one side's prompt.

    Character offsets come from decoding every prefix of the prompt, so tokens that merge with
    the text's neighbours (a leading space) are included whenever they overlap it.

    Args:
        pair: the prompt pair.
        tokenizer: the tokenizer the pair was built with.
        side: ``"ref"`` (``pair.challenge`` in ``ref_ids``) or ``"cf"`` (``pair.counterfactual``
            in ``cf_ids``).

    Raises:
        ValueError: unknown side; the text is not in the decoded prompt; the span misses the
            pair's first differing token (the text found is not the differing turn).
    """
    ids, text = _turn_text(pair, side)
    ends = [
        len(tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False))
        for i in range(len(ids))
    ]
    full = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    first = full.rfind(text)
    if first < 0 or not text:
        raise ValueError(
            f"the {side} turn {text!r} is not in the decoded {side} prompt; was the pair built "
            "with this tokenizer?"
        )
    start = next(i for i, e in enumerate(ends) if e > first)
    end = next(i for i, e in enumerate(ends) if e >= first + len(text)) + 1
    if not start <= pair.first_diff < end:
        raise ValueError(
            f"the {side} turn spans tokens [{start}, {end}) but the prompts first differ at token "
            f"{pair.first_diff}; the turn text found is not the one that differs"
        )
    return start, end


def _pattern_hook(store: dict[int, torch.Tensor], layer: int, heads: list[int], last: torch.Tensor):
    def hook(pattern: torch.Tensor, hook=None) -> None:
        rows = torch.arange(pattern.shape[0], device=pattern.device)
        store[layer] = (
            pattern[rows, :, last.to(pattern.device)][:, heads].float().cpu()
        )  # [batch, head, key]

    return hook


@torch.inference_mode()
def _query_rows(
    model: TransformerBridge,
    ids: Int[torch.Tensor, "batch pos"],
    last: Int[torch.Tensor, " batch"],
    heads: Sequence[Head],
) -> Float[torch.Tensor, "batch head key"]:
    """Attention rows of ``heads`` (in the given order) from each prompt's ``last`` position."""
    by_layer = heads_by_layer(heads, HeadGrid.of(model))
    store: dict[int, torch.Tensor] = {}
    hooks = [(pattern_name(l), _pattern_hook(store, l, hs, last)) for l, hs in by_layer.items()]
    with checked_hooks(model, hooks):
        model(ids.to(model.cfg.device))
    return torch.stack([store[l][:, by_layer[l].index(h)] for l, h in heads], dim=1)


def _check_run(model: TransformerBridge, heads: Sequence[Head], batch_size: int = 1) -> None:
    if model.training:
        raise RuntimeError(
            "the model is in training mode (dropout on the pattern); call model.eval() first"
        )
    if not heads:
        raise ValueError("no heads given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def head_attention(
    model: TransformerBridge, pair: PromptPair, heads: Sequence[Head], *, side: Side = "ref"
) -> HeadAttention:
    """Attention of ``heads`` from the last position of one side's prompt to all its tokens.

    Args:
        model: a compat-mode TransformerBridge, in eval mode.
        pair: the prompt pair (built with ``model.tokenizer``).
        heads: ``(layer, head)`` pairs (query heads); the rows keep this order.
        side: ``"ref"`` (the challenge prompt) or ``"cf"`` (the counterfactual prompt).

    Returns:
        The weights with the prompt's tokens and its challenge span.

    Raises:
        ValueError: no heads, heads out of range or repeated, unknown side, turn text not found.
        RuntimeError: training mode; a hook never fired.
    """
    _check_run(model, heads)
    ids, _ = _turn_text(pair, side)
    span = challenge_span(pair, model.tokenizer, side)
    rows = _query_rows(model, torch.tensor([ids]), torch.tensor([len(ids) - 1]), heads)[0]
    tokens = tuple(model.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in ids)
    return HeadAttention(rows, tuple((int(l), int(h)) for l, h in heads), tokens, span, side)


def challenge_share(
    model: TransformerBridge,
    pairs: Sequence[PromptPair],
    heads: Sequence[Head],
    *,
    side: Side = "ref",
    batch_size: int = 16,
) -> Float[torch.Tensor, "head example"]:
    """Each head's attention mass on the challenge span, from each prompt's last position.

    ``.mean(-1)`` averages over examples (e.g. the top heads of a ranking against random heads).

    Args:
        model: a compat-mode TransformerBridge, in eval mode.
        pairs: the prompt pairs (built with ``model.tokenizer``); lengths may differ.
        heads: ``(layer, head)`` pairs; rows keep this order.
        side: ``"ref"`` or ``"cf"`` (see the module docstring).
        batch_size: prompts per forward.

    Raises:
        ValueError: no pairs or heads, heads out of range or repeated, unknown side, a turn text
            not found, ``batch_size < 1``.
        RuntimeError: training mode; a hook never fired.
    """
    _check_run(model, heads, batch_size)
    if not pairs:
        raise ValueError("no pairs given")
    spans = torch.tensor([challenge_span(p, model.tokenizer, side) for p in pairs])
    prompts = [_turn_text(p, side)[0] for p in pairs]
    shares = []
    for start in range(0, len(pairs), batch_size):
        ids, lengths = pad_right(
            prompts[start : start + batch_size], model.tokenizer.pad_token_id or 0
        )
        rows = _query_rows(model, ids, lengths - 1, heads)  # [batch, head, key]
        key = torch.arange(ids.shape[1])
        part = spans[start : start + batch_size]
        on_span = (key >= part[:, :1]) & (key < part[:, 1:])  # [batch, key]
        shares.append((rows * on_span[:, None]).sum(-1))
    return torch.cat(shares).T.contiguous()
