"""``hmrmamba.report.reliability`` reads the junit report's records and counts them into docs/reliability.md."""

from __future__ import annotations

import json

from hmrmamba.report.reliability import read_junit, render, summarise_audit

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
 <testcase classname="robustness.test_a" name="test_one" time="1.5">
  <properties>
   <property name="reliability" value='{rec1}'/>
   <property name="reliability" value='{rec2}'/>
  </properties>
 </testcase>
 <testcase classname="robustness.test_a" name="test_kill" time="30.0">
  <properties><property name="reliability" value='{rec3}'/><property name="reliability" value='{rec4}'/></properties>
 </testcase>
 <testcase classname="robustness.test_a" name="test_broken" time="0.1">
  <properties><property name="reliability" value='{rec5}'/></properties>
  <failure message="AssertionError: boom">trace</failure>
 </testcase>
 <testcase classname="robustness.test_b" name="test_gap" time="0.2">
  <skipped type="pytest.xfail" message="reason: module x lets y escape. Fix: z"/>
 </testcase>
 <testcase classname="robustness.test_b" name="test_skip" time="0.0"><skipped type="pytest.skip" message="no tmpfs"/></testcase>
</testsuite></testsuites>
"""


def test_records_are_counted_by_kind_and_outcome(tmp_path):
    recs = [
        {"kind": "bad_input", "target": "reader x", "case": "NaN", "examples": 40},
        {"kind": "bad_input", "target": "reader x", "case": "truncated", "examples": 1},
        {"kind": "fault", "target": "stage prepare", "case": "SIGKILL", "survived": True, "detail": "ok"},
        {"kind": "bitwise", "target": "stage prepare", "case": "arrays", "equal": True, "detail": "equal"},
        {"kind": "bad_input", "target": "reader y", "case": "empty", "examples": 1},
    ]
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT.format(**{f"rec{i + 1}": json.dumps(r) for i, r in enumerate(recs)}))
    cases = read_junit(path)
    assert [c.outcome for c in cases] == ["passed", "passed", "failed", "xfailed", "skipped"]
    assert len(cases[0].records) == 2 and cases[2].message == "AssertionError: boom"
    md = render(cases, None, command="python -m hmrmamba.report.reliability", slow=False)
    assert "| tests passed | 2 |" in md and "| tests failed | 1 |" in md
    assert "| distinct bad inputs tried / refused cleanly | 3 / 2 |" in md
    assert "| generated bad inputs (hypothesis examples) tried | 42 |" in md
    assert (
        "| faults injected / survived | 1 / 1 |" in md
        and "| runs compared bit for bit / equal | 1 / 1 |" in md
    )
    assert "| reader x | 2 | 41 | 2 | NaN; truncated |" in md
    assert "| test_gap | module x lets y escape. Fix: z |" in md
    assert "test_broken" in md.split("## Failures")[1]


def test_pip_audit_report_summary():
    report = {
        "dependencies": [
            {
                "name": "a",
                "version": "1.0",
                "vulns": [{"id": "PYSEC-1", "fix_versions": ["1.1"], "aliases": ["CVE-9"]}],
            },
            {"name": "b", "version": "2.0", "vulns": []},
            {"name": "c", "skip_reason": "Dependency not found on PyPI and could not be audited: c (3.0)"},
        ]
    }
    s = summarise_audit(report)
    assert (s["audited"], s["skipped"]) == (2, 1)
    assert s["vulns"] == [{"name": "a", "version": "1.0", "id": "PYSEC-1", "fix": "1.1", "aliases": "CVE-9"}]
    assert s["skip_reasons"] == ["1x Dependency not found on PyPI and could not be audited"]
