//! The suite end to end on the local cluster (root + control-plane binaries): Sonobuoy plugin
//! mode, and an interrupted run that must leave nothing behind.
//!
//! Without root, or without the control-plane binaries and `NETPOL_REQUIRE_LOCAL=1`, each test
//! prints why it did not run; with `NETPOL_REQUIRE_LOCAL=1` a missing prerequisite is a failure.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DynamicObject, ListParams};
use netpol_conformance::kube::client::client_from_kubeconfig;
use netpol_conformance::kube::{LABEL_RUN, resource_of};

mod common;
use common::{Scratch, prerequisites};

/// Collects the bodies POSTed to /progress.
fn progress_listener() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        sink.lock().unwrap().push(body.to_string());
                        break;
                    }
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (port, bodies)
}

/// Sonobuoy's `plugin.ProgressUpdate` fields (`pkg/plugin/interface.go`); the server sets
/// `name`, `node` and `timestamp` itself.
const PROGRESS_FIELDS: [&str; 8] = [
    "msg",
    "total",
    "completed",
    "failures",
    "errors",
    "appendtotals",
    "appendcompleted",
    "appendfailing",
];

/// The worker's side of a Sonobuoy run, replayed: the plugin container's entrypoint as shipped
/// (`plugin/sonobuoy-entrypoint.sh`, the binary on its PATH) with the env Sonobuoy sets
/// (`SONOBUOY_RESULTS_DIR`, `SONOBUOY_PROGRESS_PORT`, the plugin's empty `E2E_SKIP`) and a
/// progress listener standing in for the worker.
#[test]
fn plugin_mode_leaves_results_sonobuoy_accepts() {
    if !prerequisites("plugin_mode_leaves_results_sonobuoy_accepts") {
        return;
    }
    let scratch = Scratch::new("plg");
    let results = scratch.dir.join("results");
    let (port, bodies) = progress_listener();
    let suite = scratch.command();
    let bin_dir = Path::new(suite.get_program()).parent().unwrap().to_owned();
    let mut entrypoint = std::process::Command::new("bash");
    entrypoint.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugin/sonobuoy-entrypoint.sh"
    ));
    for (key, value) in suite.get_envs() {
        match value {
            Some(v) => entrypoint.env(key, v),
            None => entrypoint.env_remove(key),
        };
    }
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let out = entrypoint
        .arg("--no-enforcer")
        .env("PATH", path)
        .env("SONOBUOY_RESULTS_DIR", &results)
        .env("SONOBUOY_PROGRESS_PORT", port.to_string())
        .env("E2E_FOCUS", "default-deny-ingress")
        // Sonobuoy passes the plugin's empty values through; empty must mean "not set".
        .env("E2E_SKIP", "")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "plugin mode exits 0 once results are written:\n{stderr}"
    );

    // `done` names the results directory, absolute: the worker tars and uploads all of it.
    let done = std::fs::read_to_string(results.join("done")).unwrap();
    assert_eq!(Path::new(&done), std::path::absolute(&results).unwrap());
    let mut files: Vec<(String, u32)> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&e.metadata().unwrap().permissions());
            (e.file_name().into_string().unwrap(), mode)
        })
        .collect();
    files.sort();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["done", "junit.xml", "netpol-conformance.log", "report.html"],
        "the JUnit file is the only *.xml; the log and HTML report travel with it"
    );
    for (name, mode) in &files {
        // The worker sidecar may run as another user.
        assert!(mode & 0o004 != 0, "{name} is not world-readable ({mode:o})");
    }
    let log = std::fs::read_to_string(results.join("netpol-conformance.log")).unwrap();
    assert!(log.contains("default-deny-ingress"), "{log}");
    let html = std::fs::read_to_string(results.join("report.html")).unwrap();
    assert!(html.contains("default-deny-ingress"));

    let xml = std::fs::read_to_string(results.join("junit.xml")).unwrap();
    // Without an enforcer the deny cases fail with the tables; SCTP is skipped with its reason.
    assert!(xml.contains("tests=\"3\""), "{xml}");
    // The pods are spread over both nodes: the failure says where its wrong pairs ran.
    assert!(
        xml.contains("<failure message=\"step 1 (TCP/80) had wrong results (")
            && xml.contains(" of 24 wrong pairs are cross-node)\""),
        "{xml}"
    );
    assert!(xml.contains("comparison:"), "{xml}");
    assert!(
        xml.contains("<skipped message=\"SCTP: exempted with --exempt-features"),
        "{xml}"
    );

    // One progress update per trial, each in Sonobuoy's field names and types, counting up.
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 3, "one progress update per trial: {bodies:?}");
    let mut seen = 0;
    for body in &bodies {
        let update: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        for key in update.keys() {
            assert!(
                PROGRESS_FIELDS.contains(&key.as_str()),
                "unknown field {key}: {body}"
            );
        }
        assert!(update["msg"].is_string(), "{body}");
        assert_eq!(update["total"], 3, "{body}");
        let strings = |k: &str| {
            update[k]
                .as_array()
                .unwrap_or_else(|| panic!("{k} is not a list: {body}"))
                .iter()
                .map(|v| v.as_str().expect("a string").to_string())
                .collect::<Vec<_>>()
        };
        let done_now = update["completed"].as_u64().unwrap() as usize + strings("failures").len();
        assert_eq!(done_now, seen + 1, "each update adds one trial: {body}");
        seen = done_now;
        assert!(strings("errors").is_empty(), "{body}");
    }
    let last: serde_json::Value = serde_json::from_str(bodies.last().unwrap()).unwrap();
    assert_eq!(last["failures"].as_array().unwrap().len(), 2);
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn an_interrupted_run_leaves_no_namespace_or_policy_behind() {
    if !prerequisites("an_interrupted_run_leaves_no_namespace_or_policy_behind") {
        return;
    }
    let scratch = Scratch::new("int");
    let up = scratch.command().args(["local", "up"]).output().unwrap();
    assert!(
        up.status.success(),
        "local up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let kubeconfig = scratch.dir.join("cluster/kubeconfig");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(client_from_kubeconfig(Some(&kubeconfig)))
        .unwrap();

    // An npa case (cluster-scoped policies, a shared world) and upstream cases run together.
    let mut run = scratch
        .command()
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--probe-target", "pod-ip", "--test-threads", "2"])
        // The local cluster's kernel has no SCTP; skip the real-cluster pre-flight probe.
        .env("NETPOL_SCTP", "0")
        .env(
            "E2E_FOCUS",
            "admin-egress-tcp::v1alpha2|upstream::ingress::default-deny-all",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Interrupt once policies exist: mid-step.
    let cnp = resource_of("ClusterNetworkPolicy").unwrap().0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let cnps: Api<DynamicObject> = Api::all_with(client.clone(), &cnp);
        let nps: Api<NetworkPolicy> = Api::all(client.clone());
        let n = rt
            .block_on(cnps.list(&ListParams::default()))
            .map(|l| l.items.len())
            .unwrap_or(0)
            + rt.block_on(nps.list(&ListParams::default()))
                .map(|l| l.items.len())
                .unwrap_or(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the run never created a policy");
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_for(&mut run, Duration::from_secs(300)).expect("the run stops after SIGINT");
    let mut stderr = String::new();
    run.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "an interrupted run fails:\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let left = rt
        .block_on(namespaces.list(&ListParams::default().labels(LABEL_RUN)))
        .unwrap();
    let names: Vec<_> = left
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    assert!(
        names.is_empty(),
        "namespaces left behind: {names:?}\n{stderr}"
    );
    for kind in [
        "ClusterNetworkPolicy",
        "AdminNetworkPolicy",
        "BaselineAdminNetworkPolicy",
    ] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource_of(kind).unwrap().0);
        let left = rt.block_on(api.list(&ListParams::default())).unwrap();
        assert!(
            left.items.is_empty(),
            "{kind}s left behind: {:?}",
            left.items
        );
    }
    let nps: Api<NetworkPolicy> = Api::all(client);
    let left = rt.block_on(nps.list(&ListParams::default())).unwrap();
    assert!(left.items.is_empty(), "NetworkPolicies left behind");
}

#[test]
fn two_runs_share_a_cluster_and_the_next_run_recovers_from_a_killed_one() {
    if !prerequisites("two_runs_share_a_cluster_and_the_next_run_recovers_from_a_killed_one") {
        return;
    }
    let scratch = Scratch::new("two");
    let up = scratch.command().args(["local", "up"]).output().unwrap();
    assert!(
        up.status.success(),
        "local up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let focus = "upstream::ingress::default-deny-ingress|npa::admin-tier::admin-egress-tcp|npa::baseline-tier::baseline-egress-tcp";
    let start = |focus: &str| {
        scratch
            .command()
            .args(["run", "--local", "--test-threads", "2"])
            .env("E2E_FOCUS", focus)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Two runs at once: upstream trials overlap, npa trials take turns on the cluster lock.
    let (a, b) = (start(focus), start(focus));
    for (name, run) in [("first", a), ("second", b)] {
        let out = run.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the {name} of two concurrent runs failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A run killed with SIGKILL in the middle of an npa trial leaves its policies, namespaces
    // and lock behind; the next run gets going without a manual cleanup.
    let kubeconfig = scratch.dir.join("cluster/kubeconfig");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(client_from_kubeconfig(Some(&kubeconfig)))
        .unwrap();
    let npa = "npa::admin-tier::admin-egress-tcp::v1alpha2";
    let mut killed = start(npa);
    let cnp = resource_of("ClusterNetworkPolicy").unwrap().0;
    let cnps: Api<DynamicObject> = Api::all_with(client.clone(), &cnp);
    let deadline = Instant::now() + Duration::from_secs(240);
    while rt
        .block_on(cnps.list(&ListParams::default()))
        .map(|l| l.items.is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the run never created a policy");
        assert!(killed.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    let next = start(npa).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&next.stderr);
    assert!(
        next.status.success(),
        "the run after a killed one failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&next.stdout)
    );
    assert!(
        stderr.contains("removed what runs that are gone left behind"),
        "{stderr}"
    );
    // `cleanup` takes what is left of the killed run (its namespaces), nothing of a live one.
    let cleanup = scratch
        .command()
        .args(["cleanup", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(cleanup.status.success());
    let namespaces: Api<Namespace> = Api::all(client);
    let left = rt
        .block_on(namespaces.list(&ListParams::default().labels(LABEL_RUN)))
        .unwrap();
    assert!(
        left.items.is_empty(),
        "left behind: {:?}",
        left.items
            .iter()
            .map(|n| n.metadata.name.clone())
            .collect::<Vec<_>>()
    );
}
