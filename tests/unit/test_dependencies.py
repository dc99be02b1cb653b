"""The declared dependencies are the ones the package imports: every third-party module imported
under ``sycointerp/`` belongs to a distribution listed in ``pyproject.toml``, and every listed
distribution is imported (or is named below with the reason it is needed without an import)."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Needed at run time, never imported by name.
NOT_IMPORTED = {
    "kaleido": "plotly's write_image drives it for PNG export",
}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0] for d in project["dependencies"]}
    return {n.lower().replace("_", "-") for n in names}


def _imported_top_levels() -> set[str]:
    found = set()
    for path in (ROOT / "sycointerp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"sycointerp", "__future__"}


def test_every_import_is_declared_and_every_declaration_used():
    owners = packages_distributions()
    imported = {}
    for module in _imported_top_levels():
        dists = owners.get(module)
        assert dists, f"{module} is imported but installed by no distribution"
        imported[module] = {d.lower().replace("_", "-") for d in dists}
    declared = _declared()
    undeclared = {m: d for m, d in imported.items() if not d & declared}
    assert not undeclared, f"imported but not in pyproject dependencies: {undeclared}"
    used = set().union(*imported.values()) | set(NOT_IMPORTED)
    unused = declared - used
    assert not unused, f"declared but never imported: {sorted(unused)}"
