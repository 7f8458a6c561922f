//! Faults injected into a real local cluster (root + control-plane binaries), each with the exact
//! outcome a conformance verdict must give. None of them may come out as a pass: a server that
//! never serves, a destination deleted mid-trial, a broken route between the nodes, a dataplane
//! that drops everything, and no enforcer at all (over the whole table).
//!
//! Without root or the binaries each test prints why it did not run; with
//! `NETPOL_REQUIRE_LOCAL=1` that is a failure.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Scratch, prerequisites};
use serde_json::Value;

/// The `<testcase>` element of a trial in a JUnit file.
fn testcase<'a>(xml: &'a str, trial: &str) -> &'a str {
    let start = xml
        .find(&format!("<testcase name=\"{trial}: "))
        .unwrap_or_else(|| panic!("no testcase for {trial} in:\n{xml}"));
    let rest = &xml[start..];
    let head_end = rest.find('>').expect("testcase tag ends");
    if rest[..head_end].ends_with('/') {
        return &rest[..=head_end];
    }
    let end = rest.find("</testcase>").expect("testcase closes");
    &rest[..end]
}

/// Every testcase as (trial, element).
fn testcases(xml: &str) -> BTreeMap<String, &str> {
    xml.match_indices("<testcase name=\"")
        .filter_map(|(i, _)| {
            let name = &xml[i + 16..];
            let trial = name.split(": ").next()?.to_string();
            (trial != "netpol-conformance run").then(|| (trial.clone(), testcase(xml, &trial)))
        })
        .collect()
}

fn run(scratch: &Scratch, args: &[&str], junit: &Path) -> (Output, String) {
    let out = scratch
        .command()
        .args(["run", "--local"])
        .args(args)
        .arg("--junit")
        .arg(junit)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let xml = std::fs::read_to_string(junit)
        .unwrap_or_else(|e| panic!("no JUnit ({e}):\n{}", String::from_utf8_lossy(&out.stderr)));
    (out, xml)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn iptables(netns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "iptables"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iptables {args:?} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `undo` when dropped, so an injected fault is removed even when an assertion fails.
struct Undo<F: FnMut()>(F);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

const USER_CASES: &str = r#"
- id: server-never-serves
  name: "fault: nothing serves the probed port"
  source: user
  area: faults
  world: upstream
  steps:
    - create:
        - apiVersion: networking.k8s.io/v1
          kind: NetworkPolicy
          metadata: {name: deny-all, namespace: x}
          spec: {podSelector: {}, policyTypes: [Ingress], ingress: []}
    - probe:
        port: 82
        protocol: TCP
        expect:
          - expect_peer: {from: {}, to: {ns: x}, allowed: false}
- id: destination-deleted
  name: "fault: the destination is deleted before the probe"
  source: user
  area: faults
  world: upstream
  steps:
    - create:
        - apiVersion: networking.k8s.io/v1
          kind: NetworkPolicy
          metadata: {name: deny-all, namespace: x}
          spec: {podSelector: {}, policyTypes: [Ingress], ingress: []}
    - delete_pods: [x/a]
    - probe:
        port: 80
        protocol: TCP
        expect:
          - expect_peer: {from: {}, to: {ns: x}, allowed: false}
"#;

#[test]
fn injected_faults_end_as_errors_never_as_passes() {
    if !prerequisites("injected_faults_end_as_errors_never_as_passes") {
        return;
    }
    let scratch = Scratch::new("flt");
    let up = scratch.command().args(["local", "up"]).output().unwrap();
    assert!(
        up.status.success(),
        "local up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let nodes = ["npc-flt-node-0", "npc-flt-node-1"];

    // A server that never serves the probed port, and a destination deleted mid-trial.
    let cases = scratch.dir.join("cases");
    std::fs::create_dir_all(&cases).unwrap();
    std::fs::write(cases.join("faults.yaml"), USER_CASES).unwrap();
    let junit = scratch.dir.join("user.xml");
    let (out, xml) = run(
        &scratch,
        &["--cases", cases.to_str().unwrap(), "user::faults::"],
        &junit,
    );
    assert!(!out.status.success(), "a run with faults fails");
    let never = testcase(&xml, "user::faults::server-never-serves");
    assert!(
        never.contains("<error message=\"world not ready: ") && never.contains("TCP/82 refused"),
        "{never}"
    );
    let deleted = testcase(&xml, "user::faults::destination-deleted");
    assert!(
        deleted.contains("<error message=\"step 2 (TCP/80)"),
        "{deleted}"
    );
    assert!(
        deleted.contains("blocked, but destination x/a is not alive on TCP/80"),
        "{deleted}"
    );

    // The routes between the two nodes removed: the pre-flight names the cross-node pairs.
    let routes = [(nodes[0], "10.244.1.0/24"), (nodes[1], "10.244.0.0/24")];
    let via = |node: &str, cidr: &str| -> String {
        let out = Command::new("ip")
            .args(["-n", node, "route", "show", cidr])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .unwrap_or_else(|| panic!("no route to {cidr} in {node}: {text}"))
            .to_string()
    };
    let gateways: Vec<String> = routes.iter().map(|(n, c)| via(n, c)).collect();
    for (node, cidr) in routes {
        ip(&["-n", node, "route", "del", cidr]);
    }
    {
        let _restore = Undo(|| {
            for ((node, cidr), gw) in routes.iter().zip(&gateways) {
                let _ = Command::new("ip")
                    .args(["-n", node, "route", "replace", cidr, "via", gw])
                    .output();
            }
        });
        let junit = scratch.dir.join("route.xml");
        let (out, xml) = run(
            &scratch,
            &[
                "--preflight-timeout",
                "3",
                "--keep",
                "--exact",
                "upstream::ingress::default-deny-ingress",
            ],
            &junit,
        );
        assert!(!out.status.success());
        let case = testcase(&xml, "upstream::ingress::default-deny-ingress");
        assert!(
            case.contains("<error message=\"world not ready: "),
            "{case}"
        );
        // Every pair it names crosses the nodes (the world was kept to look).
        let node_of = pod_nodes(&scratch);
        let message = case
            .split("<error message=\"world not ready: ")
            .nth(1)
            .unwrap()
            .split(" after ")
            .next()
            .unwrap();
        let mut named = 0;
        for pair in message.split(", ") {
            let pair = pair.split(" and ").next().unwrap();
            let mut words = pair.split_whitespace();
            let (from, _, to) = (
                words.next().unwrap(),
                words.next().unwrap(),
                words.next().unwrap(),
            );
            assert_ne!(
                node_of[from], node_of[to],
                "{from} → {to} is on one node, yet named: {message}"
            );
            named += 1;
        }
        assert!(named > 0, "{message}");
    }
    let cleanup = scratch
        .command()
        .args(["cleanup", "--all", "--kubeconfig"])
        .arg(scratch.dir.join("cluster/kubeconfig"))
        .output()
        .unwrap();
    assert!(
        cleanup.status.success(),
        "{}",
        String::from_utf8_lossy(&cleanup.stderr)
    );

    // A dataplane that drops everything: nothing passes, whatever the case expects.
    for node in nodes {
        iptables(node, &["-I", "FORWARD", "1", "-j", "DROP"]);
    }
    {
        let _restore = Undo(|| {
            for node in nodes {
                let _ = Command::new("ip")
                    .args([
                        "netns", "exec", node, "iptables", "-D", "FORWARD", "-j", "DROP",
                    ])
                    .output();
            }
        });
        let junit = scratch.dir.join("drop.xml");
        let trials = [
            "upstream::ingress::default-deny-ingress",
            "upstream::ingress::allow-all",
            "npa::admin-tier::admin-egress-tcp::v1alpha2",
        ];
        let out = scratch
            .command()
            .args(["run", "--local", "--preflight-timeout", "2", "--junit"])
            .arg(&junit)
            .env("E2E_FOCUS", trials.join("|"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let xml = std::fs::read_to_string(&junit).unwrap();
        for trial in trials {
            let case = testcase(&xml, trial);
            assert!(
                case.contains("<error message=\"world not ready: ") && case.contains("timed out"),
                "{trial}: {case}"
            );
        }
    }
}

/// Model pod (`x/a`) → node, for the one upstream world a kept run left.
fn pod_nodes(scratch: &Scratch) -> BTreeMap<String, String> {
    let out = scratch
        .command()
        .args(["local", "status"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let kubectl = netpol_local::cluster::find_bin_dir()
        .unwrap()
        .join("kubectl");
    let pods = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(scratch.dir.join("cluster/kubeconfig"))
        .args(["get", "pods", "-A", "-o", "json"])
        .output()
        .unwrap();
    assert!(pods.status.success());
    let list: Value = serde_json::from_slice(&pods.stdout).unwrap();
    let mut out = BTreeMap::new();
    for pod in list["items"].as_array().unwrap() {
        let ns = pod["metadata"]["namespace"].as_str().unwrap();
        // upstream-<model namespace>-<suffix>
        let Some(model_ns) = ns
            .strip_prefix("upstream-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        let name = pod["metadata"]["name"].as_str().unwrap();
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        out.insert(format!("{model_ns}/{name}"), node.to_string());
    }
    out
}

/// Whether a trial's plan expects some pair blocked in a step this kernel can probe.
fn denies(case: &Value) -> bool {
    case["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == "probe" && s["protocol"] != "SCTP")
        .any(|s| {
            s["pairs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["expect"] == "blocked")
        })
}

#[test]
fn without_an_enforcer_every_deny_case_fails_and_every_allow_only_case_passes() {
    if !prerequisites("without_an_enforcer_every_deny_case_fails_and_every_allow_only_case_passes")
    {
        return;
    }
    let scratch = Scratch::new("noe");
    let plan = scratch.command().args(["plan", "--json"]).output().unwrap();
    assert!(plan.status.success());
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let junit = scratch.dir.join("none.xml");
    // No retries: without an enforcer a wrong pair stays wrong.
    let (out, xml) = run(
        &scratch,
        &["--no-enforcer", "--settle-timeout", "0"],
        &junit,
    );
    assert!(!out.status.success());
    let cases = testcases(&xml);
    let mut false_passes = Vec::new();
    let (mut failed, mut passed) = (0, 0);
    for case in plan["cases"].as_array().unwrap() {
        let trial = case["trial"].as_str().unwrap();
        let element = cases
            .get(trial)
            .unwrap_or_else(|| panic!("{trial} is not in the JUnit file"));
        let sctp_only = case["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["action"] == "probe")
            .all(|s| s["protocol"] == "SCTP");
        if sctp_only {
            assert!(element.contains("<skipped "), "{trial}: {element}");
        } else if denies(case) {
            if !element.contains("<failure message=\"step ") {
                false_passes.push(format!("{trial}: {element}"));
            }
            failed += 1;
        } else {
            assert!(
                !element.contains("<failure") && !element.contains("<error"),
                "an allow-only case fails without an enforcer: {trial}: {element}"
            );
            passed += 1;
        }
    }
    assert!(
        false_passes.is_empty(),
        "deny cases that did not fail without an enforcer:\n{}",
        false_passes.join("\n")
    );
    assert!(
        failed > 50 && passed >= 2,
        "failed {failed}, passed {passed}"
    );
    eprintln!("no enforcer: {failed} deny cases failed, {passed} allow-only cases passed");
}
