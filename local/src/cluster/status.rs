//! `status`: what a state directory's cluster looks like right now.

use super::*;

/// What `status` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The state directory.
    pub state_dir: PathBuf,
    /// `None`: no cluster recorded there.
    pub phase: Option<Phase>,
    /// The admin kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    /// Each recorded process and whether it runs.
    pub processes: Vec<(String, i32, bool)>,
    /// Each recorded namespace and whether it exists.
    pub netns: Vec<(String, bool)>,
    /// Whether the apiserver answered `/readyz` with `ok` (None when not asked).
    pub apiserver_ready: Option<bool>,
    /// The external host's address.
    pub external_host_ip: Option<Ipv4Addr>,
}

impl Status {
    /// True when the cluster is recorded ready and everything recorded is present.
    pub fn healthy(&self) -> bool {
        self.phase == Some(Phase::Ready)
            && self.processes.iter().all(|p| p.2)
            && self.netns.iter().all(|n| n.1)
            && self.apiserver_ready != Some(false)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(phase) = self.phase else {
            return writeln!(f, "no local cluster in {}", self.state_dir.display());
        };
        let verdict = if self.healthy() {
            "healthy"
        } else {
            "degraded"
        };
        writeln!(
            f,
            "local cluster in {}: {phase:?}, {verdict}",
            self.state_dir.display()
        )?;
        if let Some(kc) = &self.kubeconfig {
            writeln!(f, "kubeconfig: {}", kc.display())?;
        }
        if let Some(ready) = self.apiserver_ready {
            writeln!(
                f,
                "apiserver /readyz: {}",
                if ready { "ok" } else { "failing" }
            )?;
        }
        if let Some(ip) = self.external_host_ip {
            writeln!(f, "external host: {ip}")?;
        }
        for (name, pid, up) in &self.processes {
            writeln!(
                f,
                "  {:<28} pid {pid:<8} {}",
                name,
                if *up { "running" } else { "GONE" }
            )?;
        }
        for (name, present) in &self.netns {
            writeln!(
                f,
                "  netns {:<22} {}",
                name,
                if *present { "present" } else { "GONE" }
            )?;
        }
        Ok(())
    }
}

/// Reports the cluster recorded in `state_dir` (asks the apiserver's `/readyz` when it
/// runs).
pub fn status(state_dir: &Path) -> Result<Status> {
    let Some(s) = State::load(state_dir)? else {
        return Ok(Status {
            state_dir: state_dir.to_path_buf(),
            phase: None,
            kubeconfig: None,
            processes: Vec::new(),
            netns: Vec::new(),
            apiserver_ready: None,
            external_host_ip: None,
        });
    };
    let processes: Vec<(String, i32, bool)> = s
        .processes
        .iter()
        .map(|p| (p.name.clone(), p.pid, procs::alive(p)))
        .collect();
    let existing = fabric::list_netns();
    let netns = s
        .netns
        .iter()
        .map(|n| (n.clone(), existing.contains(n)))
        .collect();
    let apiserver_running = processes.iter().any(|p| p.0 == "kube-apiserver" && p.2);
    let apiserver_ready = if apiserver_running {
        let kubeconfig = s.kubeconfig.clone();
        let ready = block_on(async move {
            match client_for(&kubeconfig).await {
                Ok(client) => apiserver_readyz(client).await.is_ok(),
                Err(_) => false,
            }
        })?;
        Some(ready)
    } else {
        Some(false)
    };
    Ok(Status {
        state_dir: state_dir.to_path_buf(),
        phase: Some(s.phase),
        kubeconfig: Some(s.kubeconfig.clone()),
        processes,
        netns,
        apiserver_ready,
        external_host_ip: Some(s.external_host_ip),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_down_report_render_what_matters() {
        let st = Status {
            state_dir: "/run/npc".into(),
            phase: Some(Phase::Ready),
            kubeconfig: Some("/run/npc/kubeconfig".into()),
            processes: vec![
                ("etcd".into(), 10, true),
                ("kube-apiserver".into(), 11, false),
            ],
            netns: vec![("npc-node-0".into(), true)],
            apiserver_ready: Some(false),
            external_host_ip: Some(Ipv4Addr::new(172, 30, 254, 100)),
        };
        assert!(!st.healthy(), "a dead apiserver is not healthy");
        let text = st.to_string();
        assert!(text.contains("Ready, degraded"), "{text}");
        assert!(
            text.contains("kube-apiserver") && text.contains("GONE"),
            "{text}"
        );
        assert!(text.contains("172.30.254.100"), "{text}");
        let report = DownReport {
            had_state: false,
            processes: vec![("etcd".into(), Stopped::Killed)],
            swept_processes: vec![42],
            netns_removed: vec!["npc-ext".into()],
            logs_kept: None,
            errors: vec!["boom".into()],
        };
        let text = report.to_string();
        for want in [
            "no state file",
            "etcd: Killed",
            "[42]",
            "npc-ext",
            "error: boom",
        ] {
            assert!(text.contains(want), "missing {want:?} in {text}");
        }
    }

    #[test]
    fn status_of_an_empty_dir_says_no_cluster() {
        let dir = std::env::temp_dir().join(format!("npc-status-{}", std::process::id()));
        let s = status(&dir).unwrap();
        assert_eq!(s.phase, None);
        assert!(!s.healthy());
        assert!(s.to_string().starts_with("no local cluster"), "{s}");
    }
}
