"""The heads module: grids, validation, random draws, heads.csv with provenance, and its consumers.

Every consumer of a ``heads.csv`` (``HeadSet.from_csv``, SPT's ``--heads-file``, the knockout
job's ``--rank-from``) is tried with a ranking of another model's shape and with a ranking of KV
heads. The attention and ablation functions take plain lists of query heads (no file, so no kind
to check): they are tried with heads outside the model.
"""

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from sycointerp.data.pairs import build_pairs
from sycointerp.data.questions import load_builtin
from sycointerp.heads import (
    HEADS_CSV_COLUMNS,
    SAMPLE_COLUMNS,
    HeadFileError,
    HeadGrid,
    HeadSet,
    check_heads,
    draw_layer_matched,
    draw_random_heads,
    heads_by_layer,
    read_heads_csv,
    sample_columns,
    write_heads_csv,
)
from sycointerp.patching import PatchResult, ablate_heads, head_attention
from sycointerp.testing import save_tiny_model

GRID = HeadGrid(2, 4, 2, "tiny-llama")


def _table(heads: list[tuple[int, int]]) -> pd.DataFrame:
    rows = [
        {
            "layer": l,
            "head": h,
            "score": -1.0 / r,
            "se": 0.1,
            "ci_low": -2.0,
            "ci_high": 0.0,
            "rank": r,
        }
        for r, (l, h) in enumerate(heads, start=1)
    ]
    return pd.DataFrame(rows)


def _write(path: Path, grid: HeadGrid, kind: str = "query", heads=None) -> Path:
    heads = heads or [(1, 2), (0, 1), (1, 0)]
    write_heads_csv(path, _table(heads), grid, kind)
    return path


def test_grid_of_a_bridge_and_of_a_config(tiny_llama, tiny_gpt2):
    assert HeadGrid.of(tiny_llama).shape() == (2, 4, 2)
    assert HeadGrid.of(tiny_gpt2).shape() == (2, 4, 4)
    assert HeadGrid.of(tiny_llama.original_model).shape() == (2, 4, 2)
    assert GRID.describe() == "2 layers x 4 query heads (2 KV heads)"
    assert GRID.describe("kv") == "2 layers x 2 KV heads" and GRID.total("kv") == 4
    with pytest.raises(ValueError, match="do not split"):
        HeadGrid(2, 4, 3)
    with pytest.raises(ValueError, match="positive integer"):
        HeadGrid(0, 4, 4)


def test_check_heads_and_by_layer():
    assert check_heads([(1, 2), [0, 3]], GRID) == ((1, 2), (0, 3))
    assert heads_by_layer([(1, 2), (0, 3), (1, 0)], GRID) == {0: [3], 1: [2, 0]}
    assert check_heads([(1, 1)], GRID, "kv") == ((1, 1),)
    with pytest.raises(ValueError, match=r"head \(1, 2\) is out of range: .* 2 KV heads"):
        check_heads([(1, 2)], GRID, "kv")
    with pytest.raises(ValueError, match="listed twice"):
        check_heads([(0, 1), (0, 1)], GRID)
    with pytest.raises(ValueError, match="pair of integers"):
        check_heads([(0, 1.5)], GRID)


def test_uniform_draws_are_seeded_and_match_head_set_random():
    a = draw_random_heads(30, 9, [3, 11], 4, seed=2)
    assert a == draw_random_heads(30, 9, [3, 11], 4, seed=2) != draw_random_heads(30, 9, [3, 11], 4)
    assert [len(d) for d in a[1]] == [11] * 4 and all(len(set(d)) == len(d) for d in a[1])
    assert (
        draw_random_heads(30, 9, [11], 1, seed=5)[0][0] == HeadSet.random(11, 30, 9, seed=5).heads
    )


def test_layer_matched_draws_keep_the_layer_histogram():
    selected = [(18, 3), (17, 2), (21, 1), (18, 4), (25, 1)]
    grid = HeadGrid(30, 9, 3)
    draws = draw_layer_matched(selected, grid, 6, seed=0)
    hist = Counter(l for l, _ in selected)
    for draw in draws:
        assert Counter(l for l, _ in draw) == hist
        assert not set(draw) & set(selected)  # every layer has enough other heads here
    assert len(set(draws)) > 1 and draws == draw_layer_matched(selected, grid, 6, seed=0)
    # A layer with more selected heads than others: all the others, then selected ones.
    crowded = [(0, h) for h in range(3)]
    (draw,) = draw_layer_matched(crowded, HeadGrid(1, 4, 4), 1, seed=0)
    assert len(draw) == 3 and (0, 3) in draw
    matched = HeadSet.layer_matched(HeadSet(tuple(selected), 30, 9), seed=1)
    assert Counter(l for l, _ in matched.heads) == hist and "layer-matched" in matched.source


def test_heads_csv_round_trip_with_provenance(tmp_path):
    path = _write(tmp_path / "heads.csv", GRID)
    assert pd.read_csv(path).columns.tolist() == HEADS_CSV_COLUMNS
    ranking = read_heads_csv(path)
    assert ranking.heads == ((1, 2), (0, 1), (1, 0)) and ranking.kind == "query"
    assert ranking.grid == GRID and ranking.top(2) == ((1, 2), (0, 1))
    assert ranking.require(HeadGrid(2, 4, 2, "renamed")) is ranking  # names may differ
    with pytest.raises(HeadFileError, match="K must be in"):
        ranking.top(4)


def test_extra_columns_are_kept_after_the_schema(tmp_path):
    table = _table([(0, 1), (1, 1)]).assign(rank_ci_low=[1, 1], rank_ci_high=[2, 2])
    write_heads_csv(tmp_path / "h.csv", table, GRID, "query")
    columns = pd.read_csv(tmp_path / "h.csv").columns.tolist()
    assert columns == HEADS_CSV_COLUMNS + ["rank_ci_low", "rank_ci_high"]


@pytest.mark.parametrize(("n", "small"), [(4, True), (19, True), (20, False), (40, False)])
def test_sample_columns_mark_a_ranking_of_few_examples(tmp_path, n, small):
    table = _table([(0, 1), (1, 1)]).assign(**sample_columns(n))
    write_heads_csv(tmp_path / "h.csv", table, GRID, "query")
    read = pd.read_csv(tmp_path / "h.csv")
    assert read.columns.tolist() == HEADS_CSV_COLUMNS + SAMPLE_COLUMNS
    assert read["n"].tolist() == [n, n] and read["small"].tolist() == [small, small]
    assert read_heads_csv(tmp_path / "h.csv").table["small"].tolist() == [small, small]


def test_sample_columns_refuse_a_ranking_of_no_examples():
    with pytest.raises(ValueError, match="at least one example"):
        sample_columns(0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layer,head\n0,1\n", "needs rows and the columns layer, head, rank"),
        ("layer,head,rank\n0,1,1\n", "does not record which model"),
        (
            "layer,head,rank,kind,model,n_layers,n_heads,n_kv_heads\n0,1,x,query,m,2,4,2\n",
            "column 'rank' must hold integers; row 2",
        ),
        (
            "layer,head,rank,kind,model,n_layers,n_heads,n_kv_heads\n0,1,1,query,m,2,4,2\n0,1,2,query,m,2,4,2\n",
            "listed twice",
        ),
        (
            "layer,head,rank,kind,model,n_layers,n_heads,n_kv_heads\n0,1,1,query,m,2,4,2\n0,2,1,query,m,2,4,2\n",
            "a rank is listed twice",
        ),
        (
            "layer,head,rank,kind,model,n_layers,n_heads,n_kv_heads\n5,1,1,query,m,2,4,2\n",
            "out of range",
        ),
        (
            "layer,head,rank,kind,model,n_layers,n_heads,n_kv_heads\n0,1,1,query,m,2,4,2\n1,1,2,query,m,3,4,2\n",
            "must be the same on every row",
        ),
        (
            "layer,head,rank,kind,model,n_layers,n_heads,n_kv_heads\n0,1,1,value,m,2,4,2\n",
            "kind must be one of",
        ),
    ],
)
def test_malformed_heads_files_are_refused(tmp_path, text, message):
    path = tmp_path / "heads.csv"
    path.write_text(text)
    with pytest.raises(HeadFileError, match=message):
        read_heads_csv(path)


def test_unreadable_heads_files_are_refused(tmp_path):
    with pytest.raises(HeadFileError, match="does not exist"):
        read_heads_csv(tmp_path / "none.csv")
    (tmp_path / "latin1.csv").write_bytes("layer,head,rank\n0,1,1\n\xe9\n".encode("latin-1"))
    with pytest.raises(HeadFileError, match="cannot read heads file"):
        read_heads_csv(tmp_path / "latin1.csv")


# --------------------------------------------------------------------------- consumers


def test_head_set_from_csv_refuses_another_model_and_kv_heads(tmp_path):
    other = _write(tmp_path / "other.csv", HeadGrid(30, 9, 3, "SmolLM2"))
    with pytest.raises(
        HeadFileError, match=r"30 layers x 9 query heads .* this model has 2 layers x 4"
    ):
        HeadSet.from_csv(other, 2, GRID)
    kv = _write(tmp_path / "kv.csv", GRID, "kv", heads=[(1, 1), (0, 0)])
    with pytest.raises(HeadFileError, match="ranks kv heads .* but query heads are needed"):
        HeadSet.from_csv(kv, 2, GRID)
    assert HeadSet.from_csv(_write(tmp_path / "ok.csv", GRID), 2, GRID).heads == ((0, 1), (1, 2))


def test_a_kv_patch_result_writes_a_kv_ranking(tmp_path):
    kv = PatchResult(
        torch.randn(2, 2, 3),
        torch.ones(3),
        torch.ones(3),
        "activation/k",
        "flip",
        False,
        meta={"model": "m", "grid": {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2}},
        components=("layer", "kv_head"),
    )
    kv.save(tmp_path)
    ranking = read_heads_csv(tmp_path / "heads.csv")
    assert ranking.kind == "kv" and ranking.grid.shape() == (2, 4, 2)
    with pytest.raises(HeadFileError, match="ranks kv heads"):
        HeadSet.from_csv(tmp_path / "heads.csv", 2, GRID)


def test_a_result_without_a_recorded_grid_writes_no_heads_csv(tmp_path):
    bare = PatchResult(torch.zeros(2, 4, 1), torch.ones(1), torch.ones(1), "t", "m", True)
    bare.save(tmp_path)
    assert not (tmp_path / "heads.csv").exists() and (tmp_path / "result.json").is_file()


def test_head_lists_are_checked_against_the_model(tiny_llama):
    pair = build_pairs(load_builtin()[:1], tiny_llama.tokenizer, position="reply")[0]
    with pytest.raises(ValueError, match=r"head \(7, 0\) is out of range"):
        head_attention(tiny_llama, pair, [(7, 0)])
    with pytest.raises(ValueError, match=r"head \(0, 4\) is out of range"):
        with ablate_heads(tiny_llama, [(0, 4)], method="zero"):
            pass


def _cli(module: str, *args: str) -> tuple[int, str]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", *module.split(), *args], capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stderr


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.mark.parametrize("kind", ["other-model", "kv"])
def test_cli_consumers_exit_2_on_a_foreign_ranking(model_dir, tmp_path, kind):
    path = (
        _write(tmp_path / "heads.csv", HeadGrid(30, 9, 3, "SmolLM2"))
        if kind == "other-model"
        else _write(tmp_path / "heads.csv", GRID, "kv", heads=[(1, 1), (0, 0)])
    )
    expected = "was made on a model with 30 layers" if kind == "other-model" else "ranks kv heads"
    common = ["--model", str(model_dir), "--limit", "4", "-q"]
    code, err = _cli(
        "sycointerp.patch",
        *common,
        "--method",
        "knockout",
        "--ks",
        "0,1",
        "--no-png",
        "--rank-from",
        str(path),
        "--out",
        str(tmp_path / "ko"),
    )
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    code, err = _cli(
        "sycointerp spt",
        *common,
        "--heads-file",
        str(path),
        "--top-k",
        "1",
        "--methods",
        "spt",
        "--out",
        str(tmp_path / "spt"),
    )
    assert code == 2 and err.count("\n") == 1 and expected in err, err
