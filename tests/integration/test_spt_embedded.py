"""SPT on the embedded SmolLM2-135M-Instruct: only the selected slices change; the tuned model
reloads."""

import torch
from transformers import AutoModelForCausalLM

from sycointerp.data import load_builtin
from sycointerp.heads import HeadSet
from sycointerp.models import hook_model, load_hf_model
from sycointerp.spt.data import build_dialogues, tokenize_dialogues
from sycointerp.spt.slices import expected_trainable
from sycointerp.spt.train import TrainConfig, train
from sycointerp.spt.tunable import HeadDeltas


def test_spt_on_smollm2_touches_only_the_selected_slices(tmp_path):
    model, tok, name = load_hf_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    heads = HeadSet(((14, 2), (18, 3), (18, 4)), 30, 9)  # 18.3 and 18.4 share KV head 1 of layer 18
    deltas = HeadDeltas(model, heads)
    assert (
        deltas.n_trainable() == expected_trainable(model.config, 3) == 3 * 2 * 576 * 64
    )  # GQA: W_Q, W_O
    examples = tokenize_dialogues(tok, build_dialogues(load_builtin()[:8]))
    report = train(
        model,
        deltas,
        examples,
        TrainConfig(steps=2, lr=1e-3, batch_size=4),
        pad_id=tok.pad_token_id,
    )
    assert all(torch.isfinite(torch.tensor(report.losses)))
    deltas.merge()
    names = {id(p): n for n, p in model.named_parameters()}
    touched = {}
    for s in deltas.slices:
        mask = touched.setdefault(
            names[id(s.module.weight)], torch.zeros_like(s.module.weight, dtype=torch.bool)
        )
        mask.narrow(s.dim, s.start, s.size).fill_(True)
    assert sorted(touched) == sorted(
        f"model.layers.{l}.self_attn.{p}.weight" for l in (14, 18) for p in ("q_proj", "o_proj")
    )
    for key, value in model.state_dict().items():
        mask = touched.get(key, torch.zeros_like(value, dtype=torch.bool))
        assert torch.equal(value[~mask], original[key][~mask]), key
        assert mask.sum() == 0 or not torch.equal(value[mask], original[key][mask]), key
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ids = torch.tensor([examples[0].input_ids])
    with torch.no_grad():
        tuned_logits = model(ids).logits
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
        assert torch.equal(reloaded(ids).logits, tuned_logits)
        hooked = hook_model(
            reloaded, tok, name
        )  # the tuned model as a hooked bridge, for patching/evaluation
        torch.testing.assert_close(hooked(ids), tuned_logits, atol=1e-4, rtol=0)
