"""Batched greedy generation through the chat template (the model's own first answers).

Generation runs HuggingFace's ``generate`` on the bridge's underlying model with left padding and
its KV cache; decoding stops at the end-of-turn token. Greedy decoding makes it deterministic.
"""

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from sycointerp.chat import DEFAULT_SYSTEM, chat_prompt_ids
from sycointerp.data.questions import Question

__all__ = ["greedy_generate", "first_turn_prompts", "first_answers"]


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
