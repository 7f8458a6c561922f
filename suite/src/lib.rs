//! netpol-conformance: a NetworkPolicy, AdminNetworkPolicy and ClusterNetworkPolicy conformance suite.
//!
//! Data flows one way: [`case`] (the YAML table, validated) → [`plan`] (pure: steps and expected
//! reachability) → a [`backend`] (realizes worlds and policies, probes) → [`reachability`] (expected,
//! observed, comparison) → [`report`] (terminal, JUnit, Sonobuoy, ConformanceReport, GitHub job
//! summary). [`harness`] ties them together behind the libtest-style command line shared by
//! `netpol-conformance run` and `cargo test --test conformance`; [`progress`] shows the run live.

pub mod backend;
pub mod case;
pub mod features;
pub mod harness;
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
