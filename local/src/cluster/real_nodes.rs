//! `up --runtime kubelet`: the real nodes (see [`crate::kubelet`]), in order: the fabric's
//! control-plane address and the proxy, per node the certificates, configuration files and
//! cgroup root, containerd in a new mount namespace, the images imported, then the kubelet and
//! kube-proxy joining containerd's namespaces; after the nodes are Ready, the enforcer as
//! the DaemonSet of `enforcer/deploy/`. And `down`'s share: the processes that outlive
//! containerd, the cgroup trees, the kernel tunables.

use super::*;
use crate::kubelet::config::{self as node_config, NodeConfig};
use crate::kubelet::host;
use crate::kubelet::nsexec::{Bind, MountNs, NS_EXEC_ENV, NsExec, ROLE_NS_EXEC};
use crate::kubelet::proxy::{FABRIC_PROXY_ENV, FabricProxy, ROLE_FABRIC_PROXY, control_plane_ip};

/// The enforcer's manifests, applied as shipped.
const ENFORCER_RBAC: &str = include_str!("../../../enforcer/deploy/rbac.yaml");
const ENFORCER_DAEMONSET: &str = include_str!("../../../enforcer/deploy/daemonset.yaml");
/// The DaemonSet's name and namespace in those manifests.
const ENFORCER_DS: (&str, &str) = ("kube-system", "netpol-enforcer");

/// Where the node binaries and image archives are.
#[derive(Debug, Clone)]
pub(super) struct NodeAssets {
    /// kubelet, kube-proxy, containerd, … (hack/node-binaries.sh).
    pub bin_dir: PathBuf,
    /// The image archives (hack/node-images.sh).
    pub images_dir: PathBuf,
}

impl NodeAssets {
    pub(super) fn locate() -> Result<Self> {
        Ok(NodeAssets {
            bin_dir: crate::kubelet::locate_node_bin_dir()?,
            images_dir: crate::kubelet::locate_images_dir()?,
        })
    }
}

/// The apiserver's extra flags for real nodes.
pub(super) fn apiserver_flags(cp: &ControlPlane) -> Vec<String> {
    let p = &cp.pki;
    let (cert, key) = p.client(&pki::APISERVER_KUBELET_CLIENT);
    vec![
        // The `kubernetes` Service's endpoint: the proxy's address on the fabric, which pods
        // reach through kube-proxy (the lease reconciler keeps it).
        arg("advertise-address", control_plane_ip()),
        arg("endpoint-reconciler-type", "lease"),
        arg("kubelet-client-certificate", cert.display()),
        arg("kubelet-client-key", key.display()),
        arg("kubelet-certificate-authority", p.ca_cert.display()),
        arg("kubelet-preferred-address-types", "InternalIP"),
        arg("egress-selector-config-file", egress_config(cp).display()),
    ]
}

fn arg(k: &str, v: impl fmt::Display) -> String {
    format!("--{k}={v}")
}

fn egress_socket(cp: &ControlPlane) -> PathBuf {
    cp.state_dir.join("egress.sock")
}

fn egress_config(cp: &ControlPlane) -> PathBuf {
    cp.state_dir.join("egress-selector.yaml")
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// Writes the egress selector file and the apiserver's kubelet client certificate; adds the
/// control-plane address and the routes back to every pod CIDR in the fabric namespace.
pub(super) fn prepare_control_plane(cp: &ControlPlane, plan: &Plan) -> Result<()> {
    let path = egress_config(cp);
    std::fs::write(&path, node_config::egress_selector_yaml(&egress_socket(cp)))
        .map_err(io("writing", &path))?;
    let ca = read_ca(cp)?;
    let id = pki::APISERVER_KUBELET_CLIENT;
    let pair = pki::issue(&ca, &pki::Leaf::client(id.common_name, id.organizations))?;
    pki::write_pair(&cp.pki.dir, id.stem, &pair)?;
    let fab = plan.fabric_netns.as_str();
    let cidr = format!("{}/24", control_plane_ip());
    fabric::ip(&["-n", fab, "addr", "add", &cidr, "dev", fabric::BRIDGE])?;
    for n in &plan.nodes {
        let (dst, via) = (n.pod_cidr.to_string(), n.ip.to_string());
        fabric::ip(&["-n", fab, "route", "add", &dst, "via", &via])?;
        // A process on the node (a hostNetwork pod such as the enforcer) connecting to a
        // ClusterIP needs a route for it before kube-proxy's OUTPUT DNAT can apply; the
        // nodes have no default route, so the service range gets one.
        let cp_ip = control_plane_ip().to_string();
        fabric::ip(&["-n", &n.netns, "route", "add", SERVICE_CIDR, "via", &cp_ip])?;
    }
    Ok(())
}

fn read_ca(cp: &ControlPlane) -> Result<pki::CertKey> {
    Ok(pki::CertKey {
        cert_pem: std::fs::read_to_string(&cp.pki.ca_cert)
            .map_err(io("reading", &cp.pki.ca_cert))?,
        key_pem: std::fs::read_to_string(&cp.pki.ca_key).map_err(io("reading", &cp.pki.ca_key))?,
    })
}

/// Starts the fabric proxy and waits for its egress socket.
pub(super) fn start_proxy(
    state: &RefCell<State>,
    cp: &ControlPlane,
    plan: &Plan,
    agent: &Path,
    t: Timeouts,
) -> Result<ProcRecord> {
    let [a, b, c] = fabric::FABRIC_PREFIX;
    let cfg = FabricProxy {
        fabric_netns: fabric::netns_path(&plan.fabric_netns),
        listen: std::net::SocketAddrV4::new(control_plane_ip(), cp.apiserver_port),
        upstream: SocketAddr::from(([127, 0, 0, 1], cp.apiserver_port)),
        egress_socket: egress_socket(cp),
        egress_allowed: vec![
            ipnet::Ipv4Net::new(Ipv4Addr::new(a, b, c, 0), 24).expect("valid prefix"),
            node_config::CLUSTER_CIDR.parse().expect("valid CIDR"),
        ],
    };
    let mut spec = Spec::new("fabric-proxy", agent, vec![]);
    spec.env = vec![
        (ROLE_ENV.into(), ROLE_FABRIC_PROXY.into()),
        (FABRIC_PROXY_ENV.into(), cfg.to_env_value()),
    ];
    let rec = start(state, &spec)?;
    wait_for("the fabric proxy's socket", t.etcd, t.poll, &[&rec], || {
        if cfg.egress_socket.exists() {
            Ok(())
        } else {
            Err("not bound yet".into())
        }
    })?;
    Ok(rec)
}

/// A node's configuration.
fn node_config(state_dir: &Path, cp: &ControlPlane, n: &fabric::NodePlan) -> NodeConfig {
    NodeConfig {
        name: n.name.clone(),
        ip: n.ip,
        pod_cidr: n.pod_cidr,
        cgroup_root: crate::kubelet::cgroup_root(&n.netns),
        dir: state_dir.join("nodes").join(&n.name),
        ca_cert: cp.pki.ca_cert.clone(),
        pause_image: crate::kubelet::PAUSE_IMAGE.into(),
    }
}

/// Writes one node's certificates, kubeconfigs and configuration files.
fn write_node_files(cfg: &NodeConfig, cp: &ControlPlane, ca: &pki::CertKey) -> Result<()> {
    let server = format!("https://{}:{}", control_plane_ip(), cp.apiserver_port);
    let user = format!("system:node:{}", cfg.name);
    let client = pki::issue(ca, &pki::Leaf::client(&user, &["system:nodes"]))?;
    let (cert, key) = pki::write_pair(&cfg.dir, "kubelet-client", &client)?;
    let kc = cfg.kubelet_kubeconfig();
    let text = pki::kubeconfig(&server, &cp.pki.ca_cert, &cert, &key, &user);
    std::fs::write(&kc, text).map_err(io("writing kubeconfig", &kc))?;
    let sans = vec![cfg.ip.to_string(), cfg.name.clone()];
    let serving = pki::issue(ca, &pki::Leaf::server(&cfg.name, &sans))?;
    pki::write_pair(&cfg.dir, "kubelet", &serving)?;
    let proxy = pki::issue(ca, &pki::Leaf::client("system:kube-proxy", &[]))?;
    let (cert, key) = pki::write_pair(&cfg.dir, "kube-proxy", &proxy)?;
    let kc = cfg.kube_proxy_kubeconfig();
    let text = pki::kubeconfig(&server, &cp.pki.ca_cert, &cert, &key, "system:kube-proxy");
    std::fs::write(&kc, text).map_err(io("writing kubeconfig", &kc))?;
    let cni = cfg.cni_conf_dir();
    std::fs::create_dir_all(&cni).map_err(io("creating", &cni))?;
    for (path, text) in [
        (cfg.containerd_config_path(), cfg.containerd_toml()),
        (cfg.kubelet_config_path(), cfg.kubelet_yaml()),
        (cfg.kube_proxy_config_path(), cfg.kube_proxy_yaml()),
        (cni.join("10-npc.conflist"), cfg.cni_conflist()),
    ] {
        std::fs::write(&path, text).map_err(io("writing", &path))?;
    }
    Ok(())
}

/// The `ns-exec` spec of a node process.
fn ns_exec_spec(name: String, agent: &Path, assets: &NodeAssets, exec: &NsExec) -> Spec {
    let mut spec = Spec::new(name, agent, vec![]);
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        assets.bin_dir.display()
    );
    spec.env = vec![
        (ROLE_ENV.into(), ROLE_NS_EXEC.into()),
        (NS_EXEC_ENV.into(), exec.to_env_value()),
        ("PATH".into(), path),
    ];
    spec
}

/// Runs a command to completion; its error, with the cause, becomes the text.
fn run_cmd(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    netpol_enforcer::command::run(program, args, stdin).map_err(|e| crate::error_chain(&e))
}

/// Starts every node: containerd (images imported), kubelet, kube-proxy. Returns the
/// processes (all vital).
pub(super) fn start_nodes(
    state: &RefCell<State>,
    opts: &UpOptions,
    plan: &Plan,
    cp: &ControlPlane,
    agent: &Path,
    assets: &NodeAssets,
    t: Timeouts,
) -> Result<Vec<ProcRecord>> {
    {
        let mut s = state.borrow_mut();
        s.host.sysctls = host::read_sysctls(&host::KUBELET_TUNABLES);
        s.host.node_bin_dir = Some(assets.bin_dir.clone());
    }
    save(state)?;
    let ca = read_ca(cp)?;
    let mut processes = Vec::new();
    let mut containerds = Vec::new();
    for n in &plan.nodes {
        let cfg = node_config(&opts.state_dir, cp, n);
        std::fs::create_dir_all(&cfg.dir).map_err(io("creating", &cfg.dir))?;
        write_node_files(&cfg, cp, &ca)?;
        let dirs = host::cgroup_dirs(&cfg.cgroup_root);
        state.borrow_mut().host.cgroups.extend(dirs.iter().cloned());
        save(state)?;
        for d in &dirs {
            host::create_cgroup(d).map_err(io("creating cgroup", d))?;
        }
        let root = cfg.dir.join("root");
        let exec = NsExec {
            netns: fabric::netns_path(&n.netns),
            mounts: MountNs::New {
                binds: ["run", "var/lib", "var/log"]
                    .iter()
                    .map(|p| Bind {
                        source: root.join(p.replace('/', "-")),
                        target: Path::new("/").join(p),
                    })
                    .collect(),
                keep: vec![opts.state_dir.clone(), assets.bin_dir.clone()],
            },
            program: assets.bin_dir.join("containerd"),
            args: vec![
                "--config".into(),
                cfg.containerd_config_path().display().to_string(),
            ],
            cwd: cfg.dir.clone(),
        };
        let rec = start(
            state,
            &ns_exec_spec(format!("containerd-{}", n.name), agent, assets, &exec),
        )?;
        // Record its mount namespace as soon as it has one of its own (after the exec).
        let program =
            std::fs::canonicalize(&exec.program).map_err(io("resolving", &exec.program))?;
        wait_for(
            &format!("{} to start", rec.name),
            t.etcd,
            Duration::from_millis(20),
            &[&rec],
            || match std::fs::read_link(format!("/proc/{}/exe", rec.pid)) {
                Ok(p) if p == program => Ok(()),
                Ok(p) => Err(format!("still {}", p.display())),
                Err(e) => Err(e.to_string()),
            },
        )?;
        if let Some(ino) = host::mount_ns_of(rec.pid) {
            state.borrow_mut().host.mount_namespaces.push(ino);
            save(state)?;
        }
        containerds.push((cfg, rec.clone()));
        processes.push(rec);
    }
    let ctr = assets.bin_dir.join("ctr");
    for (cfg, rec) in &containerds {
        let socket = root_path(cfg, node_config::CONTAINERD_SOCKET);
        let sock = socket.display().to_string();
        wait_for(
            &format!("{} to answer", rec.name),
            t.apiserver,
            t.poll,
            &[rec],
            || run_cmd(&ctr, &["--address", &sock, "version"], None).map(|_| ()),
        )?;
        let started = Instant::now();
        for image in crate::kubelet::IMAGES {
            let tar = assets.images_dir.join(image);
            let tar = tar.display().to_string();
            run_cmd(
                &ctr,
                &["--address", &sock, "-n", "k8s.io", "images", "import", &tar],
                None,
            )
            .map_err(|detail| Error::Node {
                op: format!("importing {tar} into {}", cfg.name),
                detail,
            })?;
        }
        tracing::info!(node = %cfg.name, ms = started.elapsed().as_millis() as u64, "images imported");
    }
    for (cfg, containerd) in &containerds {
        let n = plan
            .nodes
            .iter()
            .find(|n| n.name == cfg.name)
            .expect("config of a planned node");
        let join = |program: &str, args: Vec<String>| NsExec {
            netns: fabric::netns_path(&n.netns),
            mounts: MountNs::Join {
                pid: containerd.pid,
                start_time: containerd.start_time,
            },
            program: assets.bin_dir.join(program),
            args,
            cwd: cfg.dir.clone(),
        };
        let kubelet = join(
            "kubelet",
            vec![
                arg("config", cfg.kubelet_config_path().display()),
                arg("kubeconfig", cfg.kubelet_kubeconfig().display()),
                arg("node-ip", cfg.ip),
                arg("hostname-override", &cfg.name),
                arg("v", 1),
            ],
        );
        processes.push(start(
            state,
            &ns_exec_spec(format!("kubelet-{}", cfg.name), agent, assets, &kubelet),
        )?);
        let proxy = join(
            "kube-proxy",
            vec![
                arg("config", cfg.kube_proxy_config_path().display()),
                arg("v", 1),
            ],
        );
        processes.push(start(
            state,
            &ns_exec_spec(format!("kube-proxy-{}", cfg.name), agent, assets, &proxy),
        )?);
    }
    Ok(processes)
}

/// A path inside a node's mount namespace, as seen from the host (`/run/x` →
/// `<node dir>/root/run/x`).
fn root_path(cfg: &NodeConfig, inside: &str) -> PathBuf {
    for top in ["run", "var/lib", "var/log"] {
        if let Some(rest) = inside
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(top))
            .and_then(|p| p.strip_prefix('/'))
        {
            return cfg.dir.join("root").join(top.replace('/', "-")).join(rest);
        }
    }
    PathBuf::from(inside)
}

/// Sets each Node's `spec.podCIDR(s)` to its fabric pod CIDR, as a CIDR-allocating controller
/// manager would (ours does not allocate; the ptp CNI config carries the range): the
/// enforcer learns from it which addresses are pods.
pub(super) fn set_pod_cidrs(kubectl: &Path, kubeconfig: &Path, plan: &Plan) -> Result<()> {
    let kc = kubeconfig.display().to_string();
    for n in &plan.nodes {
        let cidr = n.pod_cidr.to_string();
        let patch = serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}).to_string();
        run_cmd(
            kubectl,
            &["--kubeconfig", &kc, "patch", "node", &n.name, "-p", &patch],
            None,
        )
        .map_err(|detail| Error::Node {
            op: format!("setting the pod CIDR of {}", n.name),
            detail,
        })?;
    }
    Ok(())
}

/// Applies `enforcer/deploy/` as shipped and waits for every node's enforcer to be Ready.
pub(super) fn deploy_enforcer(
    kubectl: &Path,
    kubeconfig: &Path,
    vital: &[&ProcRecord],
    t: Timeouts,
) -> Result<()> {
    let kc = kubeconfig.display().to_string();
    let manifests = format!("{ENFORCER_RBAC}\n---\n{ENFORCER_DAEMONSET}");
    run_cmd(
        kubectl,
        &["--kubeconfig", &kc, "apply", "-f", "-"],
        Some(&manifests),
    )
    .map_err(|detail| Error::Node {
        op: "applying enforcer/deploy/".into(),
        detail,
    })?;
    let (ns, name) = ENFORCER_DS;
    let jsonpath =
        "{.status.desiredNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled}";
    wait_for(
        "the enforcer DaemonSet Ready on every node",
        t.enforcer,
        t.poll * 5,
        vital,
        || {
            let out = run_cmd(
                kubectl,
                &[
                    "--kubeconfig",
                    &kc,
                    "-n",
                    ns,
                    "get",
                    "daemonset",
                    name,
                    "-o",
                    &format!("jsonpath={jsonpath}"),
                ],
                None,
            )?;
            let nums: Vec<u32> = out
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            match nums.as_slice() {
                [desired, ready, updated]
                    if *desired > 0 && ready == desired && updated == desired =>
                {
                    Ok(())
                }
                _ => Err(format!("desired/ready/updated: {}", out.trim())),
            }
        },
    )
}

/// `down`'s share for real nodes: kills what outlived containerd (shims, runc, containers),
/// removes the cgroup trees, restores the kernel tunables. Returns what could not be undone.
pub(super) fn undo_host_changes(s: &State, t: Timeouts) -> Vec<String> {
    let h = &s.host;
    let mut errors = Vec::new();
    let owner_mark = format!("{OWNER_ENV}={}", s.state_dir.display());
    let ours_in_ns = |pid: i32| {
        let exe_ours = h.node_bin_dir.as_ref().is_some_and(|dir| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.starts_with(dir) || exe == Path::new(node_config::RUNC))
        });
        exe_ours
            || std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == owner_mark.as_bytes()))
    };
    let find = || {
        let mut pids: Vec<i32> = host::pids_in_mount_ns(&h.mount_namespaces)
            .into_iter()
            .filter(|p| ours_in_ns(*p))
            .collect();
        for c in &h.cgroups {
            pids.extend(host::pids_in_cgroup_tree(c));
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let survivors = host::kill_until_gone(find, t.stop_grace);
    if !survivors.is_empty() {
        errors.push(format!("node processes survived SIGKILL: {survivors:?}"));
    }
    for c in &h.cgroups {
        // A killed process leaves its cgroup a moment after it is gone from /proc.
        let deadline = Instant::now() + t.stop_grace;
        loop {
            match host::remove_cgroup_tree(c) {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    errors.push(format!("removing cgroup {}: {e}", c.display()));
                    break;
                }
                Err(_) => std::thread::sleep(t.poll),
            }
        }
    }
    errors.extend(host::restore_sysctls(&h.sysctls));
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_a_node_map_to_its_directory() {
        let cfg = NodeConfig {
            name: "n0".into(),
            ip: Ipv4Addr::new(172, 30, 254, 10),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            cgroup_root: "/npc-node-0".into(),
            dir: "/s/nodes/n0".into(),
            ca_cert: "/s/pki/ca.crt".into(),
            pause_image: "p".into(),
        };
        assert_eq!(
            root_path(&cfg, "/run/containerd/containerd.sock"),
            Path::new("/s/nodes/n0/root/run/containerd/containerd.sock")
        );
        assert_eq!(
            root_path(&cfg, "/var/lib/kubelet/pods"),
            Path::new("/s/nodes/n0/root/var-lib/kubelet/pods")
        );
        assert_eq!(root_path(&cfg, "/etc/x"), Path::new("/etc/x"));
    }

    #[test]
    fn the_shipped_manifests_are_the_ones_applied() {
        assert!(ENFORCER_DAEMONSET.contains("kind: DaemonSet"));
        assert!(ENFORCER_DAEMONSET.contains(&format!("name: {}", ENFORCER_DS.1)));
        assert!(ENFORCER_RBAC.contains("kind: ClusterRoleBinding"));
    }
}
