//! The exec prober against a mocked API server: a loopback HTTP server that answers the exec
//! upgrade as kube-apiserver does (the `channel.k8s.io` websocket protocol: stdout on channel 1,
//! stderr on 2, the Status with the exit code on 3) with scripted agnhost output.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use netpol_conformance::backend::{ProbeJob, RealizedPod};

use netpol_conformance::probe::Prober;
use netpol_conformance::probe::exec::ExecProber;
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

/// Percent-decodes one query value.
fn unescape(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// The `command` values of an exec request.
fn command_of(uri: &str) -> Vec<String> {
    uri.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("command="))
        .map(unescape)
        .collect()
}

/// How the mocked agnhost answers a target: `.2` connects, `.3` times out, `.4` is refused.
fn answer(id: &str, target: &str) -> String {
    match target
        .split(':')
        .next()
        .unwrap()
        .rsplit('.')
        .next()
        .unwrap()
    {
        "2" => format!("@@{id} 0 \n"),
        "3" => format!("@@{id} 1 TIMEOUT\n"),
        _ => format!("@@{id} 1 REFUSED\n"),
    }
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
                let uri = Arc::new(Mutex::new(String::new()));
                let uri_in = uri.clone();
                let callback = |req: &Request, mut resp: Response| {
                    seen.lock().unwrap().push(req.uri().to_string());
                    *uri_in.lock().unwrap() = req.uri().to_string();
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
                let command = command_of(&uri.lock().unwrap());
                if command.first().map(String::as_str) == Some("sh") && script.exit == 0 {
                    // A probe shell: answer every request line on stdout until the client goes.
                    let mut pending = String::new();
                    while let Some(Ok(message)) = ws.next().await {
                        let Message::Binary(bytes) = message else {
                            continue;
                        };
                        if bytes.first() != Some(&0) {
                            continue;
                        }
                        pending.push_str(std::str::from_utf8(&bytes[1..]).unwrap());
                        while let Some(end) = pending.find('\n') {
                            let line: String = pending.drain(..=end).collect();
                            seen.lock().unwrap().push(format!("line {}", line.trim()));
                            let words: Vec<&str> = line.split_whitespace().collect();
                            if let [id, _, _, target] = words[..] {
                                let _ = ws.send(frame(1, answer(id, target).as_bytes())).await;
                            }
                        }
                    }
                    return;
                }
                let stdout = script.stdout.to_string();
                if !stdout.is_empty() {
                    let _ = ws.send(frame(1, stdout.as_bytes())).await;
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
    job_to(2)
}

fn job_to(last_octet: u8) -> ProbeJob {
    ProbeJob {
        from: RealizedPod {
            model: "x/a".into(),
            namespace: "upstream-x-1".into(),
            name: "a".into(),
            ip: IpAddr::from([10, 0, 0, 1]),
            service_ip: None,
            container: "cont-80-tcp".into(),
            netns: None,
            node: None,
        },
        to_model: "x/b".into(),
        to_ip: IpAddr::from([10, 0, 0, last_octet]),
        port: 80,
        protocol: Protocol::Tcp,
        timeout: Duration::from_secs(1),
    }
}

fn prober_with(
    script: Script,
    batch: bool,
) -> (ExecProber, Arc<Mutex<Vec<String>>>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = rt.block_on(mock_apiserver(script, seen.clone()));
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = rt.block_on(async { kube::Client::try_from(config).unwrap() });
    let mut prober = ExecProber::new(rt.handle().clone(), client, 2, batch);
    prober.exec_slack = Duration::from_secs(10);
    (prober, seen, rt)
}

fn probe_with(script: Script) -> (Outcome, Vec<String>) {
    let (prober, seen, _rt) = prober_with(script, false);
    let outcome = prober.probe(&job());
    let seen = seen.lock().unwrap().clone();
    (outcome, seen)
}

/// The exec requests among what the mock saw (not the lines sent through shells).
fn execs_seen(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| !s.starts_with("line "))
        .cloned()
        .collect()
}

#[test]
fn one_shell_per_pod_carries_every_probe_from_it() {
    let (prober, seen, _rt) = prober_with(
        Script {
            stdout: "",
            stderr: "",
            exit: 0,
        },
        true,
    );
    let jobs: Vec<ProbeJob> = [2, 3, 4, 2].into_iter().map(job_to).collect();
    let mut other_source = job_to(3);
    other_source.from.name = "b".into();
    let mut all = jobs.clone();
    all.push(other_source);
    let expected = [
        Outcome::Connected,
        Outcome::Blocked(BlockKind::Timeout),
        Outcome::Blocked(BlockKind::Refused),
        Outcome::Connected,
        Outcome::Blocked(BlockKind::Timeout),
    ];
    assert_eq!(prober.probe_all(&all), expected);
    assert_eq!(prober.calls(&all), 5, "one line per probe");
    // Again: the shells stay open, no new exec.
    assert_eq!(prober.probe_all(&all), expected);
    let execs = execs_seen(&seen);
    assert_eq!(execs.len(), 2, "one exec per source pod: {execs:?}");
    assert_eq!(
        Prober::execs(&prober),
        2,
        "the count reports give is what reached the server"
    );
    let command = command_of(execs.iter().find(|u| u.contains("/pods/a/")).unwrap());
    assert_eq!(&command[..2], ["sh", "-c"]);
    assert_eq!(
        command[2],
        netpol_conformance::probe::session::SESSION_SCRIPT
    );
    let lines: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with("line ") && s.ends_with("10.0.0.4:80"))
        .cloned()
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains(" tcp 1000ms 10.0.0.4:80"), "{lines:?}");
}

#[test]
fn an_image_without_a_shell_falls_back_to_one_exec_per_probe() {
    // The container has no `sh`: the shell's exec ends at once with 127; single probes then run
    // as usual.
    let (prober, seen, _rt) = prober_with(
        Script {
            stdout: "",
            stderr: "exec: \"sh\": executable file not found in $PATH",
            exit: 127,
        },
        true,
    );
    let outcomes = prober.probe_all(&[job_to(2)]);
    // The single-probe exec gets the same scripted answer (exit 127) and says so.
    assert!(
        matches!(&outcomes[0], Outcome::Error(m) if m.contains("exited 127")),
        "{outcomes:?}"
    );
    assert_eq!(
        execs_seen(&seen).len(),
        2,
        "one shell attempt, then one single probe"
    );
    assert_eq!(Prober::execs(&prober), 2, "failed execs are counted too");
    let _ = prober.probe_all(&[job_to(2), job_to(3)]);
    assert_eq!(
        execs_seen(&seen).len(),
        4,
        "no shell is tried again: one exec per probe"
    );
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
        "command=--timeout%3D1000ms",
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
