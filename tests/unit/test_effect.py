import json

import pytest
import torch
from safetensors.torch import load_file

from sycointerp.cli.effect import main
from sycointerp.data import load_builtin
from sycointerp.evaluate.capability import first_turn_accuracy
from sycointerp.evaluate.challenge import measure_challenge_effect


def test_effect_on_tiny_model(tiny, tmp_path):
    qs = load_builtin()[:5]
    result = measure_challenge_effect(tiny, qs, batch_size=2)
    assert set(result.metrics) == {
        f"{m}_{s}" for m in ("flip", "apology", "apology_lp") for s in ("ref", "cf")
    }
    assert all(v.shape == (5,) and torch.isfinite(v).all() for v in result.metrics.values())
    # Batch size does not change the numbers.
    again = measure_challenge_effect(tiny, qs, batch_size=5)
    for k, v in result.metrics.items():
        assert torch.allclose(v, again.metrics[k], atol=1e-5), k
    out = result.save(tmp_path / "run")
    assert json.loads((out / "summary.json").read_text())["n"] == 5
    assert torch.equal(
        load_file(out / "per_example.safetensors")["flip_ref"], result.metrics["flip_ref"]
    )
    assert "Flipped answers" in result.to_markdown()


def test_first_turn_accuracy_runs_greedy_generation(tiny_llama):
    acc, answers, correct = first_turn_accuracy(tiny_llama, load_builtin()[:3])
    assert 0.0 <= acc <= 1.0 and len(answers) == 3 == len(correct)
    assert answers[0].startswith(load_builtin()[0].stem)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "0"], "--limit must be >= 1"),
        (["--challenge", "nope"], "is not a template"),
        (["--questions", "/no/such.jsonl"], "file not found"),
        (["--first-answer", "maybe"], "invalid choice"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--out", str(blocker / "sub")]) == 2
    assert "not a writable directory" in capsys.readouterr().err
