#!/usr/bin/env python3
"""Where a whole-table run's time went, from the JUnit files `netpol-conformance run --junit` writes.

    junit-breakdown.py RUN.xml[=WALL_SECONDS] ...

Prints one row per run and, for several runs, their median:

- wall: WALL_SECONDS when given (measured around the run), else the suite's own `time`;
- floor: the least time the run could take with its connect timeout and concurrency. Every
  trial sets up (or takes over) its world and waits out one connect timeout per deny group
  (probe steps with nothing changed between them are probed side by side; a group expecting
  at least one blocked pair lasts at least one timeout). Trials that take turns (scope
  `turns`: cluster-scoped policies, the shared world) do that one after another; at most
  `trial-concurrency` trials run at once. So the floor is the target's set-up (the local
  cluster's bring-up, when the run brought it up) plus the larger of the turns chain and the
  whole table's sum divided by the concurrency;
- wall/floor, probes per second of wall time;
- the breakdown, in trial-seconds summed over trials (concurrent trials overlap, so the sum can
  exceed the wall): world set-up, pre-flight, apply, settle, probing, teardown;
- the run's enforcement latency p50 / p99 / max (suite properties).

Needs the properties the suite's runner records (`deny-steps`, `probe-connect-seconds`, …);
a file without them is an error, as is a file that is not JUnit. Exit status 1 on an error.
"""

import statistics
import sys
import xml.etree.ElementTree as ET

PHASES = [
    ("setup", "world-setup-seconds"),
    ("preflight", "preflight-seconds"),
    ("apply", "apply-seconds"),
    ("settle", "settle-seconds"),
    ("probing", "probing-seconds"),
    ("teardown", "teardown-seconds"),
]
COLUMNS = ["wall", "floor", "ratio", "probes/s"] + [p for p, _ in PHASES] + ["lat-p50", "lat-p99", "lat-max"]


class BadJUnit(Exception):
    pass


def properties(element):
    return {p.get("name"): p.get("value") for p in element.findall("./properties/property")}


def number(props, name, where, default=None):
    value = props.get(name)
    if value is None:
        if default is not None:
            return default
        raise BadJUnit(f"{where}: no property {name}")
    try:
        return float(value)
    except ValueError:
        raise BadJUnit(f"{where}: property {name}={value!r} is not a number") from None


def run_row(path, wall=None):
    """The row of one run: COLUMNS' values, plus the counts it was computed from."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise BadJUnit(f"{path}: {e}") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise BadJUnit(f"{path}: no <testsuite>")
    row = {p: 0.0 for p, _ in PHASES}
    chain = spread = probes = deny_steps = deny_groups = timed = 0.0
    concurrency = 0.0
    suite_time = 0.0
    latency = {}
    for suite in suites:
        sprops = properties(suite)
        concurrency = max(concurrency, number(sprops, "trial-concurrency", path, default=0.0))
        target_setup = number(sprops, "target-setup-seconds", path, default=0.0)
        suite_time = max(suite_time, float(suite.get("time") or 0))
        for key in ("p50", "p99", "max"):
            name = f"enforcement-latency-{key}-seconds"
            if name in sprops:
                latency[f"lat-{key}"] = number(sprops, name, path)
        for case in suite.findall("testcase"):
            props = properties(case)
            if "deny-steps" not in props:
                continue  # a trial the runner never ran (skipped, not supported)
            where = f"{path}: {case.get('name')}"
            timed += 1
            connect = number(props, "probe-connect-seconds", where)
            deny_steps += number(props, "deny-steps", where)
            groups = number(props, "deny-groups", where)
            deny_groups += groups
            least = groups * connect + number(props, "world-setup-seconds", where)
            spread += least
            if props.get("scope") in ("turns", "alone"):
                chain += least
            probes += number(props, "probes", where)
            for phase, name in PHASES:
                row[phase] += number(props, name, where, default=0.0)
    if timed == 0:
        raise BadJUnit(f"{path}: no testcase carries the runner's timing properties")
    if concurrency <= 0:
        raise BadJUnit(f"{path}: no trial-concurrency suite property")
    row["wall"] = wall if wall is not None else suite_time
    row["floor"] = target_setup + max(chain, spread / concurrency)
    row["ratio"] = row["wall"] / row["floor"] if row["floor"] > 0 else float("nan")
    row["probes/s"] = probes / row["wall"] if row["wall"] > 0 else float("nan")
    for key in ("lat-p50", "lat-p99", "lat-max"):
        row[key] = latency.get(key, float("nan"))
    row["_counts"] = (int(timed), int(deny_steps), int(deny_groups), int(probes), int(concurrency))
    row["_floor"] = (target_setup, chain, spread / concurrency)
    return row


def render(rows):
    out = []
    head = f"{'run':>6} " + " ".join(f"{c:>9}" for c in COLUMNS)
    out.append(head)
    for name, row in rows:
        out.append(f"{name:>6} " + " ".join(f"{row[c]:9.2f}" for c in COLUMNS))
    if len(rows) > 1:
        med = {c: statistics.median(r[c] for _, r in rows) for c in COLUMNS}
        out.append(f"{'median':>6} " + " ".join(f"{med[c]:9.2f}" for c in COLUMNS))
    for name, row in rows:
        trials, deny, groups, probes, conc = row["_counts"]
        setup, chain, spread = row["_floor"]
        out.append(
            f"run {name}: {trials} timed trials, {deny} deny steps in {groups} deny groups, "
            f"{probes} probes, concurrency {conc}; floor = set-up {setup:.2f} + "
            f"max(turns chain {chain:.2f}, all / concurrency {spread:.2f})"
        )
    return "\n".join(out)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rows = []
    try:
        for i, arg in enumerate(argv, 1):
            path, sep, wall = arg.rpartition("=") if "=" in arg else (arg, "", "")
            try:
                seconds = float(wall) if sep else None
            except ValueError:
                raise BadJUnit(f"{arg}: the wall time {wall!r} is not a number") from None
            rows.append((str(i), run_row(path, seconds)))
    except BadJUnit as e:
        print(f"junit-breakdown: error: {e}", file=sys.stderr)
        return 1
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
