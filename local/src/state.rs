//! The state file: everything a local cluster has created, written before it is waited on,
//! so `down` can undo it from the file alone (after Ctrl-C, a crash or a SIGKILL).
//!
//! The file is `<state_dir>/state.json`, replaced atomically (write a temporary file, then
//! rename) every time something is recorded.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the file failed (other than it being absent, see [`State::load`]).
    #[error("reading state file {path} failed")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid state document.
    #[error("parsing state file {path} failed")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Writing or renaming the file failed.
    #[error("writing state file {path} failed")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How far `up` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `up` is creating things; the cluster is not usable yet.
    Starting,
    /// `up` returned: the cluster passed every readiness check.
    Ready,
}

/// A process the cluster started, identified by PID and its kernel start time (so a reused
/// PID is never signalled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    /// What it is: `etcd`, `kube-apiserver`, `agent-npc-node-0`, …
    pub name: String,
    /// Its PID; it leads its own process group.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot) when it was started.
    pub start_time: u64,
    /// Its log file.
    pub log: PathBuf,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Name of its network namespace (under /run/netns).
    pub netns: String,
    /// Its address on the fabric (the Node's InternalIP).
    pub ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: ipnet::Ipv4Net,
    /// The agent's state directory (it records pods under `pods/`).
    pub agent_dir: PathBuf,
    /// The enforcer's metrics address, when an enforcer runs on this node.
    pub enforcer_metrics: Option<std::net::SocketAddr>,
}

/// A link created inside one of our namespaces (recorded for completeness; it goes away
/// with its namespace, and `down` deletes it explicitly first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The namespace holding the link.
    pub netns: String,
    /// The link name.
    pub name: String,
}

/// What runs the pods of a local cluster's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// The node agent: pods are network namespaces served by the agent itself.
    #[default]
    Emulated,
    /// A real kubelet + containerd + runc (+ kube-proxy) per node (`crate::kubelet`).
    Kubelet,
}

impl Runtime {
    /// The lower-case name (`emulated`, `kubelet`).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Emulated => "emulated",
            Runtime::Kubelet => "kubelet",
        }
    }
}

/// What real nodes changed on the host beyond processes and namespaces (see
/// `crate::kubelet::host`); empty for the emulated runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChanges {
    /// Kernel tunables as they were before the first kubelet started.
    pub sysctls: Vec<SysctlRecord>,
    /// Cgroup directories created (each node's `cgroupRoot` in every hierarchy); pods' cgroups
    /// live below them.
    pub cgroups: Vec<PathBuf>,
    /// Inodes of the nodes' private mount namespaces: every process still in one (shims,
    /// runc) is the cluster's.
    pub mount_namespaces: Vec<u64>,
    /// The node binaries (a process in a node's mount namespace is killed by `down` only if it
    /// runs one of them or carries the cluster's owner mark).
    pub node_bin_dir: Option<PathBuf>,
}

/// Everything a local cluster owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version of this document.
    pub version: u32,
    /// How far `up` got.
    pub phase: Phase,
    /// The state directory this file lives in.
    pub state_dir: PathBuf,
    /// Directory of etcd, kube-apiserver, …, kubectl.
    pub bin_dir: PathBuf,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The apiserver's secure port on 127.0.0.1.
    pub apiserver_port: u16,
    /// etcd's client port on 127.0.0.1.
    pub etcd_port: u16,
    /// Processes, in start order.
    pub processes: Vec<ProcRecord>,
    /// Network namespaces (names under /run/netns), in creation order.
    pub netns: Vec<String>,
    /// Links, in creation order.
    pub links: Vec<LinkRecord>,
    /// Mount points the cluster made outside /run/netns (none today; kept so a future
    /// mount is undone by an older `down`).
    pub mounts: Vec<PathBuf>,
    /// The nodes.
    pub nodes: Vec<NodeRecord>,
    /// The instance name (empty for the plain names), see `fabric::INSTANCE_ENV`.
    pub instance: String,
    /// The external host's namespace name.
    pub external_netns: String,
    /// The external host's address ("the internet" of egress cases).
    pub external_host_ip: Ipv4Addr,
    /// What runs the pods (absent in files of older versions: emulated).
    #[serde(default)]
    pub runtime: Runtime,
    /// Host changes of real nodes (absent in older files: none).
    #[serde(default)]
    pub host: HostChanges,
    /// Real nodes: the enforcer runs as the DaemonSet of `enforcer/deploy/`.
    #[serde(default)]
    pub enforcer_daemonset: bool,
}

/// The current format version.
pub const VERSION: u32 = 1;

impl State {
    /// A fresh state for a cluster about to start.
    pub fn new(state_dir: &Path, bin_dir: &Path) -> Self {
        State {
            version: VERSION,
            phase: Phase::Starting,
            state_dir: state_dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            kubeconfig: state_dir.join("kubeconfig"),
            apiserver_port: 0,
            etcd_port: 0,
            processes: Vec::new(),
            netns: Vec::new(),
            links: Vec::new(),
            mounts: Vec::new(),
            nodes: Vec::new(),
            instance: String::new(),
            external_netns: String::new(),
            external_host_ip: Ipv4Addr::UNSPECIFIED,
            runtime: Runtime::Emulated,
            host: HostChanges::default(),
            enforcer_daemonset: false,
        }
    }

    /// The state file's path for a state directory.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_FILE)
    }

    /// Reads the state file of `state_dir`; `Ok(None)` if there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Read { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Parse { path, source })
    }

    /// Writes the state file atomically (temporary file + rename).
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.state_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("State serializes to JSON");
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.state_dir)?;
            std::fs::write(&tmp, text.as_bytes())?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| Error::Write { path, source })
    }
}

/// A sysctl's value before the cluster started (the kernel-wide tunables real nodes change, see
/// `crate::kubelet::host`), so `down` can put it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlRecord {
    /// Path under `/proc/sys` (`vm/overcommit_memory`).
    pub key: String,
    /// Its value then, trimmed.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> State {
        let mut s = State::new(dir, Path::new("/opt/k8s/bin"));
        s.apiserver_port = 40123;
        s.etcd_port = 40124;
        s.processes.push(ProcRecord {
            name: "etcd".into(),
            pid: 4242,
            start_time: 987654,
            log: dir.join("logs/etcd.log"),
        });
        s.netns = vec!["npc-fabric".into(), "npc-node-0".into()];
        s.links.push(LinkRecord {
            netns: "npc-fabric".into(),
            name: "npc-br0".into(),
        });
        s.nodes.push(NodeRecord {
            name: "npc-node-0".into(),
            netns: "npc-node-0".into(),
            ip: Ipv4Addr::new(172, 30, 254, 10),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            agent_dir: dir.join("nodes/npc-node-0"),
            enforcer_metrics: Some("127.0.0.1:9100".parse().unwrap()),
        });
        s.external_netns = "npc-ext".into();
        s.external_host_ip = Ipv4Addr::new(172, 30, 254, 100);
        s
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("npc-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = temp_dir("rt");
        let s = sample(&dir);
        s.save().unwrap();
        let back = State::load(&dir).unwrap().expect("state file present");
        assert_eq!(back, s);
        assert!(!dir.join("state.json.tmp").exists(), "temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absent_file_is_none_and_garbage_is_a_parse_error() {
        let dir = temp_dir("bad");
        assert!(State::load(&dir).unwrap().is_none());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        let err = State::load(&dir).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("state.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_without_runtime_fields_reads_as_emulated() {
        let dir = temp_dir("old");
        let s = sample(&dir);
        let mut v = serde_json::to_value(&s).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("runtime");
        obj.remove("host");
        let back: State = serde_json::from_value(v).unwrap();
        assert_eq!(back.runtime, Runtime::Emulated);
        assert_eq!(back.host, HostChanges::default());
    }

    #[test]
    fn phase_is_written_in_kebab_case() {
        let dir = temp_dir("phase");
        let mut s = sample(&dir);
        s.phase = Phase::Ready;
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"phase\":\"ready\""), "{json}");
    }
}
