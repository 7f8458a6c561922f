//! The configuration files of a real node, rendered from plain values (pure, unit-tested):
//! containerd's `config.toml`, the kubelet's `KubeletConfiguration`, kube-proxy's
//! `KubeProxyConfiguration`, the node's CNI network list and the apiserver's
//! `EgressSelectorConfiguration`.
//!
//! Every path is the path *inside* the node's mount namespace (see [`super::nsexec`]):
//! `/run`, `/var/lib` and `/var/log` there are the node's own directories, so the fixed paths
//! of the kubelet and containerd (`/var/lib/kubelet/device-plugins`, `/run/containerd/s`,
//! `/var/lib/cni`, `/var/log/pods`) never collide between two nodes on one host.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// containerd's socket inside the node's mount namespace.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The kubelet's port (inside the node's network namespace, so every node uses the same).
pub const KUBELET_PORT: u16 = 10250;
/// The kubelet's healthz port on the node's loopback.
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// kube-proxy's healthz port on the node's loopback.
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
/// Where the Debian package containernetworking-plugins installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// runc from the Debian package.
pub const RUNC: &str = "/usr/sbin/runc";
/// The name of the node's CNI network.
pub const CNI_NETWORK: &str = "npc";
/// The pod network all nodes' pod CIDRs are carved from (kube-proxy's `clusterCIDR`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// What one node's files are rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node name (the kubelet's `--hostname-override`).
    pub name: String,
    /// Its address on the fabric (the Node's InternalIP).
    pub ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// The cgroup every pod of this node lives under (`/<node netns name>`), distinct per node.
    pub cgroup_root: String,
    /// The directory holding this node's configuration files and certificates.
    pub dir: PathBuf,
    /// The cluster CA certificate.
    pub ca_cert: PathBuf,
    /// The sandbox (pause) image, pinned so the kubelet's image GC never removes it.
    pub pause_image: String,
}

impl NodeConfig {
    /// containerd's configuration file.
    pub fn containerd_config_path(&self) -> PathBuf {
        self.dir.join("containerd.toml")
    }
    /// The kubelet's configuration file.
    pub fn kubelet_config_path(&self) -> PathBuf {
        self.dir.join("kubelet.yaml")
    }
    /// kube-proxy's configuration file.
    pub fn kube_proxy_config_path(&self) -> PathBuf {
        self.dir.join("kube-proxy.yaml")
    }
    /// The CNI configuration directory containerd reads.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }
    /// The kubelet's kubeconfig (node client certificate).
    pub fn kubelet_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubelet.kubeconfig")
    }
    /// kube-proxy's kubeconfig.
    pub fn kube_proxy_kubeconfig(&self) -> PathBuf {
        self.dir.join("kube-proxy.kubeconfig")
    }
    /// The kubelet's serving certificate and key.
    pub fn serving_pair(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("kubelet.crt"), self.dir.join("kubelet.key"))
    }

    /// containerd 2.x, config version 3. `restrict_oom_score_adj`: this VM leaves
    /// CAP_SYS_RESOURCE out of root's bounding set, so runc cannot lower a score below 0 and
    /// every sandbox would fail. NRI and the `opt` plugin are off (they would create
    /// `/run/nri` and `/opt/containerd` on the host).
    pub fn containerd_toml(&self) -> String {
        let q = |p: &Path| toml_str(&p.display().to_string());
        format!(
            r#"version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]

[grpc]
  address = "{socket}"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "{runc}"
  SystemdCgroup = false

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["{cni_bin}"]
  conf_dir = {conf_dir}
  max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = {pause}
"#,
            socket = CONTAINERD_SOCKET,
            runc = RUNC,
            cni_bin = CNI_BIN_DIR,
            conf_dir = q(&self.cni_conf_dir()),
            pause = toml_str(&self.pause_image),
        )
    }

    /// The kubelet: webhook authentication and authorization through the apiserver (so the
    /// apiserver's kubelet client certificate, and only what RBAC allows, may exec), a serving
    /// certificate from the cluster CA, cgroupfs under its own `cgroupRoot`, cgroup v1 allowed
    /// (`failCgroupV1: false`), and no kernel tunables protected (they are recorded and
    /// restored by `down` instead). Eviction thresholds are off: the node's disk is the
    /// host's, shared by every node, and pressure on it is not what the suite tests.
    pub fn kubelet_yaml(&self) -> String {
        let (cert, key) = self.serving_pair();
        let doc = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ip.to_string(),
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": cert,
            "tlsPrivateKeyFile": key,
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": self.ca_cert},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": true,
            "failCgroupV1": false,
            "failSwapOn": false,
            "protectKernelDefaults": false,
            "containerRuntimeEndpoint": format!("unix://{CONTAINERD_SOCKET}"),
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": false,
            "evictionHard": {
                "memory.available": "0%",
                "nodefs.available": "0%",
                "nodefs.inodesFree": "0%",
                "imagefs.available": "0%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "localStorageCapacityIsolation": false,
            "shutdownGracePeriod": "0s",
            "nodeStatusReportFrequency": "10s",
            "registerNode": true,
            "maxPods": 250,
        });
        serde_json::to_string_pretty(&doc).expect("kubelet config serializes")
    }

    /// kube-proxy in iptables mode. Every conntrack setting is 0 so it leaves the host's
    /// conntrack table size and timeouts (kernel-wide) alone.
    pub fn kube_proxy_yaml(&self) -> String {
        let doc = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": self.kube_proxy_kubeconfig()},
            "hostnameOverride": self.name,
            "mode": "iptables",
            "clusterCIDR": CLUSTER_CIDR,
            "bindAddress": self.ip.to_string(),
            "healthzBindAddress": format!("127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}"),
            "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": [format!("{}/32", self.ip)],
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
                "udpTimeout": "0s",
                "udpStreamTimeout": "0s",
            },
        });
        serde_json::to_string_pretty(&doc).expect("kube-proxy config serializes")
    }

    /// The CNI network: `ptp` (one routed veth per pod, the node side holding the gateway
    /// /32) with host-local addresses from the node's pod CIDR, then `portmap` for hostPorts.
    /// Routed rather than bridged so that pod-to-pod traffic on one node passes the node's
    /// FORWARD chain, where the enforcer and kube-proxy's DNAT see it, without loading
    /// br_netfilter (a host-wide module) on the host. No masquerading: policies see pod IPs.
    pub fn cni_conflist(&self) -> String {
        let doc = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "ptp",
                    "ipMasq": false,
                    "mtu": 1500,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        serde_json::to_string_pretty(&doc).expect("CNI config serializes")
    }
}

/// The apiserver's egress selector: connections to the cluster (kubelets for exec, logs and
/// port-forward; pod and service proxies) go as HTTP CONNECT over the fabric proxy's Unix
/// socket, which dials from inside the fabric (the apiserver runs in the host's namespace,
/// which has no route to the nodes).
pub fn egress_selector_yaml(socket: &Path) -> String {
    let doc = serde_json::json!({
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [{
            "name": "cluster",
            "connection": {
                "proxyProtocol": "HTTPConnect",
                "transport": {"uds": {"udsName": socket}},
            },
        }],
    });
    serde_json::to_string_pretty(&doc).expect("egress selector config serializes")
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeConfig {
        NodeConfig {
            name: "npc-node-1".into(),
            ip: Ipv4Addr::new(172, 30, 254, 11),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            cgroup_root: "/npc-node-1".into(),
            dir: "/run/npc/nodes/npc-node-1".into(),
            ca_cert: "/run/npc/pki/ca.crt".into(),
            pause_image: "registry.k8s.io/pause:3.10.2".into(),
        }
    }

    #[test]
    fn containerd_config_carries_what_this_machine_needs() {
        let toml = node().containerd_toml();
        for want in [
            "version = 3",
            "restrict_oom_score_adj = true",
            "SystemdCgroup = false",
            "BinaryName = \"/usr/sbin/runc\"",
            "bin_dirs = [\"/usr/lib/cni\"]",
            "conf_dir = \"/run/npc/nodes/npc-node-1/cni\"",
            "sandbox = \"registry.k8s.io/pause:3.10.2\"",
            "io.containerd.nri.v1.nri",
        ] {
            assert!(toml.contains(want), "missing {want}:\n{toml}");
        }
    }

    #[test]
    fn kubelet_config_allows_cgroup_v1_and_authenticates_by_webhook() {
        let v: serde_json::Value = serde_json::from_str(&node().kubelet_yaml()).unwrap();
        assert_eq!(v["failCgroupV1"], false);
        assert_eq!(v["cgroupDriver"], "cgroupfs");
        assert_eq!(v["cgroupRoot"], "/npc-node-1");
        assert_eq!(v["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(v["authorization"]["mode"], "Webhook");
        assert_eq!(v["address"], "172.30.254.11");
        assert_eq!(v["protectKernelDefaults"], false);
    }

    #[test]
    fn kube_proxy_leaves_kernel_wide_conntrack_settings_alone() {
        let v: serde_json::Value = serde_json::from_str(&node().kube_proxy_yaml()).unwrap();
        assert_eq!(v["mode"], "iptables");
        assert_eq!(v["conntrack"]["maxPerCore"], 0);
        assert_eq!(v["conntrack"]["tcpEstablishedTimeout"], "0s");
        assert_eq!(v["hostnameOverride"], "npc-node-1");
    }

    #[test]
    fn cni_network_is_routed_on_the_node_pod_cidr() {
        let v: serde_json::Value = serde_json::from_str(&node().cni_conflist()).unwrap();
        assert_eq!(v["plugins"][0]["type"], "ptp");
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.1.0/24"
        );
    }

    #[test]
    fn egress_selector_dials_over_the_socket() {
        let v: serde_json::Value =
            serde_json::from_str(&egress_selector_yaml(Path::new("/run/npc/egress.sock"))).unwrap();
        let sel = &v["egressSelections"][0];
        assert_eq!(sel["name"], "cluster");
        assert_eq!(sel["connection"]["proxyProtocol"], "HTTPConnect");
        assert_eq!(
            sel["connection"]["transport"]["uds"]["udsName"],
            "/run/npc/egress.sock"
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
