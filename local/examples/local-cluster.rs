//! Brings the local cluster up or down without the suite binary:
//!
//! ```text
//! cargo run -p netpol-local --example local-cluster -- up [--enforcer PATH] [--nodes N]
//! cargo run -p netpol-local --example local-cluster -- status
//! cargo run -p netpol-local --example local-cluster -- down
//! ```
//!
//! The state directory comes from `NETPOL_LOCAL_DIR` (default /run/netpol-conformance/local),
//! the instance from `NETPOL_LOCAL_INSTANCE`. `up` prints the kubeconfig and kubectl paths.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use netpol_local::cluster::{self, UpOptions};

fn main() -> ExitCode {
    // The cluster re-executes this binary as its node agents and external host.
    if let Some(code) = netpol_local::maybe_run_role() {
        return code;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = UpOptions::default();
    let mut rest = args.iter().skip(1);
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--enforcer" => opts.enforcer = Some(PathBuf::from(value()?)),
            "--nodes" => opts.nodes = value()?.parse().context("--nodes")?,
            "--fail-open" => opts.fail_open = true,
            other => bail!("unknown flag {other}"),
        }
    }
    match args.first().map(String::as_str) {
        Some("up") => {
            let c = cluster::up(&opts).context("bringing the local cluster up")?;
            println!("kubeconfig: {}", c.kubeconfig.display());
            println!("kubectl:    {}", c.kubectl().display());
            println!("nodes:      {:?} {:?}", c.node_names, c.node_ips);
            println!("external:   {}", c.external_host_ip);
        }
        Some("down") => {
            let report = cluster::down(&opts.state_dir).context("tearing the cluster down")?;
            print!("{report}");
            if !report.errors.is_empty() {
                bail!("down left errors");
            }
        }
        Some("status") => print!("{}", cluster::status(&opts.state_dir)?),
        _ => bail!(
            "usage: local-cluster up [--enforcer PATH] [--nodes N] [--fail-open] | down | status"
        ),
    }
    Ok(())
}
