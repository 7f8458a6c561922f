//! The subcommands that look after clusters rather than judge them: `local` (up, down,
//! status), `cleanup` and `probe`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{random_id, usage_error};
use crate::cli::{LocalCommand, LocalRuntime};
use crate::plan;
use crate::target::{self, TargetSpec};

/// `probe`: one connect from inside a network namespace; the exit code says how it went.
pub(super) fn probe_once(
    netns: &std::path::Path,
    target: std::net::SocketAddr,
    protocol: &str,
    timeout: u64,
) -> ExitCode {
    use netpol_local::probe::{ProbeResult, connect};
    let Ok(protocol) = protocol.parse() else {
        return usage_error(&format!("unknown protocol `{protocol}` (tcp, udp, sctp)"));
    };
    let result = connect(
        netns,
        target,
        protocol,
        std::time::Duration::from_secs(timeout.max(1)),
    );
    println!("{result:?}");
    match result {
        ProbeResult::Connected => ExitCode::SUCCESS,
        ProbeResult::Timeout | ProbeResult::Refused => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}

/// `local up`, `local down`, `local status`.
pub(super) fn local(command: LocalCommand) -> ExitCode {
    use netpol_local::cluster;
    let state_dir = cluster::default_state_dir();
    match command {
        LocalCommand::Up {
            no_enforcer,
            nodes,
            fail_open,
            runtime,
        } => {
            if !cluster::is_root() {
                return usage_error("`local up` needs root (network namespaces, iptables)");
            }
            let real = runtime == LocalRuntime::Kubelet;
            let enforcer = if no_enforcer || real {
                None
            } else {
                match cluster::locate_enforcer() {
                    Ok(p) => Some(p),
                    Err(e) => return usage_error(&format!("{e} (or pass --no-enforcer)")),
                }
            };
            let opts = cluster::UpOptions {
                state_dir,
                nodes,
                enforcer,
                fail_open,
                runtime: runtime.into(),
                enforcer_daemonset: real && !no_enforcer,
                ..Default::default()
            };
            // Ctrl-C during `up` must not leave half a cluster behind.
            if let Err(e) = cluster::down_on_signal(&opts.state_dir) {
                return usage_error(&plan::error_chain(&e));
            }
            match cluster::ClusterGuard::up(&opts) {
                Ok(guard) => {
                    let c = guard.disarm();
                    println!("local cluster is up: {}", c.server);
                    println!("export KUBECONFIG={}", c.kubeconfig.display());
                    println!("kubectl: {}", c.kubectl().display());
                    ExitCode::SUCCESS
                }
                Err(e) => usage_error(&plan::error_chain(&e)),
            }
        }
        LocalCommand::Down => match cluster::down(&state_dir) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(&plan::error_chain(&e)),
        },
        LocalCommand::Status => match cluster::status(&state_dir) {
            Ok(status) => {
                println!("{status}");
                if status.healthy() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => usage_error(&plan::error_chain(&e)),
        },
    }
}

/// `cleanup`: what runs that are gone (or the ones asked for) left behind, deleted.
pub(super) fn cleanup(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    run: Option<String>,
    all: bool,
) -> ExitCode {
    let local_up = || {
        netpol_local::cluster::status(&netpol_local::cluster::default_state_dir())
            .ok()
            .filter(|s| s.healthy())
            .and_then(|s| s.kubeconfig.clone())
    };
    let spec = match target::choose(&target::Choice {
        kubeconfig,
        context,
        enforcer: true,
        ..Default::default()
    }) {
        Ok(spec @ TargetSpec::Kube { .. }) => spec,
        _ => match local_up() {
            Some(path) => TargetSpec::kubeconfig(path),
            None => {
                return usage_error(
                    "no cluster to clean: pass --kubeconfig, or bring the local cluster up \
                     (`local down` removes a local cluster entirely)",
                );
            }
        },
    };
    eprintln!("netpol-conformance: cleaning {}", spec.describe());
    let target = match target::connect(&spec, &target::ConnectOptions::new(&random_id())) {
        Ok(t) => t,
        Err(e) => return usage_error(&plan::error_chain(&e)),
    };
    let which = match (&run, all) {
        (Some(id), _) => crate::kube::Leftovers::Run(id),
        (None, true) => crate::kube::Leftovers::All,
        (None, false) => crate::kube::Leftovers::Dead,
    };
    let result = target.cluster.cleanup_leftovers(which);
    let problems = target.finish();
    match result {
        Ok(removed) => {
            for r in &removed {
                println!("deleted {r}");
            }
            println!("{} objects removed", removed.len());
            for p in problems {
                eprintln!("netpol-conformance: {p}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(&e.to_string()),
    }
}
