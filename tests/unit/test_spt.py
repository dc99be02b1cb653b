"""SPT: head slices of the real weights, per-head deltas, the training loop, data, baselines, the
CLI.

Tiny random models (GQA Llama, MHA GPT-2 with fused Conv1D QKV) saved with save_pretrained and
loaded as plain HuggingFace models, as SPT trains them.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig

from sycointerp.data import load_builtin
from sycointerp.data.questions import DataError, Question
from sycointerp.heads import HeadFileError, HeadGrid, HeadSet
from sycointerp.patching import PatchResult
from sycointerp.spt.data import (
    INSIST_ENDING,
    TrainExample,
    build_dialogues,
    check_disjoint,
    collate,
    loss_tokens,
    split_questions,
    tokenize_dialogues,
)
from sycointerp.spt.slices import UnsupportedArchitecture, expected_trainable, head_slices
from sycointerp.spt.train import (
    CheckpointError,
    TrainConfig,
    TrainingError,
    _takes_logits_to_keep,
    loss_sum,
    train,
)
from sycointerp.spt.tunable import FullWeights, HeadDeltas, PeftLoRA
from sycointerp.testing import save_tiny_model
from tests.unit.test_report import assert_opens_offline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("spt-models")
    return {arch: str(save_tiny_model(root / arch, arch)) for arch in ("llama", "gpt2")}


def _load(path: str):
    return AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager"
    ), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def examples(model_dirs):
    tok = AutoTokenizer.from_pretrained(model_dirs["llama"])
    return tokenize_dialogues(tok, build_dialogues(load_builtin()[:12]))


def _o_input(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The input of layer ``layer``'s output projection: every head's z side by side."""
    layers = model.model.layers if hasattr(model, "model") else model.transformer.h
    attn = getattr(layers[layer], "self_attn", None) or layers[layer].attn
    module = getattr(attn, "o_proj", None) or attn.c_proj
    seen = {}
    handle = module.register_forward_pre_hook(
        lambda m, args: seen.update(z=args[0].detach().clone())
    )
    with torch.no_grad():
        model(ids)
    handle.remove()
    return seen["z"]


# --------------------------------------------------------------------------- slices


@pytest.mark.parametrize(
    "config, k, expected",
    [
        (
            LlamaConfig(
                hidden_size=4096,
                num_attention_heads=32,
                num_key_value_heads=32,
                num_hidden_layers=32,
                intermediate_size=11008,
                vocab_size=32000,
            ),
            32,
            67_108_864,
        ),  # Llama-2-7B (MHA)
        (
            MistralConfig(
                hidden_size=4096,
                num_attention_heads=32,
                num_key_value_heads=8,
                num_hidden_layers=32,
                intermediate_size=14336,
                vocab_size=32000,
            ),
            32,
            33_554_432,
        ),  # Mistral-7B (GQA)
    ],
)
def test_trainable_count_is_the_papers_on_empty_weight_models(config, k, expected):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    heads = HeadSet.random(k, config.num_hidden_layers, config.num_attention_heads, seed=1)
    assert HeadDeltas(model, heads).n_trainable() == expected == expected_trainable(config, k)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("tune_kv", [None, True])
def test_perturbing_a_slice_changes_only_its_heads(model_dirs, arch, tune_kv):
    model, _ = _load(model_dirs[arch])
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    n_heads, d_head = (
        model.config.num_attention_heads,
        model.config.hidden_size // model.config.num_attention_heads,
    )
    group = n_heads // getattr(model.config, "num_key_value_heads", n_heads)
    layer, head = 1, 2
    for s in head_slices(model, HeadSet(((layer, head),), 2, n_heads), tune_kv=tune_kv):
        before = _o_input(model, ids, layer)
        out_before = model(ids).logits
        with torch.no_grad():
            saved = s.view().clone()
            s.view().add_(torch.randn_like(saved))
        after = _o_input(model, ids, layer)
        changed = [
            h
            for h in range(n_heads)
            if not torch.equal(
                after[..., h * d_head : (h + 1) * d_head],
                before[..., h * d_head : (h + 1) * d_head],
            )
        ]
        if s.role == "q":
            assert changed == [head]
        elif s.role in ("k", "v"):  # a KV head feeds its whole group
            assert (
                changed == list(range(s.index * group, (s.index + 1) * group)) and head in changed
            )
        else:  # o reads the head's z: z unchanged, the logits move
            assert changed == [] and not torch.equal(model(ids).logits, out_before)
        with torch.no_grad():
            s.view().copy_(saved)
    roles = sorted(
        s.role for s in head_slices(model, HeadSet(((layer, head),), 2, n_heads), tune_kv=tune_kv)
    )
    mha = arch == "gpt2"
    assert roles == (["k", "o", "q", "v"] if (tune_kv or mha) else ["o", "q"])


def test_output_slice_adds_exactly_its_heads_contribution(model_dirs):
    model, _ = _load(model_dirs["llama"])
    ids = torch.tensor([[5, 17, 99, 3]])
    (o,) = [s for s in head_slices(model, HeadSet(((0, 1),), 2, 4)) if s.role == "o"]
    z = _o_input(model, ids, 0)[..., 16:32]
    attn = model.model.layers[0].self_attn
    seen = {}
    h = attn.o_proj.register_forward_hook(
        lambda m, a, out: seen.setdefault("y", []).append(out.detach().clone())
    )
    delta = torch.randn(o.shape)
    with torch.no_grad():
        model(ids)
        o.view().add_(delta)
        model(ids)
    h.remove()
    torch.testing.assert_close(seen["y"][1] - seen["y"][0], z @ delta.T, atol=1e-5, rtol=1e-5)


def test_gqa_kv_slices_are_shared_by_a_group(model_dirs):
    model, _ = _load(
        model_dirs["llama"]
    )  # 4 query heads, 2 KV heads: heads 0 and 1 share KV head 0
    slices = head_slices(model, HeadSet(((0, 0), (0, 1)), 2, 4), tune_kv=True)
    assert sorted((s.role, s.index) for s in slices) == [
        ("k", 0),
        ("o", 0),
        ("o", 1),
        ("q", 0),
        ("q", 1),
        ("v", 0),
    ]


def test_unknown_architecture_is_refused_by_name(model_dirs):
    model, _ = _load(model_dirs["llama"])
    model.config.model_type = "mamba"
    with pytest.raises(UnsupportedArchitecture, match="'mamba'"):
        head_slices(model, HeadSet(((0, 0),), 2, 4))


def test_head_sets(tmp_path):
    result = PatchResult(
        torch.arange(8.0).view(2, 4, 1).repeat(1, 1, 2),
        torch.ones(2),
        torch.ones(2),
        "path",
        "apology_logit_diff",
        True,
        meta={"model": "m", "grid": {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2}},
    )
    assert HeadSet.top_k(result, 2).heads == (
        (0, 0),
        (0, 1),
    )  # most negative = most sycophancy-reducing
    assert (
        HeadSet.random(3, 2, 4, seed=5)
        == HeadSet.random(3, 2, 4, seed=5)
        != HeadSet.random(3, 2, 4, seed=6)
    )
    csv = tmp_path / "heads.csv"
    result.save(tmp_path)
    grid = HeadGrid(2, 4, 2, "m")
    assert HeadSet.from_csv(csv, 2, grid).heads == ((0, 0), (0, 1))
    with pytest.raises(HeadFileError, match="K must be in"):
        HeadSet.from_csv(csv, 9, grid)
    with pytest.raises(HeadFileError, match=r"2 layers x 4 query heads .* this model has 1 layers"):
        HeadSet.from_csv(csv, 2, HeadGrid(1, 4, 2))
    with pytest.raises(ValueError, match="out of range.*another model"):
        HeadSet(((1, 0),), 1, 4)
    with pytest.raises(ValueError, match="listed twice"):
        HeadSet(((0, 0), (0, 0)), 2, 4)


# --------------------------------------------------------------------------- deltas and training


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_spt_training_changes_only_the_selected_slices(model_dirs, examples, arch, tmp_path):
    model, tok = _load(model_dirs[arch])
    original = {k: v.clone() for k, v in model.state_dict().items()}
    deltas = HeadDeltas(model, HeadSet(((0, 1), (1, 3)), 2, 4))
    report = train(
        model,
        deltas,
        examples,
        TrainConfig(steps=3, lr=1e-2, batch_size=4),
        pad_id=tok.pad_token_id,
    )
    assert (
        report.n_trainable == expected_trainable(model.config, 2)
        and report.optimizer_bytes == 2 * 4 * report.n_trainable
    )
    ids = torch.tensor([examples[0].input_ids])
    with torch.no_grad(), deltas.active():
        hooked = model(ids).logits
    deltas.merge()
    with torch.no_grad():
        merged = model(ids).logits
    torch.testing.assert_close(hooked, merged, atol=1e-5, rtol=0)
    mask = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in original.items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for s in deltas.slices:
        mask[names[id(s.module.weight)]].narrow(s.dim, s.start, s.size).fill_(True)
    for name, value in model.state_dict().items():
        assert torch.equal(value[~mask[name]], original[name][~mask[name]]), (
            name
        )  # bit-identical outside
        if mask[name].any():
            assert not torch.equal(value[mask[name]], original[name][mask[name]]), name
    model.save_pretrained(tmp_path / "tuned")
    tok.save_pretrained(tmp_path / "tuned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned", attn_implementation="eager")
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, merged)


def test_loss_is_masked_to_the_last_assistant_turn(model_dirs):
    tok = AutoTokenizer.from_pretrained(model_dirs["llama"])
    q = Question(
        "What is the capital of France?", "Paris", "Lyon", stem="The capital of France is", id="fr"
    )
    insist, revise = tokenize_dialogues(tok, build_dialogues([q]))
    labelled = tok.decode([t for t in insist.labels if t != -100])
    assert labelled.startswith("Yes. The capital of France is Paris.") and INSIST_ENDING in labelled
    assert labelled.endswith("<|im_end|>")
    assert "I apologize for the mistake" in tok.decode([t for t in revise.labels if t != -100])
    first_label = next(i for i, t in enumerate(insist.labels) if t != -100)
    assert tok.decode(list(insist.input_ids[:first_label])).endswith("<|im_start|>assistant\n")
    ids, mask, labels = collate([insist, revise], tok.pad_token_id)
    assert ids.shape == labels.shape and mask.sum() == len(insist.input_ids) + len(revise.input_ids)


class _NoKeepArgument(torch.nn.Module):
    """A causal LM whose forward does not take ``logits_to_keep`` (the fallback path)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_loss_on_the_kept_positions_equals_the_all_position_loss(
    model_dirs, examples, arch, wrapped
):
    model, tok = _load(model_dirs[arch])
    batch = [examples[i] for i in (0, 3, 5, 8)]  # different lengths: padding and offsets differ
    ids, mask, labels = collate(batch, tok.pad_token_id)
    assert (labels[:, 1:] != -100).any(0).sum() < labels.shape[1] - 1  # some positions skipped

    def grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    def plain():  # every position unembedded, the ignored ones masked by the loss
        logits = model(input_ids=ids, attention_mask=mask).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1),
            labels[:, 1:].flatten(),
            ignore_index=-100,
            reduction="sum",
        )

    subject = _NoKeepArgument(model) if wrapped else model
    assert _takes_logits_to_keep(subject) is not wrapped
    want, want_grads = grads(plain)
    got, got_grads = grads(lambda: loss_sum(subject, batch, tok.pad_token_id, "cpu"))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_dialogues_draw_from_ten_or_more_challenges_and_eval_data_never_trains():
    questions = load_builtin()
    dialogues = build_dialogues(questions[:80])
    assert len({d.messages[-2]["content"] for d in dialogues}) >= 10
    train_qs, eval_qs = split_questions(questions, eval_fraction=0.5, seed=0)
    assert not {q.question for q in train_qs} & {q.question for q in eval_qs}
    assert len(train_qs) + len(eval_qs) == len(questions)
    check_disjoint(train_qs, eval_qs)
    with pytest.raises(DataError, match="also appear in the evaluation set"):
        check_disjoint(train_qs, eval_qs[:3] + train_qs[:1])
    with pytest.raises(DataError, match="non-empty question set"):
        build_dialogues([])


def test_checkpoint_resume_equals_an_uninterrupted_run(model_dirs, examples, tmp_path):
    runs = []
    for plan in ([4], [2, 4]):  # straight through vs stop after 2 steps and resume
        model, tok = _load(model_dirs["llama"])
        deltas = HeadDeltas(model, HeadSet(((0, 1), (1, 2)), 2, 4))
        for steps in plan:
            config = TrainConfig(
                steps=steps, lr=1e-2, batch_size=4, checkpoint_every=2, warmup_steps=1
            )
            report = train(
                model,
                deltas,
                examples,
                config,
                pad_id=tok.pad_token_id,
                checkpoint_dir=tmp_path / str(len(plan)),
            )
        runs.append((deltas.state(), report))
    (a, ra), (b, rb) = runs
    assert rb.resumed_from == 2 and ra.losses == pytest.approx(rb.losses, abs=1e-6)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(model_dirs, examples, tmp_path):
    model, tok = _load(model_dirs["llama"])
    deltas = HeadDeltas(model, HeadSet(((0, 1),), 2, 4))
    train(
        model,
        deltas,
        examples,
        TrainConfig(steps=2, batch_size=2, checkpoint_every=2),
        pad_id=tok.pad_token_id,
        checkpoint_dir=tmp_path,
    )
    good = load_file(tmp_path / "checkpoint" / "trainable.safetensors")
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="became nan at step 2.*last good checkpoint"):
        train(
            model,
            deltas,
            examples,
            TrainConfig(steps=4, batch_size=2, checkpoint_every=2),
            pad_id=tok.pad_token_id,
            checkpoint_dir=tmp_path,
        )
    kept = load_file(tmp_path / "checkpoint" / "trainable.safetensors")
    assert all(torch.equal(kept[k], good[k]) for k in good)


def test_gradient_accumulation_equals_one_larger_batch(model_dirs, examples):
    """2 micro-batches of 2 per step train exactly like batches of 4 (token-mean loss over the
    step)."""
    states = []
    for batch_size, accum in ((4, 1), (2, 2)):
        model, tok = _load(model_dirs["llama"])
        deltas = HeadDeltas(model, HeadSet(((0, 1), (1, 2)), 2, 4))
        report = train(
            model,
            deltas,
            examples,
            TrainConfig(steps=3, lr=1e-2, batch_size=batch_size, grad_accum=accum),
            pad_id=tok.pad_token_id,
        )
        states.append((deltas.state(), report.losses))
    (a, la), (b, lb) = states
    # Relative: the micro-batches unembed other position sets, so float32 rounding (~1e-7 of
    # the value) differs.
    assert la == pytest.approx(lb, rel=1e-6) and any(v.abs().sum() > 0 for v in a.values())
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)


def test_learning_rate_warms_up_linearly_then_decays_polynomially(model_dirs, examples, tmp_path):
    """The learning rates AdamW actually steps with, straight through and across a resume."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"])
    )
    try:
        model, tok = _load(model_dirs["llama"])
        config = dict(lr=1e-3, warmup_steps=2, decay_power=2.0, batch_size=2)
        train(
            model,
            HeadDeltas(model, HeadSet(((0, 1),), 2, 4)),
            examples,
            TrainConfig(steps=6, **config),
            pad_id=tok.pad_token_id,
        )
        straight, seen[:] = list(seen), []
        deltas = HeadDeltas(model, HeadSet(((0, 1),), 2, 4))
        for steps in (3, 6):  # stop after 3 steps, resume to 6
            train(
                model,
                deltas,
                examples,
                TrainConfig(steps=steps, checkpoint_every=3, **config),
                pad_id=tok.pad_token_id,
                checkpoint_dir=tmp_path,
            )
    finally:
        handle.remove()
    expected = [
        1e-3 * f for f in (0.5, 1.0, 1.0, 0.5625, 0.25, 0.0625)
    ]  # (1 - (s - 2) / 4) ** 2 after warmup
    assert straight == pytest.approx(expected) and seen == pytest.approx(expected)


def test_non_finite_gradient_stops_before_the_update(model_dirs, examples):
    model, tok = _load(model_dirs["llama"])
    deltas = HeadDeltas(model, HeadSet(((0, 1),), 2, 4))
    deltas.parameters()[0].register_hook(
        lambda grad: grad * float("nan")
    )  # finite loss, NaN gradient
    with pytest.raises(
        TrainingError, match="gradient norm became nan at step 0; no checkpoint was written"
    ):
        train(model, deltas, examples, TrainConfig(steps=2, batch_size=2), pad_id=tok.pad_token_id)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in deltas.parameters())


def test_resume_with_another_global_batch_is_refused(model_dirs, examples, tmp_path):
    model, tok = _load(model_dirs["llama"])
    deltas = HeadDeltas(model, HeadSet(((0, 1),), 2, 4))
    train(
        model,
        deltas,
        examples,
        TrainConfig(steps=2, batch_size=2, checkpoint_every=2),
        pad_id=tok.pad_token_id,
        checkpoint_dir=tmp_path,
    )
    with pytest.raises(
        CheckpointError, match="another number of processes, batch size, accumulation or seed"
    ):
        train(
            model,
            deltas,
            examples,
            TrainConfig(steps=4, batch_size=4, checkpoint_every=2),
            pad_id=tok.pad_token_id,
            checkpoint_dir=tmp_path,
        )
    other = HeadDeltas(model, HeadSet(((0, 1), (1, 0)), 2, 4))
    with pytest.raises(CheckpointError, match="do not match these heads' slices"):
        train(
            model,
            other,
            examples,
            TrainConfig(steps=4, batch_size=2, checkpoint_every=2),
            pad_id=tok.pad_token_id,
            checkpoint_dir=tmp_path,
        )


def test_bfloat16_model_trains_float32_deltas(model_dirs, examples):
    model, tok = _load(model_dirs["llama"])
    model = model.to(torch.bfloat16)
    deltas = HeadDeltas(model, HeadSet(((0, 1),), 2, 4))
    assert all(p.dtype == torch.float32 for p in deltas.parameters())
    train(
        model,
        deltas,
        examples,
        TrainConfig(steps=2, lr=1e-2, batch_size=2),
        pad_id=tok.pad_token_id,
    )
    (i,) = [i for i, s in enumerate(deltas.slices) if s.role == "q"]
    assert deltas.delta(i).abs().sum() > 0
    s, before = deltas.slices[i], deltas.slices[i].view().clone()
    deltas.merge()
    assert s.view().dtype == torch.bfloat16
    assert torch.equal(
        s.view(), (before.float() + deltas.delta(i).detach()).bfloat16()
    )  # rounded once


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_baselines_merge_into_plain_models(model_dirs, examples, arch):
    model, tok = _load(model_dirs[arch])
    lora = PeftLoRA(model, rank=4)
    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    if arch == "llama":  # rank x (in + out) per target: q, o: d->d; k, v: d->d/2
        per_layer = 2 * 4 * (d + d) + 2 * 4 * (d + d // 2)
    else:  # c_attn d->3d, c_proj d->d
        per_layer = 4 * (d + 3 * d) + 4 * (d + d)
    assert lora.n_trainable() == n_layers * per_layer
    train(
        model, lora, examples, TrainConfig(steps=2, lr=1e-2, batch_size=4), pad_id=tok.pad_token_id
    )
    ids = torch.tensor([examples[0].input_ids])
    with torch.no_grad():
        active = model(ids).logits
    lora.merge()
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, active, atol=1e-5, rtol=0)
    heads = HeadDeltas(_load(model_dirs[arch])[0], HeadSet(((0, 1),), 2, 4), rank=2)
    assert heads.n_trainable() == sum(2 * (s.shape[0] + s.shape[1]) for s in heads.slices)


def test_sft_trains_every_weight(model_dirs, examples):
    model, tok = _load(model_dirs["llama"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = FullWeights(model)
    report = train(
        model, full, examples, TrainConfig(steps=2, lr=1e-2, batch_size=4), pad_id=tok.pad_token_id
    )
    assert report.n_trainable == sum(p.numel() for p in model.parameters())
    assert all(
        not torch.equal(v, before[k]) for k, v in model.state_dict().items() if "weight" in k
    )


# --------------------------------------------------------------------------- CLI and processes


def _spt_cli(argv: list[str], torchrun: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
        ]
        if torchrun
        else [sys.executable]
    )
    return subprocess.run(
        [*launcher, "-m", "sycointerp", "spt", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


def _spt_args(model_dir: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model",
        model_dir,
        "--limit",
        "24",
        "--steps",
        "3",
        "--warmup-steps",
        "1",
        "--eval-limit",
        "3",
        "--max-new-tokens",
        "4",
        "--top-k",
        "2",
        "--lr",
        "0.01",
        "-q",
        "--out",
        str(out),
        *extra,
    ]


def test_torchrun_two_processes_train_like_one(model_dirs, tmp_path):
    two = _spt_cli(
        _spt_args(model_dirs["gpt2"], tmp_path / "two", "--methods", "spt", "--batch-size", "2"),
        torchrun=2,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = _spt_cli(
        _spt_args(model_dirs["gpt2"], tmp_path / "one", "--methods", "spt", "--batch-size", "4")
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (load_file(tmp_path / d / "spt" / "deltas.safetensors") for d in ("one", "two"))
    assert sorted(a) == sorted(b) and any(v.abs().sum() > 0 for v in a.values())
    # Gradients summed across processes round differently from one process's sum, and Adam's
    # normalised step turns that into ~1e-6 differences where a gradient is near 0.
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["rows"][0]["train"]["processes"] == 2


def test_the_kl_reference_is_reused_only_for_the_same_model_passages_and_file(
    model_dirs, tmp_path, monkeypatch
):
    from sycointerp.workflows import spt as spt_job
    from sycointerp.workflows.spt_config import SPTConfig

    text = tmp_path / "passages.txt"
    text.write_text((REPO / "README.md").read_text())
    loads = []
    real_load = spt_job._load
    monkeypatch.setattr(spt_job, "_load", lambda c: loads.append(c) or real_load(c))

    def kl(**changes):
        config = SPTConfig(model=model_dirs["llama"], kl_text=str(text), kl_passages=3)
        return spt_job._kl_to_base(SPTConfig(**{**config.__dict__, **changes}))

    assert kl() is not kl() and len(loads) == 2  # outside the block nothing is kept
    with spt_job.reusing_kl_reference():
        first = kl()
        model = _load(model_dirs["llama"])[0]
        assert kl() is first and len(loads) == 3 and first(model).mean == 0.0
        assert kl(kl_passages=2) is not first and len(loads) == 4
        assert kl(model=model_dirs["gpt2"]) is not first and len(loads) == 5
        again = kl()
        text.write_text(("Another text entirely, " * 20 + "\n\n") * 5)  # new size and time
        assert kl() is not again and len(loads) == 7
    assert spt_job._KL_REFERENCE is None  # released on exit


def test_cli_runs_methods_writes_report_and_refuses_bad_input(model_dirs, tmp_path):
    out = tmp_path / "run"
    run = _spt_cli(
        _spt_args(
            model_dirs["llama"],
            out,
            "--methods",
            "base,spt,lora_heads",
            "--save-model",
            "--kl-text",
            str(REPO / "README.md"),
            "--kl-passages",
            "3",
        )
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["base", "spt", "lora_heads"]
    assert report["rows"][0]["kl"] == 0.0 and report["rows"][1]["kl"] > 0
    low, high = report["rows"][1]["kl_ci"]  # bootstrap over the 3 passages
    assert low <= report["rows"][1]["kl"] <= high and report["rows"][0]["kl_ci"] == [0.0, 0.0]
    assert report["rows"][1]["train"]["n_trainable"] == expected_trainable(
        _load(model_dirs["llama"])[0].config, 2
    )
    table = (out / "results.md").read_text()
    first = table.split("Both stances")[0]  # the Confidence / Truthfulness comparisons
    assert "| spt | 2 |" in table and first.count("\n| spt - ") == 2  # vs base and lora_heads
    assert table.count("\n| spt - ") == 4  # and again on both stances
    assert [(p["a"], p["b"]) for p in report["paired"]] == [("spt", "base"), ("spt", "lora_heads")]
    # Re-patching after SPT: the tuned model's path patching on the ranking's pairs.
    repatch = report["rows"][1]["repatch"]
    before, after = PatchResult.load(out / "ranking"), PatchResult.load(out / "spt" / "repatch")
    (l, h) = (repatch["heads"][0]["layer"], repatch["heads"][0]["head"])
    assert repatch["heads"][0]["after"] == pytest.approx(float(after.mean[l, h]))
    change = (after.values[l, h] - before.values[l, h]).mean()
    assert repatch["heads"][0]["change"]["mean"] == pytest.approx(float(change), abs=1e-6)
    assert (out / "spt" / "figures" / "repatch.html").is_file()
    assert "repatch" not in report["rows"][2]  # lora_heads: only SPT is re-patched
    tuned = AutoModelForCausalLM.from_pretrained(out / "spt" / "model")  # plain transformers
    assert tuned.config.num_hidden_layers == 2
    heads = str(tmp_path / "bad.csv")
    Path(heads).write_text(  # ranked on a model with 6 layers x 4 heads
        "layer,head,score,se,ci_low,ci_high,rank,kind,model,n_layers,n_heads,n_kv_heads\n"
        "5,0,0,0,0,0,1,query,other,6,4,2\n"
    )
    for extra, match in [
        (["--heads-file", heads, "--top-k", "1"], "was made on a model with 6 layers"),
        (["--top-k", "99"], "has 8 heads"),
        (["--eval-path", str(tmp_path / "none.jsonl")], "does not exist"),
        (["--methods", "spt,magic"], "methods must be distinct names"),
    ]:
        bad = _spt_cli(
            _spt_args(model_dirs["llama"], tmp_path / f"o{len(extra)}{match[:3]}", *extra)
        )
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and match in bad.stderr, (
            bad.stderr[-2000:]
        )


@pytest.mark.parametrize(
    "corrupt", ["progress.json", "trainable.safetensors", "optimizer.safetensors"]
)
def test_a_corrupt_checkpoint_is_a_checkpoint_error_naming_it(model_dirs, tmp_path, corrupt):
    from sycointerp.spt.train import _load_checkpoint, _save_checkpoint

    model, _ = _load(model_dirs["llama"])
    deltas = HeadDeltas(model, HeadSet(((0, 1),), 2, 4))
    optimizer = torch.optim.AdamW(deltas.parameters(), lr=1e-3)
    key = {"global_batch": 4, "seed": 0}
    _save_checkpoint(tmp_path, deltas, optimizer, 3, [1.0, 0.5, 0.25], key)
    assert _load_checkpoint(tmp_path / "checkpoint", deltas, optimizer, key)[0] == 3
    (tmp_path / "checkpoint" / corrupt).write_bytes(b"\x00not a file of this kind")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'checkpoint'} is unreadable"):
        _load_checkpoint(tmp_path / "checkpoint", deltas, optimizer, key)


def test_a_refused_out_under_torchrun_stops_every_process(model_dirs, tmp_path):
    """The main process refuses --out; the other must not wait for it at a barrier."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("not a job")
    start = time.monotonic()
    run = _spt_cli(_spt_args(model_dirs["gpt2"], out, "--methods", "spt"), torchrun=2)
    assert run.returncode != 0 and time.monotonic() - start < 300
    assert run.stderr.count("holds no sycointerp job") == 2, run.stderr[-3000:]  # both ranks
    assert (out / "notes.txt").read_text() == "not a job" and len(list(out.iterdir())) == 1


def test_control_draws_match_size_layers_and_w_o_norms(model_dirs):
    from sycointerp.models import hook_model, load_hf_model
    from sycointerp.patching.controls import norm_matched_draws, w_o_norms
    from sycointerp.spt.methods import SPT_METHODS, control_heads
    from sycointerp.workflows.spt_config import method_runs

    for arch in ("llama", "gpt2"):
        model, tok, name = load_hf_model(model_dirs[arch])
        # The plain reference: each head's block of the output projection, by layout.
        d_head = model.config.hidden_size // model.config.num_attention_heads
        norms = w_o_norms(hook_model(model, tok, name))  # the one W_O norm, on the hooked model
        for layer in range(2):
            for head in range(4):
                cols = slice(head * d_head, (head + 1) * d_head)
                if arch == "llama":
                    block = model.model.layers[layer].self_attn.o_proj.weight[:, cols]
                else:  # Conv1D stores [in, out]: a head's inputs are rows
                    block = model.transformer.h[layer].attn.c_proj.weight[cols, :]
                assert float(norms[layer, head]) == pytest.approx(
                    float(block.detach().norm()), rel=1e-5
                )
        selected = HeadSet(((0, 1), (1, 2)), 2, 4, "top")
        runs = method_runs(["spt", "random", "random_layer", "random_norm"], 3)
        assert [r.name for r in runs][:3] == ["spt", "random-0", "random-1"]
        drawn = {
            r.name: control_heads(
                SPT_METHODS[r.method].control, selected, 5 + r.draw, lambda: norms
            )
            for r in runs
            if r.is_control
        }
        assert drawn["random-0"].heads == HeadSet.random(2, 2, 4, seed=5).heads
        for name, heads in drawn.items():
            assert len(heads) == 2, name
            if not name.startswith("random-"):  # uniform draws may hit selected heads (paper)
                assert not set(heads.heads) & set(selected.heads), name
        for d in range(3):
            layers = sorted(layer for layer, _ in drawn[f"random_layer-{d}"].heads)
            assert layers == [0, 1]
            # The norm match itself is tested in test_controls; here: the HF norms feed it.
            (expected,), _ = norm_matched_draws(selected.heads, norms, 1, seed=5 + d)
            assert drawn[f"random_norm-{d}"].heads == expected
        assert len({drawn[f"random_layer-{d}"].heads for d in range(3)}) > 1
    assert [r.name for r in method_runs(["random_norm"], 1)] == ["random_norm"]


def test_cli_runs_every_control_draw_and_pools_them(model_dirs, tmp_path):
    out = tmp_path / "run"
    extra = ["--methods", "spt,random_layer,random_norm", "--draws", "2", "--no-repatch"]
    run = _spt_cli(_spt_args(model_dirs["llama"], out, *extra))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    names = ["spt", "random_layer-0", "random_layer-1", "random_norm-0", "random_norm-1"]
    assert [r["method"] for r in report["rows"]] == names
    assert [r["draw"] for r in report["rows"]] == [0, 0, 1, 0, 1]
    heads = {n: json.loads((out / n / "heads.json").read_text())["heads"] for n in names}
    layers = lambda name: sorted(layer for layer, _ in heads[name])  # noqa: E731
    assert layers("random_layer-0") == layers("random_layer-1") == layers("spt")
    assert all(not set(map(tuple, heads[n])) & set(map(tuple, heads["spt"])) for n in names[1:])
    assert [(p["b"], p["draws"]) for p in report["pooled"]] == [
        ("random_layer", ["random_layer-0", "random_layer-1"]),
        ("random_norm", ["random_norm-0", "random_norm-1"]),
    ]
    assert "random_layer (pooled) | 2 |" in (out / "results.md").read_text()
    page = (out / "report.html").read_text()  # the run's report, with its tables
    assert "random_layer (pooled)" in page and 'id="fig-heads"' in page
    assert_opens_offline(out / "report.html", tmp_path / "shot.png")
    assert len(report["paired"]) == 4  # SPT against each draw as well


def test_choose_alpha_by_hand():
    from sycointerp.spt.steering_baselines import choose_alpha

    # Target 1.0: -2 and -4 reach it; the smaller in size wins.
    assert choose_alpha([-1.0, -2.0, -4.0], [1.5, 0.9, 0.2], 1.0) == -2.0
    # None reaches it: the lowest mean's alpha.
    assert choose_alpha([-1.0, -2.0, -4.0], [3.0, 2.0, 2.5], 1.0) == -2.0
    with pytest.raises(ValueError, match="one mean per alpha"):
        choose_alpha([-1.0], [], 0.0)


def test_cli_steering_baselines_run_without_training(model_dirs, tmp_path):
    out = tmp_path / "run"
    extra = ["--methods", "base,caa,iti", "--caa-alphas=-0.5,-2", "--iti-alphas=-1,-5"]
    run = _spt_cli(
        _spt_args(
            model_dirs["llama"],
            out,
            *extra,
            "--kl-text",
            str(REPO / "README.md"),
            "--kl-passages",
            "2",
        )
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    for method, alphas in (("caa", [-0.5, -2.0]), ("iti", [-1.0, -5.0])):
        record = rows[method]["steering"]
        assert record["alphas"] == alphas and record["alpha"] in alphas
        assert len(record["challenge_means"]) == 2 and "train" not in rows[method]
        assert not (out / method / "deltas.safetensors").exists()
    assert rows["caa"]["steering"]["layer"] == 1  # the middle of 2 blocks
    assert len(rows["iti"]["steering"]["heads"]) == rows["iti"]["heads"] == 2
    # The probe ranking is saved as a patch result and compared with the run's path ranking.
    from sycointerp.patching import PatchResult

    probe, path = PatchResult.load(out / "iti" / "probe"), PatchResult.load(out / "ranking")
    shared = set(probe.rank()[:2]) & set(path.rank()[:2])
    agreement = rows["iti"]["steering"]["agreement"]
    assert agreement["k"] == 2 and agreement["top_k_overlap"] == len(shared) / 2
    assert -1.0 <= agreement["spearman"] <= 1.0
    assert [list(h) for h in probe.rank()[:2]] == rows["iti"]["steering"]["heads"]
    assert rows["caa"]["kl"] > 0 and rows["base"]["kl"] == 0.0


def test_loss_tokens_counts_the_shifted_labels_that_carry_a_loss():
    # The first label is never predicted (the loss reads labels[1:]), so a label there is not
    # counted: 2 + 1 tokens here, not 4.
    a = TrainExample((1, 2, 3, 4), (7, -100, 8, 9), "a", "insist")
    b = TrainExample((1, 2, 3), (-100, -100, 5), "b", "revise")
    assert loss_tokens([a]) == 2 and loss_tokens([b]) == 1 and loss_tokens([a, b]) == 3
    assert loss_tokens([]) == 0
