//! The exec prober: `/agnhost connect <ip>:<port> --timeout=<t>s --protocol=<p>` run through the
//! API server's exec endpoint in the source pod, and the decoding of what comes back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
///
/// In batch mode (the default) one exec per source pod runs a shell loop over all of that
/// pod's destinations, so a 9-pod matrix takes 9 execs per pass instead of 72. Where the image
/// has no shell the prober notices once and falls back to one exec per probe.
pub struct ExecProber {
    /// Runtime for the exec streams.
    pub rt: Handle,
    /// API client.
    pub client: Client,
    /// Execs at once.
    pub parallelism: usize,
    /// Extra time an exec may take beyond the probe's own timeout before it counts as an error.
    pub exec_slack: Duration,
    /// Probe a whole row with one exec.
    pub batch: bool,
    /// Cleared when an image turns out to have no shell.
    pub batch_works: AtomicBool,
    /// Execs opened so far, counted as they are opened (what reports call `execs`).
    pub execs: AtomicUsize,
}

/// The shell loop of batch mode: `sh -c SCRIPT sh <protocol> <timeout> <target>…` prints one
/// `@@<target> <exit code> <agnhost output on one line>` line per target.
pub const BATCH_SCRIPT: &str = r#"p=$1; to=$2; shift 2
for t in "$@"; do
  out=$(/agnhost connect "$t" --timeout="$to" --protocol="$p" 2>&1)
  echo "@@$t $? $(echo $out)"
done"#;

/// The command of one batch: every job must share source, protocol and timeout.
pub fn batch_command(jobs: &[ProbeJob]) -> Vec<String> {
    let first = &jobs[0];
    let mut cmd = vec![
        "sh".to_string(),
        "-c".into(),
        BATCH_SCRIPT.into(),
        "sh".into(),
        first.protocol.lower().into(),
        format!("{}s", first.timeout.as_secs().max(1)),
    ];
    cmd.extend(
        jobs.iter()
            .map(|j| std::net::SocketAddr::new(j.to_ip, j.port).to_string()),
    );
    cmd
}

/// Decodes a batch's stdout into one outcome per job; a target with no line is an error.
pub fn decode_batch(jobs: &[ProbeJob], stdout: &str) -> Vec<Outcome> {
    let mut lines = std::collections::HashMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("@@") else {
            continue;
        };
        let Some((target, rest)) = rest.split_once(' ') else {
            continue;
        };
        let (code, output) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Ok(code) = code.trim().parse::<i32>() {
            lines.insert(target.to_string(), (code, output.trim().to_string()));
        }
    }
    jobs.iter()
        .map(|j| {
            let target = std::net::SocketAddr::new(j.to_ip, j.port).to_string();
            match lines.get(&target) {
                Some((code, output)) => decode_exit(*code, "", output),
                None => Outcome::Error(format!("the batch exec printed no result for {target}")),
            }
        })
        .collect()
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

    /// One exec for a group of jobs sharing source, protocol and timeout; `None` when the
    /// image has no shell (the caller falls back to one exec per probe).
    fn run_batch(&self, jobs: &[ProbeJob]) -> Option<Vec<Outcome>> {
        let first = &jobs[0];
        let limit = (first.timeout + Duration::from_secs(1)) * jobs.len() as u32 + self.exec_slack;
        let result = self.rt.block_on(async {
            tokio::time::timeout(limit, self.exec(first, batch_command(jobs))).await
        });
        let failed = |why: String| Some(vec![Outcome::Error(why); jobs.len()]);
        match result {
            Err(_) => failed(format!("batch exec did not finish within {limit:?}")),
            Ok(Err(e)) if no_shell(&e) => None,
            Ok(Err(e)) => failed(e),
            Ok(Ok(r)) => match exit_code(r.status.as_ref()) {
                Some(0) => Some(decode_batch(jobs, &r.stdout)),
                Some(126 | 127) => None,
                _ if no_shell(&r.stderr) => None,
                code => failed(format!("batch exec exited {code:?}: {}", r.stderr.trim())),
            },
        }
    }

    fn groups(jobs: &[ProbeJob]) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            let same = |k: &usize| {
                let o = &jobs[*k];
                o.from == j.from && o.protocol == j.protocol && o.timeout == j.timeout
            };
            match groups.iter_mut().find(|g| same(&g[0])) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        groups
    }

    fn batching(&self) -> bool {
        self.batch && self.batch_works.load(Ordering::SeqCst)
    }
}

/// Whether an exec failure says the container has no shell.
fn no_shell(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("sh") && (m.contains("not found") || m.contains("no such file")))
        || m.contains("executable file not found")
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
    fn probe_all(&self, jobs: &[ProbeJob]) -> Vec<Outcome> {
        if !self.batching() || jobs.is_empty() {
            return super::run_pool(self, jobs);
        }
        let groups = Self::groups(jobs);
        let mut out: Vec<Option<Outcome>> = vec![None; jobs.len()];
        let results = std::sync::Mutex::new(Vec::new());
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..self.parallelism.clamp(1, groups.len()) {
                scope.spawn(|| {
                    loop {
                        let g = next.fetch_add(1, Ordering::SeqCst);
                        let Some(idx) = groups.get(g) else { break };
                        let group: Vec<ProbeJob> = idx.iter().map(|i| jobs[*i].clone()).collect();
                        let outcomes = match self.run_batch(&group) {
                            Some(o) => o,
                            None => {
                                self.batch_works.store(false, Ordering::SeqCst);
                                super::run_pool(self, &group)
                            }
                        };
                        results
                            .lock()
                            .expect("results")
                            .push((idx.clone(), outcomes));
                    }
                });
            }
        });
        for (idx, outcomes) in results.into_inner().expect("results") {
            for (i, o) in idx.into_iter().zip(outcomes) {
                out[i] = Some(o);
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Error("not probed".into())))
            .collect()
    }
    fn execs(&self) -> usize {
        self.execs.load(Ordering::SeqCst)
    }
    fn calls(&self, jobs: &[ProbeJob]) -> usize {
        if self.batching() {
            Self::groups(jobs).len()
        } else {
            jobs.len()
        }
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
