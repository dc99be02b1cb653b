"""Batched greedy generation through the chat template (the model's own first answers).

Two engines, both greedy (deterministic) and both stopping at the end-of-turn token:

- :func:`greedy_generate`, the reference: HuggingFace's ``generate`` on the bridge's underlying
  model, left-padded, every prompt encoded from its first token.
- :func:`greedy_continue`, for multi-turn dialogues: a plain greedy loop that keeps each row's
  keys/values (:class:`KVRows`) so the next turn encodes only the tokens its prompt adds (the
  longest prefix it shares with the tokens already held is reused), and that can stop a row at
  its first newline when only the first line is kept. Rows are laid out as ``[pad | held prefix |
  pad | new tokens]`` with an explicit mask and every token's true position, so the arithmetic is
  a full forward's up to float rounding (tests: the same tokens as a cache-free greedy loop on
  tiny models, the same text as :func:`greedy_generate` on the embedded model).

Hooks registered on the bridge fire in both (TransformerLens wraps the HF modules in place). With
:func:`greedy_continue` an earlier turn's tokens keep the activations they had when they were
computed: a hook that acts on "the last position of each forward" (steering) acted on them when
they were generated and is not re-applied, where a re-encoding run would not apply it to them.
"""

import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import DynamicCache, PreTrainedTokenizerBase

from sycointerp._compat import CACHE_ARG
from sycointerp.chat import DEFAULT_SYSTEM, chat_prompt_ids
from sycointerp.data.questions import Question

__all__ = [
    "greedy_generate",
    "greedy_continue",
    "KVRows",
    "first_turn_prompts",
    "first_answers",
]


# End-of-turn markers of the common chat templates (ChatML, Gemma, Phi-3, Llama 3).
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|end|>", "<|eot_id|>")


def _stop_ids(model: TransformerBridge) -> list[int]:
    """The tokenizer's eos, the model's own generation stop ids, and any known end-of-turn token."""
    tok = model.tokenizer
    ids = {tok.eos_token_id}
    config_eos = getattr(
        getattr(model.original_model, "generation_config", None), "eos_token_id", None
    )
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    for marker in _END_OF_TURN:
        token = tok.convert_tokens_to_ids(marker)
        if isinstance(token, int) and token != tok.unk_token_id:
            ids.add(token)
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def greedy_generate(
    model: TransformerBridge,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Greedy continuations (decoded, special tokens dropped) of token-id prompts.

    Raises:
        ValueError: no prompts or ``max_new_tokens < 1``.
    """
    if not prompts or max_new_tokens < 1:
        raise ValueError("need at least one prompt and max_new_tokens >= 1")
    tok, hf = model.tokenizer, model.original_model
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(chunk):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        gen = hf.generate(
            input_ids=ids.to(model.cfg.device),
            attention_mask=mask.to(model.cfg.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=_stop_ids(model),
        )
        out.extend(tok.decode(g[width:], skip_special_tokens=True) for g in gen)
    return out


@dataclass(frozen=True)
class KVRows:
    """What :func:`greedy_continue` leaves for the next turn, one entry per row.

    Attributes:
        ids: the token ids whose keys/values are held (the prompt and every generated token but
            the last, which was never fed back).
        keys, values: per row, per layer ``[n_kv_heads, len(ids), d_head]``.
    """

    ids: tuple[tuple[int, ...], ...]
    keys: tuple[tuple[torch.Tensor, ...], ...]
    values: tuple[tuple[torch.Tensor, ...], ...]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.keys) == len(self.values):
            raise ValueError("KVRows needs ids, keys and values for the same rows")


def _shared_prefix(held: Sequence[int], prompt: Sequence[int]) -> int:
    n = 0
    for a, b in zip(held, prompt):
        if a != b:
            break
        n += 1
    return n


_NEWLINES: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, torch.Tensor]" = (
    weakref.WeakKeyDictionary()
)


def _newline_tokens(tokenizer: PreTrainedTokenizerBase, vocab: int) -> torch.Tensor:
    """``[vocab]`` bool: the token's text contains a newline (decoded once per tokenizer; ids past
    the tokenizer's, in a padded embedding, have no text)."""
    if tokenizer not in _NEWLINES:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        _NEWLINES[tokenizer] = torch.tensor(["\n" in t for t in texts])
    known = _NEWLINES[tokenizer]
    return torch.cat([known, torch.zeros(max(0, vocab - len(known)), dtype=torch.bool)])[:vocab]


def _seed_cache(hf, state: KVRows | None, reuse: list[int], width: int) -> DynamicCache:
    """A cache holding each row's first ``reuse[i]`` held keys/values, right-aligned in
    ``width`` columns (zeros before them, masked)."""
    cache = DynamicCache(config=hf.config)
    if state is None or width == 0:
        return cache
    for layer in range(len(state.keys[0])):
        like = state.keys[0][layer]
        shape = (len(reuse), like.shape[0], width, like.shape[2])
        keys = torch.zeros(shape, dtype=like.dtype, device=like.device)
        values = torch.zeros_like(keys)
        for row, r in enumerate(reuse):
            if r:
                keys[row, :, width - r :] = state.keys[row][layer][:, :r]
                values[row, :, width - r :] = state.values[row][layer][:, :r]
        cache.update(keys, values, layer)
    return cache


def _last_logits(hf, ids, mask, positions, cache, last_only: bool) -> torch.Tensor:
    """The last column's logits of a cached forward (``cache`` is extended in place)."""
    kwargs = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        CACHE_ARG: cache,
        "use_cache": True,
    }
    if last_only:  # skip the full-vocabulary unembedding of every other column
        kwargs["logits_to_keep"] = 1
    return hf(**kwargs).logits[:, -1].float()


@torch.inference_mode()
def greedy_continue(
    model: TransformerBridge,
    prompts: Sequence[Sequence[int]],
    state: KVRows | None = None,
    *,
    max_new_tokens: int = 24,
    stop_at_newline: bool = False,
) -> tuple[list[str], KVRows]:
    """Greedy continuations of one batch of prompts, reusing ``state``'s keys/values (see module
    doc).

    Args:
        model: the bridge (its ``original_model`` runs).
        prompts: token ids, one batch (all rows run together).
        state: what the previous turn of the same rows returned (``None``: nothing held).
        max_new_tokens: the most tokens generated per row.
        stop_at_newline: also stop a row at its first token containing a newline.

    Returns:
        The decoded continuations (special tokens dropped) and the rows' keys/values for the next
        turn.

    Raises:
        ValueError: no prompts, an empty prompt, ``max_new_tokens < 1``, or a ``state`` for
            another number of rows.
    """
    if not prompts or min(map(len, prompts)) < 1 or max_new_tokens < 1:
        raise ValueError("need non-empty prompts and max_new_tokens >= 1")
    if state is not None and len(state.ids) != len(prompts):
        raise ValueError(f"state holds {len(state.ids)} rows, got {len(prompts)} prompts")
    tok, hf, device = model.tokenizer, model.original_model, model.cfg.device
    n = len(prompts)
    # At least the last prompt token is fed: its logits give the first generated token.
    reuse = [
        0 if state is None else min(_shared_prefix(state.ids[i], p), len(p) - 1)
        for i, p in enumerate(prompts)
    ]
    width, new = max(reuse), max(len(p) - r for p, r in zip(prompts, reuse))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((n, new), pad, dtype=torch.long)
    positions = torch.zeros((n, new), dtype=torch.long)
    mask = torch.zeros((n, width + new), dtype=torch.long)
    held = []
    for i, (p, r) in enumerate(zip(prompts, reuse)):
        fresh = list(p[r:])
        ids[i, new - len(fresh) :] = torch.tensor(fresh)
        positions[i, new - len(fresh) :] = torch.arange(r, len(p))
        mask[i, width - r : width] = 1
        mask[i, width + new - len(fresh) :] = 1
        held.append(list(p))
    cache = _seed_cache(hf, state, reuse, width)
    ends = _ending_tokens(model, stop_at_newline)
    last_only = "logits_to_keep" in inspect.signature(hf.forward).parameters
    generated: list[list[int]] = [[] for _ in range(n)]
    keys: list[tuple[torch.Tensor, ...]] = [()] * n
    values: list[tuple[torch.Tensor, ...]] = [()] * n
    active = torch.arange(n)  # the prompt of each batch row; finished rows leave the batch
    mask, ids, positions = mask.to(device), ids.to(device), positions.to(device)
    for step in range(max_new_tokens):
        nxt = _last_logits(hf, ids, mask, positions, cache, last_only).argmax(-1).cpu()
        for row, i in enumerate(active.tolist()):
            generated[i].append(int(nxt[row]))
        ended = ends[nxt] | (step == max_new_tokens - 1)
        if bool(ended.any()):
            for row in ended.nonzero().flatten().tolist():
                i, cols = int(active[row]), mask[row].nonzero().flatten()
                keys[i] = tuple(layer.keys[row][:, cols] for layer in cache.layers)
                values[i] = tuple(layer.values[row][:, cols] for layer in cache.layers)
            keep = (~ended).nonzero().flatten()
            if keep.numel() == 0:
                break
            for layer in cache.layers:
                layer.batch_select_indices(keep.to(device))
            active, nxt, mask = active[keep], nxt[keep], mask[keep.to(device)]
        for i in active.tolist():  # the generated token is fed back: it joins the held ids
            held[i].append(generated[i][-1])
        ids = nxt[:, None].to(device)
        positions = torch.tensor([[len(held[i]) - 1] for i in active.tolist()], device=device)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    texts = [tok.decode(g, skip_special_tokens=True) for g in generated]
    return texts, KVRows(tuple(map(tuple, held)), tuple(keys), tuple(values))


def _ending_tokens(model: TransformerBridge, newline: bool) -> torch.Tensor:
    """``[vocab]`` bool: the tokens that end a row (stop ids, and newlines when asked)."""
    hf = model.original_model
    vocab = hf.get_output_embeddings().weight.shape[0]
    ends = _newline_tokens(model.tokenizer, vocab) if newline else torch.zeros(vocab, dtype=bool)
    ends = ends.clone()
    ends[torch.tensor([i for i in _stop_ids(model) if i < vocab], dtype=torch.long)] = True
    return ends


def first_turn_prompts(
    tokenizer,
    questions: Sequence[Question],
    *,
    system: str | None = DEFAULT_SYSTEM,
    with_stem: bool = True,
) -> list[list[int]]:
    """Prompts for the first turn: system + question, then the generation prompt (+ answer stem)."""
    prompts = []
    for q in questions:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": q.user_text()}
        ]
        prompts.append(chat_prompt_ids(tokenizer, messages, q.answer_stem if with_stem else None))
    return prompts


def first_answers(
    model: TransformerBridge,
    questions: Sequence[Question],
    *,
    system: str | None = DEFAULT_SYSTEM,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """The model's own greedy first answers, written as full assistant turns (stem + reply).

    Only the first line is kept, so a model that rambles on does not carry extra text into the
    dialogue.
    """
    prompts = first_turn_prompts(model.tokenizer, questions, system=system)
    replies = greedy_generate(
        model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    answers = []
    for q, reply in zip(questions, replies):
        line = reply.split("\n")[0].rstrip()
        answers.append(f"{q.answer_stem}{line}" if q.answer_stem else line.strip())
    return answers
