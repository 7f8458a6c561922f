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

/// The plugin's entrypoint when the suite dies before writing its results (here a stand-in
/// binary that exits 3): Sonobuoy must still get a JUnit error case naming the exit status and
/// a `done` file naming the results directory, and the pod must fail.
#[test]
fn the_plugin_entrypoint_reports_a_suite_that_died() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("netpol-entrypoint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("netpol-conformance");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'cannot reach the <API server>' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let results = dir.join("results");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../plugin/sonobuoy-entrypoint.sh"
        ))
        .env("PATH", path)
        .env("SONOBUOY_RESULTS_DIR", &results)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "the pod fails with the suite's status"
    );
    let done = std::fs::read_to_string(results.join("done")).unwrap();
    assert_eq!(
        std::path::Path::new(&done),
        std::fs::canonicalize(&results).unwrap()
    );
    let xml = std::fs::read_to_string(results.join("junit.xml")).unwrap();
    assert!(xml.contains("errors=\"1\""), "{xml}");
    assert!(xml.contains("exited with status 3"), "{xml}");
    assert!(
        xml.contains("cannot reach the &lt;API server&gt;"),
        "the end of the log, escaped: {xml}"
    );
    let log = std::fs::read_to_string(results.join("netpol-conformance.log")).unwrap();
    assert!(log.contains("cannot reach the <API server>"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}
