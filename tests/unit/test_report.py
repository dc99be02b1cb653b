"""``report.html``: written by the patch job through the ``sycointerp`` command, rebuilt by
``sycointerp report``, and opened in real headless Chromium offline (no console message, the
figures drawn, under the stated size)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sycointerp.testing import save_tiny_model
from sycointerp.workflows.report import markdown_to_html

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(Path(sys.executable).parent / "sycointerp")
MAX_BYTES = 6_000_000  # plotly.js (~4.7 MB) and the figures of a small job


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail("no Chromium on PATH: make test installs Debian's chromium (see the Makefile)")


def _open(page: Path, shot: Path) -> list[str]:
    """Load ``page`` in headless Chromium offline; return its console lines, write a screenshot."""
    done = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=8000",
            "--window-size=1300,2400",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def assert_opens_offline(page: Path, shot: Path) -> None:
    """``page`` loads in headless Chromium with no console message and draws something: a
    screenshot of many colours, some clearly red or blue (a heatmap's)."""
    console = _open(page, shot)
    assert console == [], console
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # drawn figures, not a blank page
    assert any(abs(r - b) > 80 for _, (r, g, b) in colours)


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [SCRIPT, *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )


def test_patch_job_report_opens_offline_in_chromium(tmp_path):
    model = save_tiny_model(tmp_path / "llama", "llama")
    out = tmp_path / "job"
    done = _run(
        "patch", "--model", str(model), "--limit", "4", "--out", str(out), "-q", "--top-k", "3"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = out / "report.html"
    text = page.read_text(encoding="utf-8")
    assert page.stat().st_size < MAX_BYTES
    # Nothing to fetch: no external script, stylesheet or image (links to plotly.com may stay).
    assert re.search(r'<(script|link|img)[^>]+(src|href)="https?:', text) is None
    sections = ("Configuration", "Metric baselines", "Heads", "Top heads", "Per example")
    for section in (*sections, "Attention of the top heads to the challenge"):
        assert f"<h2>{section}" in text, section
    assert "few examples" in text  # 4 examples: every interval is marked
    assert text.count('id="fig-') == 4  # heatmap, ranked heads, rank intervals, attention
    assert "Split-half replication" in text and "top-3 overlap" in text  # the job's --top-k
    assert_opens_offline(page, tmp_path / "shot.png")
    rebuilt = _run("report", str(out))
    assert rebuilt.returncode == 0 and rebuilt.stdout.strip() == str(page)
    assert page.read_text(encoding="utf-8") == text  # built from the files alone


def test_report_of_a_directory_without_a_job_is_one_line_exit_2(tmp_path):
    done = _run("report", str(tmp_path))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "holds no finished job" in done.stderr


def test_markdown_tables_lists_and_emphasis():
    text = "# Title\n\nSome **bold** and `code` <tag>.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    text += "\n- x\n- y\n"
    assert markdown_to_html(text) == (
        "<h2>Title</h2>\n<p>Some <b>bold</b> and <code>code</code> &lt;tag&gt;.</p>\n"
        "<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td><td>2</td>"
        "</tr></tbody></table>\n<ul><li>x</li><li>y</li></ul>"
    )


def test_report_parts_of_older_or_damaged_job_directories(tmp_path):
    """A stability.json without a split-half record, a config.toml without [run] or one that
    does not parse: the report leaves the sentence out and marks the default 10 heads."""
    from sycointerp.workflows.report import _job_top_k, _split_half

    assert _split_half(None) == "" and _split_half({"top_heads": []}) == ""
    assert _split_half({"split_half": {"mean": None}}) == ""
    assert _job_top_k(tmp_path) == 10  # no config.toml
    (tmp_path / "config.toml").write_text("[model]\nmodel = ''\n")
    assert _job_top_k(tmp_path) == 10
    (tmp_path / "config.toml").write_text("[run]\ntop_k = 3\n")
    assert _job_top_k(tmp_path) == 3
    (tmp_path / "config.toml").write_text("[run\n")
    assert _job_top_k(tmp_path) == 10
