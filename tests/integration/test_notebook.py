"""The notebook runs top to bottom on the embedded model, in a kernel of this very interpreter.

A probe cell appended to an in-memory copy reports what the notebook built (the committed file is
never modified), so the test checks results, not only the absence of errors.
"""

import json
import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "01_sycophancy_heads.ipynb"
PLOTLY_MIME = "application/vnd.plotly.v1+json"

PROBE = """import json, sys
import plotly.graph_objects as go
print("PROBE " + json.dumps({
    "prefix": sys.prefix,
    "heads_fig": isinstance(heads_fig, go.Figure) and heads_fig.data[0].type == "heatmap",
    "values_shape": list(result.values.shape),
    "attention_heads": [list(h) for h in attention.heads],
    "top_share": float(top_share.mean()), "random_share": float(random_share.mean()),
    "curve_ks": list(curve.ks),
}))"""


def _kernel() -> KernelManager:
    """A kernel running ``sys.executable``: with no kernel directories, the spec manager falls back
    to ipykernel's built-in "python3" spec, which launches the current interpreter, so no user- or
    system-wide kernelspec can substitute another Python."""
    return KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[])
    )


def _probe(nb) -> dict:
    lines = [
        line
        for out in nb.cells[-1].outputs
        if out.output_type == "stream"
        for line in out.text.splitlines()
        if line.startswith("PROBE ")
    ]
    assert len(lines) == 1, nb.cells[-1].outputs
    return json.loads(lines[0].removeprefix("PROBE "))


def test_notebook_runs_top_to_bottom_and_builds_every_result(tmp_path, monkeypatch):
    # The static PNGs go to a temporary folder (the kernel inherits the environment), so the
    # committed copies in notebooks/figures/ are never rewritten by a test.
    monkeypatch.setenv("SYCOINTERP_NOTEBOOK_FIGURES", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    # cwd = the repository root: the kernel imports sycointerp from the checkout, installed or not.
    client = NotebookClient(
        nb,
        km=_kernel(),
        timeout=600,
        allow_errors=False,
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors
    probe = _probe(nb)
    assert probe["prefix"] == sys.prefix  # the kernel ran this environment's interpreter
    assert probe["heads_fig"] and probe["values_shape"] == [30, 9, 16]
    assert len(probe["attention_heads"]) == 5 and probe["curve_ks"] == [0, 3, 9]
    assert 0 <= probe["random_share"] <= 1 and 0 <= probe["top_share"] <= 1
    figures = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if PLOTLY_MIME in out.get("data", {})
    ]
    assert len(figures) == 3  # heatmap, attention, knockout
    static = sorted(p.name for p in tmp_path.iterdir())
    assert static == ["01_attention.png", "01_heads.png", "01_knockout.png"]
    for name in static:  # a drawn image of the default size, not an empty file
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 900
    # Every static copy the notebook embeds is committed beside it (GitHub shows those).
    embedded = [
        line.split("](")[1].rstrip(")")
        for cell in nb.cells
        if cell.cell_type == "markdown"
        for line in cell.source.splitlines()
        if line.startswith("![")
    ]
    assert embedded == [
        f"figures/{n}" for n in ("01_heads.png", "01_attention.png", "01_knockout.png")
    ]
    assert all((NOTEBOOK.parent / e).is_file() for e in embedded)
