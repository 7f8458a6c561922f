//! What the local-cluster tests share: the prerequisite check and a scratch local cluster.

#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::Command;

/// The suite's binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_netpol-conformance");

/// Whether the test can run here; prints the reason when it cannot.
pub fn prerequisites(test: &str) -> bool {
    let required = netpol_local::local_required();
    let missing = if !netpol_local::cluster::is_root() {
        Some("not root".to_string())
    } else if let Err(e) = netpol_local::cluster::find_bin_dir() {
        Some(format!("control-plane binaries: {e}"))
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if required => panic!("{test}: NETPOL_REQUIRE_LOCAL=1 but {why}"),
        Some(why) => {
            eprintln!("{test}: not run: {why} (set NETPOL_REQUIRE_LOCAL=1 to make this a failure)");
            false
        }
    }
}

/// A scratch directory and local-cluster instance of one test; `local down` on drop.
pub struct Scratch {
    /// The scratch directory (the cluster's state lives in `cluster/`).
    pub dir: PathBuf,
    /// The local-cluster instance name.
    pub instance: &'static str,
}

impl Scratch {
    /// A fresh scratch directory for `instance`.
    pub fn new(instance: &'static str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("netpol-suite-{instance}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir, instance }
    }

    /// The suite's binary, pointed at this scratch cluster.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("NETPOL_LOCAL_DIR", self.dir.join("cluster"))
            .env("NETPOL_LOCAL_INSTANCE", self.instance)
            .env_remove("NETPOL_KUBECONFIG")
            .env_remove("KUBECONFIG")
            .env_remove("NETPOL_LOCAL")
            // These tests inject faults into the emulated nodes' namespaces; tests/real_nodes.rs
            // asks for real nodes explicitly.
            .env("NETPOL_LOCAL_RUNTIME", "emulated")
            // Whatever this kernel lacks is exempted by name, as a user would.
            .env("NETPOL_EXEMPT_FEATURES", "SCTP")
            .env_remove("SONOBUOY_RESULTS_DIR")
            .env_remove("SONOBUOY_PROGRESS_PORT")
            .env_remove("E2E_FOCUS")
            .env_remove("E2E_SKIP")
            .env_remove("NETPOL_JUNIT");
        c
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.command().args(["local", "down"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
