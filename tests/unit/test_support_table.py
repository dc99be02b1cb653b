"""scripts/support_table.py maps test outcomes to support-table cells (on synthetic reports)."""

import importlib.util
import re
from pathlib import Path

import pytest

from sycointerp.testing.families import FAMILIES, Family

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location(
        "support_table", REPO / "scripts" / "support_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fam(name: str, **kw) -> Family:
    return Family(name, name.upper(), "XForCausalLM", "GQA", lambda vocab: None, **kw)


def _all_pass(table, families) -> dict[str, str]:
    return {
        t: "passed"
        for f in families.values()
        for cap in table.COLUMNS
        for t in table.backing_tests(f, cap)
    }


def test_cells_follow_the_outcomes_of_their_tests(table):
    fams = {
        "a": _fam("a"),
        "b": _fam("b", resumable=False, refuses={"spt": "norm spans heads"}, notes="n|b"),
    }
    outcomes = _all_pass(table, fams)
    assert table.complete(outcomes, fams)
    rows = table.render(outcomes, fams).splitlines()
    assert rows[2] == "| A | `a` | GQA | yes (resumed runs) | yes | yes |  |"
    assert (
        rows[3] == "| B | `b` | GQA | yes (full hooked forwards) | yes | refused: norm spans heads "
        "| n\\|b |"
    )
    assert (
        "test_resumed_runs_refuse_naming_the_family_and_reason[b]" in outcomes
    )  # hooked-only needs the refusal

    failed = {
        **outcomes,
        "test_spt_training_leaves_every_other_parameter_bit_identical[a]": "failed",
    }
    assert table.cell(fams["a"], "spt", failed) == "FAIL" and not table.complete(failed, fams)
    missing = {
        k: v for k, v in outcomes.items() if k != "test_path_patching_equals_plain_reference[a]"
    }
    assert table.cell(fams["a"], "path", missing) == "untested"
    skipped = {**outcomes, "test_spt_slicing_refuses_naming_the_family_and_reason[b]": "skipped"}
    assert table.cell(fams["b"], "spt", skipped) == "FAIL"
    # A refused capability is never "yes", even if positive tests for it ran and passed.
    assert table.cell(
        fams["b"], "spt", {**outcomes, "test_spt_slices_change_only_their_heads[b]": "passed"}
    ).startswith("refused")
    assert (
        table.cell(
            fams["b"],
            "patching",
            {**outcomes, "test_resumed_runs_refuse_naming_the_family_and_reason[b]": "failed"},
        )
        == "FAIL"
    )


def test_junit_reports_and_markers(table, tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.unit.test_families" name="t[a]"/>'
        '<testcase classname="tests.unit.test_families" name="t[b]">'
        '<failure message="x"/></testcase>'
        '<testcase classname="tests.unit.test_families" name="t[c]">'
        '<skipped message="y"/></testcase>'
        '<testcase classname="tests.unit.test_families" name="t[d]"><error message="z"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert table.read_junit(report) == {
        "t[a]": "passed",
        "t[b]": "failed",
        "t[c]": "skipped",
        "t[d]": "error",
    }
    start, end = table.MARKERS
    text = f"intro\n{start}\nold table\n{end}\noutro\n"
    assert (
        table.update_between_markers(text, "| new |\n")
        == f"intro\n{start}\n| new |\n{end}\noutro\n"
    )
    with pytest.raises(ValueError, match="support-table:start"):
        table.update_between_markers("no markers", "| new |\n")


def test_every_backing_test_exists_for_every_registered_family(table):
    """The table cannot point at tests that were renamed away or never parametrized for a family."""
    source = (REPO / table.TEST_FILE).read_text()
    defined = set(re.findall(r"^def (test_\w+)\(", source, re.M))
    named = {
        n for names in (*table.CELL_TESTS.values(), *table.REFUSAL_TESTS.values()) for n in names
    }
    assert named | {table.HOOKED_ONLY_TEST} <= defined
    assert len(FAMILIES) >= 8
    assert all(cap in table.COLUMNS for fam in FAMILIES.values() for cap in fam.refuses)


def test_readme_table_is_the_one_passing_tests_generate(table):
    """The committed README table is what every backing test passing renders (regenerate with
    `python scripts/support_table.py --update README.md` after changing a family)."""
    readme = (REPO / "README.md").read_text()
    start, end = (readme.index(m) for m in table.MARKERS)
    committed = readme[start + len(table.MARKERS[0]) : end].strip()
    assert committed == table.render(_all_pass(table, FAMILIES)).strip()
