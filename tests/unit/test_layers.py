"""The package's import graph goes one way: ground -> analysis -> tuning -> workflows ->
applications -> entry.

Read from the source with ``ast`` (imports inside functions included), so a lazy import cannot
hide an upward edge. Importing ``a.b.c`` also runs the packages ``a.b``'s ``__init__``; those
implicit edges count too, because they are how an innocent-looking import closes a cycle at run
time. Rules checked:

1. every module belongs to a layer (a new top-level module must be placed); relative imports
   are refused (they would hide the module they reach); the modules a lazy namespace names
   (``_HOMES`` keys, :mod:`sycointerp._lazy`) count as imports;
2. no module imports one of a higher layer;
3. no import cycle between modules (package ``__init__`` files included);
4. the workflows (``patch``, ``spt``, ``effect``, ``report``, ``study``) do not import each
   other, only the workflow layer's shared modules; the compositions may: ``study`` (the trust
   study runs SPT jobs as its stages) and the jobs that write their ``report.html`` (``report``);
   no job imports ``study``;
5. no module imports a private name (``_x``) of another module, unless that module is itself a
   private helper module (``patching/_engine.py``);
6. the ``python -m`` entry points are thin: they import only from :mod:`sycointerp.cli`;
7. the command line holds no torch-level code: no module of :mod:`sycointerp.cli` imports torch,
   transformers, TransformerLens, numpy or pandas, nor a module of the analysis layer.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "sycointerp"

# Longest matching prefix wins; "sycointerp" itself (the lazy facade) matches only exactly.
LAYERS = {
    "ground": (
        "sycointerp.errors",
        "sycointerp._lazy",
        "sycointerp._io",
        "sycointerp._compat",
        "sycointerp._config",
        "sycointerp._registry",
        "sycointerp.stats",
        "sycointerp.stability",
        "sycointerp.chat",
        "sycointerp.data",
        "sycointerp.models",
        "sycointerp.placement",
        "sycointerp.provenance",
        "sycointerp.testing",
    ),
    "analysis": (
        "sycointerp.metrics",
        "sycointerp.generate",
        "sycointerp.heads",
        "sycointerp.patching",
        "sycointerp.evaluate",
        "sycointerp.plot",
        "sycointerp.probing",
        "sycointerp.steering",
    ),
    "tuning": ("sycointerp.spt",),
    "workflows": ("sycointerp.workflows",),
    "applications": ("sycointerp.cli",),
    "entry": ("sycointerp.patch", "sycointerp.__main__", "sycointerp"),
}
ORDER = list(LAYERS)
JOBS = ("patch", "spt", "effect", "report", "study")
# A composition of jobs: it may import these jobs' modules (never the reverse).
COMPOSES = {"study": ("spt", "report"), "spt": ("report",), "patch": ("report",)}
# Third-party packages of tensor and model code, which the command line must not import.
TENSOR_PACKAGES = ("torch", "transformers", "transformer_lens", "numpy", "pandas", "peft")


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (a package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> str | None:
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            exact_only = prefix == "sycointerp"
            hit = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    return best


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


RELATIVE = "<relative import>"


def _lazy_homes(tree: ast.Module, modules: dict[str, Path]) -> list[str]:
    """Modules named as the keys of a ``_HOMES = {...}`` dict (:mod:`sycointerp._lazy`): the
    package imports them on first use, so they are edges like any import."""
    out = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_HOMES" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            for key in node.value.keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    out.append(_resolve(key.value, modules) or key.value)
    return out


def imports(modules: dict[str, Path]) -> dict[str, dict[str, list[str]]]:
    """Per module: imported module -> names imported from it (``[]`` for ``import x``)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in modules.items():
        edges: dict[str, list[str]] = {}
        tree = ast.parse(path.read_text(), str(path))
        for target in _lazy_homes(tree, modules):
            edges.setdefault(target, [])
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                edges.setdefault(RELATIVE, []).append(node.module or ".")
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in modules else _resolve(node.module, modules)
                    if target:
                        names = [] if target == full else [alias.name]
                        edges.setdefault(target, []).extend(names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    target = _resolve(alias.name, modules)
                    if target:
                        edges.setdefault(target, [])
        edges.pop(module, None)
        graph[module] = edges
    return graph


def _with_parents(graph: dict[str, dict[str, list[str]]], root: str) -> dict[str, set[str]]:
    """Edges plus the implicit ones to each package ``__init__`` an import runs."""
    out = {}
    for module, edges in graph.items():
        targets = set(edges) - {RELATIVE}
        for target in edges:
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent != root and not module.startswith(parent + ".") and parent in graph:
                    targets.add(parent)
        out[module] = targets - {module}
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def _job(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 3 and parts[1] == "workflows":
        return next((j for j in JOBS if parts[2] == j or parts[2].startswith(j + "_")), None)
    return None


def _third_party(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _tensor_code_in_cli(modules: dict[str, Path], graph: dict[str, dict[str, list[str]]]):
    """Rule 7: the command line reaches models and tensors only through the workflows."""
    problems = []
    for module, path in modules.items():
        if layer_of(module) != "applications":
            continue
        for package in sorted(_third_party(path) & set(TENSOR_PACKAGES)):
            problems.append(f"{module} imports {package}: tensor code belongs in a workflow")
        for target in graph[module]:
            if layer_of(target) == "analysis":
                problems.append(f"{module} imports {target} (analysis): go through a workflow")
    return problems


def violations(root: Path) -> list[str]:
    """Every broken rule of the module docstring, one line each."""
    modules = module_files(root)
    graph = imports(modules)
    problems = [
        f"{m}: no layer; add it to LAYERS in {__name__}" for m in modules if not layer_of(m)
    ]
    for module, edges in graph.items():
        here = layer_of(module)
        if RELATIVE in edges:
            problems.append(f"{module} uses a relative import; import by the full name")
        for target, names in edges.items():
            if target == RELATIVE:
                continue
            there = layer_of(target)
            if here and there and ORDER.index(there) > ORDER.index(here):
                problems.append(f"{module} ({here}) imports {target} ({there}): an upward import")
            mine, theirs = _job(module), _job(target)
            if mine and theirs and mine != theirs and theirs not in COMPOSES.get(mine, ()):
                problems.append(f"{module} imports {target}: jobs must not import each other")
            private = [n for n in names if n.startswith("_")]
            if private and not target.rpartition(".")[2].startswith("_"):
                problems.append(f"{module} imports private {private} of {target}")
            if (
                here == "entry"
                and module != root.name
                and not target.startswith(f"{root.name}.cli")
            ):
                problems.append(
                    f"entry point {module} imports {target}; entry points import only cli"
                )
    problems += _tensor_code_in_cli(modules, graph)
    cycle = find_cycle(_with_parents(graph, root.name))
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


def test_the_package_imports_one_way():
    assert violations(ROOT) == []


def test_every_layer_prefix_names_real_modules():
    modules = module_files(ROOT)
    for prefixes in LAYERS.values():
        for prefix in prefixes:
            assert any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A copy of the package with ``files`` (relative path -> source) added or replaced."""
    root = tmp_path / "sycointerp"
    for path in ROOT.rglob("*.py"):
        target = root / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    for rel, text in files.items():
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        (
            {"stats.py": "def f():\n    from sycointerp.patching import PatchResult\n"},
            "upward import",
        ),
        ({"chat.py": "import sycointerp.cli.patch\n"}, "upward import"),
        ({"spt/data.py": "import sycointerp.workflows.spt\n"}, "upward import"),
        ({"metrics.py": "from sycointerp.plot import head_heatmap\n"}, "import cycle"),
        (
            {"workflows/effect.py": "from sycointerp.workflows.patch import run\n"},
            "must not import each other",
        ),
        (
            {"workflows/spt.py": "from sycointerp.workflows.study import run\n"},
            "must not import each other",
        ),
        (
            {"workflows/study.py": "from sycointerp.workflows.patch import run\n"},
            "must not import each other",
        ),
        ({"heads.py": "from sycointerp.models import _sha256\n"}, "private"),
        (
            {"patch.py": "from sycointerp.models import load_model\n"},
            "entry points import only cli",
        ),
        ({"newmodule.py": "x = 1\n"}, "no layer"),
        ({"stats.py": "from .cli import app\n"}, "relative import"),
        ({"data/__init__.py": '_HOMES = {"sycointerp.cli.app": "guarded"}\n'}, "upward import"),
        ({"cli/spt.py": "import torch\n"}, "tensor code belongs in a workflow"),
        ({"cli/report.py": "from sycointerp.plot import save_figure\n"}, "go through a workflow"),
        ({"spt/train.py": "from sycointerp.cli.app import guarded\n"}, "upward import"),
        ({"plot.py": "from sycointerp.workflows.study import sweep_points\n"}, "upward import"),
    ],
)
def test_a_planted_violation_is_found(tmp_path, planted, expected):
    found = violations(_plant(tmp_path, planted))
    assert any(expected in line for line in found), found


def test_cycle_finder_on_a_hand_made_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
