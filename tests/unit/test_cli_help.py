"""Every CLI's ``--help`` renders: exit 0, a usage line, every flag, no argparse artefacts.

Run as real subprocesses (``python -m ...``), as a user would; each also checks that ``--help``
answers without importing torch (it must not wait for the model stack to load).
"""

import subprocess
import sys

import pytest

from sycointerp.cli import effect, patch, spt

CLIS = {
    "sycointerp.patch": patch.build_parser,
    "sycointerp.spt": spt.build_parser,
    "sycointerp.effect": effect.build_parser,
}


@pytest.mark.parametrize("module", sorted(CLIS))
def test_help_renders_every_flag(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    text = done.stdout
    assert text.startswith("usage: python -m " + module)
    assert "option_strings" not in text and "%(" not in text and "%%" not in text
    flags = [s for a in CLIS[module]()._actions for s in a.option_strings if s.startswith("--")]
    assert flags and all(flag in text for flag in flags), [f for f in flags if f not in text]


@pytest.mark.parametrize("module", sorted(CLIS))
def test_help_does_not_import_torch(module):
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['x', '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.stderr.strip().endswith("NO-TORCH"), done.stderr[-2000:]
