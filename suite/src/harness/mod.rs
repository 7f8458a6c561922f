//! The libtest-style harness behind the command line of [`crate::cli`], shared by
//! `netpol-conformance run` and `cargo test --test conformance`: one trial per planned case,
//! gated once, run in parallel, reported as JUnit / Sonobuoy results / a summary.
//!
//! This module dispatches the subcommands, selects and gates plans; `run` is the run, phase by
//! phase, `trial` one trial of it, and `commands` the subcommands that look after clusters.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::backend::Capabilities;
use crate::case::{self, Case, Feature, Source};
use crate::cli::{Cli, Command, Mode, RunArgs, SelectArgs};
use crate::features::Selection;
use crate::plan::{self, Action, Plan};
use crate::reachability::expected_mark;

mod commands;
mod run;
mod schedule;
mod trial;

pub use run::run_on;

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
            Err(e) => usage_error(&e.to_string()),
        },
        Command::Plan(args) => match select_plans(&args.select) {
            Ok(plans) if args.json => print_out(std::iter::once(format!(
                "{}\n",
                serde_json::to_string_pretty(&plan::plans_json(&plans)).expect("plans serialize")
            ))),
            Ok(plans) => print_out(plans.iter().map(render_plan)),
            Err(e) => usage_error(&e.to_string()),
        },
        Command::Run(args) => run::run(*args, Mode::Cli),
        Command::Local { command } => commands::local(command),
        Command::Cleanup {
            kubeconfig,
            context,
            run,
            all,
        } => commands::cleanup(kubeconfig, context, run, all),
        Command::Probe {
            netns,
            target,
            protocol,
            timeout,
        } => commands::probe_once(&netns, target, &protocol, timeout),
        Command::SonobuoyPlugin {
            image,
            service_account,
        } => match crate::plugin::render(&crate::plugin::Overrides {
            image,
            service_account,
        }) {
            Ok(text) => print_out(std::iter::once(text)),
            Err(e) => usage_error(&e.to_string()),
        },
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
    run::run(TestCli::parse().run, Mode::CargoTest)
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
pub fn load_cases(extra: Option<&PathBuf>) -> Result<Vec<Case>, case::LoadError> {
    let mut files: Vec<(String, String)> = case::embedded_files()
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    if let Some(dir) = extra {
        if !dir.is_dir() {
            return Err(case::LoadError::NotADirectory(dir.clone()));
        }
        let user = case::read_dir(dir)?;
        if user.is_empty() {
            return Err(case::LoadError::NoCaseFiles(dir.clone()));
        }
        files.extend(user);
    }
    let cases = case::load_files(files)?;
    if let Some(dir) = extra
        && let Some(c) = cases
            .iter()
            .find(|c| c.origin.starts_with(&dir.display().to_string()) && c.source != Source::User)
    {
        return Err(case::LoadError::NotUserSource {
            origin: c.origin.clone(),
            id: c.id.clone(),
        });
    }
    Ok(cases)
}

fn select_plans(select: &SelectArgs) -> Result<Vec<Plan>, String> {
    let cases = load_cases(select.cases.as_ref()).map_err(|e| plan::error_chain(&e))?;
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
