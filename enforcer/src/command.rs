//! Running a program to completion, with text on its standard input when given: how the
//! dataplane drives `nft` and `iptables`, and how the local cluster drives `ctr` and `kubectl`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Why a program run did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be started (binary missing, …), fed or waited for.
    #[error("running {command}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A command exited non-zero.
    #[error("{command} failed with {status}: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it wrote to standard error.
        stderr: String,
    },
}

/// Runs `program args…` to completion, `stdin` written to its standard input (none when
/// `None`), and returns what it wrote to standard output; a non-zero exit is
/// [`Error::Failed`] with its standard error.
pub fn run(
    program: impl AsRef<OsStr>,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, Error> {
    let program = program.as_ref();
    let command = format!("{} {}", Path::new(program).display(), args.join(" "));
    let spawn = |source| Error::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let output = child.wait_with_output().map_err(spawn)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_reaches_the_program_and_stdout_comes_back() {
        assert_eq!(run("cat", &[], Some("judge\n")).unwrap(), "judge\n");
        assert_eq!(run("echo", &["a", "b"], None).unwrap(), "a b\n");
    }

    #[test]
    fn a_failure_carries_the_command_line_and_stderr() {
        let err = run("sh", &["-c", "echo nope >&2; exit 3"], None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("sh -c echo nope >&2; exit 3 failed with exit status: 3"),
            "{text}"
        );
        assert!(text.ends_with(": nope"), "{text}");
        let missing = run("/nonexistent/netpol-nothing", &["x"], None).unwrap_err();
        assert!(matches!(missing, Error::Spawn { .. }), "{missing}");
        assert_eq!(missing.to_string(), "running /nonexistent/netpol-nothing x");
        assert!(std::error::Error::source(&missing).is_some());
    }
}
