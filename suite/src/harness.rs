//! The libtest-style harness behind the command line of [`crate::cli`], shared by
//! `netpol-conformance run` and `cargo test --test conformance`: one trial per planned case, gated once, run in parallel,
//! reported as JUnit / Sonobuoy results / a summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use clap::Parser;
use libtest_mimic::Trial;
use regex::Regex;

use crate::backend::{Capabilities, Cluster};
use crate::case::{self, Case, Feature, Source};
use crate::cli::{Cli, Command, LocalCommand, LocalRuntime, Mode, RunArgs, SelectArgs};
use crate::collector::Collector;
use crate::features::Selection;
use crate::plan::{self, Action, Plan};
use crate::reachability::expected_mark;
use crate::report::{self, RunReport, TrialOutcome};
use crate::runner::{RunOptions, Timeouts, report_for, run_plan};
use crate::target::{self, Target, TargetSpec};

/// The binary's entry point.
pub fn main() -> ExitCode {
    if let Some(code) = netpol_local::maybe_run_role() {
        return code;
    }
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::List(select) => match select_plans(&select) {
            Ok(plans) => print_out(plans.iter().map(|p| format!("{}: test\n", p.trial))),
            Err(e) => usage_error(&e),
        },
        Command::Plan(args) => match select_plans(&args.select) {
            Ok(plans) if args.json => print_out(std::iter::once(format!(
                "{}\n",
                serde_json::to_string_pretty(&plan::plans_json(&plans)).expect("plans serialize")
            ))),
            Ok(plans) => print_out(plans.iter().map(render_plan)),
            Err(e) => usage_error(&e),
        },
        Command::Run(args) => run(*args, Mode::Cli),
        Command::Local { command } => local(command),
        Command::Cleanup {
            kubeconfig,
            context,
            run,
            all,
        } => cleanup(kubeconfig, context, run, all),
        Command::Probe {
            netns,
            target,
            protocol,
            timeout,
        } => probe_once(&netns, target, &protocol, timeout),
        Command::SonobuoyPlugin {
            image,
            service_account,
        } => match crate::plugin::render(&crate::plugin::Overrides {
            image,
            service_account,
        }) {
            Ok(text) => print_out(std::iter::once(text)),
            Err(e) => usage_error(&e),
        },
    }
}

fn probe_once(
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

/// The entry point of `cargo test --test conformance`: the arguments are those of `run`.
pub fn test_main() -> ExitCode {
    if let Some(code) = netpol_local::maybe_run_role() {
        return code;
    }
    init_tracing();
    #[derive(Parser)]
    #[command(name = "conformance")]
    struct TestCli {
        #[command(flatten)]
        run: RunArgs,
    }
    run(TestCli::parse().run, Mode::CargoTest)
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The local cluster's readiness polls make kube's client log every early refusal.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
fn print_out(chunks: impl Iterator<Item = String>) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for chunk in chunks {
        if let Err(e) = out.write_all(chunk.as_bytes()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("netpol-conformance: writing output: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("netpol-conformance: error: {message}");
    ExitCode::from(2)
}

/// Loads the embedded table plus a user directory.
pub fn load_cases(extra: Option<&PathBuf>) -> Result<Vec<Case>, String> {
    let mut files: Vec<(String, String)> = case::embedded_files()
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    if let Some(dir) = extra {
        if !dir.is_dir() {
            return Err(format!("--cases {}: not a directory", dir.display()));
        }
        let user = case::read_dir(dir).map_err(|e| plan::error_chain(&e))?;
        if user.is_empty() {
            return Err(format!("--cases {}: no *.yaml files", dir.display()));
        }
        files.extend(user);
    }
    let cases = case::load_files(files).map_err(|e| plan::error_chain(&e))?;
    if let Some(dir) = extra
        && let Some(c) = cases
            .iter()
            .find(|c| c.origin.starts_with(&dir.display().to_string()) && c.source != Source::User)
    {
        return Err(format!(
            "{}: case `{}` is a user case; its source must be `user`",
            c.origin, c.id
        ));
    }
    Ok(cases)
}

fn select_plans(select: &SelectArgs) -> Result<Vec<Plan>, String> {
    let cases = load_cases(select.cases.as_ref())?;
    let plans = plan::plan_all(&cases).map_err(|e| plan::error_chain(&e))?;
    let plans: Vec<Plan> = plans
        .into_iter()
        .filter(|p| match &select.filter {
            None => true,
            Some(f) if select.exact => p.trial == *f,
            Some(f) => p.trial.contains(f.as_str()),
        })
        .collect();
    if plans.is_empty()
        && let Some(f) = &select.filter
    {
        return Err(format!(
            "no trial matches `{f}` (see `netpol-conformance list` for every trial)"
        ));
    }
    Ok(plans)
}

/// Expected truth tables of a plan, for people.
pub fn render_plan(plan: &Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let features: Vec<&str> = plan.features().iter().map(|f| f.as_str()).collect();
    let _ = writeln!(out, "== {}\n   {}", plan.trial, plan.name);
    if !features.is_empty() {
        let _ = writeln!(out, "   features: {}", features.join(", "));
    }
    for step in &plan.steps {
        match &step.action {
            Action::Probe(p) => {
                let _ = writeln!(
                    out,
                    "-- step {}: probe {}/{}{}",
                    step.index,
                    p.protocol,
                    p.port,
                    p.name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                );
                out.push_str(&p.expected.render(expected_mark));
            }
            Action::Create(objs) | Action::Update(objs) => {
                for o in objs {
                    let _ = writeln!(
                        out,
                        "-- step {}: {} {} {}",
                        step.index,
                        step.action.name(),
                        o["kind"].as_str().unwrap_or("?"),
                        o["metadata"]["name"].as_str().unwrap_or("?")
                    );
                }
            }
            Action::Patch { target, .. } => {
                let _ = writeln!(
                    out,
                    "-- step {}: patch {} {}",
                    step.index, target.kind, target.name
                );
            }
            other => {
                let _ = writeln!(out, "-- step {}: {}", step.index, other.name());
            }
        }
    }
    out.push('\n');
    out
}

/// The one place that decides whether a trial runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Run it.
    Run,
    /// The run does not judge something the case needs (undeclared or exempted feature, API
    /// not served, no external host).
    NotSupported(String),
    /// The run judges a standard feature the target cannot carry: an error, never a skip.
    Error(String),
}

/// Gates a plan on the run's features and the target's capabilities. Protocols a case only
/// uses in some steps are gated per step by the runner; declared features and policy APIs gate
/// the whole case.
pub fn gate(plan: &Plan, caps: &Capabilities, features: &Selection) -> Gate {
    for kind in plan.kinds() {
        if !caps.kinds.contains(&kind) {
            return Gate::NotSupported(format!(
                "the cluster does not serve {kind} (its CRD is not installed)"
            ));
        }
    }
    let target_reason = |name: &str| {
        Feature::ALL
            .iter()
            .find(|f| f.as_str() == name)
            .and_then(|f| caps.missing.get(f))
    };
    for name in crate::features::trial_features(plan) {
        if let Some(reason) = features.reason(&name) {
            let why = target_reason(&name)
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            return Gate::NotSupported(format!("{reason}{why}"));
        }
        if let Some(reason) = target_reason(&name) {
            return Gate::Error(format!(
                "{name} is a standard feature, but this target cannot carry it: {reason}; \
                 exempt it with --exempt-features {name} to judge the rest"
            ));
        }
    }
    // What the target offers regardless of the implementation (an external host to probe).
    let derived = plan.features();
    let needed = plan.case.features.iter().chain(derived.iter());
    for feature in needed {
        if matches!(feature, Feature::Udp | Feature::Sctp) {
            continue;
        }
        if let Some(reason) = caps.missing.get(feature) {
            return Gate::NotSupported(format!("{feature}: {reason}"));
        }
    }
    Gate::Run
}

fn compile(pattern: &Option<String>, what: &str) -> Result<Option<Regex>, String> {
    pattern
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| Regex::new(p).map_err(|e| format!("{what} `{p}` is not a valid regex: {e}")))
        .transpose()
}

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:05x}", h.finish() & 0xfffff)
}

static CANCEL: AtomicBool = AtomicBool::new(false);

fn install_interrupt_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::thread::spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) =
                    (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
                else {
                    return;
                };
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                eprintln!(
                    "netpol-conformance: interrupted; finishing the current steps and cleaning up \
                     (interrupt again to stop at once)"
                );
                CANCEL.store(true, Ordering::SeqCst);
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                let owned = target::OWNED_LOCAL.lock().unwrap_or_else(|e| e.into_inner()).take();
                match owned {
                    Some(dir) => {
                        eprintln!("netpol-conformance: stopping now; tearing the local cluster down");
                        if let Err(e) = netpol_local::cluster::down(&dir) {
                            eprintln!("netpol-conformance: `local down` failed: {e}");
                        }
                    }
                    None => eprintln!(
                        "netpol-conformance: stopping now; `netpol-conformance cleanup` removes leftovers"
                    ),
                }
                std::process::exit(130);
            });
        });
    });
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

enum TargetState {
    Ready(Box<Target>),
    Failed(String),
}

fn run(mut args: RunArgs, mode: Mode) -> ExitCode {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let select = SelectArgs {
        filter: None,
        exact: false,
        cases: args.cases.clone(),
    };
    let plans = match select_plans(&select) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    let implementation = match args.npa_report.implementation() {
        Ok(i) => i,
        Err(e) => return usage_error(&e),
    };
    let (focus, skip) = match (
        compile(&args.focus, "E2E_FOCUS"),
        compile(&args.e2e_skip, "E2E_SKIP"),
    ) {
        (Ok(f), Ok(s)) => (f, s),
        (Err(e), _) | (_, Err(e)) => return usage_error(&e),
    };
    let plans: Vec<Plan> = plans
        .into_iter()
        .filter(|p| {
            let text = format!("{} {}", p.trial, p.name);
            focus.as_ref().is_none_or(|r| r.is_match(&text))
                && !skip.as_ref().is_some_and(|r| r.is_match(&text))
        })
        .collect();
    let sonobuoy_dir = std::env::var_os("SONOBUOY_RESULTS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            args.sonobuoy
                .then(|| PathBuf::from("/tmp/sonobuoy/results"))
        });
    let listing = args.harness.list;

    // Decide the target now (cheap), connect lazily on the first trial that runs.
    let spec = target::choose(&target::Choice {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        in_cluster: args.in_cluster,
        local: args.local,
        plugin: sonobuoy_dir.is_some(),
        enforcer: !args.no_enforcer,
    });
    if let (Ok(spec), false) = (&spec, listing) {
        eprintln!("netpol-conformance: target: {}", spec.describe());
    }
    // The bundled enforcer implements every feature, so the local cluster judges them all.
    let local_target = matches!(spec, Ok(TargetSpec::Local { .. }));
    let features = match Selection::new(
        &args.supported_features,
        &args.exempt_features,
        args.all_features || local_target,
    ) {
        Ok(f) => Arc::new(f),
        Err(e) => return usage_error(&e.to_string()),
    };
    if !listing {
        eprintln!("netpol-conformance: {}", features.describe());
    }
    let unavailable: Option<String> = match (&spec, mode) {
        (Err(e), _) => Some(e.0.clone()),
        (Ok(TargetSpec::Local { .. }), Mode::CargoTest)
            if !target::local_binaries_present() && !netpol_local::local_required() =>
        {
            Some(
                "no target: the local cluster's control-plane binaries are not built \
                 (run hack/control-plane.sh, or set NETPOL_REQUIRE_LOCAL=1 to build them), \
                 and no NETPOL_KUBECONFIG is set"
                    .into(),
            )
        }
        _ => None,
    };
    if let (Some(reason), Mode::Cli, false) = (&unavailable, mode, listing) {
        return usage_error(reason);
    }
    if args.harness.test_threads.is_none() {
        let threads = std::env::var("NETPOL_TEST_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(4);
        args.harness.test_threads = Some(threads);
    }
    if !listing {
        install_interrupt_handler();
    }
    let run_id = random_id();
    let needs_sctp = plans.iter().any(|p| {
        p.probes()
            .any(|probe| probe.protocol == crate::world::Protocol::Sctp)
    });
    let connect_opts = target::ConnectOptions {
        run_id: run_id.clone(),
        preflight_sctp: needs_sctp,
        wait_for_lock: !args.no_wait,
    };
    let target: Arc<Mutex<Option<TargetState>>> = Arc::new(Mutex::new(None));
    // The CLI connects before any trial runs, so a target that cannot be had is one clear
    // error, not one per trial (the JUnit file still says why).
    let selected = plans
        .iter()
        .filter(|p| !filtered_out(&args.harness, &p.trial))
        .count();
    if let (Mode::Cli, false, None, Ok(spec)) = (mode, listing, &unavailable, &spec)
        && selected > 0
    {
        match target::connect(spec, &connect_opts) {
            Ok(t) => *target.lock().expect("target lock") = Some(TargetState::Ready(Box::new(t))),
            Err(e) => {
                let report = RunReport {
                    suite_version: env!("CARGO_PKG_VERSION").to_string(),
                    aborted: Some(format!("no target: {e}")),
                    started: started_at,
                    duration: started.elapsed(),
                    ..Default::default()
                };
                if let Some(path) = &args.junit {
                    let _ = report::write_junit(&report, path);
                }
                if let Some(path) = &args.html {
                    let _ = report::html::write_html(&report, path);
                }
                if let Some(dir) = &sonobuoy_dir {
                    let _ = report::write_sonobuoy(&report, dir);
                }
                return usage_error(&format!("no target: {e}"));
            }
        }
    }
    let exclusive = Arc::new(RwLock::new(()));
    let counter = Arc::new(AtomicUsize::new(0));
    let total = plans.len();
    let progress_port: Option<u16> = std::env::var("SONOBUOY_PROGRESS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .filter(|_| sonobuoy_dir.is_some());
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let live = (!listing).then(|| {
        let style = crate::progress::Style::choose(args.harness.quiet, color);
        Arc::new(crate::progress::Live::new(selected, style))
    });
    if live.as_ref().is_some_and(|l| l.relays_stdout())
        && args.harness.color.is_none()
        && std::env::var_os("NO_COLOR").is_none()
    {
        // libtest sees the relay's pipe, not the terminal behind it.
        args.harness.color = Some(libtest_mimic::ColorSetting::Always);
    }
    let collector = Arc::new(Collector::new(total, progress_port, live.clone()));

    let trials: Vec<Trial> = plans
        .into_iter()
        .map(|plan| {
            let target = target.clone();
            let collector = collector.clone();
            let exclusive = exclusive.clone();
            let counter = counter.clone();
            let unavailable = unavailable.clone();
            let spec = spec.clone();
            let run_id = run_id.clone();
            let connect_opts = connect_opts.clone();
            let keep = args.keep;
            let fresh_worlds = args.fresh_worlds;
            let probe_target = args.probe_target;
            let features = features.clone();
            let (probe_timeout, settle_timeout, preflight_timeout) = (
                args.probe_timeout,
                args.settle_timeout,
                args.preflight_timeout,
            );
            Trial::ignorable_test(plan.trial.clone(), move || {
                collector.started(&plan.trial);
                let record = |outcome| collector.record(report_for(&plan, outcome));
                if let Some(reason) = unavailable {
                    return record(TrialOutcome::Skipped { reason });
                }
                if CANCEL.load(Ordering::SeqCst) {
                    return record(TrialOutcome::Skipped {
                        reason: "the run was interrupted".into(),
                    });
                }
                // Connect once, on the first trial that needs the target.
                let (cluster, local) = {
                    let mut slot = target.lock().expect("target lock");
                    if slot.is_none() {
                        let spec = spec.clone().expect("checked above");
                        *slot = Some(match target::connect(&spec, &connect_opts) {
                            Ok(t) => TargetState::Ready(Box::new(t)),
                            Err(e) => TargetState::Failed(e),
                        });
                    }
                    match slot.as_ref().expect("just set") {
                        TargetState::Ready(t) => (t.cluster.clone(), t.local),
                        TargetState::Failed(e) => {
                            return record(TrialOutcome::Error {
                                message: format!("no target: {e}"),
                            });
                        }
                    }
                };
                let caps = cluster.capabilities();
                match gate(&plan, &caps, &features) {
                    Gate::Run => {}
                    Gate::NotSupported(reason) => {
                        return record(TrialOutcome::NotSupported { reason });
                    }
                    Gate::Error(message) => {
                        return record(TrialOutcome::Error { message });
                    }
                }
                // Trials that touch cluster-scoped policies or shared namespaces run alone.
                let alone =
                    plan.world.is_shared() || plan.kinds().iter().any(|k| k != "NetworkPolicy");
                let _shared_guard;
                let _alone_guard;
                if alone {
                    _alone_guard = exclusive.write().unwrap_or_else(|e| e.into_inner());
                    // Other runs on the same cluster take turns with this one.
                    if let Err(e) = cluster.lock_cluster_scope() {
                        return record(TrialOutcome::Error {
                            message: e.to_string(),
                        });
                    }
                } else {
                    _shared_guard = exclusive.read().unwrap_or_else(|e| e.into_inner());
                }
                let mut timeouts = Timeouts::for_target(local);
                if let Some(t) = probe_timeout {
                    timeouts.probe_connect = t;
                }
                if let Some(t) = settle_timeout {
                    timeouts.probe_settle = t;
                }
                if let Some(t) = preflight_timeout {
                    timeouts.preflight = t;
                }
                let opts = RunOptions {
                    timeouts,
                    probe_target,
                    color,
                    keep,
                    fresh_worlds,
                    features: features.clone(),
                };
                let suffix = format!("{run_id}-{}", counter.fetch_add(1, Ordering::SeqCst));
                let r = run_plan(&*cluster, &caps, &plan, &suffix, &opts, &CANCEL);
                // A shared world (npa) outlives its trial and serves fixed host ports, so two
                // runs' copies cannot coexist: the lock is kept until the run deletes it.
                if alone && !plan.world.is_shared() {
                    cluster.unlock_cluster_scope();
                }
                collector.record(r)
            })
        })
        .collect();

    let conclusion = libtest_mimic::run(&args.harness, trials);
    if let Some(live) = &live {
        live.finish();
    }
    if listing {
        return conclusion.exit_code();
    }
    let mut problems = Vec::new();
    let info = match target.lock().expect("target lock").take() {
        Some(TargetState::Ready(t)) => {
            let info = t.cluster.info();
            problems = t.finish();
            info
        }
        Some(TargetState::Failed(e)) => crate::backend::TargetInfo {
            target: format!("unavailable: {e}"),
            ..Default::default()
        },
        None => Default::default(),
    };
    let trials = collector.take_reports();
    let aborted = if CANCEL.load(Ordering::SeqCst) {
        Some("the run was interrupted".to_string())
    } else if !problems.is_empty() {
        Some(problems.join("; "))
    } else {
        None
    };
    let report = RunReport {
        suite_version: env!("CARGO_PKG_VERSION").to_string(),
        target: info,
        hostname: report::hostname(),
        trials,
        aborted,
        started: started_at,
        duration: started.elapsed(),
    };
    if let Some(path) = &args.junit
        && let Err(e) = report::write_junit(&report, path)
    {
        eprintln!(
            "netpol-conformance: writing JUnit to {}: {e}",
            path.display()
        );
        return ExitCode::from(2);
    }
    if let Some(path) = &args.html {
        if let Err(e) = report::html::write_html(&report, path) {
            eprintln!(
                "netpol-conformance: writing the HTML report to {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
        eprintln!("netpol-conformance: HTML report in {}", path.display());
    }
    if let (Some(path), Some(implementation)) = (&args.npa_report.report_output, &implementation) {
        let npa = report::npa::conformance_report(&report, &features, implementation);
        if let Err(e) = report::npa::write(&npa, path) {
            eprintln!(
                "netpol-conformance: writing the ConformanceReport to {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
        eprintln!(
            "netpol-conformance: ConformanceReport in {}",
            path.display()
        );
    }
    if let Some(dir) = &sonobuoy_dir {
        match report::write_sonobuoy(&report, dir) {
            Ok(path) => eprintln!("netpol-conformance: Sonobuoy results in {}", path.display()),
            Err(e) => {
                eprintln!(
                    "netpol-conformance: writing Sonobuoy results to {}: {e}",
                    dir.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty())
        && let Err(e) = report::github::append_step_summary(&report, std::path::Path::new(&path))
    {
        tracing::warn!("appending to GITHUB_STEP_SUMMARY: {e}");
    }
    eprint!("{}", report::summary(&report));
    if sonobuoy_dir.is_some() {
        // The results travel in the files; the plugin pod itself succeeded.
        return ExitCode::SUCCESS;
    }
    if report.aborted.is_some() && !conclusion.has_failed() {
        return ExitCode::from(101);
    }
    conclusion.exit_code()
}

fn local(command: LocalCommand) -> ExitCode {
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
                runtime: if real {
                    cluster::Runtime::Kubelet
                } else {
                    cluster::Runtime::Emulated
                },
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

fn cleanup(
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
        Err(e) => return usage_error(&e),
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
