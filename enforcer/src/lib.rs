//! netpol-enforcer: watch → store → engine → dataplane.

pub mod flow;
pub mod packet;
pub mod engine;
pub mod store;
