//! The command lines of the control plane and the enforcer (pure, unit-tested).

use super::*;

/// Ports and paths the control-plane command lines are built from.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// The binaries.
    pub bin_dir: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The PKI files.
    pub pki: PkiPaths,
    /// etcd client port.
    pub etcd_port: u16,
    /// etcd peer port.
    pub etcd_peer_port: u16,
    /// apiserver secure port.
    pub apiserver_port: u16,
    /// controller manager secure port.
    pub controller_manager_port: u16,
    /// scheduler secure port.
    pub scheduler_port: u16,
    /// Real nodes: the apiserver advertises itself on the fabric, dials kubelets through the
    /// fabric proxy and authenticates to them (see `real_nodes::apiserver_flags`).
    pub real_nodes: bool,
}

fn arg(k: &str, v: impl fmt::Display) -> String {
    format!("--{k}={v}")
}

impl ControlPlane {
    /// The controller manager's kubeconfig.
    pub fn controller_manager_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("controller-manager.kubeconfig")
    }

    /// The scheduler's kubeconfig.
    pub fn scheduler_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("scheduler.kubeconfig")
    }

    /// The admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    /// etcd: one member on loopback, data under the state directory.
    pub fn etcd(&self) -> Spec {
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        Spec::new(
            "etcd",
            self.bin_dir.join("etcd"),
            vec![
                arg("name", "npc"),
                arg("data-dir", self.state_dir.join("etcd").display()),
                arg("listen-client-urls", &client),
                arg("advertise-client-urls", &client),
                arg("listen-peer-urls", &peer),
                arg("initial-advertise-peer-urls", &peer),
                arg("initial-cluster", format!("npc={peer}")),
                arg("initial-cluster-state", "new"),
                // A throwaway cluster on tmpfs: durability buys nothing.
                arg("unsafe-no-fsync", true),
                arg("log-level", "warn"),
            ],
        )
    }

    /// kube-apiserver on 127.0.0.1.
    pub fn apiserver(&self) -> Spec {
        let p = &self.pki;
        let mut spec = Spec::new(
            "kube-apiserver",
            self.bin_dir.join("kube-apiserver"),
            vec![
                arg(
                    "etcd-servers",
                    format!("http://127.0.0.1:{}", self.etcd_port),
                ),
                arg("bind-address", "127.0.0.1"),
                arg("advertise-address", "127.0.0.1"),
                // The `kubernetes` Service's endpoints would have to be the loopback
                // address, which Endpoints validation rejects; nothing here routes to
                // Services anyway (no kube-proxy).
                arg("endpoint-reconciler-type", "none"),
                arg("secure-port", self.apiserver_port),
                arg("tls-cert-file", p.apiserver_cert.display()),
                arg("tls-private-key-file", p.apiserver_key.display()),
                arg("client-ca-file", p.ca_cert.display()),
                arg("service-cluster-ip-range", SERVICE_CIDR),
                arg(
                    "service-account-issuer",
                    "https://kubernetes.default.svc.cluster.local",
                ),
                arg("service-account-key-file", p.sa_public.display()),
                arg("service-account-signing-key-file", p.sa_private.display()),
                arg("authorization-mode", "Node,RBAC"),
                arg(
                    "enable-admission-plugins",
                    "NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,\
                     NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,\
                     ResourceQuota",
                ),
                arg("allow-privileged", true),
                arg("profiling", false),
                arg("v", 1),
            ],
        );
        if self.real_nodes {
            let extra = super::real_nodes::apiserver_flags(self);
            // Later flags replace the emulated ones of the same name.
            spec.args.retain(|a| {
                let name = a.split('=').next().unwrap_or(a);
                !extra.iter().any(|e| e.split('=').next() == Some(name))
            });
            spec.args.extend(extra);
        }
        spec
    }

    /// kube-controller-manager with every controller, signing service-account tokens.
    pub fn controller_manager(&self) -> Spec {
        let p = &self.pki;
        let kc = self.controller_manager_kubeconfig();
        Spec::new(
            "kube-controller-manager",
            self.bin_dir.join("kube-controller-manager"),
            vec![
                arg("kubeconfig", kc.display()),
                arg("authentication-kubeconfig", kc.display()),
                arg("authorization-kubeconfig", kc.display()),
                arg("bind-address", "127.0.0.1"),
                arg("secure-port", self.controller_manager_port),
                arg("service-account-private-key-file", p.sa_private.display()),
                arg("root-ca-file", p.ca_cert.display()),
                arg("cluster-signing-cert-file", p.ca_cert.display()),
                arg("cluster-signing-key-file", p.ca_key.display()),
                arg("use-service-account-credentials", true),
                arg("controllers", "*"),
                // The node agents set spec.podCIDR themselves.
                arg("allocate-node-cidrs", false),
                arg("service-cluster-ip-range", SERVICE_CIDR),
                arg("leader-elect", false),
                arg("profiling", false),
                arg("v", 1),
            ],
        )
    }

    /// kube-scheduler.
    pub fn scheduler(&self) -> Spec {
        let kc = self.scheduler_kubeconfig();
        Spec::new(
            "kube-scheduler",
            self.bin_dir.join("kube-scheduler"),
            vec![
                arg("kubeconfig", kc.display()),
                arg("authentication-kubeconfig", kc.display()),
                arg("authorization-kubeconfig", kc.display()),
                arg("bind-address", "127.0.0.1"),
                arg("secure-port", self.scheduler_port),
                arg("leader-elect", false),
                arg("profiling", false),
                arg("v", 1),
            ],
        )
    }
}

/// The enforcer's command line for one node.
pub fn enforcer_spec(
    program: &Path,
    node: &str,
    netns: &Path,
    kubeconfig: &Path,
    metrics: SocketAddr,
    fail_open: bool,
) -> Spec {
    let mut args = vec![
        "--netns".to_string(),
        netns.display().to_string(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--node-name".into(),
        node.into(),
        "--metrics-addr".into(),
        metrics.to_string(),
    ];
    if fail_open {
        args.push("--fail-open".into());
    }
    Spec::new(format!("enforcer-{node}"), program, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> ControlPlane {
        ControlPlane {
            bin_dir: "/k8s/bin".into(),
            state_dir: "/run/npc".into(),
            pki: PkiPaths::in_dir(Path::new("/run/npc/pki")),
            etcd_port: 2379,
            etcd_peer_port: 2380,
            apiserver_port: 6443,
            controller_manager_port: 10257,
            scheduler_port: 10259,
            real_nodes: false,
        }
    }

    #[test]
    fn real_nodes_advertise_the_fabric_address_and_reach_kubelets_through_the_proxy() {
        let mut cp = cp();
        cp.real_nodes = true;
        let spec = cp.apiserver();
        for want in [
            "--advertise-address=172.30.254.1",
            "--endpoint-reconciler-type=lease",
            "--kubelet-client-certificate=/run/npc/pki/apiserver-kubelet-client.crt",
            "--kubelet-certificate-authority=/run/npc/pki/ca.crt",
            "--egress-selector-config-file=/run/npc/egress-selector.yaml",
        ] {
            assert!(
                spec.args.iter().any(|a| a == want),
                "missing {want}: {spec:?}"
            );
        }
        let advertised = spec
            .args
            .iter()
            .filter(|a| a.starts_with("--advertise-address="))
            .count();
        assert_eq!(advertised, 1, "{spec:?}");
        assert!(
            !spec
                .args
                .iter()
                .any(|a| a == "--endpoint-reconciler-type=none")
        );
    }

    #[test]
    fn control_plane_listens_on_loopback_only() {
        let cp = cp();
        for spec in [
            cp.etcd(),
            cp.apiserver(),
            cp.controller_manager(),
            cp.scheduler(),
        ] {
            for a in &spec.args {
                let listens = [
                    "--bind-address",
                    "--listen-",
                    "--advertise-",
                    "--etcd-servers",
                ]
                .iter()
                .any(|p| a.starts_with(p));
                if listens {
                    assert!(a.contains("127.0.0.1"), "{}: {a}", spec.name);
                }
            }
        }
    }

    #[test]
    fn apiserver_command_line() {
        let spec = cp().apiserver();
        assert_eq!(spec.program, Path::new("/k8s/bin/kube-apiserver"));
        for want in [
            "--etcd-servers=http://127.0.0.1:2379",
            "--secure-port=6443",
            "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC",
            "--client-ca-file=/run/npc/pki/ca.crt",
            "--service-account-key-file=/run/npc/pki/sa.pub",
            "--service-account-signing-key-file=/run/npc/pki/sa.key",
        ] {
            assert!(
                spec.args.iter().any(|a| a == want),
                "missing {want}: {spec:?}"
            );
        }
    }

    #[test]
    fn controller_manager_command_line() {
        let spec = cp().controller_manager();
        for want in [
            "--kubeconfig=/run/npc/controller-manager.kubeconfig",
            "--service-account-private-key-file=/run/npc/pki/sa.key",
            "--root-ca-file=/run/npc/pki/ca.crt",
            "--use-service-account-credentials=true",
            "--controllers=*",
            "--allocate-node-cidrs=false",
        ] {
            assert!(
                spec.args.iter().any(|a| a == want),
                "missing {want}: {spec:?}"
            );
        }
    }

    #[test]
    fn enforcer_command_line() {
        let spec = enforcer_spec(
            Path::new("/t/netpol-enforcer"),
            "npc-node-1",
            Path::new("/run/netns/npc-node-1"),
            Path::new("/run/npc/kubeconfig"),
            "127.0.0.1:9999".parse().unwrap(),
            true,
        );
        assert_eq!(
            spec.display(),
            "/t/netpol-enforcer --netns /run/netns/npc-node-1 --kubeconfig /run/npc/kubeconfig \
             --node-name npc-node-1 --metrics-addr 127.0.0.1:9999 --fail-open"
        );
        assert_eq!(spec.name, "enforcer-npc-node-1");
    }
}
