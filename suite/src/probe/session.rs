//! Shells kept open in the dummy pods: one exec per probe container, through which every probe
//! from that pod is sent as a line and answered as a line, so a run opens an exec per pod
//! rather than one per probe (or per row and pass).
//!
//! The shell reads `<id> <protocol> <timeout> <ip:port>` lines and runs each probe in the
//! background (`/agnhost connect`, as upstream's prober does), printing
//! `@@<id> <exit code> <output on one line>` when it ends; probes from one pod thus run side
//! by side, bounded by the prober's in-flight limit. A `wait` line, sent whenever the pod has
//! nothing in flight, reaps the finished background jobs so none linger as zombies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, AttachParams, AttachedProcess};
use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, SimplexStream, WriteHalf,
};
use tokio::sync::oneshot;

use super::exec::decode_exit;
use crate::backend::ProbeJob;
use crate::reachability::Outcome;

/// The shell of a session. `$?` after `out=$(…)` is agnhost's exit code. Each probe is a
/// process of its own, whose start is most of a probe's cost: one Go thread and no garbage
/// collection (it exits within its timeout) make that start about a third cheaper without
/// changing what it does.
pub const SESSION_SCRIPT: &str = r#"export GOMAXPROCS=1 GOGC=off
while read -r id p to t; do
  if [ "$id" = wait ]; then wait; continue; fi
  { out=$(/agnhost connect "$t" --timeout="$to" --protocol="$p" 2>&1); echo "@@$id $? $(echo $out)"; } &
done"#;

/// How long opening a shell (an exec through the API server and the kubelet) may take.
const OPEN_LIMIT: Duration = Duration::from_secs(30);

/// Why a probe could not go through a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The container has no shell: probe with one exec per probe instead.
    NoShell(String),
    /// The session could not be opened or ended under the probe.
    Failed(String),
}

/// The line a probe is sent as.
pub fn request_line(id: u64, job: &ProbeJob) -> String {
    format!(
        "{id} {} {}ms {}\n",
        job.protocol.lower(),
        job.timeout.as_millis().max(1),
        std::net::SocketAddr::new(job.to_ip, job.port)
    )
}

/// Reads one answer line: the probe's id and outcome; `None` for any other line.
pub fn parse_answer(line: &str) -> Option<(u64, Outcome)> {
    let rest = line.strip_prefix("@@")?;
    let (id, rest) = rest.split_once(' ')?;
    let (code, output) = rest.split_once(' ').unwrap_or((rest, ""));
    let id = id.parse().ok()?;
    let code = code.trim().parse::<i32>().ok()?;
    Some((id, decode_exit(code, "", output.trim())))
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome>>>>;
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Session>>>>;

/// One open shell.
struct Session {
    stdin: tokio::sync::Mutex<WriteHalf<SimplexStream>>,
    waiting: Waiters,
    alive: Arc<AtomicBool>,
    in_flight: AtomicUsize,
    proc: AttachedProcess,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.proc.abort();
    }
}

/// The sessions of a run, by pod and container, and the bound on probes in flight.
pub struct Sessions {
    client: Client,
    /// A slot per source container: the map is locked only to find the slot, the slot while
    /// its session opens, so pods open their shells side by side.
    open: Mutex<HashMap<(String, String, String), Slot>>,
    permits: tokio::sync::Semaphore,
    next_id: AtomicU64,
    /// Execs opened for sessions.
    pub opened: AtomicUsize,
}

impl Sessions {
    /// Sessions through `client`, with at most `in_flight` probes running at once.
    pub fn new(client: Client, in_flight: usize) -> Sessions {
        Sessions {
            client,
            open: Mutex::new(HashMap::new()),
            permits: tokio::sync::Semaphore::new(in_flight.max(1)),
            next_id: AtomicU64::new(0),
            opened: AtomicUsize::new(0),
        }
    }

    /// Probes through the source pod's session (opened on first use, and again if the one it
    /// had ended or stopped answering), waiting at most the probe's timeout plus `slack` for
    /// the answer. A shell that does not answer in time is given up: the probe is an error
    /// (the caller probes again) and the next probe from that pod opens a new shell.
    pub async fn probe(&self, job: &ProbeJob, slack: Duration) -> Result<Outcome, SessionError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| SessionError::Failed(e.to_string()))?;
        let session = self.session(job).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        session.waiting.lock().expect("waiters lock").insert(id, tx);
        session.in_flight.fetch_add(1, Ordering::SeqCst);
        let sent = {
            let mut stdin = session.stdin.lock().await;
            stdin.write_all(request_line(id, job).as_bytes()).await
        };
        let answer = match sent {
            Err(e) => Err(SessionError::Failed(format!(
                "writing to the probe shell in {}/{}: {e}",
                job.from.namespace, job.from.name
            ))),
            Ok(()) => match tokio::time::timeout(job.timeout + slack, rx).await {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(_)) => Err(SessionError::Failed(format!(
                    "the probe shell in {}/{} ended before answering",
                    job.from.namespace, job.from.name
                ))),
                Err(_) => {
                    session.alive.store(false, Ordering::SeqCst);
                    Err(SessionError::Failed(format!(
                        "the probe shell in {}/{} did not answer within {:?}; it is replaced",
                        job.from.namespace,
                        job.from.name,
                        job.timeout + slack
                    )))
                }
            },
        };
        session.waiting.lock().expect("waiters lock").remove(&id);
        if session.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Nothing left in flight: reap the finished background jobs. Checked again under
            // the lock, so `wait` never sits in front of a probe sent meanwhile.
            let mut stdin = session.stdin.lock().await;
            if session.in_flight.load(Ordering::SeqCst) == 0 {
                let _ = stdin.write_all(b"wait\n").await;
            }
        }
        answer
    }

    /// The open session of the job's source container, opened if there is none (or the one
    /// there was has ended).
    async fn session(&self, job: &ProbeJob) -> Result<Arc<Session>, SessionError> {
        let key = (
            job.from.namespace.clone(),
            job.from.name.clone(),
            job.from.container.clone(),
        );
        let slot = self
            .open
            .lock()
            .expect("sessions lock")
            .entry(key)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.alive.load(Ordering::SeqCst)) {
            return Ok(s.clone());
        }
        let opened = tokio::time::timeout(OPEN_LIMIT, self.open_session(job))
            .await
            .map_err(|_| {
                SessionError::Failed(format!(
                    "opening a probe shell in {}/{} took over {OPEN_LIMIT:?}",
                    job.from.namespace, job.from.name
                ))
            })??;
        let session = Arc::new(opened);
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn open_session(&self, job: &ProbeJob) -> Result<Session, SessionError> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &job.from.namespace);
        let params = AttachParams::default()
            .container(job.from.container.clone())
            .stdin(true)
            .stdout(true)
            .stderr(true);
        let command = vec!["sh".to_string(), "-c".into(), SESSION_SCRIPT.into()];
        let mut proc = pods
            .exec(&job.from.name, command, &params)
            .await
            .map_err(|e| {
                let message = format!(
                    "opening a probe shell in {}/{}: {e}",
                    job.from.namespace, job.from.name
                );
                if super::exec::no_shell(&message) {
                    SessionError::NoShell(message)
                } else {
                    SessionError::Failed(message)
                }
            })?;
        let missing = |what: &str| SessionError::Failed(format!("the probe shell gave no {what}"));
        let stdin = proc.stdin().ok_or_else(|| missing("stdin"))?;
        let stdout = proc.stdout().ok_or_else(|| missing("stdout"))?;
        let mut stderr = proc.stderr().ok_or_else(|| missing("stderr"))?;
        let status = proc.take_status().ok_or_else(|| missing("status"))?;
        let waiting: Waiters = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (reader_waiting, reader_alive) = (waiting.clone(), alive.clone());
        let (ended_tx, ended_rx) = oneshot::channel::<(Option<i32>, String)>();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((id, outcome)) = parse_answer(&line)
                    && let Some(tx) = reader_waiting.lock().expect("waiters lock").remove(&id)
                {
                    let _ = tx.send(outcome);
                }
            }
            reader_alive.store(false, Ordering::SeqCst);
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            let status = status.await;
            let code = super::exec::exit_code(status.as_ref());
            let why = [status.and_then(|s| s.message).unwrap_or_default(), err]
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            // Whoever waits learns the shell is gone when its sender is dropped.
            reader_waiting.lock().expect("waiters lock").clear();
            let _ = ended_tx.send((code, why));
        });
        // A container without a shell ends the exec at once; tell that apart from a session
        // that is up (a moment without an end is taken as up).
        if let Ok(Ok((code, why))) =
            tokio::time::timeout(Duration::from_millis(200), ended_rx).await
        {
            let message = format!(
                "the probe shell in {}/{} ended at once: {why}",
                job.from.namespace, job.from.name
            );
            // 126/127: the shell could not be run.
            return Err(
                if matches!(code, Some(126 | 127)) || super::exec::no_shell(&why) {
                    SessionError::NoShell(message)
                } else {
                    SessionError::Failed(message)
                },
            );
        }
        Ok(Session {
            stdin: tokio::sync::Mutex::new(stdin),
            waiting,
            alive,
            in_flight: AtomicUsize::new(0),
            proc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reachability::BlockKind;

    #[test]
    fn answers_decode_as_agnhost_connect_exits() {
        assert_eq!(parse_answer("@@7 0 "), Some((7, Outcome::Connected)));
        assert_eq!(parse_answer("@@7 0"), Some((7, Outcome::Connected)));
        assert_eq!(
            parse_answer("@@12 1 TIMEOUT"),
            Some((12, Outcome::Blocked(BlockKind::Timeout)))
        );
        assert_eq!(
            parse_answer("@@3 1 REFUSED"),
            Some((3, Outcome::Blocked(BlockKind::Refused)))
        );
        assert!(matches!(
            parse_answer("@@4 1 DNS"),
            Some((4, Outcome::Error(m))) if m.contains("DNS")
        ));
        assert_eq!(parse_answer("sh: something"), None);
        assert_eq!(parse_answer("@@x 0 "), None);
    }
}
