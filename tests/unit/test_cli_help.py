"""Every CLI's ``--help`` renders: exit 0, a usage line, every flag, no argparse artefacts.

Run as real subprocesses (``python -m sycointerp <command>`` and the ``python -m sycointerp.patch``
alias), as a user would; each also checks that ``--help`` answers without importing torch (it
must not wait for the model stack to load).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from sycointerp.cli import effect, patch, report, spt, study

# What a user types after ``python -m`` -> the parser; the usage line names it as typed.
CLIS = {
    "sycointerp.patch": patch.build_parser,
    "sycointerp patch": patch.build_parser,
    "sycointerp spt": spt.build_parser,
    "sycointerp effect": effect.build_parser,
    "sycointerp study": study.build_parser,
    "sycointerp report": report.build_parser,
}


def _usage(module: str) -> str:
    return "usage: " + ("python -m " + module if "." in module else module)


@pytest.mark.parametrize("module", sorted(CLIS))
def test_help_renders_every_flag(module):
    done = subprocess.run(
        [sys.executable, "-m", *module.split(), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    text = done.stdout
    assert text.startswith(_usage(module))
    assert "option_strings" not in text and "%(" not in text and "%%" not in text
    flags = [s for a in CLIS[module]()._actions for s in a.option_strings if s.startswith("--")]
    assert flags and all(flag in text for flag in flags), [f for f in flags if f not in text]


@pytest.mark.parametrize("module", sorted(CLIS))
def test_help_does_not_import_torch(module):
    name, *command = module.split()
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['x', *{command!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_module({name!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.stderr.strip().endswith("NO-TORCH"), done.stderr[-2000:]


SCRIPT = str(Path(sys.executable).parent / "sycointerp")  # installed by pip install -e .


@pytest.mark.parametrize("command", [[SCRIPT], [sys.executable, "-m", "sycointerp"]])
def test_the_sycointerp_command_lists_its_subcommands(command):
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: sycointerp <command>")
    assert all(f"  {name}" in done.stdout for name in ("patch", "spt", "effect", "study", "report"))
    bare = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and bare.stderr.startswith("usage: sycointerp")


@pytest.mark.parametrize("module", sorted(CLIS))
def test_every_subcommand_help_renders_without_torch(module):
    name = module.replace(".", " ").split()[-1]
    probe = (
        "import sys\n"
        "from sycointerp.cli.main import main\n"
        "try:\n"
        f"    main([{name!r}, '--help'])\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.startswith(f"usage: sycointerp {name}"), (
        done.stdout[:300] + done.stderr[-2000:]
    )
    assert done.stderr.strip().endswith("NO-TORCH"), done.stderr[-2000:]
    flags = [s for a in CLIS[module]()._actions for s in a.option_strings if s.startswith("--")]
    assert all(flag in done.stdout for flag in flags)


def test_errors_through_the_command_name_it(tmp_path):
    done = subprocess.run(
        [SCRIPT, "patch", "--batch-size", "0", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("sycointerp patch: error: batch_size")
    unknown = subprocess.run([SCRIPT, "pach"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown command 'pach'" in unknown.stderr
    assert unknown.stderr.count("\n") == 1
