#!/usr/bin/env python3
"""Judge a netpol-conformance JUnit file against the outcome expected of a cluster.

    junit-verdict.py summary JUNIT
        Exit 0 when at least one case ran and none failed or errored, 1 otherwise.
        (`sonobuoy results` exits 0 on failures; this is the check to use instead.)

    junit-verdict.py no-enforcement JUNIT --cases DIR [--cases DIR ...]
        The expected outcome on a cluster whose CNI enforces no policy: every case that
        expects a denied pair must fail (a <failure>, not an <error>), every case that expects
        only allowed pairs must pass; skipped cases are reported and accepted. Exit 0 when the
        JUnit matches, 1 when it does not (each mismatch is listed), 2 on bad input.

A case "expects a denial" when, after its expectation entries are applied in order (later
entries override earlier ones, starting from all-allowed; self pairs ignored), some probe step
leaves at least one pair blocked. The cases come from the YAML table (cases/README.md); a JUnit
test case is tied to its case by its name, "<trial>: <case name>", whose trial is
<source>::<area>::<id>[::<variant>].

Needs Python 3.9+ and PyYAML.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import xml.etree.ElementTree as ET

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("junit-verdict: PyYAML is missing (Debian/Ubuntu: apt-get install python3-yaml)")

# The model pods of each world, as cases/README.md describes them.
WORLDS = {
    "upstream": [f"{ns}/{pod}" for ns in "xyz" for pod in "abc"],
    "npa": [
        f"{house}/{i}"
        for house in ("gryffindor", "slytherin", "hufflepuff", "ravenclaw", "forbidden-forrest")
        for i in (0, 1)
    ],
    "tutorial": [
        "default/frontend",
        "default/backend",
        "monitoring/monitoring",
        "monitoring/other",
        "kube-system/coredns",
    ],
}

PAIR_RE = re.compile(r"^\s*(\S+)\s*->\s*(\S+)")


class BadInput(Exception):
    """The JUnit file or a case file cannot be used."""


# ---------------------------------------------------------------------------------------------
# Cases


def _matches(selector: dict, pod: str) -> bool:
    ns, name = pod.split("/", 1)
    if selector.get("ns") not in (None, ns):
        return False
    return selector.get("pod") in (None, name)


def _pairs_of(entry_value) -> list[tuple[str, str]]:
    pairs = []
    for item in entry_value or []:
        m = PAIR_RE.match(str(item))
        if not m:
            raise BadInput(f"cannot read pair {item!r}")
        pairs.append((m.group(1), m.group(2)))
    return pairs


def probe_denies(probe: dict, pods: list[str] | None) -> bool:
    """Whether this probe step leaves some non-self pair blocked."""
    if "pairs" in probe:
        return any(str(p).split()[-1].lower() == "blocked" for p in probe["pairs"] or [])
    entries = probe.get("expect") or []
    if pods is None:
        # Unknown world: be conservative and read any denial as one.
        return any(
            (isinstance(v, dict) and v.get("allowed") is False) or (k == "blocked" and v)
            for e in entries
            for k, v in e.items()
        )
    blocked: set[tuple[str, str]] = set()
    every = [(a, b) for a in pods for b in pods if a != b]

    def apply(pairs, allowed):
        for p in pairs:
            if allowed:
                blocked.discard(p)
            else:
                blocked.add(p)

    for entry in entries:
        for kind, v in entry.items():
            if kind == "expect":
                apply([(v["from"], v["to"])], v["allowed"])
            elif kind == "expect_all_ingress":
                apply([p for p in every if p[1] == v["pod"]], v["allowed"])
            elif kind == "expect_all_egress":
                apply([p for p in every if p[0] == v["pod"]], v["allowed"])
            elif kind == "expect_peer":
                src, dst = v.get("from") or {}, v.get("to") or {}
                apply([p for p in every if _matches(src, p[0]) and _matches(dst, p[1])], v["allowed"])
            elif kind == "blocked":
                apply(_pairs_of(v), False)
            elif kind == "allowed":
                apply(_pairs_of(v), True)
            else:
                raise BadInput(f"unknown expectation {kind!r}")
    return any(a != b for a, b in blocked)


def load_cases(dirs: list[pathlib.Path]) -> dict[str, dict]:
    """Map case id -> {'denies': bool, 'file': path}."""
    cases: dict[str, dict] = {}
    for d in dirs:
        if not d.is_dir():
            raise BadInput(f"cases directory {d} does not exist")
        for path in sorted(d.rglob("*.yaml")) + sorted(d.rglob("*.yml")):
            try:
                doc = yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise BadInput(f"{path}: not YAML: {e}") from e
            if doc is None:
                continue
            if not isinstance(doc, list):
                raise BadInput(f"{path}: expected a YAML sequence of cases")
            for case in doc:
                cid = case.get("id") if isinstance(case, dict) else None
                if not cid:
                    raise BadInput(f"{path}: a case without an id")
                pods = WORLDS.get(case.get("world"))
                try:
                    denies = any(
                        probe_denies(step["probe"], pods)
                        for step in case.get("steps") or []
                        if isinstance(step, dict) and "probe" in step
                    )
                except (BadInput, KeyError, TypeError, AttributeError) as e:
                    raise BadInput(f"{path}: case {cid}: cannot read its expectations: {e!r}") from e
                cases[cid] = {"denies": denies, "file": str(path)}
    if not cases:
        raise BadInput(f"no cases found in {', '.join(map(str, dirs))}")
    return cases


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


def case_id_of(result: dict, cases: dict[str, dict]) -> str | None:
    """The case id of a JUnit test case named "<trial>: <case name>" (or just "<trial>")."""
    trial = result["name"].split(": ", 1)[0].strip()
    parts = trial.split("::")
    if len(parts) >= 3 and parts[2] in cases:
        return parts[2]
    if trial in cases:
        return trial
    return None


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


def no_enforcement(results: list[dict], cases: dict[str, dict]) -> int:
    problems, notes = [], []
    deny_failed = allow_passed = 0
    for r in results:
        cid = case_id_of(r, cases)
        if cid is None:
            if r["status"] in ("failed", "error"):
                problems.append(f"{r['name']}: {r['status']}, and it is no case of the table")
            else:
                notes.append(f"{r['name']}: {r['status']}, not a case of the table; ignored")
            continue
        denies = cases[cid]["denies"]
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
    n.add_argument("--cases", type=pathlib.Path, action="append", required=True)
    args = ap.parse_args(argv)
    try:
        results = load_junit(args.junit)
        if args.cmd == "summary":
            return summary(results)
        return no_enforcement(results, load_cases(args.cases))
    except BadInput as e:
        print(f"junit-verdict: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
