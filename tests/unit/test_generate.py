from sycointerp.data import load_builtin
from sycointerp.generate import first_turn_prompts, greedy_generate
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
