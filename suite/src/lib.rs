//! netpol-conformance: a NetworkPolicy, AdminNetworkPolicy and ClusterNetworkPolicy conformance suite.
//!
//! Data flows one way, case → plan → cluster → probe → reachability → report:
//!
//! - [`case`]: the YAML table, loaded and checked once (pairs typed at load);
//! - [`plan`]: pure planning of each trial into steps and expected reachability, over the
//!   abstract [`world`]s, with [`translate`] rendering ClusterNetworkPolicy for v1alpha1 (and
//!   resolving run-time placeholders at apply), [`features`] deciding what a run judges and
//!   each plan's scope (what it may run beside);
//! - [`runner`]: one plan against a cluster: the [`backend`] boundary, implemented by [`kube`]
//!   for any cluster reached through [`target`] (a kubeconfig, or the local cluster);
//!   pre-flight, probe steps side by side, each pair retried until it settles, witnesses;
//! - [`probe`]: how probes are carried out (exec into agnhost pods through a shell kept open
//!   per pod, or from inside the pod's network namespace);
//! - [`reachability`]: expected, observed and their comparison;
//! - [`collector`] takes each trial's report to libtest's verdict and to [`progress`] (live
//!   and Sonobuoy progress); [`report`] writes terminal, JUnit, Sonobuoy, ConformanceReport,
//!   HTML and GitHub job summary.
//!
//! Around them: [`cli`] is the command line; [`harness`] ties the rest together behind it as the
//! libtest-style run shared by `netpol-conformance run` and `cargo test --test conformance`;
//! [`interrupt`] is the run's Ctrl-C state; [`plugin`] the Sonobuoy plugin definition.

pub mod backend;
pub mod case;
pub mod cli;
pub mod collector;
pub mod features;
pub mod harness;
pub mod interrupt;
pub mod kube;
pub mod plan;
pub mod plugin;
pub mod probe;
pub mod progress;
pub mod reachability;
pub mod report;
pub mod runner;
pub mod target;
pub mod translate;
pub mod world;
