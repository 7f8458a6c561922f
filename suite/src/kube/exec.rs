//! The exec prober: `/agnhost connect <ip>:<port> --timeout=<t>s --protocol=<p>` run through the
//! API server's exec endpoint in the source pod, and the decoding of what comes back.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Client;
use kube::api::{Api, AttachParams};
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;

use crate::backend::ProbeJob;
use crate::reachability::{BlockKind, Outcome};

use super::Prober;

/// Probes by exec into the source pod's container.
pub struct ExecProber {
    /// Runtime for the exec streams.
    pub rt: Handle,
    /// API client.
    pub client: Client,
    /// Execs at once.
    pub parallelism: usize,
    /// Extra time an exec may take beyond the probe's own timeout before it counts as an error.
    pub exec_slack: Duration,
}

/// The command of one probe.
pub fn connect_command(job: &ProbeJob) -> Vec<String> {
    let target = std::net::SocketAddr::new(job.to_ip, job.port);
    vec![
        "/agnhost".into(),
        "connect".into(),
        target.to_string(),
        format!("--timeout={}s", job.timeout.as_secs().max(1)),
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
    let err = stderr.trim();
    match exit_code(status) {
        Some(0) => Outcome::Connected,
        Some(_) if err.contains("TIMEOUT") => Outcome::Blocked(BlockKind::Timeout),
        Some(_) if err.contains("REFUSED") => Outcome::Blocked(BlockKind::Refused),
        Some(code) => Outcome::Error(format!(
            "agnhost connect exited {code}: {}",
            if err.is_empty() { stdout.trim() } else { err }
        )),
        None => Outcome::Error(match status.and_then(|s| s.message.as_deref()) {
            Some(m) => format!("exec ended without an exit code: {m}"),
            None => "exec ended without a status".into(),
        }),
    }
}

impl ExecProber {
    async fn run(&self, job: &ProbeJob) -> Result<Outcome, String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &job.from.namespace);
        let params = AttachParams::default()
            .container(job.from.container.clone())
            .stdout(true)
            .stderr(true);
        let mut proc = pods
            .exec(&job.from.name, connect_command(job), &params)
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
        Ok(decode(
            status.as_ref(),
            &String::from_utf8_lossy(&out),
            &String::from_utf8_lossy(&err),
        ))
    }
}

impl Prober for ExecProber {
    fn probe(&self, job: &ProbeJob) -> Outcome {
        let limit = job.timeout + self.exec_slack;
        self.rt.block_on(async {
            match tokio::time::timeout(limit, self.run(job)).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => Outcome::Error(e),
                Err(_) => Outcome::Error(format!("exec did not finish within {limit:?}")),
            }
        })
    }
    fn parallelism(&self) -> usize {
        self.parallelism
    }
    fn name(&self) -> &'static str {
        "exec"
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
