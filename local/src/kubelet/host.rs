//! What real nodes change on the host, and undoing it: the kernel tunables the kubelet sets,
//! the cgroup trees pods live in, and the processes (shims, containers) that outlive the
//! kubelet and containerd. Everything else a node does stays inside its network and mount
//! namespaces and goes with them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The kernel-wide tunables the kubelet sets at start when `protectKernelDefaults` is off
/// (its `setupKernelTunables`), as paths under `/proc/sys`.
pub const KUBELET_TUNABLES: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

pub use crate::state::SysctlRecord;

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key)
}

/// The current values of `keys` (those that exist).
pub fn read_sysctls(keys: &[&str]) -> Vec<SysctlRecord> {
    keys.iter()
        .filter_map(|k| {
            let v = std::fs::read_to_string(sysctl_path(k)).ok()?;
            Some(SysctlRecord {
                key: k.to_string(),
                value: v.trim().to_string(),
            })
        })
        .collect()
}

/// Writes back every recorded value that differs now; returns what could not be restored.
pub fn restore_sysctls(records: &[SysctlRecord]) -> Vec<String> {
    let mut errors = Vec::new();
    for r in records {
        let path = sysctl_path(&r.key);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.trim() == r.value {
            continue;
        }
        if let Err(e) = std::fs::write(&path, format!("{}\n", r.value)) {
            errors.push(format!("restoring {} to {}: {e}", path.display(), r.value));
        }
    }
    errors
}

/// Mount points of every cgroup hierarchy (each v1 controller, named ones, cgroup2).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_cgroup_mounts(&text)
}

/// The cgroup mount points of a mountinfo text.
pub fn parse_cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The directories of the cgroup `name` (`/npc-node-0`) in every hierarchy.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let rel = name.trim_start_matches('/');
    cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(rel))
        .collect()
}

/// The network namespace of a pod on a real node of the local cluster (`node` names its cgroup,
/// `npc-node-0`): `/proc/<pid>/ns/net` of one of its processes, found under the node's
/// `kubepods` cgroups by the pod's UID; `None` while none of them runs.
pub fn pod_netns(node: &str, uid: &str) -> Option<PathBuf> {
    let pod = format!("pod{uid}");
    cgroup_dirs(node).into_iter().find_map(|hierarchy| {
        let kubepods = hierarchy.join("kubepods");
        // Guaranteed pods sit right under kubepods, the others under their QoS class.
        std::iter::once(kubepods.clone())
            .chain(child_dirs(&kubepods))
            .map(|d| d.join(&pod))
            .filter(|d| d.is_dir())
            .find_map(|d| pids_in_cgroup_tree(&d).first().copied())
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
    })
}

/// Creates a cgroup directory; in the cpuset hierarchy it copies the parent's CPUs and
/// memory nodes first (an empty cpuset accepts no process).
pub fn create_cgroup(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
            let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            if mine.trim().is_empty() {
                std::fs::write(dir.join(f), v.trim())?;
            }
        }
    }
    Ok(())
}

/// PIDs of every process in a cgroup tree.
pub fn pids_in_cgroup_tree(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        stack.extend(child_dirs(&d));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The directories directly inside `dir` (none when it cannot be read): a cgroup's children.
pub fn child_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Removes a cgroup tree, children first. A missing tree is fine.
pub fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The inode of a process's mount namespace (identifies the namespace while it lives).
pub fn mount_ns_of(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// PIDs of live processes in one of these mount namespaces.
pub fn pids_in_mount_ns(namespaces: &[u64]) -> Vec<i32> {
    if namespaces.is_empty() {
        return Vec::new();
    }
    let own = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| mount_ns_of(*pid).is_some_and(|ino| namespaces.contains(&ino)))
        .collect()
}

/// SIGKILLs what `find` returns until it returns nothing or `within` passes; returns the
/// survivors.
pub fn kill_until_gone(find: impl Fn() -> Vec<i32>, within: Duration) -> Vec<i32> {
    let deadline = Instant::now() + within;
    loop {
        let pids = find();
        if pids.is_empty() || Instant::now() >= deadline {
            return pids;
        }
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_mounts_are_read_from_mountinfo() {
        let text = "\
29 27 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
30 29 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
31 29 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
32 29 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 27 0:30 / /proc rw,relatime - proc proc rw
";
        assert_eq!(
            parse_cgroup_mounts(text),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/systemd"),
                PathBuf::from("/sys/fs/cgroup/unified"),
            ]
        );
    }

    #[test]
    fn a_sysctl_equal_to_its_record_is_not_written() {
        // /proc/sys/kernel/ostype is read-only; equal values must not even try to write it.
        let recs = read_sysctls(&["kernel/ostype", "no/such/key"]);
        assert_eq!(recs.len(), 1);
        assert!(restore_sysctls(&recs).is_empty());
    }

    #[test]
    fn a_cgroup_tree_is_removed_children_first() {
        // Plain directories stand in for cgroups (rmdir is the same call).
        let root = std::env::temp_dir().join(format!("npc-cg-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/burstable/pod1")).unwrap();
        std::fs::create_dir_all(root.join("kubepods/besteffort")).unwrap();
        remove_cgroup_tree(&root).unwrap();
        assert!(!root.exists());
        remove_cgroup_tree(&root).unwrap();
    }
}
