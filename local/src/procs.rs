//! Processes of the local cluster: started in their own process group with output to a log
//! file, identified by PID plus kernel start time, stopped with TERM then KILL.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::state::ProcRecord;

/// How often process state is polled while waiting for an exit.
pub const POLL: Duration = Duration::from_millis(50);

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the log file failed.
    #[error("creating log file {path} for {name} failed")]
    Log {
        /// The process name.
        name: String,
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `spawn` failed (e.g. the binary is missing).
    #[error("starting {name} ({program}) failed")]
    Spawn {
        /// The process name.
        name: String,
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before its start time could be read.
    #[error("{name} (pid {pid}) exited immediately; see {log}")]
    Vanished {
        /// The process name.
        name: String,
        /// Its PID.
        pid: i32,
        /// Its log file.
        log: PathBuf,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Name recorded in the state file and used for the log file.
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Spec {
    /// A spec with no extra environment.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Spec {
            name: name.into(),
            program: program.into(),
            args,
            env: Vec::new(),
        }
    }

    /// The command line as one shell-like string (for logs and messages).
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Starts `spec` in a new process group with stdin from /dev/null and stdout+stderr
/// appended to `<log_dir>/<name>.log`. The returned record holds the PID and start time.
///
/// The child is not reaped here; [`stop`] reaps it if it is ours, and otherwise init does.
pub fn spawn(spec: &Spec, log_dir: &Path) -> Result<ProcRecord> {
    let log = log_dir.join(format!("{}.log", spec.name));
    let log_err = |source| Error::Log {
        name: spec.name.clone(),
        path: log.clone(),
        source,
    };
    std::fs::create_dir_all(log_dir).map_err(log_err)?;
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let child = Command::new(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own group: a terminal's Ctrl-C does not reach it, and `stop` can signal the
        // whole group (children it forked included).
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            name: spec.name.clone(),
            program: spec.program.clone(),
            source,
        })?;
    let pid = child.id() as i32;
    // Dropping a Child neither kills nor waits for it.
    drop(child);
    let start_time = start_time(pid).ok_or_else(|| Error::Vanished {
        name: spec.name.clone(),
        pid,
        log: log.clone(),
    })?;
    Ok(ProcRecord {
        name: spec.name.clone(),
        pid,
        start_time,
        log,
    })
}

/// Fields of `/proc/<pid>/stat` after the command name: (state, starttime).
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses state and start time out of a `/proc/<pid>/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Field 3 is the state; field 22 the start time: 19 fields after the state.
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The kernel start time of `pid`, if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// Whether the recorded process is still running: same PID, same start time, not a zombie.
pub fn alive(rec: &ProcRecord) -> bool {
    matches!(stat(rec.pid), Some((state, t)) if t == rec.start_time && state != 'Z' && state != 'X')
}

/// Reaps `pid` if it is our exited child; harmless otherwise.
fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// How a process ended when stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (anymore, or its PID now belongs to someone else).
    NotRunning,
    /// It exited after SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
    /// It survived SIGKILL for the whole grace period (should not happen).
    Survived,
}

/// Stops a recorded process and its group: SIGTERM to the group, up to `grace` for the
/// leader and every member to exit, then SIGKILL. Signals only if the leader's PID and
/// start time still match the record, or its group still has members.
pub fn stop(rec: &ProcRecord, grace: Duration) -> Stopped {
    reap(rec.pid);
    // A group outlives its leader in the children it forked; the kernel does not hand out
    // a PID that is still some group's id, so members of group `rec.pid` are ours.
    if !alive(rec) && group_members(rec.pid).is_empty() {
        return Stopped::NotRunning;
    }
    let group = Pid::from_raw(rec.pid);
    let _ = killpg(group, Signal::SIGTERM);
    // (killpg reaches the children even after the leader exited: the group id stays.)
    if wait_gone(rec, grace) {
        return Stopped::Terminated;
    }
    let _ = killpg(group, Signal::SIGKILL);
    if wait_gone(rec, grace) {
        Stopped::Killed
    } else {
        Stopped::Survived
    }
}

/// Sends SIGTERM to every live recorded process group at once (so they shut down in
/// parallel); [`stop`] then finishes each.
pub fn signal_all(recs: &[ProcRecord], signal: Signal) {
    for rec in recs.iter().filter(|r| alive(r)) {
        let _ = killpg(Pid::from_raw(rec.pid), signal);
    }
}

/// Live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| nix::unistd::getpgid(Some(Pid::from_raw(*p))).ok() == Some(Pid::from_raw(pgid)))
        .filter(|p| !matches!(stat(*p), Some(('Z' | 'X', _)) | None))
        .collect()
}

/// Waits until the leader and every member of its group are gone.
fn wait_gone(rec: &ProcRecord, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        reap(rec.pid);
        // The leader's PID is also the group id; once the leader is gone, its group lives
        // on in any child it forked.
        if !alive(rec) && group_members(rec.pid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Picks a free TCP port on 127.0.0.1 (bind to port 0, read it, close).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    56789 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_stat(line), Some(('S', 56789)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let pid = std::process::id() as i32;
        let t = start_time(pid).expect("own /proc/self/stat");
        let mut rec = ProcRecord {
            name: "self".into(),
            pid,
            start_time: t,
            log: PathBuf::new(),
        };
        assert!(alive(&rec));
        rec.start_time = t + 1;
        assert!(
            !alive(&rec),
            "a PID reused by another process must not count"
        );
    }

    #[test]
    fn spawn_logs_and_stop_terminates_the_group() {
        let dir = std::env::temp_dir().join(format!("npc-procs-{}", std::process::id()));
        let spec = Spec::new(
            "sleeper",
            "/bin/sh",
            vec![
                "-c".into(),
                // A child in the same group must go too.
                "echo started; sleep 300 & sleep 300".into(),
            ],
        );
        let rec = spawn(&spec, &dir).unwrap();
        assert!(alive(&rec));
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&rec.log).unwrap_or_default() != "started\n" {
            assert!(Instant::now() < deadline, "log never got the output");
            std::thread::sleep(POLL);
        }
        assert_eq!(stop(&rec, Duration::from_secs(5)), Stopped::Terminated);
        assert!(!alive(&rec));
        // Nothing of the group is left: stop waits for every member, not just the leader.
        assert_eq!(
            group_members(rec.pid),
            Vec::<i32>::new(),
            "processes of the group survived"
        );
        assert_eq!(stop(&rec, Duration::from_secs(1)), Stopped::NotRunning);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spawning_a_missing_binary_names_it() {
        let dir = std::env::temp_dir().join(format!("npc-procs-missing-{}", std::process::id()));
        let err = spawn(&Spec::new("nothing", "/nonexistent/bin", vec![]), &dir).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bin"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
