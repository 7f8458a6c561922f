#!/usr/bin/env python3
"""Judge a netpol-conformance JUnit file against the outcome expected of a cluster.

    junit-verdict.py summary JUNIT
        Exit 0 when at least one case ran and none failed or errored, 1 otherwise.
        (`sonobuoy results` exits 0 on failures; this is the check to use instead.)

    junit-verdict.py no-enforcement JUNIT --plan PLAN
        The expected outcome on a cluster whose CNI enforces no policy: every trial that
        expects a denied pair must fail (a <failure>, not an <error>), every trial that expects
        only allowed pairs must pass; skipped trials are reported and accepted. Exit 0 when the
        JUnit matches, 1 when it does not (each mismatch is listed), 2 on bad input.

PLAN is the suite's own expansion of the table, `netpol-conformance plan --json` (with the same
--cases as the run): every probe step with its expected pairs, so this script knows no world,
selector or expectation rule of its own. A trial "expects a denial" when one of its probe steps
expects some pair of two different pods blocked. A JUnit test case is tied to its trial by its
name, "<trial>: <case name>".

Needs Python 3.9+.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import xml.etree.ElementTree as ET


class BadInput(Exception):
    """The JUnit file or the plan cannot be used."""


# ---------------------------------------------------------------------------------------------
# The plan


def load_plan(path: pathlib.Path) -> dict[str, bool]:
    """Map trial -> whether some probe step of it expects a pair blocked."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read the plan {path}: {e}") from e
    if not isinstance(doc, dict) or "error" in doc:
        raise BadInput(f"{path}: the suite could not plan the table: {doc.get('error') if isinstance(doc, dict) else doc!r}")
    trials: dict[str, bool] = {}
    try:
        for case in doc["cases"]:
            trials[case["trial"]] = any(
                pair["expect"] == "blocked" and pair["from"] != pair["to"]
                for step in case["steps"]
                if step["action"] == "probe"
                for pair in step["pairs"]
            )
    except (KeyError, TypeError) as e:
        raise BadInput(f"{path}: not the JSON of `netpol-conformance plan --json`: {e!r}") from e
    if not trials:
        raise BadInput(f"{path}: the plan holds no trial")
    return trials


# ---------------------------------------------------------------------------------------------
# JUnit


def load_junit(path: pathlib.Path) -> list[dict]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise BadInput(f"cannot read JUnit file {path}: {e}") from e
    if root.tag not in ("testsuites", "testsuite"):
        raise BadInput(f"{path}: root element is <{root.tag}>, not <testsuites> or <testsuite>")
    results = []
    for tc in root.iter("testcase"):
        if tc.find("skipped") is not None:
            status = "skipped"
        elif tc.find("error") is not None:
            status = "error"
        elif tc.find("failure") is not None:
            status = "failed"
        else:
            status = "passed"
        results.append({"name": tc.get("name", ""), "classname": tc.get("classname", ""), "status": status})
    return results


def trial_of(result: dict, trials: dict[str, bool]) -> str | None:
    """The trial of a JUnit test case named "<trial>: <case name>" (or just "<trial>")."""
    trial = result["name"].split(": ", 1)[0].strip()
    return trial if trial in trials else None


# ---------------------------------------------------------------------------------------------
# Verdicts


def summary(results: list[dict]) -> int:
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("passed", "failed", "error", "skipped")}
    print("junit-verdict: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for r in results:
        if r["status"] in ("failed", "error"):
            print(f"  {r['status']}: {r['name']}")
    if not results:
        print("junit-verdict: the JUnit file holds no test case")
        return 1
    if counts["passed"] + counts["failed"] + counts["error"] == 0:
        print("junit-verdict: every case was skipped; nothing was checked")
        return 1
    return 1 if counts["failed"] or counts["error"] else 0


def no_enforcement(results: list[dict], trials: dict[str, bool]) -> int:
    problems, notes = [], []
    deny_failed = allow_passed = 0
    for r in results:
        trial = trial_of(r, trials)
        if trial is None:
            if r["status"] in ("failed", "error"):
                problems.append(f"{r['name']}: {r['status']}, and it is no case of the table")
            else:
                notes.append(f"{r['name']}: {r['status']}, not a case of the table; ignored")
            continue
        denies = trials[trial]
        if r["status"] == "skipped":
            notes.append(f"{r['name']}: skipped")
        elif r["status"] == "error":
            problems.append(f"{r['name']}: error (an infrastructure fault, not a policy verdict)")
        elif denies and r["status"] == "passed":
            problems.append(f"{r['name']}: passed, but it expects a denial that a cluster without enforcement cannot give")
        elif not denies and r["status"] == "failed":
            problems.append(f"{r['name']}: failed, but it expects only allowed traffic, which a cluster without enforcement gives")
        elif denies:
            deny_failed += 1
        else:
            allow_passed += 1
    for n in notes:
        print(f"  note: {n}")
    print(f"junit-verdict: {deny_failed} denial cases failed as expected, {allow_passed} allow-only cases passed")
    if deny_failed == 0:
        problems.append("no denial case failed: the run shows nothing about enforcement")
    for p in problems:
        print(f"  unexpected: {p}")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary", help="pass when nothing failed")
    s.add_argument("junit", type=pathlib.Path)
    n = sub.add_parser("no-enforcement", help="pass when exactly the denial cases failed")
    n.add_argument("junit", type=pathlib.Path)
    n.add_argument("--plan", type=pathlib.Path, required=True, help="netpol-conformance plan --json")
    args = ap.parse_args(argv)
    try:
        results = load_junit(args.junit)
        if args.cmd == "summary":
            return summary(results)
        return no_enforcement(results, load_plan(args.plan))
    except BadInput as e:
        print(f"junit-verdict: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
