//! Differential test: `mailstackd` (SPF, DKIM, DMARC and AV in one milter) against the
//! single-purpose daemons it replaces, chained as Postfix chains them: `spf-policyd` at MAIL
//! FROM (its `Received-SPF` prepended), then the milters `dkim-milter`, `dmarc-milter` and
//! `av-milter`, each seeing the message as the one before left it. Both sides read the SAME
//! tool files (`mailstackd.toml` names `policyd-spf.conf`, `dkim.conf`, `dmarc.conf` and
//! `av.conf` with `config = "..."`), ask the same DNS server (this test's, on 127.0.0.1) and
//! one private clamd. Everything is driven with our own clients (`milter_proto::client`,
//! `policy_proto::Client`), so nothing is timed by an MTA.
//!
//! Compared, message by message:
//! - the reply: accept, the reject text, tempfail;
//! - DKIM: the result of each signature (`dkim=` with `header.d`, `header.s`, `header.b`);
//! - DMARC: the result, the `(p=... dis=...)` comment and `header.from`;
//! - SPF: the result and identity of mailstackd's `spf=` clause against `spf-policyd`'s
//!   `Received-SPF` for the same client, HELO and sender, and with `received_spf = true`
//!   mailstackd's `Received-SPF` against `spf-policyd`'s, whole;
//! - AV: the reply and `X-Virus-Status`.
//!
//! Over: the shared DKIM corpus (`mailstack/tests/data/dkim/corpus.txt`), signed by
//! `dkim-milter` (RSA and Ed25519), then received from outside as signed and tampered;
//! the DMARC cases of `dmarc_vs_opendmarc` (`spf_support::dmarc_cases`); the AV messages of
//! `av_vs_clamav_milter` (`support::clamd::av_messages`); and the SPF cases and the eight
//! `policyd-spf.conf` variants of `spf_golden` (`spf_support::{CASES, CONFIGS}`). For the
//! corpus, `mailstack check --json` (offline, same file) must give the same clauses and the
//! same decision as mailstackd through the milter.
//!
//! Differences by design (asserted as such, not skipped):
//! - Authentication-Results layout: mailstackd writes ONE field with every clause; the chain
//!   writes one per milter (and SPF as `Received-SPF`). Clauses are compared, not text.
//! - mailstackd writes no `Received-SPF` unless `received_spf = true` (its `spf=` clause
//!   carries the result).
//! - Upstream results a sender wrote: mailstackd's DMARC takes SPF and DKIM from the filters
//!   that ran, never from header fields; `dmarc-milter` alone reads trusted
//!   `Authentication-Results` and the first `Received-SPF`. In the chain the forged
//!   `mx.example` fields are deleted by `dkim-milter` (same authserv-id) and `spf-policyd`'s
//!   own `Received-SPF` is the first one, so the DMARC cases agree.
//! - An unsigned message: `dkim-milter` (as OpenDKIM, `AlwaysAddARHeader no`) writes no
//!   field; mailstackd's one field says `dkim=none`, as it says `spf=none`.
//! - SPF's `receiver` (`r=` in the refusal URL, `receiver=` in `Received-SPF`): mailstackd
//!   decides at MAIL FROM, before any recipient, and says `none`; `spf-policyd` (as
//!   python-policyd-spf) names the recipient's domain when asked at RCPT. It is asked here at
//!   MAIL FROM (`smtpd_sender_restrictions`), the same stage, so the texts are compared
//!   whole.
//! - SPF `DEFER_IF_PERMIT` (`TempError_Defer`): a policy server can only say "defer if
//!   permitted later"; mailstackd answers the MAIL FROM with the same text as a 451 tempfail.
//! - SPF checks for a client without a result header (`skip_addresses`, `Whitelist`):
//!   `spf-policyd` prepends `X-Comment`, mailstackd writes nothing (no `spf=` clause).
//! - An IPv4-mapped IPv6 client (`::ffff:192.0.2.1`): the milter adapter reads it as the
//!   IPv4 address, as Postfix presents it, so IPv4 `Whitelist` entries apply; `spf-policyd`,
//!   as python-policyd-spf, matches its lists against the address as written. mailstackd is
//!   compared with `spf-policyd` asked about the IPv4 form.
//! - `TestOnly = 0` (python's test mode): where a result would refuse, `spf-policyd` answers
//!   DUNNO and so writes nothing; mailstackd accepts too but still records the `spf=`
//!   clause (and hands it to DMARC).
//!
//! No bug was found: every other reply and result agrees. Needs clamd and the public suffix
//! list (Debian's clamav-daemon, publicsuffix); as root the daemons get `--allow-root`. Run:
//! `cargo test -p mailstack-examples --test mailstackd_vs_daemons -- --nocapture`.

mod spf_support;
mod support;

#[path = "../../mailstack/tests/data/dkim/corpus.rs"]
mod dkim_corpus;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use milter_proto::Reply;
use milter_proto::SocketSpec;
use milter_proto::client::{Connection, Message};
use spf_support::{CASES, CONFIGS, TEMP_CASES, Zone, dmarc_cases, golden_zone};
use support::chain::{self, Clause};
use support::clamd::{Clamd, av_messages};
use support::milters::Daemon;

const MAILSTACKD: &str = env!("CARGO_BIN_EXE_mailstackd");
const CLI: &str = env!("CARGO_BIN_EXE_mailstack");
const DKIM: &str = env!("CARGO_BIN_EXE_dkim-milter");
const DMARC: &str = env!("CARGO_BIN_EXE_dmarc-milter");
const AV: &str = env!("CARGO_BIN_EXE_av-milter");
const SPF: &str = env!("CARGO_BIN_EXE_spf-policyd");
const PSL: &str = "/usr/share/publicsuffix/public_suffix_list.dat";

/// The SPF options of the main comparison: check, never refuse (mailstackd's embedded
/// default), so that DKIM, DMARC and AV see every message.
const SPF_QUIET: &str = "debugLevel = -1\nHELO_reject = False\nMail_From_reject = False\n\
PermError_reject = False\nTempError_Defer = False\nLookup_Time = 3\n";

/// The zone: the DMARC cases', the SPF golden zone's (names not already there), the DKIM
/// keys and `example.com` (the corpus' From domain: SPF for 192.0.2.1, `p=reject`).
fn zone(rsa: &str, ed: &str) -> Zone {
    let mut z = dmarc_cases::zone();
    for (name, recs) in golden_zone().0 {
        z.0.entry(name).or_insert(recs);
    }
    z.txt("rsa._domainkey.example.com", rsa)
        .txt("ed._domainkey.example.com", ed)
        .txt("example.com", "v=spf1 ip4:192.0.2.1 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=reject");
    z
}

/// `mailstackd` and the daemons it replaces, on the same files.
struct World {
    dir: PathBuf,
    dns: SocketAddr,
    conf: PathBuf,
    stack: Daemon,
    spf: Daemon,
    milters: [Daemon; 3],
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn spf_policyd(dir: &Path, name: &str, conf: &Path, dns: SocketAddr) -> Daemon {
    let dns = dns.to_string();
    let args = ["--config", conf.to_str().unwrap(), "--nameserver", &dns];
    Daemon::start(
        Path::new(SPF),
        dir,
        name,
        &[&args[..], &["--log", "none", "--allow-root"]].concat(),
    )
}

fn mailstackd(dir: &Path, name: &str, toml: &str) -> (PathBuf, Daemon) {
    let conf = write(dir, &format!("{name}.toml"), toml);
    let d = Daemon::start(
        Path::new(MAILSTACKD),
        dir,
        name,
        &["--config", conf.to_str().unwrap(), "--allow-root"],
    );
    (conf, d)
}

impl World {
    fn start(dir: &Path, clamd: &Clamd) -> Self {
        let rsa = chain::genkey(dir, "example.com", "rsa", "rsa");
        let ed = chain::genkey(dir, "example.com", "ed", "ed25519");
        let dns = spf_support::start_dns_local(zone(&rsa, &ed)).unwrap();
        let d = dir.display();
        write(
            dir,
            "keytable",
            &format!("rsa example.com:rsa:{d}/rsa.private\ned example.com:ed:{d}/ed.private\n"),
        );
        write(dir, "signingtable", "*@example.com rsa\n*@example.com ed\n");
        let spf_conf = write(dir, "policyd-spf.conf", SPF_QUIET);
        let dkim_conf = write(
            dir,
            "dkim.conf",
            &format!(
                "Mode sv\nCanonicalization simple/simple\nOversignHeaders From\n\
                 AuthservID mx.example\nInternalHosts 127.0.0.1\nKeyTable file:{d}/keytable\n\
                 SigningTable refile:{d}/signingtable\nMultipleSignatures yes\n"
            ),
        );
        let dmarc_conf = write(
            dir,
            "dmarc.conf",
            &format!(
                "AuthservID mx.example\nTrustedAuthservIDs mx.example\nRejectFailures true\n\
                 PublicSuffixList {PSL}\n"
            ),
        );
        let av_conf = write(
            dir,
            "av.conf",
            &format!(
                "ClamdSocket unix:{}\nOnInfected Reject\nRejectMsg Virus %v found, rejected\n\
                 AddHeader Replace\nReportHostname mx.test\n",
                clamd.socket.display()
            ),
        );
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let (conf, stack) = mailstackd(
            dir,
            "mailstackd",
            &format!(
                "[mailstackd]\nauthserv_id = \"mx.example\"\nnameservers = [\"{dns}\"]\n\
                 dns_timeout = 3\n\n[spf]\nconfig = \"{}\"\n\n[dkim]\nconfig = \"{}\"\n\n\
                 [dmarc]\nconfig = \"{}\"\n\n[av]\nconfig = \"{}\"\n",
                path(&spf_conf),
                path(&dkim_conf),
                path(&dmarc_conf),
                path(&av_conf)
            ),
        );
        let ns = dns.to_string();
        let milter = |exe: &str, name: &str, conf: &Path, dns: bool| {
            let mut args = vec!["--config", conf.to_str().unwrap(), "--allow-root"];
            if dns {
                args.extend(["--nameserver", &ns]);
            }
            Daemon::start(Path::new(exe), dir, name, &args)
        };
        let milters = [
            milter(DKIM, "dkim", &dkim_conf, true),
            milter(DMARC, "dmarc", &dmarc_conf, true),
            milter(AV, "av", &av_conf, false),
        ];
        let spf = spf_policyd(dir, "spf", &spf_conf, dns);
        Self {
            dir: dir.to_owned(),
            dns,
            conf,
            stack,
            spf,
            milters,
        }
    }
}

fn spec(d: &Daemon) -> SocketSpec {
    d.spec().parse().unwrap()
}

fn policy_spec(d: &Daemon) -> SocketSpec {
    d.spec().parse().unwrap()
}

/// One SMTP transaction: client, HELO, MAIL FROM, the message.
#[derive(Clone)]
struct Mail {
    ip: &'static str,
    helo: &'static str,
    sender: String,
    raw: Vec<u8>,
}

impl Mail {
    fn conn(&self) -> Connection {
        chain::connection(self.ip, self.helo)
    }

    fn message(&self) -> Message {
        let mut m = Message::parse(
            format!("<{}>", self.sender).as_bytes(),
            &[b"<bob@dest.example>"],
            &self.raw,
        );
        m.macros = vec![(b'E', vec![(Bytes::from("i"), Bytes::from("4QJOB1"))])];
        m
    }
}

/// What one side decided and reported, in a form both sides share.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    reply: Reply,
    /// SPF: (result, identity).
    spf: Option<(String, String)>,
    /// DKIM, per signature: (result, d, s, b), sorted.
    dkim: Vec<(String, String, String, String)>,
    /// DMARC: (result, comment, header.from).
    dmarc: Vec<(String, Option<String>, String)>,
    /// `X-Virus-Status` values.
    av: Vec<String>,
}

impl Decision {
    fn new(reply: Reply) -> Self {
        Self {
            reply,
            spf: None,
            dkim: Vec::new(),
            dmarc: Vec::new(),
            av: Vec::new(),
        }
    }

    /// DKIM and DMARC from `Authentication-Results` clauses.
    fn add_clauses(&mut self, clauses: &[Clause]) {
        let p = |c: &Clause, n: &str| c.property(n).unwrap_or_default().to_owned();
        for c in clauses {
            match c.method() {
                "dkim" => self.dkim.push((
                    c.result.clone(),
                    p(c, "header.d"),
                    p(c, "header.s"),
                    p(c, "header.b"),
                )),
                "dmarc" => {
                    self.dmarc
                        .push((c.result.clone(), c.comment.clone(), p(c, "header.from")));
                }
                "spf" => {
                    let identity = if c.property("smtp.mailfrom").is_some() {
                        "mailfrom"
                    } else {
                        "helo"
                    };
                    self.spf = Some((c.result.clone(), identity.to_owned()));
                }
                _ => {}
            }
        }
        self.dkim.sort();
    }
}

/// SPF from a `Received-SPF` value: (result, identity).
fn received_spf(value: &str) -> (String, String) {
    let result = value.split_whitespace().next().unwrap_or_default();
    let identity = value
        .split(';')
        .flat_map(|p| p.split_whitespace())
        .find_map(|w| w.strip_prefix("identity="))
        .unwrap_or_default();
    (
        format!("spf={}", result.to_ascii_lowercase()),
        identity.to_owned(),
    )
}

/// The reply Postfix gives for a policy action that refuses, else `None`.
fn policy_reply(a: &policy_proto::Action) -> Option<Reply> {
    use policy_proto::Action as A;
    match a {
        A::Smtp(r) => {
            let code = r.code().to_string();
            let parts = [Some(code.as_str()), r.enhanced(), Some(r.text())];
            let text: Vec<&str> = parts.into_iter().flatten().collect();
            Some(Reply::ReplyCode(Bytes::from(text.join(" "))))
        }
        A::Reject(_) | A::Defer(_) | A::DeferIfPermit(_) => Some(Reply::Tempfail),
        _ => None,
    }
}

/// Through the daemons, as Postfix chains them.
async fn daemons(w: &World, mail: &Mail) -> (Decision, Message) {
    let mut msg = mail.message();
    let action = chain::spf_policy(&policy_spec(&w.spf), mail.ip, mail.helo, &mail.sender).await;
    if let Some(r) = policy_reply(&action) {
        return (Decision::new(r), msg);
    }
    let mut d = Decision::new(Reply::Accept);
    if let policy_proto::Action::Prepend(h) = &action {
        let (name, value) = h.as_str().split_once(':').unwrap();
        if name.eq_ignore_ascii_case("Received-SPF") {
            d.spf = Some(received_spf(value.trim()));
        }
        msg.headers.insert(
            0,
            (Bytes::from(name.to_owned()), Bytes::from(value.to_owned())),
        );
    }
    for m in &w.milters {
        let out = chain::milter(&spec(m), &mail.conn(), &msg).await;
        if !chain::delivers(&out.decision) {
            // Refused: nothing of what was found reaches a mailbox.
            return (Decision::new(out.decision), msg);
        }
        for ar in chain::added(&out.modifications, "Authentication-Results") {
            d.add_clauses(&chain::clauses(&ar));
        }
        d.av.extend(chain::added(&out.modifications, "X-Virus-Status"));
        msg = chain::apply(&msg, &out.modifications);
    }
    (d, msg)
}

/// Through mailstackd alone: what it decided, its one `Authentication-Results` value (if
/// any) and the `Received-SPF` values it wrote (only with `received_spf = true`).
async fn stack(stack: &Daemon, id: &str, mail: &Mail) -> (Decision, Option<String>, Vec<String>) {
    let out = chain::milter(&spec(stack), &mail.conn(), &mail.message()).await;
    let mut d = Decision::new(out.decision.clone());
    if !chain::delivers(&out.decision) {
        return (d, None, Vec::new());
    }
    let ars = chain::added(&out.modifications, "Authentication-Results");
    assert!(ars.len() <= 1, "one merged field: {ars:?}");
    for ar in &ars {
        assert!(ar.starts_with(&format!("{id};")), "{ar}");
        d.add_clauses(&chain::clauses(ar));
    }
    d.av.extend(chain::added(&out.modifications, "X-Virus-Status"));
    let received = chain::added(&out.modifications, "Received-SPF");
    (d, ars.into_iter().next(), received)
}

/// Compares both sides on `mail`; returns mailstackd's decision and field.
async fn compare(w: &World, what: &str, mail: &Mail) -> (Decision, Option<String>) {
    let (mut theirs, _) = daemons(w, mail).await;
    if theirs.dkim.is_empty() && chain::delivers(&theirs.reply) {
        // Design: dkim-milter writes no field for an unsigned message (OpenDKIM's
        // `AlwaysAddARHeader no`); the merged field lists every method, `dkim=none` here.
        theirs.dkim.push((
            "dkim=none".into(),
            String::new(),
            String::new(),
            String::new(),
        ));
    }
    let (ours, ar, received) = stack(&w.stack, "mx.example", mail).await;
    assert!(
        received.is_empty(),
        "{what}: no Received-SPF by default: {received:?}"
    );
    // A refusal at end of message carries no results on either side; a refusal by the
    // policy server is one at MAIL FROM in mailstackd, with the same text.
    assert_eq!(
        ours, theirs,
        "{what}: mailstackd (left) against the daemons"
    );
    (ours, ar)
}

/// `mailstack check --json` on `mail` with mailstackd's file.
fn check(w: &World, mail: &Mail) -> serde_json::Value {
    let path = w.dir.join("check.eml");
    std::fs::write(&path, &mail.raw).unwrap();
    let ns = w.dns.to_string();
    let args = [
        "--client-ip",
        mail.ip,
        "--helo",
        mail.helo,
        "--from",
        &mail.sender,
    ];
    let rest = [
        "--rcpt",
        "bob@dest.example",
        "--mta-name",
        "mx.example",
        "--nameserver",
        &ns,
    ];
    support::milters::mailstack_check(
        Path::new(CLI),
        &w.conf,
        &path,
        &[&args[..], &rest[..]].concat(),
    )
    .1
}

/// The decision `mailstack check` printed, as the milter reply mailstackd sends.
fn check_reply(json: &serde_json::Value) -> Reply {
    let reply = json["reply"].as_str();
    match (json["decision"].as_str().unwrap(), reply) {
        ("accept", _) => Reply::Accept,
        ("reject", Some(text)) => Reply::ReplyCode(Bytes::from(text.to_owned())),
        ("reject", None) => Reply::Reject,
        ("tempfail", Some(text)) => Reply::ReplyCode(Bytes::from(text.to_owned())),
        ("tempfail", None) => Reply::Tempfail,
        (other, _) => panic!("unexpected decision {other}: {json}"),
    }
}

/// The `Authentication-Results` value in `mailstack check`'s header list.
fn check_ar(json: &serde_json::Value) -> Option<String> {
    json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|h| h.as_str()?.strip_prefix("+ Authentication-Results: "))
        .map(str::to_owned)
}

/// The corpus: signed by `dkim-milter` from an internal host, then received from
/// 192.0.2.9 (SPF fail for example.com, so DKIM alone carries DMARC) as signed and tampered.
async fn corpus(w: &World) -> usize {
    let dkim = spec(&w.milters[0]);
    let mut n = 0;
    for (name, raw) in dkim_corpus::corpus() {
        let local = Mail {
            ip: "127.0.0.1",
            helo: "localhost",
            sender: "alice@example.com".into(),
            raw: raw.clone(),
        };
        let out = chain::milter(&dkim, &local.conn(), &local.message()).await;
        let signed = chain::apply(&local.message(), &out.modifications);
        let ours = chain::milter(&spec(&w.stack), &local.conn(), &local.message()).await;
        assert_eq!(
            signature_tags(&chain::added(&ours.modifications, "DKIM-Signature")),
            signature_tags(&chain::added(&out.modifications, "DKIM-Signature")),
            "{name}: mailstackd signs as dkim-milter does"
        );
        let raw_signed = chain::raw(&signed);
        let mut tampered = raw_signed.clone();
        tampered.extend_from_slice(b"tampered\r\n");
        for (variant, raw) in [("signed", raw_signed), ("tampered", tampered)] {
            let mail = Mail {
                ip: "192.0.2.9",
                helo: "mail.spammer.example",
                sender: "mallory@spammer.example".into(),
                raw,
            };
            let what = format!("corpus {name} ({variant})");
            let (ours, ar) = compare(w, &what, &mail).await;
            println!("{what}: {ours:?}");
            let json = check(w, &mail);
            assert_eq!(check_reply(&json), ours.reply, "{what}: {json}");
            assert_eq!(
                check_ar(&json).map(|v| chain::clauses(&v)),
                ar.as_deref().map(chain::clauses),
                "{what}: mailstack check against mailstackd: {json}"
            );
            n += 1;
        }
    }
    n
}

/// The tags that do not depend on the clock or the key's randomness: `a`, `d`, `s`, `c`,
/// `h`, `bh` (and `b`, deterministic for RSA PKCS#1 v1.5 and Ed25519, when `t=` agrees).
fn signature_tags(sigs: &[String]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = sigs
        .iter()
        .map(|s| {
            s.split(';')
                .filter_map(|t| t.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.split_whitespace().collect()))
                .filter(|(k, _)| ["a", "d", "s", "c", "h", "bh"].contains(&k.as_str()))
                .collect()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn mailstackd_decides_as_the_separate_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clamd = Clamd::start(&dir.join("clamd"), "StreamMaxLength 100M\n");
    let w = World::start(dir, &clamd);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = corpus(&w).await;
        eprintln!("{n} corpus messages compared");

        // From the host reject.example's SPF names, and from one it does not (so the
        // forged upstream results are all that could make DMARC pass).
        for ip in ["192.0.2.1", "192.0.2.9"] {
            for (what, sender, headers) in dmarc_cases::shared() {
                let mail = Mail {
                    ip,
                    helo: "client.example",
                    sender: sender.to_owned(),
                    raw: format!("{headers}Subject: test\r\n\r\nbody\r\n").into_bytes(),
                };
                let what = format!("DMARC {what} from {ip}");
                let (d, _) = compare(&w, &what, &mail).await;
                println!("{what}: {d:?}");
            }
        }

        for (what, raw) in av_messages() {
            let mail = Mail {
                ip: "192.0.2.1",
                helo: "client.example",
                sender: "a@src.example".into(),
                raw,
            };
            let (d, _) = compare(&w, &format!("AV {what}"), &mail).await;
            println!("AV {what}: {:?} {:?}", d.reply, d.av);
        }
    });
    drop(w);
}

/// mailstackd's SPF (at MAIL FROM, inside the milter) against `spf-policyd` (at RCPT) on
/// `spf_golden`'s requests and configurations: the same refusal text, or the same result
/// and identity (`spf=` clause against `Received-SPF`, or the `Header_Type = AR` field).
#[test]
fn mailstackd_spf_answers_as_spf_policyd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dns = spf_support::start_dns_local(golden_zone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut compared = 0;
    for (i, (name, conf)) in CONFIGS.iter().enumerate() {
        let spf_conf = write(dir, &format!("spf{i}.conf"), conf);
        let policyd = spf_policyd(dir, &format!("policyd{i}"), &spf_conf, dns);
        let (_, stackd) = mailstackd(
            dir,
            &format!("stack{i}"),
            &format!(
                "[mailstackd]\nauthserv_id = \"mx.test\"\nnameservers = [\"{dns}\"]\n\
                 dns_timeout = 3\nreceived_spf = true\n\n[spf]\nconfig = \"{}\"\n\n[dkim]\nenabled = false\n\n\
                 [dmarc]\nenabled = false\n",
                spf_conf.display()
            ),
        );
        rt.block_on(async {
            // A DNS timeout costs Lookup_Time on each side: only where it is deferred.
            let temp: &[_] = if conf.contains("TempError_Defer = True") {
                TEMP_CASES
            } else {
                &[]
            };
            for (client, helo, sender) in CASES.iter().chain(temp) {
                let what = format!("{name}: {client} {helo} <{sender}>");
                // Design: mailstackd reads an IPv4-mapped client as the IPv4 address (as
                // Postfix presents it), so it is compared with spf-policyd asked about that.
                let ip: std::net::IpAddr = client.parse().unwrap();
                let ip = ip.to_canonical().to_string();
                let action = chain::spf_policy(&policy_spec(&policyd), &ip, helo, sender).await;
                let mail = Mail {
                    ip: client,
                    helo,
                    sender: (*sender).to_owned(),
                    raw: b"From: a@example.org\r\nSubject: spf\r\n\r\nhi\r\n".to_vec(),
                };
                let (ours, _, received) = stack(&stackd, "mx.test", &mail).await;
                // With `received_spf = true` mailstackd writes spf-policyd's field, byte for
                // byte (both decide at MAIL FROM, so `receiver=none` in both).
                let prepended: Vec<String> = match &action {
                    policy_proto::Action::Prepend(h) => h
                        .as_str()
                        .strip_prefix("Received-SPF: ")
                        .map(|v| vec![v.trim().to_owned()])
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                assert_eq!(received, prepended, "{what}: Received-SPF");
                let mut theirs = spf_from_policy(&action);
                if conf.contains("TestOnly = 0")
                    && action == policy_proto::Action::Dunno
                    && ours.reply == Reply::Accept
                {
                    // Design: in test mode a result that would refuse is only recorded.
                    assert!(ours.spf.is_some(), "{what}: {ours:?}");
                    theirs.1.clone_from(&ours.spf);
                }
                println!("{what}\n  spf-policyd: {action:?}\n  mailstackd:  {ours:?}");
                assert_eq!((ours.reply.clone(), ours.spf.clone()), theirs, "{what}");
                compared += 1;
            }
        });
    }
    eprintln!("{compared} SPF requests compared");
}

/// What mailstackd should answer for `spf-policyd`'s action: its reply and SPF result.
fn spf_from_policy(a: &policy_proto::Action) -> (Reply, Option<(String, String)>) {
    use policy_proto::Action as A;
    match a {
        A::Smtp(_) | A::Reject(_) | A::Defer(_) => (policy_reply(a).unwrap(), None),
        // Design: a policy server's "defer if permitted" (450 from Postfix) is mailstackd's
        // 451 at MAIL FROM, with the same text.
        A::DeferIfPermit(Some(t)) => (
            Reply::ReplyCode(Bytes::from(format!("451 {}", t.as_str()))),
            None,
        ),
        A::Prepend(h) => {
            let (name, value) = h.as_str().split_once(':').unwrap();
            let spf = if name.eq_ignore_ascii_case("Received-SPF") {
                Some(received_spf(value.trim()))
            } else if name.eq_ignore_ascii_case("Authentication-Results") {
                let mut d = Decision::new(Reply::Accept);
                d.add_clauses(&chain::clauses(value));
                d.spf
            } else {
                // Design: X-Comment (skip_addresses, Whitelist) has no counterpart.
                None
            };
            (Reply::Accept, spf)
        }
        _ => (Reply::Accept, None),
    }
}
