//! Real nodes: each node of the local cluster runs containerd + runc, a kubelet and
//! kube-proxy in its network namespace, pods are real containers from locally built images,
//! and the apiserver reaches the kubelets over real TLS (`local up --runtime kubelet`).
//!
//! Pieces: [`config`] renders every configuration file (pure); [`nsexec`] puts a node's
//! processes into its network namespace and a private mount namespace; [`proxy`] joins the
//! host's loopback (control plane) and the fabric (nodes) in both directions; [`host`]
//! records and undoes what nodes change on the host (kernel tunables, cgroup trees,
//! processes that outlive containerd). `cluster` drives them in order.
//!
//! Binaries come from hack/node-binaries.sh ([`locate_node_bin_dir`]) and images from
//! hack/node-images.sh ([`locate_images_dir`]); both are cached outside the repository.

pub mod config;
pub mod host;
pub mod nsexec;
pub mod proxy;

use std::path::{Path, PathBuf};

/// Environment variable naming a directory with [`NODE_BINARIES`].
pub const NODE_BIN_DIR_ENV: &str = "NETPOL_NODE_BIN_DIR";
/// Environment variable naming a directory with the image archives of [`IMAGES`].
pub const NODE_IMAGES_DIR_ENV: &str = "NETPOL_NODE_IMAGES_DIR";
/// The containerd version hack/node-binaries.sh builds by default.
pub const CONTAINERD_VERSION: &str = "v2.4.2";
/// The cri-tools version hack/node-binaries.sh builds by default.
pub const CRICTL_VERSION: &str = "v1.37.0";
/// What a node bin directory holds.
pub const NODE_BINARIES: [&str; 8] = [
    "kubelet",
    "kube-proxy",
    "agnhost",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "crictl",
    "pause",
];
/// The sandbox image, under its upstream name.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.2";
/// The agnhost image the suite's pods run, under its upstream name (the e2e framework's at
/// Kubernetes v1.37.2).
pub const AGNHOST_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";
/// The archives hack/node-images.sh writes, imported into every node's containerd.
pub const IMAGES: [&str; 4] = [
    "pause.tar",
    "agnhost.tar",
    "enforcer.tar",
    "conformance.tar",
];

/// Errors locating the node binaries and images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No directory holds every binary, and the script could not build them.
    #[error(
        "locating the node binaries failed: {reason} (set {NODE_BIN_DIR_ENV} or run hack/node-binaries.sh)"
    )]
    Binaries {
        /// What was tried.
        reason: String,
    },
    /// No directory holds every image archive, and the script could not build them.
    #[error(
        "locating the node images failed: {reason} (set {NODE_IMAGES_DIR_ENV} or run hack/node-images.sh)"
    )]
    Images {
        /// What was tried.
        reason: String,
    },
}

fn cache_root() -> Option<PathBuf> {
    match std::env::var_os("NETPOL_CACHE_DIR") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => match std::env::var_os("XDG_CACHE_HOME") {
            Some(d) if !d.is_empty() => Some(PathBuf::from(d).join("netpol-conformance")),
            _ => Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache/netpol-conformance")),
        },
    }
}

/// Where hack/node-binaries.sh caches the binaries by default.
pub fn cached_node_bin_dir() -> Option<PathBuf> {
    let v = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    Some(cache_root()?.join(format!(
        "node/k8s-{}-containerd-{}-crictl-{}",
        v("NETPOL_K8S_VERSION", crate::K8S_VERSION),
        v("NETPOL_CONTAINERD_VERSION", CONTAINERD_VERSION),
        v("NETPOL_CRICTL_VERSION", CRICTL_VERSION),
    )))
}

/// Where hack/node-images.sh writes the archives.
pub fn cached_images_dir() -> Option<PathBuf> {
    Some(cache_root()?.join("images"))
}

fn holds(dir: &Path, files: &[&str], executable: bool) -> bool {
    use std::os::unix::fs::PermissionsExt;
    files.iter().all(|f| {
        std::fs::metadata(dir.join(f))
            .is_ok_and(|m| m.is_file() && (!executable || m.permissions().mode() & 0o111 != 0))
    })
}

/// Finds the node binaries without building them: [`NODE_BIN_DIR_ENV`], then the cache.
pub fn find_node_bin_dir() -> Result<PathBuf, Error> {
    find(
        NODE_BIN_DIR_ENV,
        cached_node_bin_dir(),
        &NODE_BINARIES,
        true,
    )
    .map_err(|reason| Error::Binaries { reason })
}

/// Finds the image archives without building them: [`NODE_IMAGES_DIR_ENV`], then the cache.
pub fn find_images_dir() -> Result<PathBuf, Error> {
    find(NODE_IMAGES_DIR_ENV, cached_images_dir(), &IMAGES, false)
        .map_err(|reason| Error::Images { reason })
}

fn find(env: &str, cached: Option<PathBuf>, files: &[&str], exec: bool) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os(env).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if holds(&dir, files, exec) {
            return Ok(dir);
        }
        tried.push(format!("${env}={}", dir.display()));
    }
    if let Some(dir) = cached {
        if holds(&dir, files, exec) {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    Err(format!(
        "none of {} holds {}",
        tried.join(", "),
        files.join(", ")
    ))
}

/// Runs `hack/<script>` from the source tree this was built from (or the current
/// directory) and returns the directory it printed.
fn run_script(script: &str) -> Result<PathBuf, String> {
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../hack")
            .join(script),
        PathBuf::from("hack").join(script),
    ];
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        return Err(format!("hack/{script} is not here to build them"));
    };
    let out = std::process::Command::new("bash")
        .arg(path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!("{} exited with {}", path.display(), out.status));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The node binaries: found, else built once by hack/node-binaries.sh.
pub fn locate_node_bin_dir() -> Result<PathBuf, Error> {
    if let Ok(dir) = find_node_bin_dir() {
        return Ok(dir);
    }
    run_script("node-binaries.sh").map_err(|reason| Error::Binaries { reason })?;
    find_node_bin_dir()
}

/// The image archives: found, else built by hack/node-images.sh.
pub fn locate_images_dir() -> Result<PathBuf, Error> {
    if let Ok(dir) = find_images_dir() {
        return Ok(dir);
    }
    run_script("node-images.sh").map_err(|reason| Error::Images { reason })?;
    find_images_dir()
}

/// The cgroup every pod of a node lives under: named after the node's namespace, so nodes of
/// one host (and of two cluster instances) never share one.
pub fn cgroup_root(node_netns: &str) -> String {
    format!("/{node_netns}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_layout_matches_the_scripts() {
        // hack/node-binaries.sh: $cache_root/node/k8s-<v>-containerd-<v>-crictl-<v>.
        let dir = cached_node_bin_dir().unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("k8s-v1."), "{name}");
        assert!(name.contains("-containerd-v2."), "{name}");
        assert_eq!(dir.parent().unwrap().file_name().unwrap(), "node");
        assert_eq!(cached_images_dir().unwrap().file_name().unwrap(), "images");
    }

    #[test]
    fn the_image_names_agree_with_the_script() {
        let script = include_str!("../../../hack/node-images.sh");
        assert!(script.contains(&format!("PAUSE_IMAGE=\"{PAUSE_IMAGE}\"")));
        assert!(script.contains(&format!("AGNHOST_IMAGE=\"{AGNHOST_IMAGE}\"")));
    }

    #[test]
    fn cgroup_roots_differ_per_node() {
        assert_eq!(cgroup_root("npc-node-0"), "/npc-node-0");
        assert_ne!(cgroup_root("npc-node-0"), cgroup_root("npc-t-node-0"));
    }
}
