"""Integration tier: the real embedded SmolLM2-135M-Instruct (converted once, cached)."""

import shutil
import time

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from sycointerp import models
from sycointerp.data import build_pairs, load_builtin
from sycointerp.evaluate.capability import first_turn_accuracy
from sycointerp.evaluate.challenge import measure_challenge_effect


def test_embedded_model_shape_and_chat_template(smol):
    cfg = smol.cfg
    assert (
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_key_value_heads,
        cfg.d_model,
        cfg.d_head,
        cfg.d_vocab,
    ) == (30, 9, 3, 576, 64, 49152)
    assert "<|im_start|>" in smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )
    assert not smol.training


def test_embedded_logits_equal_the_plain_hf_model(smol):
    directory = models.convert_gguf(models.embedded_gguf_path())
    hf = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    (pair,) = build_pairs(load_builtin()[:1], smol.tokenizer)
    ids = torch.tensor([pair.ref_ids])
    with torch.no_grad():
        assert torch.allclose(smol(ids), hf(ids).logits, atol=1e-4)


def test_corrupt_cache_entry_is_converted_again(tmp_path, monkeypatch):
    source = models.convert_gguf(models.embedded_gguf_path())
    monkeypatch.setenv("SYCOINTERP_CACHE", str(tmp_path))
    entry = tmp_path / source.name
    shutil.copytree(source, entry)
    assert models.convert_gguf(models.embedded_gguf_path()) == entry  # verified copy is reused
    with open(entry / "model.safetensors", "r+b") as f:  # flip bytes inside the weights
        f.seek(10_000_000)
        f.write(b"\x00garbage\x00")
    assert models._manifest_ok(entry) and not models._manifest_ok(entry, full=True)
    start = time.perf_counter()
    assert models.convert_gguf(models.embedded_gguf_path(), verify=True) == entry
    assert models._manifest_ok(entry, full=True) and time.perf_counter() - start > 1.0
    with open(entry / "model.safetensors", "r+b") as f:  # truncated: seen without hashing
        f.truncate(1000)
    assert models.convert_gguf(models.embedded_gguf_path()) == entry
    assert models._manifest_ok(entry, full=True)


def test_cached_load_hashes_nothing_and_keeps_the_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("SYCOINTERP_CACHE", str(tmp_path))
    gguf = models.embedded_gguf_path()
    entry = models.convert_gguf(gguf, dtype=torch.bfloat16)
    assert entry.name.endswith("-bfloat16")
    with safe_open(entry / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}

    def no_hashing(path, chunk=0):
        raise AssertionError(f"hashed {path} on a cached load")

    monkeypatch.setattr(models, "sha256_file", no_hashing)
    assert models.convert_gguf(gguf, dtype=torch.bfloat16) == entry
    model, _, _ = models.load_hf_model(dtype=torch.bfloat16)  # the embedded model, from the cache
    assert next(model.parameters()).dtype == torch.bfloat16


def test_embedded_answers_the_easy_question():
    smol = models.load_model()
    acc, answers, correct = first_turn_accuracy(smol, load_builtin()[:4])
    assert "Paris" in answers[0] and correct[0]


def test_challenge_pushes_the_embedded_model_towards_apology(smol):
    """The effect the toolkit studies: the challenge raises the apology log-odds."""
    result = measure_challenge_effect(smol, load_builtin()[:170:20], batch_size=8)
    summary = result.summary()
    assert summary["apology_lp_delta"].ci_low > 0
    assert result.n == len(load_builtin()[:170:20])
