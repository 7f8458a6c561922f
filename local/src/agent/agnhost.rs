//! Reads a container's command, args and env the way agnhost would and says which
//! servers it would run. Pure: no kernel, no cluster.
//!
//! Understood subcommands: `serve-hostname` (`--tcp`, `--udp`, `--http`, `--port`,
//! default port 9376, HTTP on by default unless `--tcp`/`--udp` is given), `porter`
//! (`SERVE_PORT_<n>` HTTP, `SERVE_TLS_PORT_<n>` served as plain HTTP, `SERVE_TCP_PORT_<n>`,
//! `SERVE_UDP_PORT_<n>`, `SERVE_SCTP_PORT_<n>`), `netexec` (`--http-port` default 8080,
//! `--udp-port` default 8081, `--sctp-port` default off). Anything else (`pause`, no
//! command, other programs) serves nothing.

use k8s_openapi::api::core::v1::Container;

use super::servers::{Mode, Reply, ServerSpec};
use crate::probe::Protocol;

/// agnhost `serve-hostname`'s default port.
pub const SERVE_HOSTNAME_DEFAULT_PORT: u16 = 9376;
/// agnhost `netexec`'s default HTTP port.
pub const NETEXEC_DEFAULT_HTTP_PORT: u16 = 8080;
/// agnhost `netexec`'s default UDP port.
pub const NETEXEC_DEFAULT_UDP_PORT: u16 = 8081;

/// The servers `container` would run, in a stable order, without duplicate
/// `(protocol, port)` pairs (the first one wins).
pub fn servers_for(container: &Container) -> Vec<ServerSpec> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let env: Vec<(String, String)> = container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let is_agnhost_image = container
        .image
        .as_deref()
        .is_some_and(|i| i.contains("agnhost"));
    let argv: Vec<String> = command.into_iter().chain(args).collect();
    servers_for_argv(&argv, &env, is_agnhost_image)
}

/// [`servers_for`] on the raw pieces: `argv` is command followed by args; with an agnhost
/// image and no command, the image's entrypoint (`/agnhost`) is implied.
pub fn servers_for_argv(
    argv: &[String],
    env: &[(String, String)],
    is_agnhost_image: bool,
) -> Vec<ServerSpec> {
    let mut rest = argv;
    if let Some(first) = rest.first()
        && (first == "agnhost" || first.ends_with("/agnhost"))
    {
        rest = &rest[1..];
    } else if !is_agnhost_image {
        return Vec::new();
    }
    let Some((sub, flags)) = rest.split_first() else {
        return Vec::new();
    };
    let mut specs = match sub.as_str() {
        "serve-hostname" => serve_hostname(flags),
        "porter" => porter(env),
        "netexec" => netexec(flags),
        _ => Vec::new(),
    };
    let mut seen = std::collections::BTreeSet::new();
    specs.retain(|s| seen.insert((s.protocol, s.port)));
    specs
}

/// Go `flag`-style lookup: `-name`, `--name`, `--name=value`, `--name value` (the last
/// only for non-boolean flags).
struct Flags<'a> {
    args: &'a [String],
}

impl Flags<'_> {
    fn find(&self, name: &str, boolean: bool) -> Option<String> {
        let mut found = None;
        let mut i = 0;
        while i < self.args.len() {
            let arg = self.args[i].as_str();
            let stripped = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .unwrap_or("");
            let (key, value) = match stripped.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (stripped, None),
            };
            if key == name {
                found = Some(match value {
                    Some(v) => v,
                    None if boolean => "true".to_string(),
                    None => {
                        i += 1;
                        self.args.get(i).cloned().unwrap_or_default()
                    }
                });
            }
            i += 1;
        }
        found
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.find(name, true)
            .map(|v| matches!(v.as_str(), "true" | "1" | "t" | "T" | "TRUE" | "True"))
    }

    fn int(&self, name: &str) -> Option<i64> {
        self.find(name, false).and_then(|v| v.parse().ok())
    }
}

fn port(value: i64) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p > 0)
}

fn serve_hostname(args: &[String]) -> Vec<ServerSpec> {
    let flags = Flags { args };
    let tcp = flags.bool("tcp").unwrap_or(false);
    let udp = flags.bool("udp").unwrap_or(false);
    let http = flags.bool("http").unwrap_or(!tcp && !udp);
    let Some(port) = port(
        flags
            .int("port")
            .unwrap_or(i64::from(SERVE_HOSTNAME_DEFAULT_PORT)),
    ) else {
        return Vec::new();
    };
    let mut specs = Vec::new();
    if tcp {
        specs.push(ServerSpec::hostname(Protocol::Tcp, port));
    }
    if udp {
        specs.push(ServerSpec::hostname(Protocol::Udp, port));
    }
    if http {
        specs.push(ServerSpec {
            protocol: Protocol::Tcp,
            port,
            mode: Mode::Http(Reply::Hostname),
        });
    }
    specs
}

fn porter(env: &[(String, String)]) -> Vec<ServerSpec> {
    let mut specs = Vec::new();
    for (name, value) in env {
        let (protocol, http, number) = if let Some(n) = name.strip_prefix("SERVE_PORT_") {
            (Protocol::Tcp, true, n)
        } else if let Some(n) = name.strip_prefix("SERVE_TLS_PORT_") {
            (Protocol::Tcp, true, n)
        } else if let Some(n) = name.strip_prefix("SERVE_TCP_PORT_") {
            (Protocol::Tcp, false, n)
        } else if let Some(n) = name.strip_prefix("SERVE_UDP_PORT_") {
            (Protocol::Udp, false, n)
        } else if let Some(n) = name.strip_prefix("SERVE_SCTP_PORT_") {
            (Protocol::Sctp, false, n)
        } else {
            continue;
        };
        let Some(port) = number.parse::<i64>().ok().and_then(port) else {
            continue;
        };
        let reply = Reply::Text(value.clone());
        specs.push(ServerSpec {
            protocol,
            port,
            mode: if http {
                Mode::Http(reply)
            } else {
                Mode::Raw(reply)
            },
        });
    }
    specs.sort_by_key(|s| (s.port, s.protocol));
    specs
}

fn netexec(args: &[String]) -> Vec<ServerSpec> {
    let flags = Flags { args };
    let mut specs = Vec::new();
    let http = flags
        .int("http-port")
        .unwrap_or(i64::from(NETEXEC_DEFAULT_HTTP_PORT));
    let udp = flags
        .int("udp-port")
        .unwrap_or(i64::from(NETEXEC_DEFAULT_UDP_PORT));
    let sctp = flags.int("sctp-port").unwrap_or(-1);
    for (protocol, value) in [
        (Protocol::Tcp, http),
        (Protocol::Udp, udp),
        (Protocol::Sctp, sctp),
    ] {
        if let Some(port) = port(value) {
            specs.push(ServerSpec {
                protocol,
                port,
                mode: Mode::Netexec,
            });
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EnvVar;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn raw(protocol: Protocol, port: u16, text: &str) -> ServerSpec {
        ServerSpec {
            protocol,
            port,
            mode: Mode::Raw(Reply::Text(text.into())),
        }
    }

    #[test]
    fn serve_hostname_tcp_and_udp_as_upstream_writes_them() {
        assert_eq!(
            servers_for_argv(
                &argv("/agnhost serve-hostname --tcp --http=false --port 80"),
                &[],
                true
            ),
            vec![ServerSpec::hostname(Protocol::Tcp, 80)]
        );
        assert_eq!(
            servers_for_argv(
                &argv("/agnhost serve-hostname --udp --http=false --port=53"),
                &[],
                true
            ),
            vec![ServerSpec::hostname(Protocol::Udp, 53)]
        );
    }

    #[test]
    fn serve_hostname_defaults_to_http_on_9376() {
        assert_eq!(
            servers_for_argv(&argv("serve-hostname"), &[], true),
            vec![ServerSpec {
                protocol: Protocol::Tcp,
                port: 9376,
                mode: Mode::Http(Reply::Hostname)
            }]
        );
        // --tcp alone turns the HTTP default off; both --tcp and --udp serve both.
        assert_eq!(
            servers_for_argv(
                &argv("/agnhost serve-hostname -tcp -udp -port 81"),
                &[],
                true
            ),
            vec![
                ServerSpec::hostname(Protocol::Tcp, 81),
                ServerSpec::hostname(Protocol::Udp, 81)
            ]
        );
    }

    #[test]
    fn porter_reads_every_serve_variable() {
        let env: Vec<(String, String)> = [
            ("SERVE_SCTP_PORT_9003", "foo"),
            ("SERVE_UDP_PORT_81", "u"),
            ("SERVE_TCP_PORT_80", "t"),
            ("SERVE_PORT_8080", "h"),
            ("SERVE_PORT_x", "ignored"),
            ("OTHER", "ignored"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            servers_for_argv(&argv("/agnhost porter"), &env, true),
            vec![
                raw(Protocol::Tcp, 80, "t"),
                raw(Protocol::Udp, 81, "u"),
                ServerSpec {
                    protocol: Protocol::Tcp,
                    port: 8080,
                    mode: Mode::Http(Reply::Text("h".into()))
                },
                raw(Protocol::Sctp, 9003, "foo"),
            ]
        );
    }

    #[test]
    fn netexec_ports_and_defaults() {
        let netexec = |p, port| ServerSpec {
            protocol: p,
            port,
            mode: Mode::Netexec,
        };
        assert_eq!(
            servers_for_argv(
                &argv(
                    "/agnhost netexec --http-port 80 --udp-port=53 --udp-listen-addresses=0.0.0.0"
                ),
                &[],
                true
            ),
            vec![netexec(Protocol::Tcp, 80), netexec(Protocol::Udp, 53)]
        );
        assert_eq!(
            servers_for_argv(&argv("netexec --sctp-port 9000"), &[], true),
            vec![
                netexec(Protocol::Tcp, 8080),
                netexec(Protocol::Udp, 8081),
                netexec(Protocol::Sctp, 9000)
            ]
        );
    }

    #[test]
    fn pause_and_other_programs_serve_nothing() {
        assert!(servers_for_argv(&argv("/agnhost pause"), &[], true).is_empty());
        assert!(servers_for_argv(&[], &[], true).is_empty());
        assert!(servers_for_argv(&argv("/bin/sleep 3600"), &[], false).is_empty());
        // A non-agnhost image with agnhost-looking args runs something else.
        assert!(servers_for_argv(&argv("serve-hostname --tcp"), &[], false).is_empty());
    }

    #[test]
    fn container_without_command_uses_the_agnhost_entrypoint() {
        let c = Container {
            name: "c".into(),
            image: Some("registry.k8s.io/e2e-test-images/agnhost:2.45".into()),
            args: Some(argv("porter")),
            env: Some(vec![EnvVar {
                name: "SERVE_UDP_PORT_53".into(),
                value: Some("dns".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(servers_for(&c), vec![raw(Protocol::Udp, 53, "dns")]);
    }

    #[test]
    fn duplicate_ports_keep_the_first() {
        let env = vec![
            ("SERVE_PORT_80".to_string(), "a".to_string()),
            ("SERVE_TCP_PORT_80".to_string(), "b".to_string()),
        ];
        let specs = servers_for_argv(&argv("/agnhost porter"), &env, true);
        assert_eq!(specs.len(), 1);
    }
}
