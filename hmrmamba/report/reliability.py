"""Run the bad-input, fault-injection and security suite and write ``docs/reliability.md``.

``python -m hmrmamba.report.reliability`` runs ``pytest tests/robustness tests/test_security_lint.py``
(the fast subset; ``--slow`` adds the whole-stage kill tests and the real MLflow server) with a
junit-xml report, reads the records the tests attach to it (``reliability`` properties: bad inputs
tried, faults injected, runs compared bit for bit, security checks), runs ``pip-audit`` on the
installed environment, and writes the tables atomically. Nothing runs at import.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

SUITE = ("tests/robustness", "tests/test_security_lint.py")
DEFAULT_OUTPUT = "docs/reliability.md"


@dataclass
class Case:
    """One pytest test case from the junit report."""

    name: str
    outcome: str  # passed | failed | error | skipped | xfailed
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def run_suite(root: Path, junit: Path, *, slow: bool, extra: Sequence[str] = ()) -> int:
    """pytest on :data:`SUITE` with a junit-xml report -> pytest's exit status."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *SUITE,
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={junit}",
        "-m",
        "not gpu" if slow else "not slow and not gpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(cmd, cwd=root, env=env, check=False).returncode


def read_junit(path: Path) -> list[Case]:
    """Test cases of a junit-xml file with their ``reliability`` records."""
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome, message = ("failed" if child.tag == "failure" else "error"), child.get("message", "")
            elif child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome, message = ("xfailed" if xfail else "skipped"), child.get("message", "")
        records = [json.loads(p.get("value")) for p in tc.iter("property") if p.get("name") == "reliability"]
        name = f"{tc.get('classname', '')}::{tc.get('name', '')}"
        cases.append(
            Case(
                name=name,
                outcome=outcome,
                seconds=float(tc.get("time", 0) or 0),
                records=records,
                message=message,
            )
        )
    return cases


def run_pip_audit(root: Path, timeout: float = 600) -> dict[str, Any]:
    """``pip-audit`` on this environment (PyPI's service, then OSV if PyPI audited nothing).

    -> ``{"tool", "service", "audited", "skipped", "vulns": [...], "notes": [...]}``.
    """
    exe = Path(sys.executable).with_name("pip-audit")
    result: dict[str, Any] = {
        "tool": "pip-audit",
        "service": None,
        "audited": 0,
        "skipped": 0,
        "vulns": [],
        "notes": [],
    }
    if not exe.exists():
        result["notes"].append(f"pip-audit is not installed in {exe.parent} (`pip install pip-audit`)")
        return result
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    result["tool"] = version.stdout.strip() or "pip-audit"
    for service in ("pypi", "osv"):
        try:
            out = subprocess.run(
                [str(exe), "-f", "json", "--progress-spinner", "off", "--vulnerability-service", service],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            result["notes"].append(f"{service}: timed out after {timeout:.0f} s")
            continue
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            result["notes"].append(f"{service}: no report ({last[:300]})")
            continue
        summary = summarise_audit(report)
        result["notes"].append(
            f"{service}: {summary['audited']} audited, {summary['skipped']} skipped"
            + (f" ({summary['skip_reasons'][0]})" if summary["skip_reasons"] else "")
        )
        if summary["audited"] or service == "osv":
            result.update(
                service=service,
                audited=summary["audited"],
                skipped=summary["skipped"],
                vulns=summary["vulns"],
            )
        if summary["audited"]:
            break
    return result


def summarise_audit(report: dict[str, Any]) -> dict[str, Any]:
    """pip-audit's JSON -> counts, skip reasons and the vulnerable packages."""
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    reasons = collections.Counter(d["skip_reason"].split(":")[0] for d in skipped)
    vulns = [
        {
            "name": d["name"],
            "version": d.get("version", "?"),
            "id": v.get("id"),
            "fix": ", ".join(v.get("fix_versions", [])) or "none",
            "aliases": ", ".join(v.get("aliases", [])),
        }
        for d in deps
        for v in d.get("vulns", [])
    ]
    return {
        "audited": len(deps) - len(skipped),
        "skipped": len(skipped),
        "skip_reasons": [f"{n}x {r}" for r, n in reasons.most_common()],
        "vulns": vulns,
    }


# ---------------------------------------------------------------------------------------------
# the document
# ---------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in r) + " |" for r in rows
    ]


def render(cases: list[Case], audit: dict[str, Any] | None, *, command: str, slow: bool) -> str:
    """The markdown of ``docs/reliability.md``."""
    outcome = collections.Counter(c.outcome for c in cases)
    recs = [(c, r) for c in cases for r in c.records]
    bad = [(c, r) for c, r in recs if r["kind"] == "bad_input"]
    faults = [(c, r) for c, r in recs if r["kind"] == "fault"]
    bitwise = [(c, r) for c, r in recs if r["kind"] == "bitwise"]
    security = [(c, r) for c, r in recs if r["kind"] == "security"]
    ok = lambda c: c.outcome == "passed"
    lines = [
        "# Reliability and security",
        "",
        f"Generated by `{command}` ({time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{'all tests' if slow else 'fast subset: tests marked slow not run'}). It runs `pytest "
        f"{' '.join(SUITE)}` and reads what each test tried from its junit-xml report. Do not edit by hand.",
        "",
        "Every bad input must end in a clean error: an `InputError` (a `ValueError`) raised by hmrmamba's own "
        "code (checked on the innermost traceback frame), whose message names the file, the field and what "
        "was expected; no partial output file, and no change to existing outputs (all files hashed before "
        "and after). Faults are `kill -9` at seeded random moments, a full disk, and an MLflow server that "
        "is down, goes down or hangs; runs after a kill are compared with uninterrupted ones bit for bit.",
        "",
        "## Summary",
        "",
        *_table(
            ["what", "count"],
            [
                ("tests passed", outcome["passed"]),
                ("tests failed", outcome["failed"] + outcome["error"]),
                ("known gaps (strict xfail, fix proposed below)", outcome["xfailed"]),
                ("skipped", outcome["skipped"]),
                ("distinct bad inputs tried / refused cleanly", f"{len(bad)} / {sum(ok(c) for c, _ in bad)}"),
                (
                    "generated bad inputs (hypothesis examples) tried",
                    sum(r.get("examples", 1) for _, r in bad),
                ),
                (
                    "faults injected / survived",
                    f"{len(faults)} / {sum(ok(c) and r['survived'] for c, r in faults)}",
                ),
                (
                    "runs compared bit for bit / equal",
                    f"{len(bitwise)} / {sum(ok(c) and r['equal'] for c, r in bitwise)}",
                ),
                ("security checks passed", f"{sum(ok(c) for c, _ in security)} / {len(security)}"),
            ],
        ),
        "",
        "## Bad inputs by target",
        "",
    ]
    by_target: dict[str, list] = collections.defaultdict(list)
    for c, r in bad:
        by_target[r["target"]].append((c, r))
    lines += _table(
        ["target", "cases", "generated examples", "refused cleanly", "cases tried"],
        [
            (
                t,
                len(items),
                sum(r.get("examples", 1) for _, r in items),
                sum(ok(c) for c, _ in items),
                "; ".join(sorted({r["case"] for _, r in items}))[:400],
            )
            for t, items in sorted(by_target.items())
        ],
    )
    lines += ["", "## Faults injected", ""]
    lines += _table(
        ["target", "fault", "outcome", "detail"],
        [
            (r["target"], r["case"], "survived" if ok(c) and r["survived"] else "FAILED", r.get("detail", ""))
            for c, r in sorted(faults, key=lambda x: x[1]["target"])
        ],
    )
    lines += ["", "## Runs compared bit for bit", ""]
    lines += (
        _table(
            ["target", "compared", "result", "how"],
            [
                (
                    r["target"],
                    r["case"],
                    "equal" if ok(c) and r["equal"] else "DIFFERENT",
                    r.get("detail", ""),
                )
                for c, r in bitwise
            ],
        )
        if bitwise
        else ["(none in this run: they are slow tests; use `--slow`)"]
    )
    lines += ["", "## Security checks", ""]
    sec_by: dict[str, list] = collections.defaultdict(list)
    for c, r in security:
        sec_by[r["target"]].append((c, r))
    lines += _table(
        ["target", "checks", "passed", "what"],
        [
            (
                t,
                len(items),
                sum(ok(c) for c, _ in items),
                "; ".join(sorted({r["case"] for _, r in items}))[:400],
            )
            for t, items in sorted(sec_by.items())
        ],
    )
    gaps = [c for c in cases if c.outcome == "xfailed"]
    lines += ["", "## Known gaps (strict xfail: each turns into a failure once fixed)", ""]
    if gaps:
        seen: dict[str, list[str]] = collections.defaultdict(list)
        for c in gaps:
            seen[c.message.removeprefix("reason: ")].append(c.name.split("::")[-1])
        lines += _table(["tests", "problem and proposed fix"], [(", ".join(v), k) for k, v in seen.items()])
    else:
        lines.append("None.")
    failed = [c for c in cases if c.outcome in ("failed", "error")]
    if failed:
        lines += ["", "## Failures", ""]
        lines += _table(["test", "message"], [(c.name, c.message[:300]) for c in failed])
    lines += ["", "## Dependency audit (pip-audit)", ""]
    if audit is None:
        lines.append("Not run (`--no-audit`).")
    else:
        lines.append(
            f"{audit['tool']}; service used: {audit['service'] or 'none'}; "
            f"{audit['audited']} packages audited, {audit['skipped']} skipped."
        )
        lines += [""] + [f"- {n}" for n in audit["notes"]] + [""]
        if audit["vulns"]:
            lines += _table(
                ["package", "version", "advisory", "aliases", "fixed in"],
                [(v["name"], v["version"], v["id"], v["aliases"], v["fix"]) for v in audit["vulns"]],
            )
        elif audit["audited"]:
            lines.append("No known vulnerabilities in the audited packages.")
        else:
            lines.append(
                "**Nothing could be audited here**: neither vulnerability service was reachable from "
                "this machine, so this is not a clean bill of health. Re-run `python -m "
                "hmrmamba.report.reliability` (or `pip-audit`) on a machine with access to PyPI's JSON API or "
                "api.osv.dev."
            )
    slowest = sorted(cases, key=lambda c: -c.seconds)[:5]
    total = sum(c.seconds for c in cases)
    lines += [
        "",
        f"Suite time: {total:.0f} s over {len(cases)} tests; slowest: "
        + ", ".join(f"{c.name.split('::')[-1]} {c.seconds:.0f} s" for c in slowest)
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hmrmamba.report.reliability", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--slow", action="store_true", help="also run the slow tests (whole-stage kills, ...)"
    )
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help="the markdown file to write")
    parser.add_argument("--junit", help="read this junit-xml report instead of running the suite")
    parser.add_argument("--no-audit", action="store_true", help="skip pip-audit")
    parser.add_argument(
        "--audit-json", help="use this saved `pip-audit -f json` report instead of running it"
    )
    parser.add_argument("--audit-note", action="append", default=[], help="a note on the audit (repeatable)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    from hmrmamba.atomic import atomic_path
    from hmrmamba.config import find_project_root

    root = find_project_root()
    status = 0
    with tempfile.TemporaryDirectory(prefix="hmrmamba-reliability-") as tmp:
        junit = Path(args.junit) if args.junit else Path(tmp) / "junit.xml"
        if not args.junit:
            status = run_suite(root, junit, slow=args.slow, extra=args.pytest_args)
        if not junit.is_file():
            print(f"no junit report at {junit} (pytest status {status})", file=sys.stderr)
            return status or 1
        cases = read_junit(junit)
    audit = None
    if args.audit_json:
        summary = summarise_audit(json.loads(Path(args.audit_json).read_text()))
        audit = {
            "tool": "pip-audit (saved report)",
            "service": "pypi",
            "audited": summary["audited"],
            "skipped": summary["skipped"],
            "vulns": summary["vulns"],
            "notes": [
                f"{args.audit_json}: {summary['audited']} audited, {summary['skipped']} skipped"
                + (f" ({summary['skip_reasons'][0]})" if summary["skip_reasons"] else "")
            ]
            + list(args.audit_note),
        }
    elif not args.no_audit:
        audit = run_pip_audit(root)
    command = "python -m hmrmamba.report.reliability" + (" --slow" if args.slow else "")
    out = root / args.output
    with atomic_path(out) as tmp_md:
        tmp_md.write_text(render(cases, audit, command=command, slow=args.slow), encoding="utf-8")
    print(f"wrote {out} ({len(cases)} tests; pytest status {status})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
