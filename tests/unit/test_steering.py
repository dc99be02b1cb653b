"""Steering (CAA on the residual stream, ITI on head outputs) and head probes, on the tiny GQA and
MHA models: exact shifts, exact no-ops, hooks gone after the block, probes that separate what is
separable, and the CAA vector against a one-pair-at-a-time reference."""

import pytest
import torch

from sycointerp.data import build_pairs, load_builtin
from sycointerp.evaluate import evaluate_sycophancy
from sycointerp.generate import first_turn_prompts, greedy_continue, greedy_generate
from sycointerp.heads import HeadSet
from sycointerp.probing import fit_probes, heldout_accuracy, probe_heads, split_pairs
from sycointerp.steering import caa_vector, resid_name, steer_heads, steer_residual
from tests.reference import steered_greedy, steered_values


@pytest.fixture(scope="module")
def pairs(tiny_llama):
    return build_pairs(load_builtin()[:8], tiny_llama.tokenizer, position="reply")


def _ids(model, pairs):
    return torch.tensor([pairs[0].ref_ids])


def _capture(model, ids, name):
    """``name``'s activation, read by a hook added after any steering hook."""
    box = {}

    def grab(x, hook):
        box["x"] = x.detach().clone()
        return x

    with model.hooks(fwd_hooks=[(name, grab)]):
        logits = model(ids)
    return box["x"], logits


def test_alpha_zero_is_bit_identical_and_hooks_leave_with_the_block(tiny, pairs):
    model = tiny
    pairs = build_pairs(load_builtin()[:4], model.tokenizer, position="reply")
    ids = torch.tensor([pairs[0].ref_ids])
    base = model(ids)
    prompt = [pairs[0].ref_ids]
    text = greedy_generate(model, prompt, max_new_tokens=4)
    vector = torch.randn(model.cfg.d_model)
    heads = [(0, 1), (1, 0)]
    dirs, scales = torch.randn(2, model.cfg.d_head), torch.ones(2)
    for steer in (
        lambda: steer_residual(model, vector, 1, 0.0),
        lambda: steer_heads(model, heads, dirs, scales, 0.0),
    ):
        with steer():
            assert torch.equal(model(ids), base)
            assert greedy_generate(model, prompt, max_new_tokens=4) == text
    for steer in (
        lambda: steer_residual(model, vector, 1, 3.0),
        lambda: steer_heads(model, heads, dirs, scales, 3.0),
    ):
        with pytest.raises(RuntimeError, match="inside"):
            with steer():
                assert not torch.equal(model(ids), base)  # it does steer
                raise RuntimeError("raised inside the block")
        assert torch.equal(model(ids), base)  # no hook left behind by the exception
        assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("positions", ["last", "all"])
def test_residual_steering_adds_exactly_the_vector(tiny, positions):
    model = tiny
    pairs = build_pairs(load_builtin()[:2], model.tokenizer, position="reply")
    ids = torch.tensor([pairs[0].ref_ids])
    vector, alpha, layer = torch.randn(model.cfg.d_model), -2.5, 1
    before, _ = _capture(model, ids, resid_name(layer))
    with steer_residual(model, vector, layer, alpha, positions=positions):
        after, _ = _capture(model, ids, resid_name(layer))
    expected = before.clone()
    span = slice(-1, None) if positions == "last" else slice(None)
    expected[:, span] += alpha * vector
    assert torch.equal(after, expected)
    if positions == "last":
        assert torch.equal(after[:, :-1], before[:, :-1])


def test_head_steering_shifts_only_the_selected_heads(tiny):
    model = tiny
    pairs = build_pairs(load_builtin()[:2], model.tokenizer, position="reply")
    ids = torch.tensor([pairs[0].ref_ids])
    heads = [(1, 2), (1, 0)]
    dirs, scales, alpha = torch.randn(2, model.cfg.d_head), torch.tensor([0.5, 2.0]), 3.0
    name = "blocks.1.attn.hook_z"
    before, _ = _capture(model, ids, name)
    with steer_heads(model, heads, dirs, scales, alpha):
        after, _ = _capture(model, ids, name)
    expected = before.clone()
    for i, (_, h) in enumerate(heads):
        expected[:, -1, h] += alpha * scales[i] * dirs[i]
    assert torch.equal(after, expected)
    with pytest.raises(ValueError, match="need directions"):
        with steer_heads(model, heads, dirs[:1], scales[:1], 1.0):  # one direction, two heads
            pass
    with pytest.raises(ValueError, match="layer must be in"):
        with steer_residual(model, torch.zeros(model.cfg.d_model), 99, 1.0):
            pass


def test_caa_vector_equals_one_pair_at_a_time(tiny_llama, pairs):
    model, layer = tiny_llama, 1
    name = resid_name(layer)
    diffs = []
    for pair in pairs:
        _, ref = model.run_with_cache(torch.tensor([pair.ref_ids]), names_filter=name)
        _, cf = model.run_with_cache(torch.tensor([pair.cf_ids]), names_filter=name)
        diffs.append(ref[name][0, -1] - cf[name][0, -1])
    expected = torch.stack(diffs).mean(0)
    torch.testing.assert_close(
        caa_vector(model, pairs, layer, batch_size=3), expected, atol=1e-5, rtol=1e-5
    )


def test_probes_separate_separable_activations():
    gen = torch.Generator().manual_seed(0)
    # Cell 0: the label sits in feature 2 (separable); cell 1: pure noise.
    y = torch.tensor([1.0] * 20 + [0.0] * 20)
    x = torch.randn(2, 40, 5, generator=gen)
    x[0, :, 2] += 4 * (2 * y - 1)
    w, b, mean, std = fit_probes(x, y)
    pred = (torch.einsum("ced,cd->ce", (x - mean[:, None]) / std[:, None], w) + b[:, None]) > 0
    assert torch.equal(pred[0], y.bool())  # full accuracy where the classes separate
    assert split_pairs(10, 0.3, 0) == split_pairs(10, 0.3, 0)
    train, test = split_pairs(10, 0.3, 0)
    assert len(test) == 3 and not set(train) & set(test) and len(train) + len(test) == 10
    with pytest.raises(ValueError, match=">= 4 pairs"):
        split_pairs(3, 0.5, 0)


def test_probe_ranking_is_a_patch_result(tiny_llama, pairs):
    result, directions = probe_heads(tiny_llama, pairs, held_out=0.5, seed=1)
    grid = (tiny_llama.cfg.n_layers, tiny_llama.cfg.n_heads)
    assert result.shape == grid and result.values.shape[-1] == 4
    assert set(result.values.unique().tolist()) <= {0.0, 0.5, 1.0}
    table = result.heads_table()
    assert table["rank"].tolist() == list(range(1, grid[0] * grid[1] + 1))
    assert table["score"].is_monotonic_decreasing  # rank 1 = the most accurate probe
    top = HeadSet.top_k(result, 2)
    d, s = directions.for_heads(top.heads)
    assert d.shape == (2, tiny_llama.cfg.d_head) and (s > 0).all()
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2))


def test_probes_score_held_out_pairs_of_synthetic_activations():
    """Held-out scoring: a head whose challenge and counterfactual outputs differ along one
    feature gets accuracy 1 on pairs it never saw; a head of pure noise stays near chance."""
    gen = torch.Generator().manual_seed(1)
    n_pairs, d = 60, 6
    ref = torch.randn(n_pairs, 1, 2, d, generator=gen)
    cf = torch.randn(n_pairs, 1, 2, d, generator=gen)
    # Head (0, 0): separable with a margin (feature 3 >= 2 under the challenge, <= -2 under the
    # counterfactual); head (0, 1): pure noise.
    ref[:, 0, 0, 3] = 2 + ref[:, 0, 0, 3].abs()
    cf[:, 0, 0, 3] = -2 - cf[:, 0, 0, 3].abs()
    train, test = split_pairs(n_pairs, 0.5, 0)
    accuracy = heldout_accuracy(ref, cf, train, test)
    assert accuracy.shape == (1, 2, len(test))
    assert set(accuracy.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert accuracy[0, 0].mean() == 1.0
    assert 0.3 < accuracy[0, 1].mean() < 0.7


def _steerers(model):
    """Both kinds of steering as (context factory of the coefficient, hooked activation, the
    shift one unit of coefficient adds at a steered position)."""
    gen = torch.Generator().manual_seed(3)
    vector = torch.randn(model.cfg.d_model, generator=gen)
    heads = [(0, 0), (0, 2)]  # layer 0: the shift reaches layer 1's keys and values
    dirs = torch.randn(2, model.cfg.d_head, generator=gen)
    scales = torch.tensor([1.0, 2.0])
    z_unit = torch.zeros(model.cfg.n_heads, model.cfg.d_head)
    for i, (_, h) in enumerate(heads):
        z_unit[h] = scales[i] * dirs[i]
    return {
        "caa": (lambda a: steer_residual(model, vector, 1, a), resid_name(1), vector),
        "iti": (
            lambda a: steer_heads(model, heads, dirs, scales, a),
            "blocks.0.attn.hook_z",
            z_unit,
        ),
    }


def _cut(model, tokens: list[int]) -> str:
    tok = model.tokenizer
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} - {None}
    end = next((i for i, t in enumerate(tokens) if t in stop), len(tokens))
    return tok.decode(tokens[:end], skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["caa", "iti"])
def test_steered_cached_turns_equal_a_steered_full_forward_loop(tiny, kind):
    """The evaluation's cached engine under steering: two turns of a left-padded batch, the
    second reusing the first's keys/values, equal a plain full-forward loop that adds the shift
    at every position the cached engine computed under steering (reference.steered_greedy)."""
    model, alpha = tiny, -0.5
    steer, hook, unit = _steerers(model)[kind]
    delta = alpha * unit
    prompts = first_turn_prompts(model.tokenizer, load_builtin()[:2])
    prompts[1] = prompts[1][:-3]  # unequal lengths: left padding
    with steer(alpha):
        texts, state = greedy_continue(model, prompts, max_new_tokens=5)
        follow = [[9, 21, 300], [77, 8, 401]]
        turn2 = [list(state.ids[i]) + follow[i] for i in range(2)]
        texts2, state2 = greedy_continue(model, turn2, state, max_new_tokens=5)
    unsteered = greedy_continue(model, prompts, max_new_tokens=5)[0]
    assert texts != unsteered  # steering reaches the cached engine
    for i, prompt in enumerate(prompts):
        tokens, steered = steered_greedy(model, prompt, 5, hook, delta, [])
        assert texts[i] == _cut(model, tokens)
        earlier = [p for p in steered if p < len(state.ids[i])]
        tokens2, steered2 = steered_greedy(model, turn2[i], 5, hook, delta, earlier)
        assert texts2[i] == _cut(model, tokens2)
        # The held keys/values themselves: every layer's values equal one unpadded forward
        # steered at exactly those positions, and not a shift of another size or a forward
        # steered at every position of the dialogue (text alone saturates under steering).
        ids = state2.ids[i]
        marks = [p for p in steered2 if p < len(ids)]
        expected = steered_values(model, ids, hook, delta, marks)
        held = state2.values[i]
        for layer, values in enumerate(expected):
            torch.testing.assert_close(held[layer], values, atol=1e-4, rtol=1e-4)
        for wrong in (
            steered_values(model, ids, hook, delta / 3, marks),
            steered_values(model, ids, hook, delta, range(len(ids))),
        ):
            assert any(not torch.allclose(h, w, atol=1e-3) for h, w in zip(held, wrong))


@pytest.mark.parametrize("kind", ["caa", "iti"])
def test_steering_reaches_the_multi_turn_evaluation_and_leaves_it(tiny_llama, kind):
    """evaluate_sycophancy (cached engine, batches of 3) under steering: alpha = 0 gives the
    unsteered evaluation to the character, a real alpha changes it, and after the block the
    evaluation is the unsteered one again."""
    model, questions = tiny_llama, load_builtin()[:5]
    steer = _steerers(model)[kind][0]

    def run():
        return evaluate_sycophancy(
            model, questions, batch_size=3, max_new_tokens=6, answer_tokens=4
        ).items

    base = run()
    with steer(0.0):
        assert run() == base
    with steer(-1.5):
        assert run() != base
    assert run() == base


@pytest.mark.parametrize("resumed", [True, False], ids=["resumed", "full-forwards"])
@pytest.mark.parametrize("kind", ["caa", "iti"])
def test_the_alpha_sweep_resumes_the_last_token_exactly(tiny, kind, resumed, monkeypatch):
    """The steering baselines' coefficient sweep reruns only each prompt's last token; it equals
    one full steered forward per prompt (prompts of different lengths, right-padded together).
    Architectures without resumed runs take the equal-length full forwards instead."""
    from sycointerp.spt.steering_baselines import _pairs_and_metric, _steered_means

    model = tiny
    from sycointerp.patching._resume import supports_resume

    assert supports_resume(model)  # the resumed case really resumes
    if not resumed:
        monkeypatch.setattr("sycointerp.patching._resume.supports_resume", lambda model: False)
    pairs, metric = _pairs_and_metric(model, load_builtin()[::37][:7], {"system": ""})
    assert len({len(p.ref_ids) for p in pairs}) > 1  # padding is exercised
    torch.manual_seed(0)
    if kind == "caa":
        vector = torch.randn(model.cfg.d_model)

        def make(alpha):  # at block 0: the resumed run's first layer reads the cached input
            return lambda positions: steer_residual(model, vector, 0, alpha, positions=positions)
    else:
        heads = [(0, 1), (1, 0), (1, 2)]
        dirs, scales = torch.randn(3, model.cfg.d_head), torch.rand(3) + 0.5

        def make(alpha):
            return lambda positions: steer_heads(
                model, heads, dirs, scales, alpha, positions=positions
            )

    alphas = [0.0, -1.5, 4.0]
    fast = _steered_means(model, pairs, metric, [make(a) for a in alphas], batch_size=3)
    reference = []
    for alpha in alphas:
        with make(alpha)("last"), torch.no_grad():
            logits = torch.stack([model(torch.tensor([p.ref_ids]))[0, -1] for p in pairs])
        reference.append(float(metric(logits.float(), torch.arange(len(pairs))).mean()))
    assert fast == pytest.approx(reference, abs=1e-5)
    assert abs(reference[2] - reference[0]) > 1e-3  # the steering moves the metric
