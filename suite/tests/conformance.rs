//! `cargo test --test conformance`: the whole table as libtest trials, against the cluster of
//! `NETPOL_KUBECONFIG` or the local cluster (root). Without either, every trial is skipped with
//! the reason. Accepts `netpol-conformance run`'s flags after `--`.

fn main() -> std::process::ExitCode {
    netpol_conformance::harness::test_main()
}
