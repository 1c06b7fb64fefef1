//! Test support for the SPF daemon tests: a network namespace with a tiny authoritative DNS
//! server on 127.0.0.1:53 inside it, so python-policyd-spf (which resolves through
//! `/etc/resolv.conf`, port 53) and our `spf-policyd` see the same zones.
//!
//! `ip netns exec NAME cmd` bind-mounts `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf`
//! for `cmd`. The server socket is created by a thread that joined the namespace with
//! `setns(2)` (namespaces are per thread), and that thread then serves it: UDP only, answers
//! with the AA bit, NXDOMAIN for unknown names, and no answer at all for names marked
//! [`Rec::Timeout`]; for the fault tests also late answers ([`Rec::Delay`]), empty answers
//! with the TC bit ([`Rec::Truncated`]; there is no TCP side) and garbage ([`Rec::Garbage`]). Needs root (CI runs as root); [`Netns::create`] returns `None` otherwise
//! and the callers fail the test.
//!
//! [`dmarc_cases`] holds the DMARC zone and messages shared by the DMARC differential tests.

#![allow(dead_code, unreachable_pub)]

pub mod dmarc_cases;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;

/// One record of the test zone.
#[derive(Debug, Clone)]
pub enum Rec {
    /// TXT with one character-string per element.
    Txt(Vec<String>),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(u16, String),
    Ptr(String),
    /// Queries for this name get no answer (a DNS timeout for the client).
    Timeout,
    /// The answer for this name is sent this late (real time; other queries go on meanwhile).
    Delay(std::time::Duration),
    /// The answer has the TC bit and no records (the client should retry over TCP, where
    /// nothing listens).
    Truncated,
    /// The answer is the query's id followed by bytes that are no DNS message.
    Garbage,
}

/// A zone: lower-case names without trailing dot.
#[derive(Debug, Clone, Default)]
pub struct Zone(pub HashMap<String, Vec<Rec>>);

impl Zone {
    pub fn add(&mut self, name: &str, rec: Rec) -> &mut Self {
        self.0
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(rec);
        self
    }

    pub fn txt(&mut self, name: &str, text: &str) -> &mut Self {
        self.add(name, Rec::Txt(vec![text.to_owned()]))
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `name` with loopback up and a resolv.conf pointing at 127.0.0.1; `None` when
    /// that is not possible here (not root, no `ip`).
    pub fn create(name: &str) -> Option<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !ok(&["netns", "add", name]) {
            return None;
        }
        let ns = Self {
            name: name.to_owned(),
        };
        if !ok(&["netns", "exec", name, "ip", "link", "set", "lo", "up"]) {
            return None;
        }
        let dir = format!("/etc/netns/{name}");
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(
            format!("{dir}/resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .ok()?;
        Some(ns)
    }

    /// Starts the DNS server for `zone` on 127.0.0.1:53 inside the namespace.
    pub fn start_dns(&self, zone: Zone) -> std::io::Result<()> {
        let path = format!("/var/run/netns/{}", self.name);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let socket = join_and_bind(&path);
            let socket = match socket {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            serve(&socket, &zone);
        });
        rx.recv()
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// Starts the DNS server for `zone` on 127.0.0.1 (a free port) in this namespace.
pub fn start_dns_local(zone: Zone) -> std::io::Result<std::net::SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    std::thread::spawn(move || serve(&socket, &zone));
    Ok(addr)
}

fn join_and_bind(path: &str) -> std::io::Result<UdpSocket> {
    let file = std::fs::File::open(path)?;
    // SAFETY: setns on a namespace fd we own; it only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    UdpSocket::bind("127.0.0.1:53")
}

fn serve(socket: &UdpSocket, zone: &Zone) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            return;
        };
        let Some(reply) = answer(&buf[..n], zone) else {
            continue;
        };
        match delay(&buf[..n], zone).map(|d| (d, socket.try_clone())) {
            Some((d, Ok(late))) => {
                std::thread::spawn(move || {
                    std::thread::sleep(d);
                    let _ = late.send_to(&reply, peer);
                });
            }
            _ => {
                let _ = socket.send_to(&reply, peer);
            }
        }
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// How late the answer to `query` is sent ([`Rec::Delay`]), if at all.
fn delay(query: &[u8], zone: &Zone) -> Option<std::time::Duration> {
    let (name, _, _) = question(query)?;
    zone.0.get(&name)?.iter().find_map(|r| match r {
        Rec::Delay(d) => Some(*d),
        _ => None,
    })
}

/// The query's name (lower case), type and the end of its question section.
fn question(query: &[u8]) -> Option<(String, u16, usize)> {
    if query.len() < 12 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    Some((labels.join("."), qtype, pos + 4))
}

/// Builds the response to one query; `None` means "stay silent" (timeout).
pub fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let (name, qtype, question_end) = question(query)?;
    let records = zone.0.get(&name);
    let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
    let (mut timeout, mut truncated) = (false, false);
    for rec in records.into_iter().flatten() {
        match (rec, qtype) {
            (Rec::Timeout, _) => timeout = true,
            (Rec::Truncated, _) => truncated = true,
            (Rec::Garbage, _) => {
                let mut g = query.get(..2)?.to_vec();
                g.extend((0..200u32).map(|i| (i.wrapping_mul(151) % 251) as u8));
                return Some(g);
            }
            (Rec::A(a), 1) => answers.push((1, a.octets().to_vec())),
            (Rec::Aaaa(a), 28) => answers.push((28, a.octets().to_vec())),
            (Rec::Txt(strings), 16) => {
                let mut rd = Vec::new();
                for s in strings {
                    for chunk in s.as_bytes().chunks(255) {
                        rd.push(chunk.len() as u8);
                        rd.extend_from_slice(chunk);
                    }
                }
                answers.push((16, rd));
            }
            (Rec::Mx(pref, host), 15) => {
                let mut rd = pref.to_be_bytes().to_vec();
                put_name(&mut rd, host);
                answers.push((15, rd));
            }
            (Rec::Ptr(host), 12) => {
                let mut rd = Vec::new();
                put_name(&mut rd, host);
                answers.push((12, rd));
            }
            _ => {}
        }
    }
    if timeout && answers.is_empty() {
        return None;
    }
    if truncated {
        answers.clear();
    }
    let rcode = if records.is_none() { 3 } else { 0 };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]);
    let rd = query[2] & 0x01;
    out.push(0x84 | if truncated { 0x02 } else { 0 } | rd); // QR, AA, TC, RD copied
    out.push(0x80 | rcode); // RA, RCODE
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    for (ty, rdata) in answers {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}

/// The zones shared by the golden-transcript test and the benchmark.
pub fn golden_zone() -> Zone {
    let mut z = Zone::default();
    z.txt("pass.example", "v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all")
        .txt("mail.pass.example", "v=spf1 a -all")
        .add("mail.pass.example", Rec::A("192.0.2.1".parse().unwrap()))
        .txt("fail.example", "v=spf1 -all")
        .txt("soft.example", "v=spf1 ~all")
        .txt("neutral.example", "v=spf1 ?all")
        .txt("perm.example", "v=spf1 foo:bar -all")
        .add("temp.example", Rec::Timeout)
        .txt("exp.example", "v=spf1 -all exp=why.exp.example")
        .txt(
            "why.exp.example",
            "%{i} is not one of %{d}'s designated mail servers.",
        )
        .txt("mail.fail.example", "v=spf1 -all")
        .add("helo.none.example", Rec::A("192.0.2.9".parse().unwrap()))
        .txt("mx.example", "v=spf1 mx -all")
        .add("mx.example", Rec::Mx(10, "mx1.mx.example".into()))
        .add("mx1.mx.example", Rec::A("192.0.2.20".parse().unwrap()))
        .txt("inc.example", "v=spf1 include:pass.example ~all")
        .txt("redir.example", "v=spf1 redirect=fail.example")
        .txt("ptr.example", "v=spf1 ptr -all")
        .add(
            "30.2.0.192.in-addr.arpa",
            Rec::Ptr("host.ptr.example".into()),
        )
        .add("host.ptr.example", Rec::A("192.0.2.30".parse().unwrap()))
        .txt(
            "macro.example",
            "v=spf1 exists:%{l}.%{i}.ok.macro.example -all",
        )
        .add(
            "u.192.0.2.40.ok.macro.example",
            Rec::A("127.0.0.2".parse().unwrap()),
        )
        .txt("two.example", "v=spf1 -all")
        .txt("two.example", "v=spf1 +all")
        .add("helo.nospf.example", Rec::A("192.0.2.1".parse().unwrap()));
    z
}

/// The requests over [`golden_zone`]: (client, helo, sender); each gets its own instance
/// unless noted. Shared by `spf_golden` (against python-policyd-spf) and
/// `mailstackd_vs_daemons` (mailstackd's SPF at MAIL FROM against `spf-policyd`).
pub const CASES: &[(&str, &str, &str)] = &[
    ("192.0.2.1", "mail.pass.example", "u@pass.example"),
    ("192.0.2.9", "helo.none.example", "u@fail.example"),
    ("192.0.2.9", "helo.none.example", "u@soft.example"),
    ("192.0.2.9", "helo.none.example", "u@neutral.example"),
    ("192.0.2.9", "helo.none.example", "u@perm.example"),
    ("192.0.2.9", "helo.none.example", "u@exp.example"),
    ("192.0.2.9", "mail.fail.example", "u@pass.example"),
    ("192.0.2.9", "mail.fail.example", ""),
    ("192.0.2.9", "helo.none.example", ""),
    ("127.0.0.1", "localhost", "u@fail.example"),
    ("2001:db8::9", "helo.none.example", "u@fail.example"),
    ("2001:db8::1", "helo.none.example", "u@pass.example"),
    ("::ffff:192.0.2.1", "helo.none.example", "u@pass.example"),
    ("192.0.2.9", "", "u@soft.example"),
    ("192.0.2.20", "helo.none.example", "u@mx.example"),
    ("192.0.2.21", "helo.none.example", "u@mx.example"),
    ("192.0.2.1", "helo.none.example", "u@inc.example"),
    ("192.0.2.9", "helo.none.example", "u@inc.example"),
    ("192.0.2.1", "helo.none.example", "u@redir.example"),
    ("192.0.2.30", "helo.none.example", "u@ptr.example"),
    ("192.0.2.31", "helo.none.example", "u@ptr.example"),
    ("192.0.2.40", "helo.none.example", "u@macro.example"),
    ("192.0.2.40", "helo.none.example", "v@macro.example"),
    ("192.0.2.9", "helo.none.example", "u@two.example"),
    ("192.0.2.9", "helo.none.example", "u@nxdomain.example"),
];

/// Requests that time out in DNS (slow for python: Lookup_Time each), run once per config.
pub const TEMP_CASES: &[(&str, &str, &str)] =
    &[("192.0.2.9", "helo.none.example", "u@temp.example")];

/// CVE-2019-20790 shape: HELO passes, the MAIL FROM domain has no SPF record.
pub const CVE_CASE: (&str, &str, &str) = ("192.0.2.1", "mail.pass.example", "u@nosuch.example");

/// The `policyd-spf.conf` files both of those tests run every case under.
pub const CONFIGS: &[(&str, &str)] = &[
    (
        "debian-default",
        "debugLevel = -1\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\nPermError_reject = False\nTempError_Defer = False\nskip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1\nLookup_Time = 3\n",
    ),
    (
        "defer-and-permerror",
        "debugLevel = -1\nTempError_Defer = True\nPermError_reject = True\nLookup_Time = 3\n",
    ),
    (
        "test-only",
        "debugLevel = -1\nTestOnly = 0\nLookup_Time = 3\n",
    ),
    (
        "softfail-no-mail",
        "debugLevel = -1\nMail_From_reject = Softfail\nNo_Mail = True\nLookup_Time = 3\n",
    ),
    (
        "auth-results",
        "debugLevel = -1\nHeader_Type = AR\nAuthserv_Id = mx.test\nLookup_Time = 3\n",
    ),
    (
        "not-pass-plain-codes",
        "debugLevel = -1\nSPF_Enhanced_Status_Codes = No\nHELO_reject = SPF_Not_Pass\nMail_From_reject = SPF_Not_Pass\nLookup_Time = 3\n",
    ),
    (
        "whitelist",
        "debugLevel = -1\nWhitelist = 192.0.2.0/28\nskip_addresses = 10.0.0.0/8\nLookup_Time = 3\n",
    ),
    (
        "hide-receiver-reason",
        "debugLevel = -1\nHide_Receiver = Yes\nReason_Message = SPF says {rejectdefer}: {spf} ({url})\nLookup_Time = 3\n",
    ),
];
