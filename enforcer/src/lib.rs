//! netpol-enforcer: watch → store → engine → dataplane.
