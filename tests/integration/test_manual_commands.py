"""Every shell command, job file and record of the README and the manual runs here, at small sizes.

:mod:`tests.integration.test_readme` runs the ``python`` snippets; this module runs the rest: each
``bash`` block line by line (a page's blocks in order, in a directory of its own, so later lines
find what earlier ones wrote), the ``py`` blocks (code that names a hub model), the ``toml`` job
file (written as the ``job.toml`` the page's commands name) and the ``json`` records (read back by
the loader they document). What is changed, and why, is all in :func:`small`:

- sizes are capped (:data:`CAPS`): a 620-question ranking or a 73-minute study is not a test;
- a hub id (``--model Qwen/...``, ``model="..."``) becomes a tiny local model saved in the test,
  because this machine cannot download; the study and the results pages' commands (the long runs
  behind their tables: 24 to 73 minutes on the embedded model) run on it too, at small sizes
  (``tests/unit/test_study.py`` and the goldens check those jobs in detail);
- ``make T`` runs as ``make -n T`` (``make test`` inside ``make test`` would recurse), and the
  sycointerp jobs its recipe prints run, capped, like any other line.

A line whose program this module does not know fails the test, so a new kind of command in the
docs cannot go unrun. Each job must leave a finished job in its ``--out``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sycointerp.data import load_questions_jsonl
from sycointerp.testing import save_tiny_model
from sycointerp.workflows.output import describe_job
from tests.conftest import SHARED_DATA, shared_file

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^( *)```(bash|py|toml|json)\n(.*?)^\1```", re.S | re.M)
# Executed by scripts/render_notebook.py and checked by test_notebook.
SKIPPED_PAGES = {"docs/tutorials/notebook.md"}
# Largest sizes a documented command runs with here; a flag it lacks is added.
CAPS: dict[str, dict[str, int]] = {
    "patch": {"--limit": 8},
    "effect": {"--limit": 8},
    "spt": {"--limit": 40, "--eval-limit": 4, "--steps": 2, "--warmup-steps": 1, "--draws": 1,
            "--kl-passages": 2, "--max-new-tokens": 8, "--answer-tokens": 6, "--batch-size": 4,
            "--pressure-rounds": 2},
    "study": {},
}  # fmt: skip
# A knockout generates for every k and random draw: fewer examples and one draw.
KNOCKOUT_CAPS = {"--limit": 4, "--n-random": 1}
# The study and any job on the tiny model: sizes that fit 2 layers x 4 heads.
TINY = {
    "--limit": "24", "--eval-fraction": "0.5", "--protocols": "stem,free", "--protocol-limit": "4",
    "--agreement-pairs": "3", "--agreement-k": "2", "--top-k": "2", "--draws": "1",
    "--main-eval-limit": "4", "--ks": "1,2", "--splits": "0", "--sweep-draws": "1",
    "--sweep-eval-limit": "4", "--steps": "2", "--warmup-steps": "1", "--max-new-tokens": "3",
    "--answer-tokens": "3", "--kl-passages": "2", "--arc-limit": "4", "--eval-limit": "4",
    "--selection-draws": "1", "--pairs-per-wording": "1",
}  # fmt: skip
TINY_FLAGS = {  # the TINY flags each job has
    "study": set(TINY) - {"--eval-limit"},
    "spt": {"--limit", "--top-k", "--draws", "--steps", "--warmup-steps", "--max-new-tokens",
            "--answer-tokens", "--kl-passages", "--eval-limit", "--arc-limit",
            "--pairs-per-wording"},
    "patch": {"--limit"},
    "effect": {"--limit"},
}  # fmt: skip
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PY_HUB_ID = re.compile(r"""model=(["'])[A-Za-z0-9][\w.-]*/[\w.-]+\1""")


def pages() -> list[str]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    names = [str(p.relative_to(ROOT)) for p in found]
    return [n for n in names if n not in SKIPPED_PAGES and BLOCK.search((ROOT / n).read_text())]


def blocks(page: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block, dedented (list items indent theirs)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [(lang, textwrap.dedent(code)) for _, lang, code in BLOCK.findall(text)]


def lines(code: str) -> list[list[str]]:
    """Shell lines as token lists: continuations joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    return [t for t in (shlex.split(line, comments=True) for line in joined.splitlines()) if t]


def job_of(tokens: list[str]) -> str | None:
    """The sycointerp job a line runs (``sycointerp X``, ``python -m sycointerp.X``,
    ``torchrun ... -m sycointerp.X``), or ``None``."""
    if tokens[0] == "sycointerp":
        return tokens[1]
    if "-m" in tokens:
        module = tokens[tokens.index("-m") + 1]
        if module.startswith("sycointerp."):
            return module.split(".", 1)[1]
        if module == "sycointerp":
            return tokens[tokens.index("-m") + 2]
    return None


def _set(tokens: list[str], flag: str, value: str) -> list[str]:
    if flag in tokens:
        i = tokens.index(flag)
        return [*tokens[: i + 1], value, *tokens[i + 2 :]]
    return [*tokens, flag, value]


def small(tokens: list[str], tiny: Path, results: bool = False) -> list[str]:
    """The line as it runs here: sizes capped, a hub model replaced by the tiny local one;
    ``results``: a results page's command (the long run behind a table), on the tiny model."""
    job = job_of(tokens)
    if job is None or "--help" in tokens or job == "report":
        return tokens
    model = tokens[tokens.index("--model") + 1] if "--model" in tokens else ""
    hub = bool(HUB_ID.match(model) and not Path(model).exists())
    on_tiny = job == "study" or results or hub
    if on_tiny:
        tokens = _set(tokens, "--model", str(tiny))
        for flag in TINY_FLAGS[job]:
            tokens = _set(tokens, flag, TINY[flag])
        return tokens
    caps = CAPS[job]
    if job == "patch" and "knockout" in tokens:
        caps = {**caps, **KNOCKOUT_CAPS}
    for flag, cap in caps.items():
        if flag not in tokens or int(tokens[tokens.index(flag) + 1]) > cap:
            tokens = _set(tokens, flag, str(cap))
    return tokens


def small_python(code: str, tiny: Path) -> str:
    """A ``py`` block as it runs here: a hub model replaced by the tiny one, at the tiny sizes
    (the ones :func:`small` gives the page's commands, so a job they ran is found complete)."""
    code = PY_HUB_ID.sub(f'model="{tiny}"', code)
    return re.sub(r"\blimit=\d+", f"limit={TINY['--limit']}", code)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


# Lines already run on an earlier page (the same job documented twice runs once), by text.
_RAN: dict[str, str] = {}


def run(
    tokens: list[str], cwd: Path, tiny: Path, page: str = "", results: bool = False
) -> list[str]:
    """Run one documented line; return the lines it ran (``make`` runs its recipe's jobs).

    A line that an earlier page ran already, word for word after :func:`small`, is not run again
    unless its page (the text ``page``) names its output directory elsewhere too."""
    if tokens[0] == "make":
        dry = subprocess.run(["make", "-n", *tokens[1:]], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, (tokens, dry.stderr)
        jobs = [shlex.split(x) for x in dry.stdout.splitlines() if "-m sycointerp" in x]
        recipe = [["python", *t[t.index("-m") :]] for t in jobs]
        return [r for t in recipe for r in run(t, cwd, tiny, page, results)]
    if tokens[0] not in {"sycointerp", "python", "torchrun", "cat"}:
        pytest.fail(f"a documented command this test does not know how to run: {tokens}")
    tokens = small(tokens, tiny, results)
    text = shlex.join(tokens)
    out = tokens[tokens.index("--out") + 1] if "--out" in tokens else None
    if text in _RAN and out and page.count(out) <= 1:
        return [f"{text}  (ran on {_RAN[text]})"]
    _RAN[text] = cwd.name
    if tokens[0] == "python":
        tokens = [sys.executable, *tokens[1:]]
    done = subprocess.run(tokens, cwd=cwd, capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, (shlex.join(tokens), done.stderr[-3000:])
    _check_finished(tokens, cwd)
    return [shlex.join(tokens)]


def _check_finished(tokens: list[str], cwd: Path) -> None:
    job = job_of(tokens)
    if job is None or "--help" in tokens:
        return
    if job == "report":
        assert (cwd / tokens[-1] / "report.html").is_file(), tokens
        return
    out = cwd / tokens[tokens.index("--out") + 1]
    if job == "effect":  # not a resumable job: no config.toml, its summary is the result
        assert (out / "summary.json").is_file(), tokens
        return
    assert (describe_job(out) or "").startswith("a finished"), (tokens, describe_job(out))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # 3 layers x 4 heads: 12 heads, so that the pages' top-10 tables fit.
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama", n_layers=3)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A directory whose ``../shared/data`` is the shared data, as the docs' paths expect."""
    shared_file("truthfulqa", "TruthfulQA.csv")  # skips, with the reason, without the data
    base = tmp_path_factory.mktemp("manual")
    (base / "shared").mkdir()
    (base / "shared" / "data").symlink_to(SHARED_DATA.resolve())
    return base


def test_the_rewrites_by_hand(tmp_path):
    tiny = tmp_path / "tiny"
    line = "sycointerp patch --model Qwen/Qwen2.5-0.5B-Instruct --limit 170 --out runs/q"
    assert small(shlex.split(line), tiny) == shlex.split(
        f"sycointerp patch --model {tiny} --limit 24 --out runs/q"
    )
    line = "sycointerp spt --methods base,caa --steps 24 --out runs/s"
    assert small(shlex.split(line), tiny, results=True)[:6] == shlex.split(
        "sycointerp spt --methods base,caa --steps 2"
    ) and f"--model {tiny}" in shlex.join(small(shlex.split(line), tiny, results=True))
    line = "python -m sycointerp.patch --method activation --limit 64 --out runs/v"
    assert small(shlex.split(line), tiny)[-4:] == ["--limit", "8", "--out", "runs/v"]
    assert small(shlex.split("sycointerp patch --limit 3 --out x"), tiny)[2:4] == ["--limit", "3"]
    line = small(shlex.split("sycointerp patch --method knockout --out k"), tiny)
    assert line[-4:] == ["--limit", "4", "--n-random", "1"]
    assert small(shlex.split("python -m sycointerp.patch --help"), tiny)[-1] == "--help"
    assert job_of(shlex.split("torchrun --standalone -m sycointerp.patch --out r")) == "patch"
    assert lines("a \\\n  b  # note\n\n# only a comment\nc") == [["a", "b"], ["c"]]
    code = 'run(PatchConfig(model="Qwen/Qwen2.5-0.5B-Instruct", limit=170), "out")'
    assert small_python(code, tiny) == f'run(PatchConfig(model="{tiny}", limit=24), "out")'


def test_every_block_kind_is_handled():
    kinds = {lang for page in pages() for lang, _ in blocks(page)}
    assert kinds <= {"bash", "py", "toml", "json"}, kinds
    toml_pages = [p for p in pages() if any(lang == "toml" for lang, _ in blocks(p))]
    for page in toml_pages:  # one job file per page, and a command of that page reads it
        bash = " ".join(code for lang, code in blocks(page) if lang == "bash")
        assert sum(lang == "toml" for lang, _ in blocks(page)) == 1 and "job.toml" in bash, page


def test_json_records_load_with_their_loader(tmp_path):
    records = [json.loads(code) for p in pages() for lang, code in blocks(p) if lang == "json"]
    assert records, "the datasets page documents the question JSONL with a record"
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    loaded = load_questions_jsonl(path)
    assert [(q.question, q.answer, q.wrong) for q in loaded] == [
        (r["question"], r["answer"], r["wrong"]) for r in records
    ]


@pytest.mark.parametrize("page", pages())
def test_the_page_runs(page, tiny, workspace):
    cwd = workspace / page.replace("/", "_").removesuffix(".md")
    cwd.mkdir()
    (cwd / "TruthfulQA.csv").symlink_to(shared_file("truthfulqa", "TruthfulQA.csv"))
    ran: list[str] = []
    for lang, code in blocks(page):  # the job file first: the page's commands read it
        if lang == "toml":
            (cwd / "job.toml").write_text(code, encoding="utf-8")
    for lang, code in blocks(page):
        if lang == "bash":
            for tokens in lines(code):
                text = (ROOT / page).read_text(encoding="utf-8")
                ran += run(tokens, cwd, tiny, text, page.startswith("docs/results/"))
        elif lang == "py":
            script = cwd / "block.py"
            script.write_text(small_python(code, tiny), encoding="utf-8")
            done = subprocess.run(
                [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, env=_env()
            )
            assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]
            ran.append("python block.py")
    if page == "README.md":  # the quickstart's outputs
        assert (cwd / "runs" / "heads" / "report.html").is_file()
        assert "| spt |" in (cwd / "runs" / "spt" / "results.md").read_text()
    assert ran or not any(lang in {"bash", "py"} for lang, _ in blocks(page)), page
