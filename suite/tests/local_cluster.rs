//! The suite end to end on the local cluster (root + control-plane binaries): Sonobuoy plugin
//! mode, and an interrupted run that must leave nothing behind.
//!
//! Without root, or without the control-plane binaries and `NETPOL_REQUIRE_LOCAL=1`, each test
//! prints why it did not run; with `NETPOL_REQUIRE_LOCAL=1` a missing prerequisite is a failure.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DynamicObject, ListParams};
use netpol_conformance::kube::{LABEL_RUN, client_from_kubeconfig, resource_of};

const BIN: &str = env!("CARGO_BIN_EXE_netpol-conformance");

/// Whether the test can run here; prints the reason when it cannot.
fn prerequisites(test: &str) -> bool {
    let required = std::env::var("NETPOL_REQUIRE_LOCAL").as_deref() == Ok("1");
    let missing = if !netpol_local::cluster::is_root() {
        Some("not root".to_string())
    } else if let Err(e) = netpol_local::cluster::find_bin_dir() {
        Some(format!("control-plane binaries: {e}"))
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if required => panic!("{test}: NETPOL_REQUIRE_LOCAL=1 but {why}"),
        Some(why) => {
            eprintln!("{test}: not run: {why} (set NETPOL_REQUIRE_LOCAL=1 to make this a failure)");
            false
        }
    }
}

/// A scratch directory and local-cluster instance of one test; `local down` on drop.
struct Scratch {
    dir: PathBuf,
    instance: &'static str,
}

impl Scratch {
    fn new(instance: &'static str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("netpol-suite-{instance}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir, instance }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("NETPOL_LOCAL_DIR", self.dir.join("cluster"))
            .env("NETPOL_LOCAL_INSTANCE", self.instance)
            .env_remove("NETPOL_KUBECONFIG")
            .env_remove("SONOBUOY_RESULTS_DIR")
            .env_remove("SONOBUOY_PROGRESS_PORT")
            .env_remove("E2E_FOCUS")
            .env_remove("E2E_SKIP")
            .env_remove("NETPOL_JUNIT");
        c
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.command().args(["local", "down"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

#[test]
fn plugin_mode_leaves_results_sonobuoy_accepts() {
    if !prerequisites("plugin_mode_leaves_results_sonobuoy_accepts") {
        return;
    }
    let scratch = Scratch::new("plg");
    let results = scratch.dir.join("results");
    let (port, bodies) = progress_listener();
    let out = scratch
        .command()
        .args(["run", "--no-enforcer"])
        .env("SONOBUOY_RESULTS_DIR", &results)
        .env("SONOBUOY_PROGRESS_PORT", port.to_string())
        .env("E2E_FOCUS", "default-deny-ingress")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "plugin mode exits 0 once results are written:\n{stderr}"
    );
    let done = std::fs::read_to_string(results.join("done")).unwrap();
    assert_eq!(Path::new(&done), results.join("junit.xml"));
    let xml = std::fs::read_to_string(&done).unwrap();
    // Without an enforcer the deny cases fail with the tables; SCTP is skipped with its reason.
    assert!(xml.contains("tests=\"3\""), "{xml}");
    assert!(
        xml.contains("<failure message=\"step 1 (TCP/80) had wrong results\""),
        "{xml}"
    );
    assert!(xml.contains("comparison:"), "{xml}");
    assert!(
        xml.contains("<skipped message=\"SCTP: SCTP is not supported by this kernel"),
        "{xml}"
    );
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 3, "one progress update per trial: {bodies:?}");
    let last: serde_json::Value = serde_json::from_str(bodies.last().unwrap()).unwrap();
    assert_eq!(last["total"], 3);
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
