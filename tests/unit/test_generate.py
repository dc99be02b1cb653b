from contextlib import contextmanager

import torch

from sycointerp.data import load_builtin
from sycointerp.generate import first_turn_prompts, greedy_continue, greedy_generate
from tests.reference import reference_greedy


def test_batched_cached_generation_equals_plain_greedy_loop(tiny):
    """Catches a KV cache that silently stays empty (garbled text after the first token) and
    left-padding mistakes in batched generation."""
    prompts = first_turn_prompts(tiny.tokenizer, load_builtin()[:3])
    prompts[1] = prompts[1][:-3]  # different lengths force left padding
    texts = greedy_generate(tiny, prompts, max_new_tokens=6, batch_size=3)
    for prompt, text in zip(prompts, texts):
        expected = reference_greedy(tiny, prompt, 6)
        stop = set(
            filter(
                None,
                [tiny.tokenizer.eos_token_id, tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")],
            )
        )
        cut = next((i for i, t in enumerate(expected) if t in stop), len(expected))
        assert text == tiny.tokenizer.decode(expected[:cut], skip_special_tokens=True)


def _expected_text(model, prompt, n: int, newline: bool = False) -> str:
    """The reference greedy loop's text, cut where greedy_continue stops a row."""
    tok = model.tokenizer
    tokens = reference_greedy(model, prompt, n)
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} - {None}
    cut = next((i for i, t in enumerate(tokens) if t in stop), len(tokens))
    if newline:
        cut = next((i + 1 for i, t in enumerate(tokens[:cut]) if "\n" in tok.decode([t])), cut)
    return tok.decode(tokens[:cut], skip_special_tokens=True)


def test_continued_turns_reuse_held_keys_and_equal_a_cache_free_greedy_loop(tiny):
    """Turn 2 reuses turn 1's keys/values (all of them, part of them after a divergent token, or
    none); every row's text equals the plain full-forward loop on the whole dialogue."""
    prompts = first_turn_prompts(tiny.tokenizer, load_builtin()[:3])
    prompts[1] = prompts[1][:-3]  # unequal lengths: left padding in both the held and new parts
    texts, state = greedy_continue(tiny, prompts, max_new_tokens=5)
    assert texts == [_expected_text(tiny, p, 5) for p in prompts]
    assert all(len(ids) >= len(p) for ids, p in zip(state.ids, prompts))
    follow = [[9, 21, 300], [5], [77, 8, 8, 401, 2]]
    turn2 = [
        list(state.ids[0]) + follow[0],  # everything held is reused
        list(state.ids[1][:-2]) + [int(state.ids[1][-2]) ^ 1] + follow[1],  # diverges at the end
        [4] + list(state.ids[2]) + follow[2],  # nothing shared
    ]
    texts2, state2 = greedy_continue(tiny, turn2, state, max_new_tokens=6)
    assert texts2 == [_expected_text(tiny, p, 6) for p in turn2]
    layers = len(state2.keys[0])
    for row, ids in enumerate(state2.ids):
        assert list(ids[: len(turn2[row])]) == turn2[row]
        assert all(state2.keys[row][l].shape[1] == len(ids) for l in range(layers))


@contextmanager
def _newline_after_two_tokens(model, prompt):
    """Make "\n" the model's greedy choice wherever the token it picks third for ``prompt`` would
    score well (its unembedding row, scaled up), so that rows do reach a newline."""
    tok, head = model.tokenizer, model.original_model.get_output_embeddings().weight
    newline = tok.convert_tokens_to_ids("\u010a")  # byte-level BPE's "\n"
    third = reference_greedy(model, prompt, 3)[2]
    saved = head[newline].clone()
    with torch.no_grad():
        head[newline] = 1.5 * head[third]
    try:
        yield
    finally:
        with torch.no_grad():
            head[newline] = saved


def test_newline_stop_keeps_the_first_line(tiny):
    prompts = first_turn_prompts(tiny.tokenizer, load_builtin()[3:7])
    with _newline_after_two_tokens(tiny, prompts[0]):
        texts, _ = greedy_continue(tiny, prompts, max_new_tokens=8, stop_at_newline=True)
        expected = [_expected_text(tiny, p, 8, newline=True) for p in prompts]
        full = greedy_generate(tiny, prompts, max_new_tokens=8, batch_size=4)
    assert texts == expected
    assert any(t.endswith("\n") for t in texts)  # the stop was exercised
    assert [t.split("\n")[0] for t in texts] == [t.split("\n")[0] for t in full]
