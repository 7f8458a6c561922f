//! The exec prober: `/agnhost connect <ip>:<port> --timeout=<t>ms --protocol=<p>` run through
//! the API server's exec endpoint in the source pod (through a shell kept open there, see
//! [`super::session`]), and the decoding of what comes back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Client;
use kube::api::{Api, AttachParams};
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;

use super::session::{SessionError, Sessions};
use crate::backend::{ProbeJob, Retry, Settling, Wanted};
use crate::reachability::{BlockKind, Outcome};

use super::Prober;

/// Probes in flight through the shells at once. A blocked probe only waits out its timeout (an
/// agnhost process asleep on a socket), so many may wait side by side; the bound keeps a burst
/// of process starts within what a node takes.
pub const SHELL_IN_FLIGHT: usize = 32;

/// How long past its timeout a probe through a shell may take to answer before the shell is
/// given up and the probe counts as an error (to be probed again through a new shell). The
/// answer only waits for a process to start and print a line, so this is far shorter than the
/// slack of opening an exec.
pub const SHELL_SLACK: Duration = Duration::from_secs(10);

/// Probes by exec into the source pod's container.
///
/// By default every source container gets one shell kept open ([`super::session`]): probes are
/// lines written to it and run side by side, so a run opens about one exec per pod instead of
/// one per probe. Where the image has no shell the prober notices once and falls back to one
/// exec per probe (`NETPOL_EXEC_BATCH=0` asks for that from the start).
pub struct ExecProber {
    /// Runtime for the exec streams.
    pub rt: Handle,
    /// API client.
    pub client: Client,
    /// Execs at once in the one-exec-per-probe mode.
    pub parallelism: usize,
    /// Extra time an exec may take beyond the probe's own timeout before it counts as an error.
    pub exec_slack: Duration,
    /// Probe through a shell kept open per source container.
    pub batch: bool,
    /// Cleared when an image turns out to have no shell.
    pub batch_works: AtomicBool,
    /// Execs opened so far for single probes, counted as they are opened.
    pub execs: AtomicUsize,
    /// The shells kept open.
    pub sessions: Sessions,
}

impl ExecProber {
    /// A prober through `client` on `rt`; `shell` keeps a shell open per source container.
    pub fn new(rt: Handle, client: Client, parallelism: usize, shell: bool) -> ExecProber {
        ExecProber {
            rt,
            sessions: Sessions::new(client.clone(), SHELL_IN_FLIGHT),
            client,
            parallelism,
            exec_slack: Duration::from_secs(30),
            batch: shell,
            batch_works: AtomicBool::new(true),
            execs: AtomicUsize::new(0),
        }
    }
}

/// The command of one probe.
pub fn connect_command(job: &ProbeJob) -> Vec<String> {
    let target = std::net::SocketAddr::new(job.to_ip, job.port);
    vec![
        "/agnhost".into(),
        "connect".into(),
        target.to_string(),
        format!("--timeout={}ms", job.timeout.as_millis().max(1)),
        format!("--protocol={}", job.protocol.lower()),
    ]
}

/// The exit code in an exec status (`Success` → 0; `NonZeroExitCode` → its cause).
pub fn exit_code(status: Option<&Status>) -> Option<i32> {
    let s = status?;
    if s.status.as_deref() == Some("Success") {
        return Some(0);
    }
    s.details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))?
        .message
        .as_deref()?
        .parse()
        .ok()
}

/// Decodes one agnhost `connect` run: exit 0 is a connection; `TIMEOUT` on stderr a silent
/// drop; `REFUSED` a refusal; anything else (DNS, OTHER, UNKNOWN, no status) an error of the
/// probe itself, never a policy verdict.
pub fn decode(status: Option<&Status>, stdout: &str, stderr: &str) -> Outcome {
    match exit_code(status) {
        Some(code) => decode_exit(code, stdout, stderr),
        None => Outcome::Error(match status.and_then(|s| s.message.as_deref()) {
            Some(m) => format!("exec ended without an exit code: {m}"),
            None => "exec ended without a status".into(),
        }),
    }
}

/// Decodes agnhost `connect`'s exit code and output.
pub fn decode_exit(code: i32, stdout: &str, stderr: &str) -> Outcome {
    let err = stderr.trim();
    match code {
        0 => Outcome::Connected,
        _ if err.contains("TIMEOUT") => Outcome::Blocked(BlockKind::Timeout),
        _ if err.contains("REFUSED") => Outcome::Blocked(BlockKind::Refused),
        code => Outcome::Error(format!(
            "agnhost connect exited {code}: {}",
            if err.is_empty() { stdout.trim() } else { err }
        )),
    }
}

/// What one exec printed and how it ended.
struct ExecResult {
    status: Option<Status>,
    stdout: String,
    stderr: String,
}

impl ExecProber {
    async fn exec(&self, job: &ProbeJob, command: Vec<String>) -> Result<ExecResult, String> {
        self.execs.fetch_add(1, Ordering::SeqCst);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &job.from.namespace);
        let params = AttachParams::default()
            .container(job.from.container.clone())
            .stdout(true)
            .stderr(true);
        let mut proc = pods
            .exec(&job.from.name, command, &params)
            .await
            .map_err(|e| format!("exec into {}/{}: {e}", job.from.namespace, job.from.name))?;
        let mut stdout = proc.stdout().ok_or("exec gave no stdout")?;
        let mut stderr = proc.stderr().ok_or("exec gave no stderr")?;
        let status = proc.take_status().ok_or("exec gave no status channel")?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        a.and(b).map_err(|e| format!("reading exec output: {e}"))?;
        let status = status.await;
        proc.join().await.map_err(|e| format!("exec stream: {e}"))?;
        Ok(ExecResult {
            status,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }

    async fn run(&self, job: &ProbeJob) -> Result<Outcome, String> {
        let r = self.exec(job, connect_command(job)).await?;
        Ok(decode(r.status.as_ref(), &r.stdout, &r.stderr))
    }

    /// One probe, through the source container's shell where that works, else by an exec of
    /// its own.
    async fn probe_async(&self, job: &ProbeJob) -> Outcome {
        if self.batching() {
            match self
                .sessions
                .probe(job, SHELL_SLACK.min(self.exec_slack))
                .await
            {
                Ok(outcome) => return outcome,
                Err(SessionError::Failed(e)) => return Outcome::Error(e),
                Err(SessionError::NoShell(e)) => {
                    tracing::info!("no shell in the probe container, one exec per probe: {e}");
                    self.batch_works.store(false, Ordering::SeqCst);
                }
            }
        }
        let limit = job.timeout + self.exec_slack;
        match tokio::time::timeout(limit, self.run(job)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::Error(e),
            Err(_) => Outcome::Error(format!("exec did not finish within {limit:?}")),
        }
    }

    fn batching(&self) -> bool {
        self.batch && self.batch_works.load(Ordering::SeqCst)
    }
}

/// Whether an exec failure says the container has no shell.
pub(super) fn no_shell(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("sh") && (m.contains("not found") || m.contains("no such file")))
        || m.contains("executable file not found")
}

impl Prober for ExecProber {
    fn probe(&self, job: &ProbeJob) -> Outcome {
        self.rt.block_on(self.probe_async(job))
    }
    fn parallelism(&self) -> usize {
        self.parallelism
    }
    fn name(&self) -> &'static str {
        "exec"
    }
    fn probe_all(&self, jobs: &[ProbeJob]) -> Vec<Outcome> {
        if !self.batching() {
            return super::run_pool(self, jobs);
        }
        self.rt.block_on(futures::future::join_all(
            jobs.iter().map(|j| self.probe_async(j)),
        ))
    }
    fn probe_until(&self, jobs: &[ProbeJob], wanted: &Wanted<'_>, retry: &Retry) -> Settling {
        if !self.batching() {
            return super::in_passes(self, jobs, wanted, retry);
        }
        // Probes through the shells are cheap: each is retried on its own.
        self.rt.block_on(super::settle_each(
            jobs,
            wanted,
            retry,
            |job, _| async move { self.probe_async(&job).await },
        ))
    }
    fn execs(&self) -> usize {
        self.execs.load(Ordering::SeqCst) + self.sessions.opened.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: serde_json::Value) -> Status {
        serde_json::from_value(v).unwrap()
    }

    fn failure(code: &str) -> Status {
        status(json!({
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "details": {"causes": [{"reason": "ExitCode", "message": code}]}
        }))
    }

    #[test]
    fn success_is_connected() {
        let ok = status(json!({"status": "Success"}));
        assert_eq!(decode(Some(&ok), "", ""), Outcome::Connected);
    }

    #[test]
    fn timeout_and_refused_are_told_apart() {
        let s = failure("1");
        assert_eq!(
            decode(Some(&s), "", "TIMEOUT\n"),
            Outcome::Blocked(BlockKind::Timeout)
        );
        assert_eq!(
            decode(Some(&s), "", "REFUSED\n"),
            Outcome::Blocked(BlockKind::Refused)
        );
    }

    #[test]
    fn other_failures_are_errors_not_drops() {
        let s = failure("1");
        assert!(matches!(decode(Some(&s), "", "DNS\n"), Outcome::Error(m) if m.contains("DNS")));
        let s = failure("127");
        assert!(matches!(
            decode(Some(&s), "", "sh: /agnhost: not found"),
            Outcome::Error(m) if m.contains("exited 127")
        ));
        assert!(
            matches!(decode(None, "", ""), Outcome::Error(m) if m.contains("without a status"))
        );
    }
}
