//! `run`, as a short sequence of phases: settle what the command line asks for, connect the
//! target (the CLI before any trial, `cargo test` on the first trial that needs it), build the
//! trials, run them under libtest, write the reports, and decide the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use regex::Regex;

use super::schedule::Schedule;
use super::trial::{self, Shared, TargetState};
use super::{random_id, select_plans, usage_error};
use crate::cli::{Mode, RunArgs, SelectArgs};
use crate::collector::Collector;
use crate::features::Selection;
use crate::interrupt::Interrupt;
use crate::plan::{Plan, Scope};
use crate::progress::Live;
use crate::report::npa::Implementation;
use crate::report::{self, RunReport};
use crate::target::{self, Target, TargetSpec, Unavailable};

/// When the run started, by both clocks.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
    started_at: SystemTime,
}

/// What the command line asks of a run, settled before any cluster is touched.
struct Setup {
    plans: Vec<Plan>,
    implementation: Option<Implementation>,
    sonobuoy_dir: Option<PathBuf>,
    listing: bool,
    spec: Result<TargetSpec, Unavailable>,
    features: Arc<Selection>,
    unavailable: Option<String>,
}

/// `run` and `cargo test --test conformance`.
pub(super) fn run(args: RunArgs, mode: Mode) -> ExitCode {
    run_with(args, mode, None)
}

/// A whole run, as `netpol-conformance run` does it, against a target the caller connected
/// (see [`Target::given`]): the in-memory cluster of the harness's own tests, or a cluster an
/// embedding program built. The target's end-of-run work (shared worlds, leases) is done here.
pub fn run_on(args: RunArgs, target: Target) -> ExitCode {
    run_with(args, Mode::Cli, Some(target))
}

fn run_with(mut args: RunArgs, mode: Mode, given: Option<Target>) -> ExitCode {
    let clock = Clock {
        started: Instant::now(),
        started_at: SystemTime::now(),
    };
    let setup = match settle(&args, mode, given.is_some()) {
        Ok(setup) => setup,
        Err(message) => return usage_error(&message),
    };
    let slots = trial_slots(&mut args.harness, setup.plans.len());
    let interrupt = Interrupt::new();
    if !setup.listing {
        interrupt.watch_signals();
    }
    let run_id = random_id();
    let needs_sctp = setup.plans.iter().any(|p| {
        p.probes()
            .any(|probe| probe.protocol == crate::world::Protocol::Sctp)
    });
    let connect_opts = target::ConnectOptions {
        run_id: run_id.clone(),
        preflight_sctp: needs_sctp,
        wait_for_lock: !args.no_wait,
        placement: args.placement,
    };
    let (scopes, selected, turns) =
        schedule_plans(&setup.plans, &args.harness, setup.listing, slots);
    let connecting = std::time::Instant::now();
    let was_given = given.is_some();
    let connected = match (mode, setup.listing, &setup.unavailable, &setup.spec) {
        _ if given.is_some() => given.map(|t| TargetState::Ready(Box::new(t))),
        (Mode::Cli, false, None, Ok(target)) if selected > 0 => {
            match connect_first(
                target,
                &connect_opts,
                &args,
                setup.sonobuoy_dir.as_deref(),
                clock,
            ) {
                Ok(target) => {
                    if let TargetState::Ready(t) = &target {
                        interrupt.own_local(t.owned_local());
                    }
                    Some(target)
                }
                Err(code) => return code,
            }
        }
        _ => None,
    };
    // The CLI connects before any trial: how long the target took to be had (a local cluster's
    // bring-up included), for the bench's floor.
    let target_setup = connected
        .as_ref()
        .filter(|_| !was_given && mode == Mode::Cli)
        .map(|_| connecting.elapsed());
    let progress_port: Option<u16> = std::env::var("SONOBUOY_PROGRESS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .filter(|_| setup.sonobuoy_dir.is_some());
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let live = live_progress(&mut args.harness, setup.listing, selected, color);
    let shared = Arc::new(Shared {
        target: Mutex::new(connected),
        spec: setup.spec,
        connect_opts,
        unavailable: setup.unavailable,
        collector: Collector::new(setup.plans.len(), progress_port, live.clone()),
        interrupt,
        schedule: Schedule::new(slots, turns),
        counter: AtomicUsize::new(0),
        run_id,
        features: setup.features.clone(),
        keep: args.keep,
        fresh_worlds: args.fresh_worlds,
        probe_target: args.probe_target,
        placement: args.placement,
        probe_timeout: args.probe_timeout,
        settle_timeout: args.settle_timeout,
        preflight_timeout: args.preflight_timeout,
        color,
    });
    let trials = trial::trials(setup.plans.into_iter().zip(scopes).collect(), &shared);
    let conclusion = libtest_mimic::run(&args.harness, trials);
    if let Some(live) = &live {
        live.finish();
    }
    if setup.listing {
        return conclusion.exit_code();
    }
    let mut report = run_report(&shared, clock);
    report.concurrency = slots;
    report.target_setup = target_setup;
    if let Err(code) = write_reports(
        &report,
        &args,
        &setup.features,
        setup.implementation.as_ref(),
        setup.sonobuoy_dir.as_deref(),
    ) {
        return code;
    }
    eprint!("{}", report::summary(&report));
    if setup.sonobuoy_dir.is_some() {
        // The results travel in the files; the plugin pod itself succeeded.
        return ExitCode::SUCCESS;
    }
    if report.aborted.is_some() && !conclusion.has_failed() {
        return ExitCode::from(101);
    }
    conclusion.exit_code()
}

/// Each plan's scope, how many plans libtest's filter leaves, and how many of those take turns;
/// says how the run will schedule them.
fn schedule_plans(
    plans: &[Plan],
    harness: &libtest_mimic::Arguments,
    listing: bool,
    slots: usize,
) -> (Vec<Scope>, usize, usize) {
    let scopes = crate::plan::scopes(plans);
    let kept = |p: &Plan| !filtered_out(harness, &p.trial);
    let selected = plans.iter().filter(|p| kept(p)).count();
    let turns = plans
        .iter()
        .zip(&scopes)
        .filter(|(p, s)| **s == Scope::Turns && kept(p))
        .count();
    if !listing {
        eprintln!(
            "netpol-conformance: {slots} trials at once: {}",
            crate::plan::scope::describe(&scopes)
        );
    }
    (scopes, selected, turns)
}

/// How many trials run at once (`--test-threads`, `NETPOL_TEST_THREADS`, else 4); the schedule
/// admits them. libtest is given a thread per trial, so trials waiting for their turn never
/// hold up others that may run (one slot keeps libtest's own sequential order).
fn trial_slots(harness: &mut libtest_mimic::Arguments, trials: usize) -> usize {
    let slots = harness.test_threads.unwrap_or_else(|| {
        std::env::var("NETPOL_TEST_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(4)
    });
    harness.test_threads = Some(if slots <= 1 { 1 } else { trials.max(1) });
    slots
}

/// The plans to run (the table and `--cases`, then E2E_FOCUS and E2E_SKIP) and the
/// implementation a ConformanceReport names.
fn select_run_plans(args: &RunArgs) -> Result<(Vec<Plan>, Option<Implementation>), String> {
    let select = SelectArgs {
        filter: None,
        exact: false,
        cases: args.cases.clone(),
    };
    let plans = select_plans(&select)?;
    let implementation = args.npa_report.implementation()?;
    let (focus, skip) = match (
        compile(&args.focus, "E2E_FOCUS"),
        compile(&args.e2e_skip, "E2E_SKIP"),
    ) {
        (Ok(f), Ok(s)) => (f, s),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let plans: Vec<Plan> = plans
        .into_iter()
        .filter(|p| {
            let text = format!("{} {}", p.trial, p.name);
            focus.as_ref().is_none_or(|r| r.is_match(&text))
                && !skip.as_ref().is_some_and(|r| r.is_match(&text))
        })
        .collect();
    Ok((plans, implementation))
}

/// Everything the command line decides before a cluster is touched: plans, results directory,
/// target (chosen now, which is cheap; connected later), the features judged, and why no
/// target can be had, if so. An error is a usage error.
fn settle(args: &RunArgs, mode: Mode, given: bool) -> Result<Setup, String> {
    let (plans, implementation) = select_run_plans(args)?;
    let sonobuoy_dir = std::env::var_os("SONOBUOY_RESULTS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            args.sonobuoy
                .then(|| PathBuf::from("/tmp/sonobuoy/results"))
        });
    let listing = args.harness.list;

    // Decide the target now (cheap), connect lazily on the first trial that runs.
    let spec = if given {
        Err(Unavailable("the run was given its target".into()))
    } else {
        target::choose(&target::Choice {
            kubeconfig: args.kubeconfig.clone(),
            context: args.context.clone(),
            in_cluster: args.in_cluster,
            local: args.local,
            plugin: sonobuoy_dir.is_some(),
            enforcer: !args.no_enforcer,
            runtime: args.runtime.into(),
        })
    };
    if let (Ok(spec), false) = (&spec, listing) {
        eprintln!("netpol-conformance: target: {}", spec.describe());
    }
    // The bundled enforcer implements every feature, so the local cluster judges them all.
    let local_target = matches!(spec, Ok(TargetSpec::Local { .. }));
    let features = Selection::new(
        &args.supported_features,
        &args.exempt_features,
        args.all_features || local_target,
    )
    .map(Arc::new)
    .map_err(|e| e.to_string())?;
    if !listing {
        eprintln!("netpol-conformance: {}", features.describe());
    }
    let unavailable: Option<String> = match (&spec, mode) {
        _ if given => None,
        (Err(e), _) => Some(e.0.clone()),
        (Ok(TargetSpec::Local { runtime, .. }), Mode::CargoTest)
            if !netpol_local::local_required() =>
        {
            target::local_binaries_missing(*runtime).map(|missing| {
                format!(
                    "no target: {missing} (or set NETPOL_REQUIRE_LOCAL=1 to build them), and no \
                     NETPOL_KUBECONFIG is set"
                )
            })
        }
        _ => None,
    };
    if let (Some(reason), Mode::Cli, false) = (&unavailable, mode, listing) {
        return Err(reason.clone());
    }
    Ok(Setup {
        plans,
        implementation,
        sonobuoy_dir,
        listing,
        spec,
        features,
        unavailable,
    })
}

/// The CLI connects before any trial runs, so a target that cannot be had is one clear
/// error, not one per trial (the JUnit, HTML and Sonobuoy files still say why).
fn connect_first(
    spec: &TargetSpec,
    connect_opts: &target::ConnectOptions,
    args: &RunArgs,
    sonobuoy_dir: Option<&Path>,
    clock: Clock,
) -> Result<TargetState, ExitCode> {
    match target::connect(spec, connect_opts) {
        Ok(t) => Ok(TargetState::Ready(Box::new(t))),
        Err(e) => {
            let why = format!("no target: {}", crate::plan::error_chain(&e));
            let report = RunReport {
                suite_version: env!("CARGO_PKG_VERSION").to_string(),
                aborted: Some(why.clone()),
                started: clock.started_at,
                duration: clock.started.elapsed(),
                ..Default::default()
            };
            if let Some(path) = &args.junit {
                let _ = report::write_junit(&report, path);
            }
            if let Some(path) = &args.html {
                let _ = report::html::write_html(&report, path);
            }
            if let Some(dir) = sonobuoy_dir {
                let _ = report::write_sonobuoy(&report, dir);
            }
            Err(usage_error(&why))
        }
    }
}

/// The live progress of a run that runs trials (none when listing); with stdout relayed under
/// a bar, libtest is asked for colours it would not see the terminal for.
fn live_progress(
    harness: &mut libtest_mimic::Arguments,
    listing: bool,
    selected: usize,
    color: bool,
) -> Option<Arc<Live>> {
    let live = (!listing).then(|| {
        let style = crate::progress::Style::choose(harness.quiet, color);
        Arc::new(Live::new(selected, style))
    });
    if live.as_ref().is_some_and(|l| l.relays_stdout())
        && harness.color.is_none()
        && std::env::var_os("NO_COLOR").is_none()
    {
        // libtest sees the relay's pipe, not the terminal behind it.
        harness.color = Some(libtest_mimic::ColorSetting::Always);
    }
    live
}

/// The run's report once libtest is done: the target finished (shared worlds deleted, leases
/// retired) and described, every trial's report, and why the run was cut short, if it was.
fn run_report(shared: &Shared, clock: Clock) -> RunReport {
    let mut problems = Vec::new();
    let info = match shared.target.lock().expect("target lock").take() {
        Some(TargetState::Ready(t)) => {
            let info = t.cluster.info();
            problems = t.finish();
            shared.interrupt.release_local();
            info
        }
        Some(TargetState::Failed(e)) => crate::backend::TargetInfo {
            target: format!("unavailable: {e}"),
            ..Default::default()
        },
        None => Default::default(),
    };
    let trials = shared.collector.take_reports();
    let aborted = if shared.interrupt.requested() {
        Some("the run was interrupted".to_string())
    } else if !problems.is_empty() {
        Some(problems.join("; "))
    } else {
        None
    };
    RunReport {
        suite_version: env!("CARGO_PKG_VERSION").to_string(),
        target: info,
        hostname: report::hostname(),
        trials,
        aborted,
        started: clock.started_at,
        duration: clock.started.elapsed(),
        concurrency: 0,
        target_setup: None,
    }
}

/// Writes the reports asked for (JUnit, HTML, ConformanceReport, Sonobuoy results) and
/// appends to the GitHub job summary; a report that cannot be written ends the run with 2.
fn write_reports(
    report: &RunReport,
    args: &RunArgs,
    features: &Selection,
    implementation: Option<&Implementation>,
    sonobuoy_dir: Option<&Path>,
) -> Result<(), ExitCode> {
    if let Some(path) = &args.junit
        && let Err(e) = report::write_junit(report, path)
    {
        eprintln!(
            "netpol-conformance: writing JUnit to {}: {e}",
            path.display()
        );
        return Err(ExitCode::from(2));
    }
    if let Some(path) = &args.html {
        if let Err(e) = report::html::write_html(report, path) {
            eprintln!(
                "netpol-conformance: writing the HTML report to {}: {e}",
                path.display()
            );
            return Err(ExitCode::from(2));
        }
        eprintln!("netpol-conformance: HTML report in {}", path.display());
    }
    if let (Some(path), Some(implementation)) = (&args.npa_report.report_output, implementation) {
        let npa = report::npa::conformance_report(report, features, implementation);
        if let Err(e) = report::npa::write(&npa, path) {
            eprintln!(
                "netpol-conformance: writing the ConformanceReport to {}: {e}",
                path.display()
            );
            return Err(ExitCode::from(2));
        }
        eprintln!(
            "netpol-conformance: ConformanceReport in {}",
            path.display()
        );
    }
    if let Some(dir) = sonobuoy_dir {
        match report::write_sonobuoy(report, dir) {
            Ok(path) => eprintln!("netpol-conformance: Sonobuoy results in {}", path.display()),
            Err(e) => {
                eprintln!(
                    "netpol-conformance: writing Sonobuoy results to {}: {e}",
                    dir.display()
                );
                return Err(ExitCode::from(2));
            }
        }
    }
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty())
        && let Err(e) = report::github::append_step_summary(report, std::path::Path::new(&path))
    {
        tracing::warn!("appending to GITHUB_STEP_SUMMARY: {e}");
    }
    Ok(())
}

fn compile(pattern: &Option<String>, what: &str) -> Result<Option<Regex>, String> {
    pattern
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| Regex::new(p).map_err(|e| format!("{what} `{p}` is not a valid regex: {e}")))
        .transpose()
}

/// Whether libtest's FILTER / --exact / --skip / --ignored leave a trial out (as libtest-mimic
/// decides it; our trials are never marked ignored).
fn filtered_out(args: &libtest_mimic::Arguments, name: &str) -> bool {
    let matches = |pattern: &str| {
        if args.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    args.ignored
        || args.filter.as_deref().is_some_and(|f| !matches(f))
        || args.skip.iter().any(|s| matches(s))
}
