//! The kube backend on real nodes: `local up --runtime kubelet` (kubelet + containerd + runc per
//! node, the enforcer as the `enforcer/deploy/` DaemonSet), then `run --kubeconfig` exactly as
//! against kind. One deny trial must pass through the exec prober with the JUnit properties
//! saying so, and the same trial on the same nodes without the enforcer must fail as a policy
//! mismatch (not an error, not a pass).
//!
//! Needs root, the control-plane and node binaries and the node images (`hack/test.sh` builds
//! them); otherwise it prints why it did not run, and under `NETPOL_REQUIRE_LOCAL=1` with
//! `NETPOL_SETUP_NODES=1` that is a failure.

mod common;

use std::process::{Output, Stdio};

use common::{Scratch, prerequisites};

const TRIAL: &str = "upstream::ingress::default-deny-ingress";

fn nodes_present() -> bool {
    let missing = netpol_local::kubelet::find_node_bin_dir()
        .and_then(|_| netpol_local::kubelet::find_images_dir())
        .err();
    match missing {
        None => true,
        Some(e) => {
            let required = netpol_local::local_required()
                && netpol_local::env_flag("NETPOL_SETUP_NODES") == Ok(Some(true));
            assert!(!required, "NETPOL_SETUP_NODES=1 but {e}");
            eprintln!("real nodes: not run: {e} (hack/setup.sh with NETPOL_SETUP_NODES=1)");
            false
        }
    }
}

fn checked(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Brings the scratch cluster up on real nodes, runs [`TRIAL`] through its kubeconfig, takes
/// the cluster down again; the JUnit XML and whether the run exited 0.
fn up_run_down(scratch: &Scratch, up_args: &[&str]) -> (String, bool) {
    checked(
        "local up --runtime kubelet",
        scratch
            .command()
            .args(["local", "up", "--runtime", "kubelet"])
            .args(up_args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    let junit = scratch.dir.join("junit.xml");
    let kubeconfig = scratch.dir.join("cluster/kubeconfig");
    let out = scratch
        .command()
        .arg("run")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([TRIAL, "--exact", "--junit"])
        .arg(&junit)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    checked(
        "local down",
        scratch.command().args(["local", "down"]).output().unwrap(),
    );
    let xml = std::fs::read_to_string(&junit)
        .unwrap_or_else(|e| panic!("no JUnit ({e}):\n{}", String::from_utf8_lossy(&out.stderr)));
    (xml, out.status.success())
}

fn property<'a>(xml: &'a str, name: &str) -> &'a str {
    let key = format!("<property name=\"{name}\" value=\"");
    let start = xml
        .find(&key)
        .unwrap_or_else(|| panic!("no property {name} in:\n{xml}"))
        + key.len();
    let len = xml[start..].find('"').expect("value ends");
    &xml[start..start + len]
}

#[test]
fn a_deny_trial_passes_on_real_nodes_with_the_daemonset_and_fails_without_it() {
    if !prerequisites("real nodes") || !nodes_present() {
        return;
    }
    let scratch = Scratch::new("rns");

    let (xml, ok) = up_run_down(&scratch, &[]);
    assert!(ok, "the trial did not pass on real nodes:\n{xml}");
    assert_eq!(property(&xml, "prober"), "exec", "{xml}");
    assert_eq!(property(&xml, "runtime"), "kubelet", "{xml}");
    assert_eq!(property(&xml, "enforcer"), "daemonset", "{xml}");
    assert!(property(&xml, "container-runtime").starts_with("containerd://"));
    let execs: usize = property(&xml, "execs").parse().expect("a count");
    assert!(
        execs > 0,
        "probes went through exec, so execs were counted: {xml}"
    );
    assert!(
        !xml.contains("<failure") && !xml.contains("<error"),
        "{xml}"
    );

    let (xml, ok) = up_run_down(&scratch, &["--no-enforcer"]);
    assert!(!ok, "a deny trial passed with no enforcer:\n{xml}");
    assert_eq!(property(&xml, "enforcer"), "unknown", "{xml}");
    assert_eq!(property(&xml, "prober"), "exec", "{xml}");
    assert!(
        xml.contains("<failure") && xml.contains("policy mismatch") && !xml.contains("<error"),
        "no enforcer must be a policy mismatch, not an error:\n{xml}"
    );
}

/// The default of a run without a kubeconfig: real nodes, brought up for the run and torn down
/// after it, with the DaemonSet enforcer and the exec prober (nothing asks for them).
#[test]
fn a_run_without_a_kubeconfig_brings_up_real_nodes_and_takes_them_down() {
    if !prerequisites("real nodes") || !nodes_present() {
        return;
    }
    let scratch = Scratch::new("rnd");
    let junit = scratch.dir.join("junit.xml");
    let out = scratch
        .command()
        // The default, not the emulated runtime the other local tests ask for.
        .env_remove("NETPOL_LOCAL_RUNTIME")
        .args(["run", "--local", TRIAL, "--exact", "--junit"])
        .arg(&junit)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let xml =
        std::fs::read_to_string(&junit).unwrap_or_else(|e| panic!("no JUnit ({e}):\n{stderr}"));
    assert!(
        out.status.success(),
        "the trial did not pass:\n{stderr}\n{xml}"
    );
    assert!(
        stderr.contains(
            "the local cluster (real nodes: kubelet + containerd), with the enforcer DaemonSet"
        ),
        "the target line names real nodes:\n{stderr}"
    );
    assert_eq!(property(&xml, "prober"), "exec", "{xml}");
    assert_eq!(property(&xml, "runtime"), "kubelet", "{xml}");
    assert_eq!(property(&xml, "enforcer"), "daemonset", "{xml}");
    let status = scratch
        .command()
        .args(["local", "status"])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "the run's own cluster is still there after it ended:\n{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with("npc-rnd-"))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "network namespaces left behind: {left:?}");
}
