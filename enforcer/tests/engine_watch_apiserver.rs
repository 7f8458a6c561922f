//! `watch::run_with` against a real etcd + kube-apiserver (no kubelet, no controllers).
//!
//! Needs the control-plane binaries of `hack/control-plane.sh`: `$NETPOL_CONTROL_PLANE_DIR`, or
//! the cache `~/.cache/netpol-conformance/control-plane/k8s-v1.37.2-etcd-v3.6.16`, plus
//! `openssl`. Skips with a printed reason when they are missing. Everything runs on loopback in
//! a temporary directory; the processes and the directory are removed on drop, also on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use netpol_enforcer::store::Writer;
use netpol_enforcer::watch::{Options, run_with};

/// Kills the processes and removes the directory when dropped.
struct ControlPlane {
    dir: PathBuf,
    children: Vec<Child>,
    url: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binaries() -> Option<PathBuf> {
    let dir = std::env::var_os("NETPOL_CONTROL_PLANE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(
                Path::new(&home)
                    .join(".cache/netpol-conformance/control-plane/k8s-v1.37.2-etcd-v3.6.16"),
            )
        })?;
    (dir.join("etcd").is_file() && dir.join("kube-apiserver").is_file()).then_some(dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(bin: &Path) -> ControlPlane {
    let dir = std::env::temp_dir().join(format!("engine-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cp = ControlPlane {
        dir: dir.clone(),
        children: Vec::new(),
        url: String::new(),
    };
    let key = dir.join("sa.key");
    let status = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .expect("running openssl");
    assert!(status.success(), "openssl genrsa failed");
    std::fs::write(dir.join("token"), "test-token").unwrap();
    std::fs::write(
        dir.join("tokens.csv"),
        "test-token,admin,admin,system:masters\n",
    )
    .unwrap();
    let (client, peer, api) = (free_port(), free_port(), free_port());
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    cp.children.push(
        Command::new(bin.join("etcd"))
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(log("etcd.log"))
            .stderr(log("etcd.err"))
            .spawn()
            .expect("starting etcd"),
    );
    cp.children.push(
        Command::new(bin.join("kube-apiserver"))
            .args(["--etcd-servers", &format!("http://127.0.0.1:{client}")])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &api.to_string(),
            ])
            .arg("--cert-dir")
            .arg(dir.join("certs"))
            .arg("--token-auth-file")
            .arg(dir.join("tokens.csv"))
            .args(["--authorization-mode", "AlwaysAllow"])
            .arg("--service-account-key-file")
            .arg(&key)
            .arg("--service-account-signing-key-file")
            .arg(&key)
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args([
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                "--advertise-address",
                "127.0.0.1",
            ])
            .args([
                "--endpoint-reconciler-type",
                "none",
                "--disable-admission-plugins",
                "ServiceAccount",
            ])
            .stdout(log("apiserver.log"))
            .stderr(log("apiserver.err"))
            .spawn()
            .expect("starting kube-apiserver"),
    );
    cp.url = format!("https://127.0.0.1:{api}");
    cp
}

async fn client(cp: &ControlPlane) -> Client {
    let mut config = kube::Config::new(cp.url.parse().unwrap());
    config.accept_invalid_certs = true;
    config.auth_info.token_file = Some(cp.dir.join("token").display().to_string());
    Client::try_from(config).expect("building a client")
}

/// Polls `check` every 200 ms until it returns true or `timeout` passes.
async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut check: F) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_lists_becomes_ready_and_follows_crds() {
    let Some(bin) = binaries() else {
        eprintln!(
            "SKIPPED: control-plane binaries not found (set NETPOL_CONTROL_PLANE_DIR or run hack/control-plane.sh)"
        );
        return;
    };
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: openssl not installed");
        return;
    }
    let cp = start(&bin);
    let client = client(&cp).await;
    // Wait for the apiserver to serve namespaces.
    let deadline = Instant::now() + Duration::from_secs(90);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    loop {
        if namespaces.get_opt("default").await.ok().flatten().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "apiserver not ready; see {}",
            cp.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "agnhost"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating a pod");

    let writer = Writer::new();
    let reader = writer.reader();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let options = Options {
        crd_poll: Duration::from_millis(500),
        crd_poll_fast: Duration::from_millis(500),
        crd_settle: Duration::ZERO,
        publish_delay: Duration::from_millis(20),
    };
    let task = tokio::spawn(run_with(client.clone(), writer, tx, options));
    struct Abort(tokio::task::JoinHandle<netpol_enforcer::watch::Result<()>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _task = Abort(task);

    eventually("readiness", Duration::from_secs(30), || *rx.borrow()).await;
    let snap = reader.snapshot();
    assert!(snap.namespace("kube-system").is_some(), "namespaces listed");
    assert!(snap.pod_index("default", "web").is_some(), "pods listed");
    assert!(snap.admin.is_empty());

    // Install the CRDs: discovery switches the kinds on; a new policy reaches the snapshot.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in netpol_api::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("creating a CRD");
    }
    let cnps: Api<netpol_api::v1alpha2::ClusterNetworkPolicy> = Api::all(client.clone());
    let cnp: netpol_api::v1alpha2::ClusterNetworkPolicy =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "deny-all"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
        }))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cnps.create(&PostParams::default(), &cnp).await.is_err() {
        assert!(Instant::now() < deadline, "CRD never became usable");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually("the CNP in the snapshot", Duration::from_secs(30), || {
        reader.snapshot().admin.len() == 1
    })
    .await;
    eventually(
        "readiness after the CRD kinds listed",
        Duration::from_secs(30),
        || *rx.borrow(),
    )
    .await;

    // Removing the CRD switches the kind off and forgets its policies.
    crds.delete(
        "clusternetworkpolicies.policy.networking.k8s.io",
        &DeleteParams::default(),
    )
    .await
    .expect("deleting the CRD");
    eventually(
        "the CNP gone from the snapshot",
        Duration::from_secs(60),
        || reader.snapshot().admin.is_empty(),
    )
    .await;
    pods.delete("web", &DeleteParams::default())
        .await
        .expect("deleting the pod");
    eventually("the pod gone", Duration::from_secs(30), || {
        reader.snapshot().pod_index("default", "web").is_none()
    })
    .await;
}
