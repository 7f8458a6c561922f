//! The small languages inside case files: pair lines (`x/a -> x/b`,
//! `x/a -> x/b TCP/80 allowed`) and placeholders (`${ip:x/b}`, …).
//!
//! Pairs are parsed once, when the case file is read: [`Pair`] and [`PairProbe`] deserialize from
//! their strings and serialize back to them, so the plan takes typed values, never text.

use serde::{Deserialize, Serialize};

use crate::world::Protocol;

/// A line of the pair languages that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// Not `<from> -> <to>`.
    #[error("`{0}` is not a pair like `x/a -> x/b`")]
    Pair(String),
    /// Not `<from> -> <to> <PROTO>/<port> allowed|blocked`.
    #[error("`{0}` is not `<from> -> <to> <PROTO>/<port> allowed|blocked`")]
    Line(String),
    /// Not `<PROTO>/<port>`.
    #[error("`{0}` is not `<PROTO>/<port>`")]
    ProtoPort(String),
    /// A protocol other than TCP, UDP, SCTP.
    #[error("unknown protocol `{0}`")]
    Protocol(String),
    /// Not a port number in 1..=65535.
    #[error("`{0}` is not a port number")]
    Port(String),
    /// The verdict word.
    #[error("`{0}` is neither `allowed` nor `blocked`")]
    Verdict(String),
}

/// `"x/a -> x/b"`: a source and a destination model pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pair {
    /// Source model pod.
    pub from: String,
    /// Destination model pod.
    pub to: String,
}

impl std::str::FromStr for Pair {
    type Err = PairError;

    fn from_str(text: &str) -> Result<Self, PairError> {
        let (from, to) = text
            .split_once("->")
            .map(|(f, t)| (f.trim(), t.trim()))
            .filter(|(f, t)| !f.is_empty() && !t.is_empty() && !t.contains(' '))
            .ok_or_else(|| PairError::Pair(text.to_string()))?;
        Ok(Pair {
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

impl TryFrom<String> for Pair {
    type Error = PairError;

    fn try_from(text: String) -> Result<Self, PairError> {
        text.parse()
    }
}

impl From<Pair> for String {
    fn from(p: Pair) -> String {
        format!("{} -> {}", p.from, p.to)
    }
}

/// `"gryffindor/0 -> ravenclaw/0 TCP/80 allowed"`: one line of a pair probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PairProbe {
    /// Source model pod.
    pub from: String,
    /// Destination model pod.
    pub to: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: u16,
    /// Whether it must connect.
    pub allowed: bool,
}

impl std::str::FromStr for PairProbe {
    type Err = PairError;

    fn from_str(line: &str) -> Result<Self, PairError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [from, "->", to, proto_port, verdict] = words.as_slice() else {
            return Err(PairError::Line(line.to_string()));
        };
        let (proto, port) = proto_port
            .split_once('/')
            .ok_or_else(|| PairError::ProtoPort((*proto_port).to_string()))?;
        let protocol: Protocol = proto
            .parse()
            .map_err(|_| PairError::Protocol(proto.to_string()))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| PairError::Port(port.to_string()))?;
        let allowed = match *verdict {
            "allowed" => true,
            "blocked" => false,
            other => return Err(PairError::Verdict(other.to_string())),
        };
        Ok(PairProbe {
            from: (*from).to_string(),
            to: (*to).to_string(),
            protocol,
            port,
            allowed,
        })
    }
}

impl TryFrom<String> for PairProbe {
    type Error = PairError;

    fn try_from(line: String) -> Result<Self, PairError> {
        line.parse()
    }
}

impl From<PairProbe> for String {
    fn from(p: PairProbe) -> String {
        let verdict = if p.allowed { "allowed" } else { "blocked" };
        format!("{} -> {} {}/{} {verdict}", p.from, p.to, p.protocol, p.port)
    }
}

/// A `${…}` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    /// `${` without its `}`.
    #[error("unterminated placeholder in `{0}`")]
    Unterminated(String),
    /// A kind that takes an argument, without one.
    #[error("`${{{body}}}` needs {what}")]
    NeedsArgument {
        /// The text between `${` and `}`.
        body: String,
        /// What the argument names.
        what: &'static str,
    },
    /// `cidr:` without a prefix length.
    #[error("`${{{0}}}` is not `${{cidr:<ns>/<pod>/<len>}}`")]
    Cidr(String),
    /// Not a prefix length.
    #[error("`{0}` is not a prefix length")]
    PrefixLength(String),
    /// Not a node index.
    #[error("`{0}` is not a node index")]
    NodeIndex(String),
    /// A kind this table does not know.
    #[error("unknown placeholder `${{{0}}}` (known: ns, ip, host, cidr, node-ip, external-ip)")]
    Unknown(String),
}

/// A value known only at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `${ns:x}`.
    Namespace(String),
    /// `${ip:x/b}`.
    Ip(String),
    /// `${host:x/b}`.
    Host(String),
    /// `${cidr:x/b/16}`.
    Cidr(String, u8),
    /// `${node-ip:0}`.
    NodeIp(usize),
    /// `${external-ip}`.
    ExternalIp,
}

/// Finds every `${…}` in a string, parsed, with its byte range.
pub fn find_placeholders(s: &str) -> Vec<Result<Placeholder, PlaceholderError>> {
    scan_placeholders(s).into_iter().map(|(_, p)| p).collect()
}

/// Like [`find_placeholders`] with the byte range of each.
pub fn scan_placeholders(
    s: &str,
) -> Vec<(
    std::ops::Range<usize>,
    Result<Placeholder, PlaceholderError>,
)> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(start) = s[rest..].find("${").map(|i| i + rest) {
        let Some(end) = s[start..].find('}').map(|i| i + start) else {
            out.push((
                start..s.len(),
                Err(PlaceholderError::Unterminated(s.to_string())),
            ));
            break;
        };
        out.push((start..end + 1, parse_placeholder(&s[start + 2..end])));
        rest = end + 1;
    }
    out
}

fn parse_placeholder(body: &str) -> Result<Placeholder, PlaceholderError> {
    let (kind, arg) = body.split_once(':').unwrap_or((body, ""));
    let need_arg = |what: &'static str| {
        if arg.is_empty() {
            Err(PlaceholderError::NeedsArgument {
                body: body.to_string(),
                what,
            })
        } else {
            Ok(arg.to_string())
        }
    };
    match kind {
        "ns" => Ok(Placeholder::Namespace(need_arg("a model namespace")?)),
        "ip" => Ok(Placeholder::Ip(need_arg("a model pod")?)),
        "host" => Ok(Placeholder::Host(need_arg("a model pod")?)),
        "cidr" => {
            let arg = need_arg("<ns>/<pod>/<prefix length>")?;
            let (pod, len) = arg
                .rsplit_once('/')
                .ok_or_else(|| PlaceholderError::Cidr(body.to_string()))?;
            let len = len
                .parse::<u8>()
                .map_err(|_| PlaceholderError::PrefixLength(len.to_string()))?;
            Ok(Placeholder::Cidr(pod.to_string(), len))
        }
        "node-ip" => need_arg("a node index")?
            .parse()
            .map(Placeholder::NodeIp)
            .map_err(|_| PlaceholderError::NodeIndex(arg.to_string())),
        "external-ip" if arg.is_empty() => Ok(Placeholder::ExternalIp),
        _ => Err(PlaceholderError::Unknown(body.to_string())),
    }
}
