"""Every model family (``sycointerp.testing.families``): patching and SPT head slicing against plain
references.

Test names are read by ``scripts/support_table.py``: each support-table cell is the outcome of the
tests named for it there (``CELL_TESTS``), parametrized by family. Renaming a test here means
renaming it there (``tests/unit/test_support_table.py`` checks that every named test exists).
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.heads import HeadSet, attention_dims
from sycointerp.metrics import apology_logit_diff_metric, flip_metric
from sycointerp.models import embedded_tokenizer
from sycointerp.patching import patch_head_outputs, path_patch_heads, path_patch_to_receivers
from sycointerp.patching._engine import run_cells
from sycointerp.patching._resume import supports_resume
from sycointerp.spt.data import build_dialogues, tokenize_dialogues
from sycointerp.spt.slices import UnsupportedArchitecture, head_slices
from sycointerp.spt.train import TrainConfig, train
from sycointerp.spt.tunable import HeadDeltas
from sycointerp.testing.families import (
    FAMILIES,
    tiny_family_config,
    tiny_family_hf,
    tiny_family_model,
)
from tests.reference import reference_activation, reference_path

ATOL = 1e-5


def _families(capability: str, refused: bool = False) -> list[str]:
    return [name for name, fam in FAMILIES.items() if (capability in fam.refuses) == refused]


@pytest.fixture(scope="module")
def questions():
    return [load_builtin()[0], load_builtin()[130]]


@pytest.fixture(scope="module")
def bridges():
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = tiny_family_model(family)
        return cache[family]

    return get


# --------------------------------------------------------------------------- patching


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_boots_with_hf_numerics(bridges, family):
    """The bridge's logits are the HuggingFace model's, and the resume engine is chosen as
    registered."""
    model = bridges(family)
    ids = torch.tensor(
        [[5, 17, 99, 3, 42, 7, 1000, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]]
    )
    with torch.no_grad():
        assert torch.allclose(model(ids), tiny_family_hf(family)(ids).logits, atol=ATOL)
    assert supports_resume(model) == FAMILIES[family].resumable


@pytest.mark.parametrize("family", _families("patching"))
def test_head_patching_equals_plain_reference(bridges, questions, family):
    """All-position and last-position hook_z patching: fast path == one forward per head;
    auto == hooked."""
    model = bridges(family)
    pairs = build_pairs(questions, model.tokenizer, align=True)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    for position in ("all", "last"):
        fast = patch_head_outputs(model, pairs, metric, position=position, batch_size=6)
        hooked = patch_head_outputs(model, pairs, metric, position=position, engine="hooked")
        ref = reference_activation(model, pairs, "z", position, "denoise")[:, :, 0]
        assert torch.allclose(fast.values, ref, atol=ATOL), position
        assert torch.allclose(fast.values, hooked.values, atol=ATOL), position
        assert fast.values.abs().max() > 1e-4


@pytest.mark.parametrize("family", _families("path"))
def test_path_patching_equals_plain_reference(bridges, questions, family):
    model = bridges(family)
    pairs = build_pairs(questions, model.tokenizer, position="reply")
    metric = apology_logit_diff_metric(model.tokenizer)
    fast = path_patch_heads(model, pairs, metric, batch_size=5)
    hooked = path_patch_heads(model, pairs, metric, engine="hooked")
    ref = reference_path(model, pairs, "apology", False)
    assert torch.allclose(fast.values, ref, atol=ATOL)
    assert torch.allclose(fast.values, hooked.values, atol=ATOL)


@pytest.mark.parametrize("family", [f for f, fam in FAMILIES.items() if not fam.resumable])
def test_resumed_runs_refuse_naming_the_family_and_reason(bridges, family):
    model = bridges(family)
    ids = torch.randint(5, 1000, (1, 6))
    metric = flip_metric(PairBatch.from_pairs(build_pairs(load_builtin()[:1], model.tokenizer), 0))
    with pytest.raises(
        ValueError, match=rf"model type '{family}'\): .+; use engine='hooked'"
    ) as err:
        run_cells(
            model,
            ids,
            torch.tensor([5]),
            1,
            lambda c, v: [],
            metric,
            4,
            start=torch.tensor([5]),
            engine="resume",
        )
    if family == "gemma2":  # the numerical reason, not only "not in the allowlist"
        assert "soft-capped" in str(err.value)


@pytest.mark.parametrize("family", _families("path", refused=True))
def test_path_patching_refuses_naming_the_family_and_reason(bridges, questions, family):
    model = bridges(family)
    pairs = build_pairs(questions, model.tokenizer, position="reply")
    metric = apology_logit_diff_metric(model.tokenizer)
    with pytest.raises(
        ValueError, match=rf"ln1\.hook_in.*model type '{family}' has no blocks\.0\.ln1\.hook_in"
    ):
        path_patch_heads(model, pairs, metric)
    with pytest.raises(ValueError, match=rf"model type '{family}' has no blocks\.0\.ln1\.hook_in"):
        path_patch_to_receivers(model, pairs, metric, [(1, 0)])


# --------------------------------------------------------------------------- SPT slices


def _o_module(model, layer: int) -> torch.nn.Module:
    (o,) = [
        s
        for s in head_slices(model, HeadSet(((layer, 0),), *_grid(model)), tune_kv=False)
        if s.role == "o"
    ]
    return o.module


def _grid(model) -> tuple[int, int]:
    n_layers, n_heads, *_ = attention_dims(model.config)
    return n_layers, n_heads


def _z_and_out(model, ids, module) -> tuple[torch.Tensor, torch.Tensor]:
    """The output projection's input (every head's z side by side) and output."""
    seen = {}
    handle = module.register_forward_hook(
        lambda m, args, out: seen.update(z=args[0].clone(), y=out.clone())
    )
    with torch.no_grad():
        model(ids)
    handle.remove()
    return seen["z"], seen["y"]


@pytest.mark.parametrize("family", _families("spt"))
def test_spt_slices_change_only_their_heads(family):
    """Perturbing a q slice changes only its head's z; k/v only their KV group's; o only its head's
    output contribution (z unchanged, output change = z_head @ delta)."""
    model = tiny_family_hf(family)
    _, n_heads, n_kv, _, d_head = attention_dims(model.config)
    group = n_heads // n_kv
    ids = torch.tensor(
        [
            [
                5,
                17,
                99,
                3,
                42,
                7,
                1000,
                12,
                300,
                301,
                302,
                303,
                304,
                305,
                306,
                307,
                308,
                309,
                310,
                311,
            ]
        ]
    )
    layer, head = 1, n_heads - 1
    module = _o_module(model, layer)
    z0, y0 = _z_and_out(model, ids, module)
    gen = torch.Generator().manual_seed(0)
    for s in head_slices(model, HeadSet(((layer, head),), *_grid(model)), tune_kv=True):
        saved = s.view().clone()
        delta = torch.randn(s.shape, generator=gen)
        with torch.no_grad():
            s.view().add_(delta)
        z, y = _z_and_out(model, ids, module)
        with torch.no_grad():
            s.view().copy_(saved)
        changed = [
            h
            for h in range(n_heads)
            if not torch.equal(
                z[..., h * d_head : (h + 1) * d_head], z0[..., h * d_head : (h + 1) * d_head]
            )
        ]
        if s.role == "q":
            assert changed == [head], s
        elif s.role in ("k", "v"):
            assert s.index == head // group and changed == list(
                range(s.index * group, (s.index + 1) * group)
            ), s
        else:
            z_head = z0[..., head * d_head : (head + 1) * d_head]
            assert changed == []
            torch.testing.assert_close(
                y - y0, z_head @ (delta if s.conv1d else delta.T), atol=1e-5, rtol=1e-5
            )
    default = sorted(s.role for s in head_slices(model, HeadSet(((layer, head),), *_grid(model))))
    assert default == (
        ["o", "q"] if n_kv < n_heads else ["k", "o", "q", "v"]
    )  # GQA: W_Q and W_O only


@pytest.mark.parametrize("family", _families("spt", refused=True))
def test_spt_slicing_refuses_naming_the_family_and_reason(family):
    model = tiny_family_hf(family)
    with pytest.raises(UnsupportedArchitecture, match=rf"'{family}'.*across all .*heads"):
        head_slices(model, HeadSet(((0, 0),), *_grid(model)))


def test_olmo2_refusal_is_needed():
    """OLMo 2's whole-width q_norm: one head's W_Q rows move every head's z (what slicing would
    hide)."""
    model = tiny_family_hf("olmo2")
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    attn = model.model.layers[0].self_attn
    z0, _ = _z_and_out(model, ids, attn.o_proj)
    with torch.no_grad():
        attn.q_proj.weight[:16].add_(1.0)  # head 0's query rows only
    z, _ = _z_and_out(model, ids, attn.o_proj)
    assert all(
        not torch.equal(z[..., h * 16 : (h + 1) * 16], z0[..., h * 16 : (h + 1) * 16])
        for h in range(4)
    )


@pytest.fixture(scope="module")
def examples():
    return tokenize_dialogues(embedded_tokenizer(), build_dialogues(load_builtin()[:3]))


@pytest.fixture(scope="module")
def tuned(examples, tmp_path_factory):
    """Per family: (original state, SPT-trained merged model, its slices, its save directory)."""
    cache = {}

    def get(family: str):
        if family not in cache:
            model = tiny_family_hf(family)
            original = {k: v.clone() for k, v in model.state_dict().items()}
            n_layers, n_heads = _grid(model)
            deltas = HeadDeltas(
                model, HeadSet(((0, 1), (n_layers - 1, n_heads - 1)), n_layers, n_heads)
            )
            train(
                model,
                deltas,
                examples,
                TrainConfig(steps=2, lr=1e-2, batch_size=3),
                pad_id=embedded_tokenizer().pad_token_id,
            )
            deltas.merge()
            directory = tmp_path_factory.mktemp(family)
            model.save_pretrained(directory)
            cache[family] = (original, model, deltas.slices, directory)
        return cache[family]

    return get


@pytest.mark.parametrize("family", _families("spt"))
def test_spt_training_leaves_every_other_parameter_bit_identical(tuned, family):
    original, model, slices, _ = tuned(family)
    mask = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in original.items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for s in slices:
        mask[names[id(s.module.weight)]].narrow(s.dim, s.start, s.size).fill_(True)
    assert any(m.any() for m in mask.values())
    for name, value in model.state_dict().items():
        assert torch.equal(value[~mask[name]], original[name][~mask[name]]), name
        assert torch.equal(value[mask[name]], original[name][mask[name]]) == (
            not mask[name].any()
        ), name


@pytest.mark.parametrize("family", _families("spt"))
def test_spt_tuned_model_reloads_with_plain_transformers(tuned, examples, family):
    _, model, _, directory = tuned(family)
    reloaded = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    assert (
        type(reloaded) is type(model)
        and reloaded.config.model_type == tiny_family_config(family).model_type
    )
    ids = torch.tensor([examples[0].input_ids])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
