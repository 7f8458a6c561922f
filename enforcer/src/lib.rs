//! netpol-enforcer: watch → store → engine → dataplane.

pub mod command;
pub mod dataplane;
pub mod engine;
pub mod flow;
pub mod http;
pub mod judge;
pub mod metrics;
pub mod packet;
pub mod store;
pub mod watch;
