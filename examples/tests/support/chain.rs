//! Driving milters and a policy server as Postfix chains them, with our own clients
//! (`milter_proto::client`, `policy_proto::Client`), and reading back what they wrote.
//!
//! - [`connection`]: a CONNECT/HELO description for a client address and HELO name.
//! - [`milter`]: one message through one milter, header values as the MTA stores them.
//! - [`apply`]: a milter's header changes applied to the message, as Postfix does before the
//!   next milter sees it.
//! - [`raw`]: the message as text again.
//! - [`added`]: the values of the fields a milter added, unfolded.
//! - [`clauses`]: the `method=result` clauses of an `Authentication-Results` value with
//!   their comment and properties, for comparing results whatever the field's layout.
//! - [`spf_policy`]: one MAIL-stage request to an SPF policy server.
//! - [`genkey`]: a DKIM key pair from `dkim-milter genkey`, and its TXT record.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use milter_proto::ConnAddr;
use milter_proto::Protocol;
use milter_proto::Reply;
use milter_proto::SocketSpec;
use milter_proto::client::{Client, ClientConfig, Connection, Message, Outcome};

/// A client at `ip` (IPv4) saying HELO `helo`, MTA name (macro `j`) `mx.example`.
pub fn connection(ip: &str, helo: &str) -> Connection {
    Connection {
        hostname: Bytes::from(format!("[{ip}]")),
        addr: ConnAddr::Inet {
            port: 40000,
            address: Bytes::from(ip.to_owned()),
        },
        helo: Some(Bytes::from(helo.to_owned())),
        macros: vec![(b'C', vec![(Bytes::from("j"), Bytes::from("mx.example"))])],
    }
}

/// One message through the milter at `spec`. Added and changed header values are given as
/// the MTA stores them (one leading space, which a milter that negotiated
/// `SMFIP_HDR_LEADSPC` sends itself and the MTA adds for the others), and an end-of-message
/// CONTINUE is read as ACCEPT (both deliver).
pub async fn milter(spec: &SocketSpec, conn: &Connection, msg: &Message) -> Outcome {
    let mut c = Client::connect(spec, ClientConfig::default())
        .await
        .unwrap_or_else(|e| panic!("connect {spec:?}: {e}"));
    let leadspc = c.negotiated().protocol.contains(Protocol::HDR_LEADSPC);
    c.connection(conn).await.unwrap();
    let mut out = c.message(msg).await.unwrap();
    let _ = c.quit().await;
    if !leadspc {
        for m in &mut out.modifications {
            if let Reply::AddHeader { value, .. }
            | Reply::InsHeader { value, .. }
            | Reply::ChgHeader { value, .. } = m
                && !value.is_empty()
            {
                *value = Bytes::from([&b" "[..], value].concat());
            }
        }
    }
    if out.decision == Reply::Continue {
        out.decision = Reply::Accept;
    }
    out
}

/// Whether `r` lets the message go on to the next milter and to delivery.
pub fn delivers(r: &Reply) -> bool {
    matches!(r, Reply::Accept | Reply::Continue)
}

/// `msg` with the header changes in `mods` applied (insert at an index, append, change or
/// delete the n-th field of a name), as Postfix applies them.
pub fn apply(msg: &Message, mods: &[Reply]) -> Message {
    let mut out = msg.clone();
    for m in mods {
        match m {
            Reply::InsHeader { index, name, value } => {
                let at = usize::try_from(*index).unwrap().min(out.headers.len());
                out.headers.insert(at, (name.clone(), value.clone()));
            }
            Reply::AddHeader { name, value } => out.headers.push((name.clone(), value.clone())),
            Reply::ChgHeader { index, name, value } => {
                let pos = out
                    .headers
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                    .nth(usize::try_from(*index).unwrap().saturating_sub(1))
                    .map(|(i, _)| i);
                match (pos, value.is_empty()) {
                    (Some(i), true) => {
                        out.headers.remove(i);
                    }
                    (Some(i), false) => out.headers[i].1 = value.clone(),
                    (None, true) => {}
                    (None, false) => out.headers.push((name.clone(), value.clone())),
                }
            }
            other => panic!("unexpected modification {other:?}"),
        }
    }
    out
}

/// `msg` as raw RFC 5322 text with CRLF line ends (what the MTA would store).
pub fn raw(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in &msg.headers {
        out.extend_from_slice(n);
        out.push(b':');
        // Folds are joined with a bare LF; the bytes are kept as they are (8-bit headers).
        for (i, &b) in v.iter().enumerate() {
            if b == b'\n' && (i == 0 || v[i - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(b);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&msg.body);
    out
}

/// The values of the fields named `name` that `mods` add (inserted or appended), without the
/// leading space, folds joined with one space.
pub fn added(mods: &[Reply], name: &str) -> Vec<String> {
    mods.iter()
        .filter_map(|m| match m {
            Reply::InsHeader { name: n, value, .. } | Reply::AddHeader { name: n, value }
                if n.eq_ignore_ascii_case(name.as_bytes()) =>
            {
                Some(unfold(value))
            }
            _ => None,
        })
        .collect()
}

fn unfold(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One `method=result` clause of an `Authentication-Results` value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Clause {
    /// `method=result`, lower case.
    pub result: String,
    /// The first comment after the result, if any (`p=reject dis=none` for DMARC).
    pub comment: Option<String>,
    /// `ptype.property=value` pairs in order (`reason=` included).
    pub properties: Vec<(String, String)>,
}

impl Clause {
    /// The value of property `name`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The method (`dkim`, `spf`, ...).
    pub fn method(&self) -> &str {
        self.result.split('=').next().unwrap_or_default()
    }
}

/// Splits `s` at top-level `sep` (outside comments and quoted strings).
fn split_top(s: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0u32, false);
    for c in s.chars() {
        match c {
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == sep && depth == 0 && !quoted {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// The clauses of an `Authentication-Results` value (authserv-id and `none` left out).
pub fn clauses(value: &str) -> Vec<Clause> {
    let value = unfold(value.as_bytes());
    split_top(&value, ';')
        .into_iter()
        .skip(1)
        .filter_map(|c| {
            let mut comment = None;
            let mut words = Vec::new();
            let (mut depth, mut cur, mut text) = (0u32, String::new(), String::new());
            for ch in c.chars() {
                match ch {
                    '(' => {
                        if depth == 0 && !cur.is_empty() {
                            words.push(std::mem::take(&mut cur));
                        }
                        depth += 1;
                        if depth > 1 {
                            text.push(ch);
                        }
                    }
                    ')' if depth > 0 => {
                        depth -= 1;
                        if depth == 0 {
                            if words.len() == 1 && comment.is_none() {
                                comment = Some(std::mem::take(&mut text));
                            }
                            text.clear();
                        } else {
                            text.push(ch);
                        }
                    }
                    _ if depth > 0 => text.push(ch),
                    c if c.is_whitespace() => {
                        if !cur.is_empty() {
                            words.push(std::mem::take(&mut cur));
                        }
                    }
                    c => cur.push(c),
                }
            }
            if !cur.is_empty() {
                words.push(cur);
            }
            let (first, rest) = words.split_first()?;
            let properties = rest
                .iter()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim_matches('"').to_owned()))
                .collect();
            Some(Clause {
                result: first.to_ascii_lowercase(),
                comment,
                properties,
            })
        })
        .collect()
}

/// Each request is a transaction of its own (a policy server answers a repeated `instance`
/// as a further recipient of the same message).
static INSTANCE: AtomicU64 = AtomicU64::new(1);

/// Asks the policy server at `spec` about mail from `sender` sent by `ip` with HELO `helo`,
/// as Postfix's `check_policy_service` does in `smtpd_sender_restrictions` (at MAIL FROM:
/// no recipient yet, the stage where a milter decides).
pub async fn spf_policy(
    spec: &SocketSpec,
    ip: &str,
    helo: &str,
    sender: &str,
) -> policy_proto::Action {
    let mut c = policy_proto::Client::connect(spec)
        .await
        .unwrap_or_else(|e| panic!("connect {spec}: {e}"));
    let req = policy_proto::PolicyRequest::new();
    let req = [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "MAIL"),
        ("protocol_name", "ESMTP"),
        ("client_address", ip),
        ("client_name", "unknown"),
        ("helo_name", helo),
        ("sender", sender),
        (
            "instance",
            &format!("{:x}", INSTANCE.fetch_add(1, Ordering::Relaxed)),
        ),
    ]
    .into_iter()
    .fold(req, |r, (k, v)| r.with(k, v).unwrap());
    let action = c.request(&req).await.unwrap();
    let _ = c.close().await;
    action
}

/// `dkim-milter genkey -d domain -s selector [--type ty]` into `dir`; returns the TXT record.
pub fn genkey(dir: &Path, domain: &str, selector: &str, ty: &str) -> String {
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_dkim-milter"))
        .args(["genkey", "-d", domain, "-s", selector, "--type", ty, "-D"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "dkim-milter genkey");
    let t = std::fs::read_to_string(dir.join(format!("{selector}.txt"))).unwrap();
    t.split('"').skip(1).step_by(2).collect()
}
