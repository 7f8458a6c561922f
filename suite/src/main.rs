//! `netpol-conformance`: list, plan and run the conformance table; manage the local cluster.

fn main() -> std::process::ExitCode {
    netpol_conformance::harness::main()
}
