//! netpol-conformance: a NetworkPolicy, AdminNetworkPolicy and ClusterNetworkPolicy conformance suite.
//!
//! Data flows one way: [`case`] (the YAML table, validated) → [`plan`] (pure: steps and expected
//! reachability) → [`runner`] (one plan through a [`backend`], which realizes worlds and
//! policies and probes: pre-flight, steps, retries) → [`reachability`] (expected, observed,
//! comparison) → [`collector`] (each trial's report: libtest's verdict, live and Sonobuoy
//! progress) → [`report`] (terminal, JUnit, Sonobuoy, ConformanceReport, GitHub job summary).
//! [`cli`] is the command line; [`harness`] ties the rest together behind it, as the
//! libtest-style run shared by `netpol-conformance run` and `cargo test --test conformance`;
//! [`progress`] shows the run live.

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
pub mod render;
pub mod report;
pub mod runner;
pub mod target;
pub mod world;
