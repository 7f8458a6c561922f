//! netpol-conformance: case → plan → cluster → probe → reachability → report.
