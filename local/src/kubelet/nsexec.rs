//! The `ns-exec` role: enter a node's namespaces, then `exec` the real program (containerd,
//! the kubelet, kube-proxy), so the PID the state file records is the program's own.
//!
//! A node's first process (containerd) gets a **new private mount namespace** in which the
//! node's own directories are bound over `/run`, `/var/lib` and `/var/log`: the fixed paths
//! of the kubelet and containerd (`/var/lib/kubelet/device-plugins`, `/run/containerd`,
//! `/var/lib/cni`, `/var/log/pods`, `/run/netns`, `/run/xtables.lock`) are then per node,
//! nothing is created on the host, and every mount they make (overlays, tmpfs volumes,
//! network namespace pins) lives and dies with that namespace. Paths the bind mounts hide
//! but the node needs (the cluster's state directory) are bound back at their own place.
//! The node's later processes **join** that namespace (by PID, start time checked).
//!
//! Runs as a fresh, single-threaded process (the role is dispatched first thing in `main`),
//! which `setns(CLONE_NEWNS)` requires.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

/// Role value of the namespace-entering exec wrapper.
pub const ROLE_NS_EXEC: &str = "ns-exec";
/// Environment variable carrying the [`NsExec`] JSON.
pub const NS_EXEC_ENV: &str = "NETPOL_LOCAL_NS_EXEC";

/// A directory bound over a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// The directory (on the host), created if missing.
    pub source: PathBuf,
    /// The path it is bound over (must exist on the host).
    pub target: PathBuf,
}

/// Which mount namespace the program runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountNs {
    /// A new private one with these binds; `keep` paths hidden by a bind are bound back.
    New {
        /// The binds, in order.
        binds: Vec<Bind>,
        /// Paths that must stay visible at their own place.
        keep: Vec<PathBuf>,
    },
    /// The one of this live process.
    Join {
        /// Its PID.
        pid: i32,
        /// Its start time (field 22 of `/proc/<pid>/stat`), so a reused PID is refused.
        start_time: u64,
    },
}

/// What the wrapper does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsExec {
    /// The network namespace to enter.
    pub netns: PathBuf,
    /// The mount namespace.
    pub mounts: MountNs,
    /// The program to exec.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory.
    pub cwd: PathBuf,
}

impl NsExec {
    /// The JSON value of [`NS_EXEC_ENV`].
    pub fn to_env_value(&self) -> String {
        serde_json::to_string(self).expect("NsExec serializes")
    }
}

/// The paths of `keep` that one of `binds` hides (bound over them or over a parent).
pub fn hidden_paths(binds: &[Bind], keep: &[PathBuf]) -> Vec<PathBuf> {
    keep.iter()
        .filter(|k| binds.iter().any(|b| k.starts_with(&b.target)))
        .cloned()
        .collect()
}

/// Runs the role: never returns on success (the process becomes the program).
pub fn run() -> anyhow::Result<()> {
    let raw = std::env::var(NS_EXEC_ENV).with_context(|| format!("reading ${NS_EXEC_ENV}"))?;
    let cfg: NsExec =
        serde_json::from_str(&raw).with_context(|| format!("parsing ${NS_EXEC_ENV}"))?;
    // Every file is opened before the mounts change what paths mean.
    let netns = File::open(&cfg.netns)
        .with_context(|| format!("opening network namespace {}", cfg.netns.display()))?;
    match &cfg.mounts {
        MountNs::New { binds, keep } => enter_new_mount_ns(binds, keep)?,
        MountNs::Join { pid, start_time } => {
            let rec = crate::state::ProcRecord {
                name: String::new(),
                pid: *pid,
                start_time: *start_time,
                log: PathBuf::new(),
            };
            anyhow::ensure!(
                crate::procs::alive(&rec),
                "the process {pid} whose mount namespace to join is gone"
            );
            let path = format!("/proc/{pid}/ns/mnt");
            let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNS)
                .with_context(|| format!("entering the mount namespace of pid {pid}"))?;
        }
    }
    nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", cfg.netns.display()))?;
    drop(netns);
    let err = std::process::Command::new(&cfg.program)
        .args(&cfg.args)
        .current_dir(&cfg.cwd)
        .env_remove(crate::agent_config::ROLE_ENV)
        .env_remove(NS_EXEC_ENV)
        .exec();
    Err(anyhow::Error::new(err).context(format!("executing {}", cfg.program.display())))
}

fn enter_new_mount_ns(binds: &[Bind], keep: &[PathBuf]) -> anyhow::Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).context("unsharing the mount namespace")?;
    // Nothing mounted here propagates back to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making every mount private")?;
    for b in binds {
        std::fs::create_dir_all(&b.source)
            .with_context(|| format!("creating {}", b.source.display()))?;
    }
    // A kept path is first bound at its place inside the source that will hide it, so the
    // recursive bind below carries it along (a bind from a file descriptor opened before
    // the unshare would refer to the host's namespace and is refused).
    for path in hidden_paths(binds, keep) {
        let b = binds
            .iter()
            .find(|b| path.starts_with(&b.target))
            .expect("hidden_paths returns only paths under a bind target");
        let rel = path.strip_prefix(&b.target).expect("checked prefix");
        let at = b.source.join(rel);
        std::fs::create_dir_all(&at)
            .with_context(|| format!("creating mount point {}", at.display()))?;
        bind(&path, &at, MsFlags::MS_BIND)?;
    }
    for b in binds {
        bind(&b.source, &b.target, MsFlags::MS_BIND | MsFlags::MS_REC)?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, flags: MsFlags) -> anyhow::Result<()> {
    nix::mount::mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("binding {} over {}", source.display(), target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_path_under_a_bind_target_is_hidden() {
        let binds = vec![
            Bind {
                source: "/s/nodes/n0/run".into(),
                target: "/run".into(),
            },
            Bind {
                source: "/s/nodes/n0/var-lib".into(),
                target: "/var/lib".into(),
            },
        ];
        let keep = vec![
            PathBuf::from("/run/netpol-conformance/local"),
            PathBuf::from("/root/.cache/netpol-conformance"),
            PathBuf::from("/runner"),
        ];
        assert_eq!(
            hidden_paths(&binds, &keep),
            vec![PathBuf::from("/run/netpol-conformance/local")]
        );
    }

    #[test]
    fn config_round_trips_through_the_environment_value() {
        let cfg = NsExec {
            netns: "/run/netns/npc-node-0".into(),
            mounts: MountNs::Join {
                pid: 42,
                start_time: 7,
            },
            program: "/bin/kubelet".into(),
            args: vec!["--v=1".into()],
            cwd: "/".into(),
        };
        let back: NsExec = serde_json::from_str(&cfg.to_env_value()).unwrap();
        assert_eq!(back, cfg);
    }
}
