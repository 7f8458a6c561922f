//! The command line as a user meets it: environment variables for flags, spelled the usual ways.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_netpol-conformance");

fn list_with(var: &str, value: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["run", "--list"])
        .env(var, value)
        .env_remove("NETPOL_KUBECONFIG")
        .output()
        .unwrap()
}

#[test]
fn boolean_environment_variables_accept_1_0_true_false_yes_no() {
    for var in [
        "NETPOL_LOCAL",
        "NETPOL_KEEP",
        "NETPOL_NO_ENFORCER",
        "NETPOL_NO_WAIT",
        "NETPOL_ALL_FEATURES",
        "NETPOL_IN_CLUSTER",
    ] {
        for value in ["1", "0", "true", "false", "yes", "no"] {
            let out = list_with(var, value);
            assert!(
                out.status.success(),
                "{var}={value}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = list_with(var, "maybe");
        assert_eq!(out.status.code(), Some(2), "{var}=maybe is refused");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("maybe"),
            "the error names the value"
        );
    }
}
