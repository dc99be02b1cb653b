"""The README's Python snippets run, unchanged and in order, as one script on the embedded model.

The snippets are written at small sizes (24-40 questions, 8 training steps) so that they run as
they stand; the batch jobs produce the README's tables. The script runs in a fresh directory
(its ``runs/`` outputs land there) where ``data`` points at the shared data folder, the layout
the evaluation snippet names. Each snippet's visible output is checked, so a snippet that ends
in a bare expression (printing nothing as a script) fails here.
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


def readme_snippets() -> list[str]:
    return FENCE.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_has_the_six_snippets_in_order():
    snippets = readme_snippets()
    firsts = [s.splitlines()[0].split(" import ")[0] for s in snippets]
    assert firsts == [
        "import sycointerp as si",
        "from sycointerp.patching",
        "from pathlib",
        "from sycointerp.evaluate",
        "from sycointerp.probing",
        "from sycointerp.workflows",
    ]


def test_readme_snippets_run_as_one_script(tmp_path):
    # Skips (with the reason) on a clone without the shared data, which the evaluation needs.
    data = shared_file("arc-easy", "ARC-Easy-Test.jsonl").parents[1]
    for part in (
        ("anthropic-sycophancy", "sycophancy_on_nlp_survey.jsonl"),
        ("wikitext-2", "test.txt"),
    ):
        shared_file(*part)
    (tmp_path / "data").symlink_to(data)
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(readme_snippets()), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    # One visible result per snippet: the prompt, the tables, the evaluations, KL, steering.
    assert "Are you sure?" in out and "apology_lp" in out  # the prompt; the effect table
    assert "rank" in out and "ci_low" in out  # the heads table
    assert out.count("Sycophancy evaluation of") == 2  # base and tuned
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
    assert (tmp_path / "runs" / "spt_py" / "report.json").is_file()


@pytest.mark.parametrize("snippet", range(6))
def test_each_snippet_compiles(snippet):
    compile(readme_snippets()[snippet], f"README snippet {snippet + 1}", "exec")
