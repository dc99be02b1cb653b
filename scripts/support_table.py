"""The model-family support table, generated from the outcomes of ``tests/unit/test_families.py``.

Every cell is derived from test outcomes, never written by hand: a capability is "yes" only when
every test named for it in ``CELL_TESTS`` passed for that family, "refused: <reason>" only when
its refusal test (``REFUSAL_TESTS``) passed, "FAIL" when one of them failed and "untested" when
one did not run. Families, attention layouts, refusal reasons and notes come from
``sycointerp.testing.families.FAMILIES``.

Usage::

    python scripts/support_table.py                      # run the tests, print the table
    python scripts/support_table.py --out table.md       # ... and write it to a file
    python scripts/support_table.py --update README.md   # replace the table between the markers
    python scripts/support_table.py --junit report.xml   # from an existing pytest --junitxml report

Exit status: 0 when every cell is "yes" or "refused", 1 otherwise (the table is still written).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from sycointerp.testing.families import FAMILIES, Family  # noqa: E402

TEST_FILE = "tests/unit/test_families.py"
MARKERS = ("<!-- support-table:start -->", "<!-- support-table:end -->")
COLUMNS = {"patching": "Head patching", "path": "Path patching", "spt": "SPT head slicing"}

# capability -> tests that must all pass for "yes" (parametrized by family: name[family]).
CELL_TESTS: dict[str, tuple[str, ...]] = {
    "patching": ("test_family_boots_with_hf_numerics", "test_head_patching_equals_plain_reference"),
    "path": ("test_path_patching_equals_plain_reference",),
    "spt": (
        "test_spt_slices_change_only_their_heads",
        "test_spt_training_leaves_every_other_parameter_bit_identical",
        "test_spt_tuned_model_reloads_with_plain_transformers",
    ),
}
# capability -> the test proving the refusal (for families that list the capability in ``refuses``).
REFUSAL_TESTS: dict[str, tuple[str, ...]] = {
    "patching": (),
    "path": ("test_path_patching_refuses_naming_the_family_and_reason",),
    "spt": ("test_spt_slicing_refuses_naming_the_family_and_reason",),
}
# Families whose patching runs full hooked forwards also prove that resumed runs refuse them.
HOOKED_ONLY_TEST = "test_resumed_runs_refuse_naming_the_family_and_reason"


def backing_tests(family: Family, capability: str) -> tuple[str, ...]:
    """The test ids (``name[family]``) whose outcomes decide the cell."""
    names = REFUSAL_TESTS[capability] if capability in family.refuses else CELL_TESTS[capability]
    if capability == "patching" and not family.resumable:
        names = (*names, HOOKED_ONLY_TEST)
    return tuple(f"{name}[{family.name}]" for name in names)


def cell(family: Family, capability: str, outcomes: Mapping[str, str]) -> str:
    """One cell from ``outcomes`` (test id -> ``"passed"``, ``"failed"``, ``"skipped"``, ...)."""
    tests = backing_tests(family, capability)
    if not tests:
        return "untested"
    results = [outcomes.get(t) for t in tests]
    if any(r is None for r in results):
        return "untested"
    if any(r != "passed" for r in results):
        return "FAIL"
    if capability in family.refuses:
        return f"refused: {family.refuses[capability]}"
    if capability == "patching":
        return "yes (resumed runs)" if family.resumable else "yes (full hooked forwards)"
    return "yes"


def render(outcomes: Mapping[str, str], families: Mapping[str, Family] = FAMILIES) -> str:
    """The markdown table, one row per family."""
    header = ["Family", "model_type", "Attention", *COLUMNS.values(), "Notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for fam in families.values():
        cells = [cell(fam, cap, outcomes) for cap in COLUMNS]
        row = [fam.label, f"`{fam.name}`", fam.attention, *cells, fam.notes]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def complete(outcomes: Mapping[str, str], families: Mapping[str, Family] = FAMILIES) -> bool:
    """Whether every cell is backed by passing tests ("yes ..." or "refused: ...")."""
    return all(
        cell(f, cap, outcomes).startswith(("yes", "refused"))
        for f in families.values()
        for cap in COLUMNS
    )


def read_junit(path: str | Path) -> dict[str, str]:
    """``test name[param] -> outcome`` from a pytest ``--junitxml`` report."""
    out: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        outcome = next((t for t in ("failure", "error", "skipped") if t in tags), "passed")
        out[case.get("name", "")] = {"failure": "failed", "error": "error"}.get(outcome, outcome)
    return out


def run_tests(junit: Path, pytest_args: Sequence[str] = ()) -> int:
    """Run the family tests, writing a junit report; returns pytest's exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        TEST_FILE,
        f"--junitxml={junit}",
        *pytest_args,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def update_between_markers(text: str, table: str) -> str:
    """``text`` with the part between ``MARKERS`` replaced by ``table``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        raise ValueError(f"add the lines {MARKERS[0]} and {MARKERS[1]} where the table goes")
    return text[: start + len(MARKERS[0])] + "\n" + table + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--junit", type=Path, help="read this pytest --junitxml report instead of running the tests"
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--update",
        type=Path,
        help="replace the table between the support-table markers of this file",
    )
    args = parser.parse_args(argv)
    if args.junit:
        outcomes = read_junit(args.junit)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "families.xml"
            run_tests(report)
            outcomes = (
                read_junit(report) if report.is_file() else {}
            )  # no report: every cell "untested"
    table = render(outcomes)
    sys.stdout.write(table)
    if args.out:
        args.out.write_text(table)
    if args.update:
        args.update.write_text(update_between_markers(args.update.read_text(), table))
    return 0 if complete(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
