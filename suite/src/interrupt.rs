//! A run's interrupt. The first SIGINT or SIGTERM asks the run to stop: trials not yet started
//! are skipped, running ones stop before their next step, and the run cleans up as it would
//! after its last trial. The second stops at once, after tearing down the local cluster the run
//! brought up itself (a cluster `local up` started is left running), and exits with 130.
//!
//! The state is the run's own object, handed to what needs it; only the signal watcher is
//! process-wide, as signals are.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What an interrupt of one run acts on.
#[derive(Debug, Default)]
pub struct Interrupt {
    cancel: AtomicBool,
    owned_local: Mutex<Option<PathBuf>>,
}

impl Interrupt {
    /// A run's interrupt, not yet watching signals.
    pub fn new() -> Arc<Interrupt> {
        Arc::new(Interrupt::default())
    }

    /// The flag the runner checks between steps.
    pub fn flag(&self) -> &AtomicBool {
        &self.cancel
    }

    /// Whether the run was asked to stop.
    pub fn requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Asks the run to stop (what the first signal does).
    pub fn request(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Records the state directory of a local cluster the run brought up (`None`: the run owns
    /// none), for the second signal to tear down.
    pub fn own_local(&self, state_dir: Option<PathBuf>) {
        *self.owned_local.lock().unwrap_or_else(|e| e.into_inner()) = state_dir;
    }

    /// Forgets the run's local cluster (the run has torn it down itself) and returns it.
    pub fn release_local(&self) -> Option<PathBuf> {
        self.owned_local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Watches SIGINT and SIGTERM for this run on a thread of its own.
    pub fn watch_signals(self: &Arc<Self>) {
        let this = self.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(this.on_signals());
        });
    }

    async fn on_signals(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        eprintln!(
            "netpol-conformance: interrupted; finishing the current steps and cleaning up \
             (interrupt again to stop at once)"
        );
        self.request();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        match self.release_local() {
            Some(dir) => {
                eprintln!("netpol-conformance: stopping now; tearing the local cluster down");
                if let Err(e) = netpol_local::cluster::down(&dir) {
                    eprintln!("netpol-conformance: `local down` failed: {e}");
                }
            }
            None => eprintln!(
                "netpol-conformance: stopping now; `netpol-conformance cleanup` removes leftovers"
            ),
        }
        std::process::exit(130);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_through_the_flag_and_the_local_cluster_is_released_once() {
        let i = Interrupt::new();
        assert!(!i.requested());
        i.request();
        assert!(i.requested());
        assert!(i.flag().load(Ordering::SeqCst));
        i.own_local(Some(PathBuf::from("/run/x")));
        assert_eq!(i.release_local(), Some(PathBuf::from("/run/x")));
        assert_eq!(i.release_local(), None);
    }
}
