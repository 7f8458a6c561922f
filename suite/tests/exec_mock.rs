//! The exec prober against a mocked API server: a loopback HTTP server that answers the exec
//! upgrade as kube-apiserver does (the `channel.k8s.io` websocket protocol: stdout on channel 1,
//! stderr on 2, the Status with the exit code on 3) with scripted agnhost output.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::SinkExt;
use netpol_conformance::backend::{ProbeJob, RealizedPod};
use netpol_conformance::kube::Prober;
use netpol_conformance::kube::exec::ExecProber;
use netpol_conformance::reachability::{BlockKind, Outcome};
use netpol_conformance::world::Protocol;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the mocked container "prints" and how it exits.
#[derive(Clone)]
struct Script {
    stdout: &'static str,
    stderr: &'static str,
    exit: i32,
}

fn status_json(exit: i32) -> serde_json::Value {
    if exit == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {exit}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": exit.to_string()}]}
        })
    }
}

/// Serves exec upgrades on loopback; records each request's path and query.
// tungstenite fixes the handshake callback's error type (an HTTP response).
#[allow(clippy::result_large_err)]
async fn mock_apiserver(script: Script, seen: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let callback = |req: &Request, mut resp: Response| {
                    seen.lock().unwrap().push(req.uri().to_string());
                    let offered = req
                        .headers()
                        .get("Sec-WebSocket-Protocol")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    // Answer with the newest channel protocol the client offers.
                    let chosen = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
                        .into_iter()
                        .find(|p| offered.split(',').any(|o| o.trim() == *p))
                        .unwrap_or("v4.channel.k8s.io");
                    resp.headers_mut()
                        .insert("Sec-WebSocket-Protocol", chosen.parse().unwrap());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                let frame = |channel: u8, bytes: &[u8]| {
                    let mut v = vec![channel];
                    v.extend_from_slice(bytes);
                    Message::Binary(v.into())
                };
                if !script.stdout.is_empty() {
                    let _ = ws.send(frame(1, script.stdout.as_bytes())).await;
                }
                if !script.stderr.is_empty() {
                    let _ = ws.send(frame(2, script.stderr.as_bytes())).await;
                }
                let status = serde_json::to_vec(&status_json(script.exit)).unwrap();
                let _ = ws.send(frame(3, &status)).await;
                let _ = ws.close(None).await;
            });
        }
    });
    port
}

fn job() -> ProbeJob {
    ProbeJob {
        from: RealizedPod {
            model: "x/a".into(),
            namespace: "upstream-x-1".into(),
            name: "a".into(),
            ip: IpAddr::from([10, 0, 0, 1]),
            service_ip: None,
            container: "cont-80-tcp".into(),
            netns: None,
        },
        to_model: "x/b".into(),
        to_ip: IpAddr::from([10, 0, 0, 2]),
        port: 80,
        protocol: Protocol::Tcp,
        timeout: Duration::from_secs(1),
    }
}

fn probe_with(script: Script) -> (Outcome, Vec<String>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = rt.block_on(mock_apiserver(script, seen.clone()));
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = rt.block_on(async { kube::Client::try_from(config).unwrap() });
    let prober = ExecProber {
        rt: rt.handle().clone(),
        client,
        parallelism: 1,
        exec_slack: Duration::from_secs(10),
    };
    let outcome = prober.probe(&job());
    let seen = seen.lock().unwrap().clone();
    (outcome, seen)
}

#[test]
fn exit_zero_is_connected_and_the_command_is_agnhost_connect() {
    let (outcome, seen) = probe_with(Script {
        stdout: "",
        stderr: "",
        exit: 0,
    });
    assert_eq!(outcome, Outcome::Connected);
    let uri = seen.first().expect("one exec request");
    assert!(
        uri.starts_with("/api/v1/namespaces/upstream-x-1/pods/a/exec?"),
        "{uri}"
    );
    for part in [
        "container=cont-80-tcp",
        "command=%2Fagnhost",
        "command=connect",
        "command=10.0.0.2%3A80",
        "command=--timeout%3D1s",
        "command=--protocol%3Dtcp",
        "stdout=true",
        "stderr=true",
    ] {
        assert!(uri.contains(part), "{part} missing from {uri}");
    }
}

#[test]
fn timeout_on_stderr_is_a_silent_drop() {
    let (outcome, _) = probe_with(Script {
        stdout: "",
        stderr: "TIMEOUT\n",
        exit: 1,
    });
    assert_eq!(outcome, Outcome::Blocked(BlockKind::Timeout));
}

#[test]
fn refused_on_stderr_is_a_refusal() {
    let (outcome, _) = probe_with(Script {
        stdout: "",
        stderr: "REFUSED\n",
        exit: 1,
    });
    assert_eq!(outcome, Outcome::Blocked(BlockKind::Refused));
}

#[test]
fn any_other_failure_is_an_error_not_a_drop() {
    let (outcome, _) = probe_with(Script {
        stdout: "",
        stderr: "OTHER: dial tcp: lookup failed\n",
        exit: 1,
    });
    assert!(
        matches!(outcome, Outcome::Error(ref m) if m.contains("OTHER")),
        "{outcome:?}"
    );
    let (outcome, _) = probe_with(Script {
        stdout: "",
        stderr: "exec: \"/agnhost\": not found",
        exit: 127,
    });
    assert!(
        matches!(outcome, Outcome::Error(ref m) if m.contains("exited 127")),
        "{outcome:?}"
    );
}
