//! What the agent records about each realized pod (`state_dir/pods/<uid>.json`), the
//! kernel object names derived from a pod UID, and removing a recorded pod's namespace
//! and link, which is also what `down` needs for pods whose agent is gone.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::netns;

/// Errors of the pod records and of removing a recorded pod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Removing the namespace or its link failed.
    #[error("tearing down pod {pod} failed")]
    Teardown {
        /// `namespace/name`.
        pod: String,
        /// The cause.
        #[source]
        source: netns::Error,
    },
    /// Reading or writing a pod record in the state directory failed.
    #[error("{op} pod record {path} failed")]
    Record {
        /// "reading", "writing" or "removing".
        op: &'static str,
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A pod record is not valid JSON.
    #[error("parsing pod record {path} failed")]
    RecordParse {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// 8 hex digits derived from a pod UID (FNV-1a, 32 bit): stable across restarts.
pub fn uid_hash(uid: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The name of a pod's network namespace: `npc-<hash>`.
pub fn netns_name(uid: &str) -> String {
    format!("npc-{}", uid_hash(uid))
}

/// The node-side veth name of a pod: `npc<hash>` (11 bytes, under the 15-byte limit).
pub fn host_link_name(uid: &str) -> String {
    format!("npc{}", uid_hash(uid))
}

/// The namespace path and host link for a new pod: normally from [`netns_name`] and
/// [`host_link_name`]; if that namespace already exists (another pod's UID hashed to the
/// same 8 digits), from the hash of `<uid>/<n>` for the first free `n`. Records keep the
/// names actually used, so nothing later needs to re-derive them.
pub fn fresh_names(uid: &str, exists: impl Fn(&Path) -> bool) -> (PathBuf, String) {
    let candidates = std::iter::once(uid.to_string()).chain((1..).map(|n| format!("{uid}/{n}")));
    for seed in candidates.take(64) {
        let path = netns::path_of(&netns_name(&seed));
        if !exists(&path) {
            return (path, host_link_name(&seed));
        }
    }
    // 64 collisions in a row cannot happen with distinct pods; fall back to the plain name.
    (netns::path_of(&netns_name(uid)), host_link_name(uid))
}

/// What the agent records about a realized pod, so `down` and a restarted agent can find
/// its kernel objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod UID.
    pub uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The pod's network namespace (the node's for host-network pods).
    pub netns: PathBuf,
    /// The node-side veth (none for host-network pods).
    pub host_link: Option<String>,
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// Whether the pod shares the node's namespace.
    pub host_network: bool,
}

impl PodRecord {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The record files of a state directory.
pub fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pods")
}

/// Reads every pod record under `state_dir/pods`.
pub fn load_records(state_dir: &Path) -> Result<Vec<PodRecord>> {
    let dir = records_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Record {
                op: "reading",
                path: dir,
                source,
            });
        }
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Record {
            op: "reading",
            path: path.clone(),
            source,
        })?;
        let record = serde_json::from_str(&text).map_err(|source| Error::RecordParse {
            path: path.clone(),
            source,
        })?;
        records.push(record);
    }
    records.sort_by(|a: &PodRecord, b| a.uid.cmp(&b.uid));
    Ok(records)
}

fn record_path(state_dir: &Path, uid: &str) -> PathBuf {
    records_dir(state_dir).join(format!("{uid}.json"))
}

pub(crate) fn save_record(state_dir: &Path, record: &PodRecord) -> Result<()> {
    let path = record_path(state_dir, &record.uid);
    let fail = |source| Error::Record {
        op: "writing",
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(records_dir(state_dir)).map_err(fail)?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(record).expect("PodRecord serializes");
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)
}

pub(crate) fn remove_record(state_dir: &Path, uid: &str) -> Result<()> {
    let path = record_path(state_dir, uid);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Record {
            op: "removing",
            path,
            source,
        }),
    }
}

/// Removes a recorded pod's kernel objects (servers must already be stopped). Blocking;
/// also what `down` uses for pods whose agent is gone.
pub fn destroy(record: &PodRecord, node_netns: &Path) -> Result<()> {
    if record.host_network {
        return Ok(());
    }
    crate::probe::forget(&record.netns);
    let fail = |source| Error::Teardown {
        pod: record.key(),
        source,
    };
    if let Some(link) = &record.host_link
        && netns::exists(node_netns)
    {
        netns::unwire_pod(node_netns, link).map_err(fail)?;
    }
    netns::remove(&record.netns).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_step_around_a_taken_namespace() {
        let uid = "0b9c7e4e-1f8a-4c7e-9a51-2a3f0c1d2e3f";
        let (path, link) = fresh_names(uid, |_| false);
        assert_eq!(path, netns::path_of(&netns_name(uid)));
        assert_eq!(link, host_link_name(uid));
        let taken = path.clone();
        let (other, other_link) = fresh_names(uid, |p| p == taken);
        assert_ne!(other, taken);
        assert_ne!(other_link, link);
        assert!(other_link.len() <= 15 && other_link.starts_with("npc"));
    }

    #[test]
    fn names_are_short_stable_and_prefixed() {
        let uid = "0b9c7e4e-1f8a-4c7e-9a51-2a3f0c1d2e3f";
        assert_eq!(uid_hash(uid), uid_hash(uid));
        assert_ne!(uid_hash(uid), uid_hash("another-uid"));
        assert_eq!(uid_hash(uid).len(), 8);
        assert!(netns_name(uid).starts_with("npc-"));
        assert!(host_link_name(uid).starts_with("npc"));
        assert!(host_link_name(uid).len() <= 15);
        // FNV-1a of the empty string is the offset basis.
        assert_eq!(uid_hash(""), "811c9dc5");
    }

    #[test]
    fn records_round_trip_through_the_state_dir() {
        let dir = std::env::temp_dir().join(format!("npt-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let record = PodRecord {
            uid: "u1".into(),
            namespace: "x".into(),
            name: "a".into(),
            netns: "/run/netns/npc-00000000".into(),
            host_link: Some("npc00000000".into()),
            ip: Ipv4Addr::new(10, 244, 0, 9),
            host_network: false,
        };
        assert!(load_records(&dir).unwrap().is_empty());
        save_record(&dir, &record).unwrap();
        assert_eq!(load_records(&dir).unwrap(), vec![record]);
        remove_record(&dir, "u1").unwrap();
        remove_record(&dir, "u1").unwrap();
        assert!(load_records(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
