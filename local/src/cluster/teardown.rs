//! `down`: undoing a cluster from its state file, sweeping what a crash left unrecorded.

use super::*;

/// What `down` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Whether a state file was found.
    pub had_state: bool,
    /// Recorded processes and how each ended.
    pub processes: Vec<(String, Stopped)>,
    /// Unrecorded processes found by their owner mark and killed.
    pub swept_processes: Vec<i32>,
    /// Namespaces removed (recorded, pods and swept).
    pub netns_removed: Vec<String>,
    /// Where the logs were copied to (see [`KEEP_LOGS_ENV`]).
    pub logs_kept: Option<PathBuf>,
    /// Things that could not be undone (each rendered with its cause).
    pub errors: Vec<String>,
}

/// Copies the files of `logs` into a new `<keep>/logs-<unix seconds>-<pid>` directory;
/// `None` when there are no logs.
fn keep_logs(logs: &Path, keep: &Path) -> std::io::Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(logs) else {
        return Ok(None);
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let dest = keep.join(format!("logs-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dest)?;
    for e in entries.flatten() {
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), dest.join(e.file_name()))?;
        }
    }
    Ok(Some(dest))
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.had_state {
            writeln!(f, "no state file found; swept leftovers only")?;
        }
        for (name, how) in &self.processes {
            writeln!(f, "process {name}: {how:?}")?;
        }
        if !self.swept_processes.is_empty() {
            writeln!(f, "unrecorded processes killed: {:?}", self.swept_processes)?;
        }
        if !self.netns_removed.is_empty() {
            writeln!(
                f,
                "network namespaces removed: {}",
                self.netns_removed.join(", ")
            )?;
        }
        if let Some(dir) = &self.logs_kept {
            writeln!(f, "logs kept in {}", dir.display())?;
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

/// Live processes carrying an [`OWNER_ENV`] mark, with the state directory it names.
pub fn marked_processes() -> Vec<(i32, PathBuf)> {
    let prefix = format!("{OWNER_ENV}=");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let owner = env
                .split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))?;
            let owner = PathBuf::from(String::from_utf8_lossy(owner).into_owned());
            let start_time = procs::start_time(pid)?;
            let rec = ProcRecord {
                name: String::new(),
                pid,
                start_time,
                log: PathBuf::new(),
            };
            procs::alive(&rec).then_some((pid, owner))
        })
        .collect()
}

/// PIDs of live processes whose environment carries `OWNER_ENV=<state_dir>`.
pub fn owned_processes(state_dir: &Path) -> Vec<i32> {
    marked_processes()
        .into_iter()
        .filter(|(_, owner)| owner == state_dir)
        .map(|(pid, _)| pid)
        .collect()
}

/// State directories of other live local clusters (processes marked with another owner).
pub fn other_clusters(state_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = marked_processes()
        .into_iter()
        .map(|(_, owner)| owner)
        .filter(|owner| owner != state_dir)
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Namespace names recorded by the node agents under `<dir>/pods/*.json` (a `netns` field
/// holding a path or a name).
fn recorded_pod_netns(agent_dirs: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for dir in agent_dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("pods")) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(ns) = v.get("netns").and_then(|n| n.as_str()) {
                let name = Path::new(ns)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(ns);
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Whether a namespace name is one the fixed naming of `instance` produces (fabric,
/// external host, nodes).
pub fn is_cluster_netns(name: &str, instance: &str) -> bool {
    let base = if instance.is_empty() {
        name.strip_prefix("npc-")
    } else {
        name.strip_prefix("npc-")
            .and_then(|r| r.strip_prefix(instance))
            .and_then(|r| r.strip_prefix('-'))
    };
    let Some(base) = base else {
        return false;
    };
    base == "fabric"
        || base == "ext"
        || base
            .strip_prefix("node-")
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a namespace name has the shape of a pod namespace (`npc-` + 8 hex digits).
pub fn is_pod_netns_name(name: &str) -> bool {
    name.strip_prefix("npc-")
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Tears the cluster of `state_dir` down: processes (TERM, then KILL), recorded links,
/// pod namespaces, node/fabric/external namespaces, mounts, the state directory. Works from
/// the state file alone and is idempotent; also sweeps leftovers a crash could have left
/// unrecorded.
pub fn down(state_dir: &Path) -> Result<DownReport> {
    if !is_root() {
        return Err(Error::NotRoot);
    }
    let _lock = lock_parent(state_dir)?;
    down_unlocked(state_dir)
}

/// Serializes `up` and `down` of state directories under the same parent (two runs that
/// bring up the same cluster at once would otherwise tear each other's halves down): an
/// exclusive `flock` on the parent directory, released on drop.
pub(super) fn lock_parent(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let parent = state_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let fail = |source| Error::Io {
        op: "locking",
        path: parent.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(parent).map_err(fail)?;
    let dir = std::fs::File::open(parent).map_err(fail)?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| fail(errno.into()))
}

pub(super) fn down_unlocked(state_dir: &Path) -> Result<DownReport> {
    let t = Timeouts::default();
    let mut report = DownReport::default();
    let state = match State::load(state_dir) {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(crate::error_chain(&e));
            None
        }
    };
    report.had_state = state.is_some();

    // Processes: TERM all at once (agents and enforcers first in the list's reverse), then
    // finish each.
    if let Some(s) = &state {
        let recs: Vec<ProcRecord> = s.processes.iter().rev().cloned().collect();
        let running: Vec<bool> = recs.iter().map(procs::alive).collect();
        procs::signal_all(&recs, nix::sys::signal::Signal::SIGTERM);
        for (rec, was_running) in recs.iter().zip(running) {
            let how = match procs::stop(rec, t.stop_grace) {
                // It went with the SIGTERM sent to all just before.
                Stopped::NotRunning if was_running => Stopped::Terminated,
                how => how,
            };
            if how == Stopped::Survived {
                report
                    .errors
                    .push(format!("{} (pid {}) survived SIGKILL", rec.name, rec.pid));
            }
            report.processes.push((rec.name.clone(), how));
        }
    }
    // Real nodes: what outlived containerd (shims, containers), cgroups, kernel tunables.
    if let Some(s) = &state {
        report.errors.extend(real_nodes::undo_host_changes(s, t));
    }
    for pid in owned_processes(state_dir) {
        let rec = ProcRecord {
            name: format!("unrecorded-{pid}"),
            pid,
            start_time: procs::start_time(pid).unwrap_or_default(),
            log: PathBuf::new(),
        };
        // An unrecorded process may not lead its own group: signal it alone.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        if procs::stop(&rec, t.stop_grace) == Stopped::Survived {
            report.errors.push(format!("unrecorded pid {pid} survived"));
        }
        report.swept_processes.push(pid);
    }

    // Pod namespaces first (their veths die with them), then links, then our namespaces.
    let agent_dirs: Vec<PathBuf> = match &state {
        Some(s) => s.nodes.iter().map(|n| n.agent_dir.clone()).collect(),
        None => std::fs::read_dir(state_dir.join("nodes"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let mut doomed: Vec<String> = recorded_pod_netns(&agent_dirs);
    if let Some(s) = &state {
        for l in s.links.iter().rev() {
            if let Err(e) = fabric::delete_link(&l.netns, &l.name) {
                report.errors.push(crate::error_chain(&e));
            }
        }
        doomed.extend(s.netns.iter().rev().cloned());
    }
    // Last resort: our fixed names, and pod-shaped namespaces left without links (their
    // node side is gone, so no live cluster owns them).
    let existing = fabric::list_netns();
    let others = other_clusters(state_dir);
    let instance = match &state {
        Some(s) => s.instance.clone(),
        None => std::env::var(fabric::INSTANCE_ENV).unwrap_or_default(),
    };
    if others.is_empty() {
        for name in &existing {
            if is_cluster_netns(name, &instance) && !doomed.contains(name) {
                doomed.push(name.clone());
            }
        }
    } else {
        tracing::info!(
            ?others,
            "another local cluster runs; not sweeping unrecorded namespaces"
        );
    }
    for name in &doomed {
        if existing.contains(name) {
            match fabric::delete_netns(name) {
                Ok(()) => report.netns_removed.push(name.clone()),
                Err(e) => report.errors.push(crate::error_chain(&e)),
            }
        }
    }
    // Pod-shaped namespaces without links: their node side is gone. Only when no other
    // cluster runs, since one of its pods could be between namespace and veth creation.
    for name in fabric::list_netns() {
        if others.is_empty() && is_pod_netns_name(&name) && fabric::links_in(&name).is_empty() {
            match fabric::delete_netns(&name) {
                Ok(()) => report.netns_removed.push(name),
                Err(e) => report.errors.push(crate::error_chain(&e)),
            }
        }
    }
    if let Some(s) = &state {
        for m in &s.mounts {
            match nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
                Err(e) => report
                    .errors
                    .push(format!("unmounting {}: {e}", m.display())),
            }
        }
    }
    if let Some(keep) = std::env::var_os(KEEP_LOGS_ENV).filter(|v| !v.is_empty()) {
        match keep_logs(&state_dir.join("logs"), Path::new(&keep)) {
            Ok(Some(dir)) => report.logs_kept = Some(dir),
            Ok(None) => {}
            Err(e) => report
                .errors
                .push(format!("keeping the logs in {keep:?}: {e}")),
        }
    }
    match std::fs::remove_dir_all(state_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report
            .errors
            .push(format!("removing {}: {e}", state_dir.display())),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_copied_into_a_fresh_directory() {
        let root = std::env::temp_dir().join(format!("npc-keep-{}", std::process::id()));
        let logs = root.join("state/logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("etcd.log"), "etcd says hi\n").unwrap();
        let kept = keep_logs(&logs, &root.join("kept"))
            .unwrap()
            .expect("logs copied");
        assert!(kept.starts_with(root.join("kept")));
        assert_eq!(
            std::fs::read_to_string(kept.join("etcd.log")).unwrap(),
            "etcd says hi\n"
        );
        assert_eq!(
            keep_logs(&root.join("none"), &root.join("kept")).unwrap(),
            None
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn netns_name_classes() {
        assert!(is_cluster_netns("npc-node-0", ""));
        assert!(is_cluster_netns("npc-node-12", ""));
        assert!(is_cluster_netns("npc-fabric", ""));
        assert!(is_cluster_netns("npc-ext", ""));
        assert!(!is_cluster_netns("npc-node-", ""));
        assert!(!is_cluster_netns("npc-node-x", ""));
        assert!(!is_cluster_netns("npc-1a2b3c4d", ""));
        assert!(!is_cluster_netns("npc-t-node-0", ""));
        assert!(is_cluster_netns("npc-t-node-0", "t"));
        assert!(is_cluster_netns("npc-t-ext", "t"));
        assert!(!is_cluster_netns("npc-node-0", "t"));
        assert!(!is_cluster_netns("npc-tt-fabric", "t"));
        assert!(is_pod_netns_name("npc-1a2b3c4d"));
        assert!(!is_pod_netns_name("npc-1a2b3c4"));
        assert!(!is_pod_netns_name("npc-fabric"));
    }

    #[test]
    fn pod_netns_records_are_read_by_path_or_name() {
        let dir = std::env::temp_dir().join(format!("npc-podrec-{}", std::process::id()));
        let pods = dir.join("pods");
        std::fs::create_dir_all(&pods).unwrap();
        std::fs::write(
            pods.join("a.json"),
            r#"{"netns":"/run/netns/npc-0000abcd"}"#,
        )
        .unwrap();
        std::fs::write(pods.join("b.json"), r#"{"netns":"npc-1111abcd","uid":"x"}"#).unwrap();
        std::fs::write(pods.join("c.json"), "not json").unwrap();
        let mut got = recorded_pod_netns(std::slice::from_ref(&dir));
        got.sort();
        assert_eq!(got, vec!["npc-0000abcd", "npc-1111abcd"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_parent_lock_excludes_a_second_holder_until_dropped() {
        let parent = std::env::temp_dir().join(format!("npc-lock-{}", std::process::id()));
        let state_dir = parent.join("cluster");
        let held = lock_parent(&state_dir).unwrap();
        let try_again = || {
            let dir = std::fs::File::open(&parent).unwrap();
            nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
        };
        assert!(!try_again(), "a second exclusive lock succeeded while held");
        drop(held);
        assert!(try_again(), "the lock was not released on drop");
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
