//! Live progress of a run, on stderr: a bar on a terminal (trials done / running / failed, the
//! trial running longest, an ETA), one plain line per finished trial elsewhere or with
//! `--quiet`.
//!
//! Nothing here writes to stdout, which belongs to libtest's output (`--format json` must stay
//! parseable). When stdout is the same kind of terminal the bar is drawn on, libtest's lines
//! would be torn by the bar's redraws; [`Live`] then relays stdout through a pipe and writes each
//! complete line to the real stdout with the bar cleared ([`indicatif::ProgressBar::suspend`]),
//! so the bar stays below the output.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::{TrialOutcome, TrialReport};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A redrawn bar (stderr is a terminal).
    Bar,
    /// One line per finished trial.
    Lines,
}

impl Style {
    /// A bar when stderr is a terminal and the user did not ask for quiet output.
    pub fn choose(quiet: bool, stderr_is_terminal: bool) -> Style {
        if stderr_is_terminal && !quiet {
            Style::Bar
        } else {
            Style::Lines
        }
    }
}

/// What the run has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Trials expected to run.
    pub total: usize,
    /// Trials finished, whatever their outcome.
    pub done: usize,
    /// Finished trials that failed or errored.
    pub failed: usize,
    /// Trials running, oldest first, with when they started.
    pub running: Vec<(String, Instant)>,
}

impl Tally {
    /// The remaining time at the rate so far; `None` before the first trial finishes.
    pub fn eta(&self, elapsed: Duration) -> Option<Duration> {
        if self.done == 0 {
            return None;
        }
        let remaining = self.total.saturating_sub(self.done) as f64;
        Some(elapsed.mul_f64(remaining / self.done as f64))
    }

    /// `4 running · 1 failed · ETA 2m05s · npa::…::v1alpha2 (+3)`: the bar's message.
    pub fn status(&self, elapsed: Duration) -> String {
        let mut out = format!(
            "{} running · {} failed · ETA {}",
            self.running.len(),
            self.failed,
            self.eta(elapsed).map(short).unwrap_or_else(|| "?".into())
        );
        if let Some((oldest, _)) = self.running.first() {
            let _ = write!(out, " · {oldest}");
            if self.running.len() > 1 {
                let _ = write!(out, " (+{})", self.running.len() - 1);
            }
        }
        out
    }

    /// One plain line for a finished trial.
    pub fn line(&self, report: &TrialReport, elapsed: Duration) -> String {
        let width = self.total.to_string().len();
        let mut out = format!(
            "netpol-conformance: [{:>width$}/{}] {:<13} {} ({}) · {} running, {} failed",
            self.done,
            self.total,
            report.outcome.word(),
            report.trial,
            short(report.duration),
            self.running.len(),
            self.failed,
        );
        if self.done < self.total
            && let Some(eta) = self.eta(elapsed)
        {
            let _ = write!(out, ", ETA {}", short(eta));
        }
        out
    }
}

/// `850ms`, `12.3s`, `2m05s`, `1h02m`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Where progress goes.
enum Sink {
    Bar {
        bar: ProgressBar,
        relay: Mutex<Option<StdoutRelay>>,
    },
    Lines(Mutex<Box<dyn Write + Send>>),
}

/// The progress of one run; shared by the trials' threads.
pub struct Live {
    sink: Sink,
    tally: Mutex<Tally>,
    started: Instant,
}

impl Live {
    /// Progress for `total` trials, drawn on stderr. With [`Style::Bar`] and stdout a terminal
    /// too, stdout is relayed under the bar until [`Live::finish`].
    pub fn new(total: usize, style: Style) -> Live {
        let sink = match style {
            Style::Bar => {
                let bar =
                    ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
                let relay = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    match StdoutRelay::start(bar.clone()) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            tracing::warn!("relaying stdout under the progress bar: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                Live::bar_sink(bar, relay)
            }
            Style::Lines => Sink::Lines(Mutex::new(Box::new(std::io::stderr()))),
        };
        Live::with_sink(total, sink)
    }

    /// Whether stdout is relayed (libtest's colours must then be asked for explicitly).
    pub fn relays_stdout(&self) -> bool {
        match &self.sink {
            Sink::Bar { relay, .. } => relay.lock().expect("relay lock").is_some(),
            Sink::Lines(_) => false,
        }
    }

    fn bar_sink(bar: ProgressBar, relay: Option<StdoutRelay>) -> Sink {
        let style = ProgressStyle::with_template(
            "{spinner:.green} [{elapsed_precise}] {bar:25.cyan/blue} {pos}/{len} · {wide_msg}",
        )
        .expect("the template is valid")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(250));
        Sink::Bar {
            bar,
            relay: Mutex::new(relay),
        }
    }

    fn with_sink(total: usize, sink: Sink) -> Live {
        let live = Live {
            sink,
            tally: Mutex::new(Tally {
                total,
                ..Default::default()
            }),
            started: Instant::now(),
        };
        live.redraw(&live.tally.lock().expect("tally lock"));
        live
    }

    fn redraw(&self, tally: &Tally) {
        if let Sink::Bar { bar, .. } = &self.sink {
            bar.set_position(tally.done as u64);
            bar.set_message(tally.status(self.started.elapsed()));
        }
    }

    /// A trial started.
    pub fn started(&self, trial: &str) {
        let mut tally = self.tally.lock().expect("tally lock");
        tally.running.push((trial.to_string(), Instant::now()));
        self.redraw(&tally);
    }

    /// A trial finished (also one that never started, such as a not-supported one).
    pub fn finished(&self, report: &TrialReport) {
        let mut tally = self.tally.lock().expect("tally lock");
        tally.running.retain(|(t, _)| *t != report.trial);
        tally.done += 1;
        if matches!(
            report.outcome,
            TrialOutcome::Failed { .. } | TrialOutcome::Error { .. }
        ) {
            tally.failed += 1;
        }
        match &self.sink {
            Sink::Bar { .. } => self.redraw(&tally),
            Sink::Lines(out) => {
                let line = tally.line(report, self.started.elapsed());
                let mut out = out.lock().expect("progress sink lock");
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().expect("tally lock").clone()
    }

    /// Clears the bar and gives stdout back (every relayed byte written first).
    pub fn finish(&self) {
        if let Sink::Bar { bar, relay } = &self.sink {
            if let Some(relay) = relay.lock().expect("relay lock").take() {
                relay.stop();
            }
            bar.finish_and_clear();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.finish();
    }
}

/// stdout redirected into a pipe whose complete lines a thread writes to the real stdout with
/// the bar suspended.
struct StdoutRelay {
    saved: OwnedFd,
    thread: JoinHandle<()>,
}

impl StdoutRelay {
    fn start(bar: ProgressBar) -> std::io::Result<StdoutRelay> {
        std::io::stdout().flush()?;
        let saved = std::io::stdout().as_fd().try_clone_to_owned()?;
        let mut real = std::fs::File::from(saved.try_clone()?);
        let (mut reader, writer) = std::io::pipe()?;
        nix::unistd::dup2_stdout(&writer).map_err(std::io::Error::from)?;
        drop(writer);
        let thread = std::thread::spawn(move || {
            let mut pending: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&chunk[..n]);
                // Whole lines only: a partial line would be wiped by the next redraw.
                if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
                    let lines: Vec<u8> = pending.drain(..=end).collect();
                    bar.suspend(|| {
                        let _ = real.write_all(&lines);
                        let _ = real.flush();
                    });
                }
            }
            if !pending.is_empty() {
                bar.suspend(|| {
                    let _ = real.write_all(&pending);
                    let _ = real.flush();
                });
            }
        });
        Ok(StdoutRelay { saved, thread })
    }

    /// Puts the real stdout back on fd 1, which closes the pipe's last writer, and waits until
    /// the thread has written everything.
    fn stop(self) {
        let _ = std::io::stdout().flush();
        if let Err(e) = nix::unistd::dup2_stdout(&self.saved) {
            tracing::warn!("restoring stdout: {e}");
            return;
        }
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;

    fn report(trial: &str, outcome: TrialOutcome) -> TrialReport {
        TrialReport {
            trial: trial.into(),
            name: String::new(),
            classname: String::new(),
            features: vec![],
            outcome,
            started: SystemTime::now(),
            duration: Duration::from_millis(2500),
            steps: vec![],
            log: String::new(),
            preflight: None,
            timing: None,
        }
    }

    /// Half of [`stdout_relay_passes_every_byte_and_gives_stdout_back`], run in a child process
    /// so the real stdout of this test binary is never redirected.
    #[test]
    #[ignore = "run by stdout_relay_passes_every_byte_and_gives_stdout_back in a child process"]
    fn relay_child() {
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::hidden());
        let relay = StdoutRelay::start(bar).expect("relay starts");
        println!("relayed 1");
        print!("relayed 2\npartial");
        relay.stop();
        println!(" | after");
    }

    #[test]
    fn stdout_relay_passes_every_byte_and_gives_stdout_back() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "progress::tests::relay_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        // Whole lines while relayed, the partial tail at the end, then the real stdout again.
        assert!(
            stdout.contains("relayed 1\nrelayed 2\npartial | after\n"),
            "{stdout}"
        );
        assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
    }

    #[test]
    fn the_style_is_a_bar_only_on_a_terminal_without_quiet() {
        assert_eq!(Style::choose(false, true), Style::Bar);
        assert_eq!(Style::choose(true, true), Style::Lines);
        assert_eq!(Style::choose(false, false), Style::Lines);
    }

    #[test]
    fn eta_follows_the_rate_so_far() {
        let mut t = Tally {
            total: 10,
            ..Default::default()
        };
        assert_eq!(t.eta(Duration::from_secs(5)), None);
        t.done = 4;
        assert_eq!(
            t.eta(Duration::from_secs(20)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(short(Duration::from_secs(125)), "2m05s");
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_secs(3725)), "1h02m");
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_count_done_running_and_failed() {
        let out = Shared::default();
        let live = Live::with_sink(3, Sink::Lines(Mutex::new(Box::new(out.clone()))));
        live.started("upstream::a");
        live.started("upstream::b");
        live.finished(&report(
            "upstream::a",
            TrialOutcome::Failed {
                message: "wrong".into(),
            },
        ));
        live.finished(&report(
            "npa::c",
            TrialOutcome::NotSupported {
                reason: "SCTP".into(),
            },
        ));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with(
                "netpol-conformance: [1/3] failed        upstream::a (2.5s) · 1 running, 1 failed, ETA "
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with(
                "netpol-conformance: [2/3] not-supported npa::c (2.5s) · 1 running, 1 failed"
            ),
            "{}",
            lines[1]
        );
        assert_eq!(live.tally().running[0].0, "upstream::b");
    }

    #[test]
    fn the_bar_shows_position_running_failed_and_the_oldest_trial() {
        let bar = ProgressBar::with_draw_target(Some(4), ProgressDrawTarget::hidden());
        let live = Live::with_sink(4, Live::bar_sink(bar.clone(), None));
        live.started("npa::x");
        live.started("npa::y");
        live.started("npa::z");
        live.finished(&report(
            "npa::y",
            TrialOutcome::Error {
                message: "exec failed".into(),
            },
        ));
        assert_eq!(bar.position(), 1);
        let msg = bar.message();
        assert!(
            msg.starts_with("2 running · 1 failed · ETA ") && msg.ends_with(" · npa::x (+1)"),
            "{msg}"
        );
        live.finish();
        assert!(bar.is_finished());
    }
}
