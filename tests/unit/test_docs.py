"""The manual: the site builds in strict mode (no broken link, no unresolved reference, no page
outside the navigation), its generated references are complete, its home page and an API page
render offline in headless Chromium, every public name has a docstring, and the stored pages
derived from other files are in sync with them."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from tests.unit.test_report import _open

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_cli_reference_is_every_parser(site):
    from sycointerp.cli import effect, patch, report, spt, study

    page = (site / "reference" / "cli" / "index.html").read_text()
    for module in (patch, spt, effect, study, report):
        flags = [s for a in module.build_parser()._actions for s in a.option_strings]
        assert all(flag in page for flag in flags), [f for f in flags if f not in page]


def test_the_api_reference_renders_the_workflows_and_registries(site):
    workflows = (site / "reference" / "api" / "workflows" / "index.html").read_text()
    for name in ("PatchJobResult", "SPTResult", "StudyResult", "EffectConfig", "describe_job"):
        assert name in workflows, name
    assert ":class:" not in workflows  # Sphinx roles rendered as names (docs/hooks.py)
    patching = (site / "reference" / "api" / "patching" / "index.html").read_text()
    assert "register_patch_method" in patching and "path_ranking" in patching


def _blank(shot: Path) -> bool:
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    return colours is None or len(colours) < 20


@pytest.mark.parametrize("page", ["index.html", "reference/api/workflows/index.html"])
def test_pages_render_offline_and_are_not_blank(site, tmp_path, page):
    shot = tmp_path / "shot.png"
    console = _open(site / page, shot)
    # The search index is fetched by script, which file:// pages may not do; nothing else logs.
    assert [line for line in console if "search" not in line.lower()] == [], console
    assert not _blank(shot)
    text = (site / page).read_text()
    assert "fonts.googleapis" not in text and "https://cdn" not in text  # nothing from the network


def _public_without_docstring(root: Path) -> list[str]:
    missing = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not ast.get_docstring(tree):
            missing.append(f"{path}: module")
        for node in tree.body:
            missing += _undocumented(node, path, "")
    return missing


def _undocumented(node: ast.AST, path: Path, prefix: str) -> list[str]:
    if not isinstance(node, ast.FunctionDef | ast.ClassDef) or node.name.startswith("_"):
        return []
    out = [] if ast.get_docstring(node) else [f"{path}:{node.lineno} {prefix}{node.name}"]
    if isinstance(node, ast.ClassDef):
        for child in node.body:
            out += _undocumented(child, path, f"{node.name}.")
    return out


def test_every_public_name_has_a_docstring():
    assert _public_without_docstring(ROOT / "sycointerp") == []


def test_the_docstring_check_finds_a_missing_one(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text('"""A module."""\n\n\ndef public():\n    return 1\n')
    assert [m.split()[-1] for m in _public_without_docstring(package)] == ["public"]


def test_the_rendered_notebook_page_is_the_notebooks_code():
    """docs/tutorials/notebook.md is stored executed (scripts/render_notebook.py): its code blocks
    must be the notebook's code cells, in order."""
    nb = nbformat.read(ROOT / "notebooks" / "01_sycophancy_heads.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    page = (ROOT / "docs" / "tutorials" / "notebook.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```py\n(.*?)\n```$", page, re.S | re.M)
    assert blocks == cells, "rerun scripts/render_notebook.py (make docs-notebook)"
    for image in re.findall(r"\]\((notebook/[^)]+\.png)\)", page):
        assert (ROOT / "docs" / "tutorials" / image).is_file(), image


def test_the_models_page_shows_the_readmes_support_table():
    def table(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        return text[
            text.index("<!-- support-table:start -->") : text.index("<!-- support-table:end -->")
        ]

    assert table(ROOT / "docs" / "how-to" / "models.md") == table(ROOT / "README.md")


# Where each section of the README before the manual (0.1.0, 977 lines) now lives.
MOVED = {
    "Two commands": "getting-started.md",
    "Example": "getting-started.md",
    "First measurement: the challenge effect": "results/challenge-effect.md",
    "Ranking heads (results, stability, controls)": "results/head-ranking.md",
    "Ranking heads (methods, engine)": "concepts/patching.md",
    "Attention, before/after, notebook": "tutorials/notebook-and-figures.md",
    "Batch jobs": "how-to/batch-jobs.md",
    "Evaluating sycophancy and side effects": "tutorials/evaluation.md",
    "Supervised Pinpoint Tuning": "tutorials/spt.md",
    "The trust study (with probes and steering)": "results/trust-study.md",
    "Model families": "how-to/models.md",
    "Data": "how-to/datasets.md",
    "Metrics": "concepts/metrics.md",
    "Reliability": "concepts/reliability.md",
    "Architecture": "architecture.md",
    "Tests": "development.md",
    "Status": "changelog.md",
}


def test_every_section_the_readme_had_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for section, page in MOVED.items():
        assert (ROOT / "docs" / page).is_file(), section
        assert f": {page}" in nav, f"{section}: {page} is not in mkdocs.yml's nav"


def test_the_changelog_leads_with_the_package_version():
    import tomllib

    import sycointerp

    first = re.search(r"^## (\S+) ", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert first == sycointerp.__version__ == project
