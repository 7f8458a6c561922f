//! The small languages inside case files: pair lines (`x/a -> x/b`,
//! `x/a -> x/b TCP/80 allowed`) and placeholders (`${ip:x/b}`, …).

use crate::world::Protocol;

/// Splits `"x/a -> x/b"`.
pub fn parse_pair(text: &str) -> Option<(&str, &str)> {
    let (from, to) = text.split_once("->")?;
    let (from, to) = (from.trim(), to.trim());
    (!from.is_empty() && !to.is_empty() && !to.contains(' ')).then_some((from, to))
}

/// One line of a pair probe.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Parses `"gryffindor/0 -> ravenclaw/0 TCP/80 allowed"`.
pub fn parse_pair_probe(line: &str) -> Result<PairProbe, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [from, "->", to, proto_port, verdict] = words.as_slice() else {
        return Err(format!(
            "`{line}` is not `<from> -> <to> <PROTO>/<port> allowed|blocked`"
        ));
    };
    let (proto, port) = proto_port
        .split_once('/')
        .ok_or_else(|| format!("`{proto_port}` is not `<PROTO>/<port>`"))?;
    let protocol: Protocol = proto
        .parse()
        .map_err(|_| format!("unknown protocol `{proto}`"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{port}` is not a port number"))?;
    let allowed = match *verdict {
        "allowed" => true,
        "blocked" => false,
        other => return Err(format!("`{other}` is neither `allowed` nor `blocked`")),
    };
    Ok(PairProbe {
        from: from.to_string(),
        to: to.to_string(),
        protocol,
        port,
        allowed,
    })
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
pub fn find_placeholders(s: &str) -> Vec<Result<Placeholder, String>> {
    scan_placeholders(s).into_iter().map(|(_, p)| p).collect()
}

/// Like [`find_placeholders`] with the byte range of each.
pub fn scan_placeholders(s: &str) -> Vec<(std::ops::Range<usize>, Result<Placeholder, String>)> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(start) = s[rest..].find("${").map(|i| i + rest) {
        let Some(end) = s[start..].find('}').map(|i| i + start) else {
            out.push((
                start..s.len(),
                Err(format!("unterminated placeholder in `{s}`")),
            ));
            break;
        };
        out.push((start..end + 1, parse_placeholder(&s[start + 2..end])));
        rest = end + 1;
    }
    out
}

fn parse_placeholder(body: &str) -> Result<Placeholder, String> {
    let (kind, arg) = body.split_once(':').unwrap_or((body, ""));
    let need_arg = |what: &str| {
        if arg.is_empty() {
            Err(format!("`${{{body}}}` needs {what}"))
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
                .ok_or_else(|| format!("`${{{body}}}` is not `${{cidr:<ns>/<pod>/<len>}}`"))?;
            let len = len
                .parse::<u8>()
                .map_err(|_| format!("`{len}` is not a prefix length"))?;
            Ok(Placeholder::Cidr(pod.to_string(), len))
        }
        "node-ip" => need_arg("a node index")?
            .parse()
            .map(Placeholder::NodeIp)
            .map_err(|_| format!("`{arg}` is not a node index")),
        "external-ip" if arg.is_empty() => Ok(Placeholder::ExternalIp),
        _ => Err(format!(
            "unknown placeholder `${{{body}}}` (known: ns, ip, host, cidr, node-ip, external-ip)"
        )),
    }
}
