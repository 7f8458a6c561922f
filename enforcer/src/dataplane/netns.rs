//! Run work inside a network namespace without moving the rest of the process.
//!
//! A network namespace belongs to a thread, not to a process: `setns(2)` on one thread leaves the
//! others (the tokio workers, the kube client) where they were. Everything that must happen inside
//! the node's namespace — binding NFQUEUE netlink sockets, spawning `iptables-restore` (a child
//! inherits the namespace of the thread that spawned it) — runs on a dedicated OS thread that
//! entered the namespace first. Never call [`enter`] on a thread you do not own.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Why entering a namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace file (e.g. `/run/netns/NAME`) could not be opened.
    #[error("opening network namespace {path}")]
    Open {
        /// The namespace path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` refused.
    #[error("entering network namespace {path}")]
    Setns {
        /// The namespace path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The worker thread could not be started or panicked.
    #[error("running a thread in network namespace {path}")]
    Thread {
        /// The namespace path (or `host` when none was given).
        path: String,
    },
}

/// Move the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) -> Result<(), Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Setns {
        path: path.to_owned(),
        source,
    })
}

/// Run `work` on a fresh thread inside `netns` (or in the caller's namespace when `None`) and
/// return its result. The thread ends with `work`, so the namespace switch never leaks.
pub fn run_in<T, E>(
    netns: Option<&Path>,
    work: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E>
where
    T: Send,
    E: From<Error> + Send,
{
    let label = netns.map_or_else(|| "host".to_owned(), |p| p.display().to_string());
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("netns-work".into())
            .spawn_scoped(scope, || {
                if let Some(path) = netns {
                    enter(path)?;
                }
                work()
            })
            .map_err(|_| Error::Thread {
                path: label.clone(),
            })?;
        handle
            .join()
            .map_err(|_| E::from(Error::Thread { path: label }))?
    })
}
