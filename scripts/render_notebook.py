"""Execute notebooks/01_sycophancy_heads.ipynb and store it, outputs included, as the manual's
tutorial page docs/tutorials/notebook.md (the notebook itself is committed without outputs).

    .venv/bin/python scripts/render_notebook.py     # = make docs-notebook (about 3 min on a CPU)

The page is stored executed (not executed at build time, which would load the model in every
docs build): code cells become ``py`` blocks, text outputs ``text`` blocks, figures the PNGs the
notebook saves. tests/unit/test_docs.py checks that the page's code is the notebook's, so an
edited notebook whose page was not rendered again fails the tests.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_sycophancy_heads.ipynb"
PAGE = ROOT / "docs" / "tutorials" / "notebook.md"
FIGURES = ROOT / "docs" / "tutorials" / "notebook"
HEADER = (
    "# The notebook, rendered\n\n"
    "`notebooks/01_sycophancy_heads.ipynb` executed top to bottom on the embedded model by "
    "`scripts/render_notebook.py` (stored executed; the committed notebook has no outputs). "
    "Open the notebook itself with `.venv/bin/jupyter lab notebooks/`.\n\n"
)


def _text(out) -> str | None:
    if out.output_type == "stream":  # progress bars and warnings go to stderr: left out
        return out.text if out.name == "stdout" else None
    data = getattr(out, "data", {})
    if "text/plain" in data and "image/png" not in data and "text/html" not in data:
        return data["text/plain"]
    return None


def render(nb) -> str:
    """The executed notebook as markdown (figures written to FIGURES)."""
    parts = [HEADER]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source.replace("](figures/", "](notebook/") + "\n\n")
            continue
        parts.append(f"```py\n{cell.source}\n```\n\n")
        for out in cell.get("outputs", []):
            text = _text(out)
            if text and text.strip():
                parts.append(f"```text\n{text.rstrip()}\n```\n\n")
    return "".join(parts).rstrip() + "\n"


def main() -> int:
    """Execute, render, and copy the notebook's saved figures next to the page."""
    figures = Path(tempfile.mkdtemp())
    os.environ["SYCOINTERP_NOTEBOOK_FIGURES"] = str(figures)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    kernel = KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[])
    )
    NotebookClient(
        nb, km=kernel, timeout=1800, resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    shutil.rmtree(FIGURES, ignore_errors=True)
    FIGURES.mkdir(parents=True)
    for png in sorted(figures.glob("*.png")):
        shutil.copy(png, FIGURES / png.name)
    PAGE.write_text(render(nb), encoding="utf-8")
    print(f"{PAGE} and {len(list(FIGURES.glob('*.png')))} figures written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
