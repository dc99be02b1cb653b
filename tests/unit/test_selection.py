"""Head-selection recipes (sycointerp.spt.selection): each ranks every head through one signature;
the loss-gradient recipe equals a plain per-head reference on tiny MHA and GQA models."""

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sycointerp.data.pairs import build_pairs
from sycointerp.data.questions import load_builtin
from sycointerp.data.templates import CHALLENGES
from sycointerp.heads import HeadSet
from sycointerp.metrics import METRICS
from sycointerp.models import hook_model
from sycointerp.patching.path import path_patch_heads
from sycointerp.patching.results import PatchResult
from sycointerp.probing import probe_heads
from sycointerp.spt.data import build_dialogues, tokenize_dialogues
from sycointerp.spt.selection import (
    SELECTION_RECIPES,
    RankingMismatch,
    SelectionInputs,
    SelectionRecipe,
    check_ranking,
    loss_gradient_scores,
    select_heads,
)
from sycointerp.spt.train import loss_sum
from sycointerp.spt.tunable import HeadDeltas, frozen
from sycointerp.testing import save_tiny_model

OPTIONS = {
    "rank_metric": "apology_logit_diff",
    "system": "You are a helpful assistant.",
    "seed": 0,
    "kinds": ["insist", "revise"],
    "tune_kv": "auto",
    "batch_size": 4,
    "pairs_per_wording": 2,
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection-models")
    return {
        "llama": save_tiny_model(root / "llama", "llama"),  # GQA: 4 query heads, 2 KV heads
        "gpt2": save_tiny_model(root / "gpt2", "gpt2"),  # MHA, fused Conv1D projections
    }


def _hf(path):
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(path)


def _reference_scores(model, examples, pad_id, tune_kv, batch_size):
    """Plain reference: tune one head's zero deltas at a time, sum its gradients' magnitudes."""
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    n_tokens = sum(sum(t != -100 for t in e.labels[1:]) for e in examples)
    scores = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            deltas = HeadDeltas(
                model, HeadSet(((layer, head),), n_layers, n_heads), tune_kv=tune_kv
            )
            grads = [torch.zeros_like(p) for p in deltas.parameters()]
            with frozen(model), deltas.active():
                for start in range(0, len(examples), batch_size):
                    loss = loss_sum(model, examples[start : start + batch_size], pad_id, "cpu")
                    for g, d in zip(
                        grads, torch.autograd.grad(loss / n_tokens, deltas.parameters())
                    ):
                        g += d
            scores[layer, head] = sum(float(g.abs().sum()) for g in grads)
    return scores


@pytest.mark.parametrize(
    ("arch", "tune_kv"), [("llama", None), ("llama", True), ("gpt2", None), ("gpt2", False)]
)
def test_loss_gradient_equals_tuning_each_head_alone(model_dirs, arch, tune_kv):
    model, tok = _hf(model_dirs[arch])
    examples = tokenize_dialogues(tok, build_dialogues(load_builtin()[:5]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    got, loss = loss_gradient_scores(
        model, examples, pad_id=tok.pad_token_id, tune_kv=tune_kv, batch_size=3
    )
    want = _reference_scores(model, examples, tok.pad_token_id, tune_kv, batch_size=3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    assert (got > 0).all() and len(set(got.flatten().tolist())) == got.numel()
    n_tokens = sum(sum(t != -100 for t in e.labels[1:]) for e in examples)
    with torch.no_grad():
        plain = float(loss_sum(model, examples, tok.pad_token_id, "cpu")) / n_tokens
    assert loss == pytest.approx(plain, rel=1e-5)
    # The model is left as it was: weights, flags and no stored gradients.
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad == flags[n] and p.grad is None


def test_loss_gradient_counts_a_shared_kv_slice_for_every_head_of_its_group(model_dirs):
    model, tok = _hf(model_dirs["llama"])
    examples = tokenize_dialogues(tok, build_dialogues(load_builtin()[:3]))
    qo, _ = loss_gradient_scores(model, examples, pad_id=tok.pad_token_id, tune_kv=False)
    qkvo, _ = loss_gradient_scores(model, examples, pad_id=tok.pad_token_id, tune_kv=True)
    kv = qkvo - qo  # each head's K/V part: equal within a group of 2 query heads
    torch.testing.assert_close(kv[:, 0::2], kv[:, 1::2])
    assert (kv > 0).all()


def test_loss_gradient_refuses_examples_without_labels(model_dirs):
    model, tok = _hf(model_dirs["llama"])
    with pytest.raises(ValueError, match="no training examples"):
        loss_gradient_scores(model, [], pad_id=tok.pad_token_id)


def _inputs(model_dirs, arch="llama", **options):
    hf, tok = _hf(model_dirs[arch])
    hooked = {}

    def hook():
        hook.calls += 1
        if "model" not in hooked:
            hooked["model"] = hook_model(hf, tok, f"tiny-{arch}")
        return hooked["model"]

    hook.calls = 0
    return SelectionInputs(hf, tok, hook, tuple(load_builtin()[:6]), {**OPTIONS, **options}), hook


@pytest.mark.parametrize("metric", ["apology_logit_diff", "flip"])
def test_path_recipe_is_path_patching_on_the_paper_wording(model_dirs, metric):
    inputs, hook = _inputs(model_dirs, rank_metric=metric)
    heads, result = select_heads("path", inputs, 3)
    entry, tok = METRICS[metric], hook().tokenizer
    pairs = build_pairs(
        list(inputs.questions), tok, position=entry.position, system=OPTIONS["system"]
    )
    want = path_patch_heads(hook(), pairs, entry.build(tok, pairs))
    torch.testing.assert_close(result.values, want.values)
    assert (
        heads.heads == HeadSet.top_k(want, 3).heads and heads.source == "top-3 of path (path/resid)"
    )


def test_pooled_wordings_ranks_on_every_paraphrase(model_dirs):
    inputs, hook = _inputs(model_dirs)
    _, result = select_heads("pooled_wordings", inputs, 2)
    assert result.values.shape[-1] == 2 * len(CHALLENGES)
    # Its score is the mean over the wordings' pairs: equal to the wordings' own runs pooled.
    entry, tok = METRICS["apology_logit_diff"], hook().tokenizer
    parts = []
    for name in CHALLENGES:
        pairs = build_pairs(
            list(inputs.questions[:2]),
            tok,
            challenge=name,
            position="reply",
            system=OPTIONS["system"],
        )
        parts.append(path_patch_heads(hook(), pairs, entry.build(tok, pairs)).values)
    torch.testing.assert_close(result.values, torch.cat(parts, -1), rtol=1e-5, atol=1e-6)


def test_probe_recipe_is_the_probe_ranking(model_dirs):
    inputs, hook = _inputs(model_dirs)
    _, result = select_heads("probe", inputs, 2)
    pairs = build_pairs(
        list(inputs.questions), hook().tokenizer, position="reply", system=OPTIONS["system"]
    )
    torch.testing.assert_close(result.values, probe_heads(hook(), pairs, seed=0)[0].values)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loss_gradient_recipe_ranks_by_the_scores_and_saves_like_a_patch_result(
    model_dirs, arch, tmp_path
):
    inputs, hook = _inputs(model_dirs, arch)
    heads, result = select_heads("loss_gradient", inputs, 4)
    examples = tokenize_dialogues(
        inputs.tokenizer, build_dialogues(inputs.questions, system=OPTIONS["system"])
    )
    scores, _ = loss_gradient_scores(
        inputs.hf, examples, pad_id=inputs.tokenizer.pad_token_id, batch_size=4
    )
    torch.testing.assert_close(result.mean, scores)
    order = sorted(range(scores.numel()), key=lambda i: -float(scores.flatten()[i]))[:4]
    assert heads.heads == tuple(sorted(divmod(i, scores.shape[1]) for i in order))
    assert hook.calls == 0  # it never built the hooked model
    result.save(tmp_path / "r")
    assert PatchResult.load(tmp_path / "r").rank() == result.rank()


def test_a_recipe_added_by_registration_selects_heads(model_dirs):
    def last_layer(inputs):
        n_layers = inputs.hf.config.num_hidden_layers
        values = torch.zeros(n_layers, inputs.hf.config.num_attention_heads, 1)
        values[-1] = 1.0
        one = torch.ones(1)
        grid = {"n_layers": n_layers, "n_heads": values.shape[1], "n_kv_heads": 2, "model": ""}
        return PatchResult(values, one, one, "toy", "toy", False, meta={"grid": grid})

    inputs, _ = _inputs(model_dirs)
    with SELECTION_RECIPES.added(SelectionRecipe("last_layer", "the last layer", last_layer)):
        heads, _ = select_heads("last_layer", inputs, 2)
    assert heads.heads == ((1, 0), (1, 1))
    assert "last_layer" not in SELECTION_RECIPES
    with pytest.raises(KeyError, match="registered: path, pooled_wordings"):
        select_heads("last_layer", inputs, 2)


@pytest.mark.parametrize("recipe", ["loss_gradient", "pooled_wordings"])
def test_the_spt_job_tunes_the_heads_of_the_chosen_recipe(model_dirs, tmp_path, recipe):
    from sycointerp.workflows import spt
    from sycointerp.workflows.spt_config import SPTConfig

    config = SPTConfig(
        model=str(model_dirs["llama"]), limit=16, steps=2, warmup_steps=1, eval_limit=3,
        max_new_tokens=3, answer_tokens=3, top_k=2, lr=0.01, methods=["spt"],
        selection=recipe, pairs_per_wording=1, pressure_rounds=1, stance_variants=[],
    )  # fmt: skip
    done = spt.run(config, tmp_path / "out")
    ranking = PatchResult.load(tmp_path / "out" / "ranking")
    want = SELECTION_RECIPES[recipe]
    assert done.heads.heads == HeadSet.top_k(ranking, 2).heads
    assert done.heads.source.startswith(f"top-2 of {recipe} (")
    # Re-patching is the path recipe's before / after; other recipes skip it.
    assert (tmp_path / "out" / "spt" / "repatch").exists() == want.repatch
    assert ranking.meta["selection"] == recipe

    # A rerun reads the saved ranking back: same heads, the recipe not called again.
    def boom(inputs):
        raise AssertionError("the saved ranking was recomputed")

    SELECTION_RECIPES.register(SelectionRecipe(recipe, "boom", boom), replace=True)
    try:
        assert spt.choose_heads(config, [], tmp_path / "out" / "ranking") == done.heads
    finally:
        SELECTION_RECIPES.register(want, replace=True)
    # The saved ranking is refused for another recipe or, for a path recipe, another metric.
    other = "probe" if recipe == "loss_gradient" else "loss_gradient"
    with pytest.raises(RankingMismatch, match=f"holds a ranking by {recipe}, not by {other}"):
        spt.choose_heads(replace(config, selection=other), [], tmp_path / "out" / "ranking")
    if want.uses_metric:
        with pytest.raises(RankingMismatch, match="by the metric apology_logit_diff, not flip"):
            flip = replace(config, rank_metric="flip")
            spt.choose_heads(flip, [], tmp_path / "out" / "ranking")


def test_a_ranking_saved_before_recipes_were_recorded_counts_as_path(tmp_path):
    one = torch.ones(1)
    grid = {"n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "model": ""}
    old = PatchResult(
        torch.zeros(1, 2, 1), one, one, "path/resid", "flip", False, meta={"grid": grid}
    )
    check_ranking(old, "path", "flip", "ranking")
    with pytest.raises(RankingMismatch, match="holds a ranking by path, not by pooled_wordings"):
        check_ranking(old, "pooled_wordings", "flip", "ranking")
    probe = replace(old, method="probe/z/last")
    with pytest.raises(RankingMismatch, match="by probe/z/last, not by path"):
        check_ranking(probe, "path", "flip", "ranking")
