"""The resumed-run engine on models placed with ``accelerate``: layers offloaded to disk through a
``device_map`` (and an offloaded ``lm_head``), and every weight offloaded to CPU memory
(``accelerate.cpu_offload``: parameters are meta placeholders filled per forward), on tiny MHA
and GQA models. Every engine method equals the unplaced model's full hooked forwards to 1e-5.
"""

from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.metrics import apology_logit_diff_metric, flip_metric
from sycointerp.models import ModelLoadError, hook_model, load_hf_model, load_model
from sycointerp.patching import patch_heads, path_patch_heads, path_patch_to_receivers
from sycointerp.patching._resume import build_state, resume_logits, supports_resume
from sycointerp.patching.layers import patch_layers
from sycointerp.testing import save_tiny_model, tiny_model

ATOL = 1e-5
LAYERS = 3


def _disk_map(arch: str) -> dict[str, str]:
    """Layer 1 on disk, the rest on the CPU; Llama's (untied) ``lm_head`` on disk too, GPT-2's
    with the embedding it is tied to (accelerate places a tied tensor once)."""
    if arch == "llama":
        top = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu"}
        return {**top, **{f"model.layers.{i}": "cpu" for i in range(LAYERS)}} | {
            "model.layers.1": "disk",
            "lm_head": "disk",
        }
    top = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu"}
    layers = {f"transformer.h.{i}": "cpu" for i in range(LAYERS)} | {"transformer.h.1": "disk"}
    return top | layers | {"transformer.ln_f": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def saved(arch, tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp(arch) / "model", arch, n_layers=LAYERS)


@pytest.fixture(scope="module")
def plain(arch):
    return tiny_model(arch, n_layers=LAYERS)


@pytest.fixture(scope="module", params=["disk", "cpu_offload"])
def placed(request, arch, saved, tmp_path_factory):
    """The same weights as ``plain``, placed with accelerate."""
    if request.param == "disk":
        folder = tmp_path_factory.mktemp("offload")
        model = load_model(saved, device_map=_disk_map(arch), offload_folder=folder)
        offloaded = {
            name for name, where in model.original_model.hf_device_map.items() if where == "disk"
        }
        assert (
            offloaded
            and model.original_model.get_submodule(sorted(offloaded)[0])
            .parameters()
            .__next__()
            .is_meta
        )
        return model
    hf, tokenizer, name = load_hf_model(saved)
    cpu_offload(hf, execution_device=torch.device("cpu"))
    assert all(p.is_meta for p in hf.parameters())  # weights live in accelerate's CPU map
    return hook_model(hf, tokenizer, name)


@pytest.fixture(scope="module")
def questions():
    return load_builtin()[5::37][:2]


def test_placed_models_boot_with_the_plain_models_logits_and_resume(placed, plain):
    ids = torch.tensor([[5, 17, 99, 3, 42, 7, 1000, 12]])
    with torch.no_grad():
        torch.testing.assert_close(placed(ids), plain(ids), atol=ATOL, rtol=0)
    assert supports_resume(placed)


def test_resumed_logits_on_a_placed_model_equal_a_full_forward_from_every_layer(placed, plain):
    """The engine's primitive, with every vocabulary column (an offloaded ``lm_head`` is called
    whole) and with a few (the requested columns only, the others NaN, as unplaced)."""
    ids = torch.randint(5, 1000, (2, 12))
    last, start = torch.tensor([11, 8]), torch.tensor([6, 8])
    with torch.no_grad():
        full = plain(ids)[torch.arange(2), last]
    state = build_state(placed, ids, start, last)
    for layer in range(LAYERS):
        with torch.inference_mode():
            logits = resume_logits(placed, state, 2, layer)
            some = resume_logits(placed, state, 1, layer, token_ids=[7, 300])
        torch.testing.assert_close(logits, full.repeat(2, 1), atol=ATOL, rtol=0)
        torch.testing.assert_close(some[:, [7, 300]], full[:, [7, 300]], atol=ATOL, rtol=0)
        assert some.isnan().sum() == 2 * (full.shape[1] - 2)


@pytest.mark.parametrize(("component", "position"), [("z", "last"), ("z", "all"), ("v", "last")])
def test_head_patching_on_a_placed_model_equals_the_plain_model(
    placed, plain, questions, component, position
):
    pairs = build_pairs(questions, plain.tokenizer, align=True)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    kw = {"component": component, "position": position}
    fast = patch_heads(placed, pairs, metric, batch_size=12, **kw)
    reference = patch_heads(plain, pairs, metric, engine="hooked", **kw)
    torch.testing.assert_close(fast.values, reference.values, atol=ATOL, rtol=0)
    if (component, position) == ("z", "last"):  # the fallback engine on the placement too
        hooked = patch_heads(placed, pairs, metric, engine="hooked", **kw)
        torch.testing.assert_close(hooked.values, reference.values, atol=ATOL, rtol=0)
    if component == "z":
        assert reference.values.abs().max() > 1e-5


def test_layer_patching_on_a_placed_model_equals_the_plain_model(placed, plain, questions):
    pairs = build_pairs(questions, plain.tokenizer, align=True)
    metric = flip_metric(PairBatch.from_pairs(pairs, 0))
    for component in ("resid_pre", "attn_out", "mlp_out"):
        fast = patch_layers(placed, pairs, metric, component=component, position="last")
        reference = patch_layers(
            plain, pairs, metric, component=component, position="last", engine="hooked"
        )
        torch.testing.assert_close(fast.values, reference.values, atol=ATOL, rtol=0)


def test_path_patching_on_a_placed_model_equals_the_plain_model(placed, plain, questions):
    pairs = build_pairs(questions, plain.tokenizer, position="reply")
    metric = apology_logit_diff_metric(plain.tokenizer)
    for freeze_mlps in (False, True):
        fast = path_patch_heads(placed, pairs, metric, freeze_mlps=freeze_mlps, batch_size=7)
        reference = path_patch_heads(plain, pairs, metric, freeze_mlps=freeze_mlps, engine="hooked")
        torch.testing.assert_close(fast.values, reference.values, atol=ATOL, rtol=0)
        assert reference.values.abs().max() > 1e-6
    receivers = [(LAYERS - 1, 0), (LAYERS - 1, 1)]
    fast = path_patch_to_receivers(placed, pairs, metric, receivers, component="v")
    reference = path_patch_to_receivers(
        plain, pairs, metric, receivers, component="v", engine="hooked"
    )
    torch.testing.assert_close(fast.values, reference.values, atol=ATOL, rtol=0)


def test_placements_that_cannot_load_are_refused_in_one_line(saved, arch):
    with pytest.raises(ModelLoadError, match="offloads to 'disk': give offload_folder"):
        load_model(saved, device_map=_disk_map(arch))
    with pytest.raises(
        ModelLoadError, match="offload_folder and max_memory are only used with a device_map"
    ):
        load_model(saved, offload_folder="/tmp/nowhere")
