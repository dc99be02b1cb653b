"""The Python code of the README and the manual runs, unchanged, on the embedded model.

The ``python`` snippets of the manual's pages (in :data:`PAGES`' order, the order they build on
each other's names) and of the README run as one script. Everything is written at small sizes
(16-40 questions, 2-8 training steps) so that it runs as it stands. The script runs in a fresh
directory (its ``runs/`` outputs land there) where ``data`` points at the shared data folder, the
layout the evaluation snippet names. Each snippet's visible output is checked, so a snippet that
ends in a bare expression (printing nothing as a script) fails here.

Shell commands, the ``py`` blocks that name a hub model, job files and records run in
:mod:`tests.integration.test_manual_commands`, at capped sizes;
:func:`test_every_python_block_is_run_here` keeps ``python`` fences to the pages listed here, so
a new snippet cannot escape both tests.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# The pages with ``python`` snippets, in the order the snippets build on each other.
PAGES = [
    "docs/getting-started.md",
    "docs/results/head-ranking.md",
    "docs/tutorials/evaluation.md",
    "docs/tutorials/spt.md",
    "README.md",
]


def snippets() -> list[str]:
    return [s for page in PAGES for s in FENCE.findall((ROOT / page).read_text(encoding="utf-8"))]


def test_the_snippets_are_found_in_order():
    firsts = [s.splitlines()[0].split(" import ")[0] for s in snippets()]
    assert firsts == [
        "import sycointerp as si",
        "from sycointerp.patching",
        "from pathlib",
        "from sycointerp.evaluate",
        "from sycointerp.probing",
        "from sycointerp.workflows",
    ]


def test_every_python_block_is_run_here():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    with_python = {str(p.relative_to(ROOT)) for p in pages if FENCE.search(p.read_text())}
    assert with_python <= set(PAGES), sorted(with_python - set(PAGES))


def test_snippets_run(tmp_path):
    # Skips (with the reason) on a clone without the shared data, which the evaluation needs.
    data = shared_file("arc-easy", "ARC-Easy-Test.jsonl").parents[1]
    for part in (
        ("anthropic-sycophancy", "sycophancy_on_nlp_survey.jsonl"),
        ("wikitext-2", "test.txt"),
    ):
        shared_file(*part)
    (tmp_path / "data").symlink_to(data)
    script = tmp_path / "snippets.py"
    script.write_text("\n\n".join(snippets()), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    # One visible result per snippet: the prompt, the tables, the evaluations, KL, steering.
    assert "Are you sure?" in out and "apology_lp" in out  # the prompt; the effect table
    assert "rank" in out and "ci_low" in out  # the heads table
    assert out.count("Sycophancy evaluation of") == 2  # base and tuned
    assert "Stances of" in out and "| discrimination |" in out  # both stances, 3 rounds
    assert "\nTrue\n" in out  # the cached and the reference engines wrote the same dialogues
    kl_line = next(line for line in out.splitlines() if line.startswith("KL(base || tuned) = "))
    assert kl_line.count("[") == 1 and "nats per token" in kl_line, kl_line  # with its interval
    assert (tmp_path / "runs" / "heads" / "heads.csv").is_file()
    assert (tmp_path / "runs" / "eval").is_dir() and (tmp_path / "runs" / "tuned").is_dir()
    lines = out.strip().splitlines()
    last = lines[-3]
    assert last.count("[") == 2, last  # CAA's and ITI's Confidence, each with its interval
    # The workflows from Python: the ranking's top five heads, SPT's Confidence with its interval.
    assert lines[-2].startswith("((") and lines[-2].count("(") == 6, lines[-2]
    assert "ci_low" in lines[-1] and "ci_high" in lines[-1], lines[-1]


@pytest.mark.parametrize("snippet", range(6))
def test_each_snippet_compiles(snippet):
    compile(snippets()[snippet], f"snippet {snippet + 1}", "exec")
