//! Locating the control-plane binaries, the enforcer and the node-agent executable.

use super::*;

/// Where hack/control-plane.sh caches the binaries by default.
pub fn cached_bin_dir() -> Option<PathBuf> {
    let root = match std::env::var_os("NETPOL_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("XDG_CACHE_HOME") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("netpol-conformance"),
            _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache/netpol-conformance"),
        },
    };
    Some(root.join(format!(
        "control-plane/k8s-{}-etcd-{}",
        std::env::var("NETPOL_K8S_VERSION").unwrap_or_else(|_| K8S_VERSION.into()),
        std::env::var("NETPOL_ETCD_VERSION").unwrap_or_else(|_| ETCD_VERSION.into()),
    )))
}

fn has_all_binaries(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    BINARIES.iter().all(|b| {
        std::fs::metadata(dir.join(b))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Finds the control-plane binaries without building them: [`CONTROL_PLANE_DIR_ENV`], then
/// hack/control-plane.sh's cache.
pub fn find_bin_dir() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os(CONTROL_PLANE_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_all_binaries(&dir) {
            return Ok(dir);
        }
        tried.push(format!("${CONTROL_PLANE_DIR_ENV}={}", dir.display()));
    }
    if let Some(dir) = cached_bin_dir() {
        if has_all_binaries(&dir) {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    Err(Error::BinDir {
        reason: format!("none of {} holds {}", tried.join(", "), BINARIES.join(", ")),
    })
}

/// Finds the control-plane binaries, running hack/control-plane.sh (which may build them
/// once) when they are not found and the script is in the source tree this was built from
/// or the current directory.
pub fn locate_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = find_bin_dir() {
        return Ok(dir);
    }
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/control-plane.sh"),
        PathBuf::from("hack/control-plane.sh"),
    ];
    let Some(script) = candidates.iter().find(|p| p.is_file()) else {
        return find_bin_dir();
    };
    let out = std::process::Command::new("bash")
        .arg(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| Error::Io {
            op: "running",
            path: script.clone(),
            source,
        })?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && has_all_binaries(&dir) {
        Ok(dir)
    } else {
        Err(Error::BinDir {
            reason: format!("{} exited with {}", script.display(), out.status),
        })
    }
}

/// Finds `netpol-enforcer`: [`ENFORCER_BIN_ENV`], else next to the current executable or
/// in its parent directory (cargo puts test binaries in target/debug/deps, binaries in
/// target/debug).
pub fn locate_enforcer() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(ENFORCER_BIN_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let p = d.join("netpol-enforcer");
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p);
        }
    }
    Err(Error::EnforcerMissing {
        tried: tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

pub(super) fn agent_program() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_BIN_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(|source| Error::Io {
        op: "finding the current executable",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })
}
