//! The antivirus filter in the common shape ([`crate::filter::Filter`]): [`AvFilter`] holds
//! what all connections share (the configuration, the host name for `X-Virus-Scanned`, the
//! notifier, the bounds on background work); its per-message state, [`AvMessage`], is the
//! clamd stream ([`MessageScan`]) plus what notifications need. `av-milter` serves it through
//! [`crate::filter::Milter`], `mailstackd` runs it in a [`crate::filter::Chain`].
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use mailstack::av::{AvConfig, AvFilter};
//! use mailstack::filter::Milter;
//! use milter_proto::server::{ServerConfig, serve};
//! use milter_proto::{Listener, SocketSpec, UnixOptions};
//!
//! let cfg = AvConfig::read(std::path::Path::new("/etc/clamav/clamav-milter.conf"))
//!     .map_err(std::io::Error::other)?;
//! let filter = Arc::new(AvFilter::new(cfg, None));
//! let spec: SocketSpec = "unix:/run/av.sock".parse().map_err(std::io::Error::other)?;
//! let listener = Listener::bind(&spec, &UnixOptions::default()).await?;
//! serve(listener, Milter::factory(filter), ServerConfig::default(), std::future::pending()).await
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use milter_proto::Actions;
use tokio::sync::Semaphore;

use super::config::LocalNet;
use super::{AddHeader, AvConfig, LogLevel, MessageScan, ScanOutcome, sanitize_virus_name};
use crate::dkim::canon::Header;
use crate::filter::{
    self, ClientAddr, Connection, EndOfMessage, Envelope, Fallback, Filter, Flow, Modification,
    Needs, OnAction, Start, Verdict,
};
use crate::notify::Notifier;

/// The product name in `X-Virus-Scanned`.
pub const PRODUCT: &str = concat!("mailstack av-milter ", env!("CARGO_PKG_VERSION"));
/// The reason given to the MTA when `Quarantine` is the action.
pub const QUARANTINE_REASON: &str = "quarantined by av-milter";

/// `VirusAction` programs (and, separately, notifications) running at once. A burst of
/// infected mail must not fork an unbounded number of children or hold an unbounded number
/// of SMTP sessions: beyond this many, the next one is logged, counted
/// ([`AvFilter::background_dropped`]) and not run. clamav-milter runs one per message
/// without a bound; 4 keeps up with a virus wave on a small host.
pub const MAX_BACKGROUND: usize = 4;

/// How long a `VirusAction` program may run before it is killed. It only notifies (the
/// verdict never waits for it); a program hung on a network call would otherwise hold one
/// of the [`MAX_BACKGROUND`] slots for ever. 30 s is plenty for a local script.
pub const VIRUS_ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one notification may take, all its attempts included, before it is given up:
/// the notifier makes 3 attempts 5 s apart, each bounded by the SMTP client's own
/// timeouts; 120 s covers that and frees the slot after a mail server that hangs.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(120);

/// A bound on background work: at most `limit` tasks at once, each with a deadline.
#[derive(Debug)]
struct Background {
    slots: Arc<Semaphore>,
    timeout: Duration,
    dropped: AtomicU64,
}

impl Background {
    fn new(limit: usize, timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            timeout,
            dropped: AtomicU64::new(0),
        }
    }

    /// A slot, or `None` (logged, counted) when all are taken.
    fn slot(&self, what: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(dropped = n, "{what}: too many running at once, not run");
                None
            }
        }
    }

    /// Runs `prog argv` in the background within a slot, killed after the timeout.
    fn run(&self, prog: &std::path::Path, argv: Vec<String>) {
        let Some(permit) = self.slot("VirusAction") else {
            return;
        };
        let prog = prog.to_owned();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let mut child = match tokio::process::Command::new(&prog)
                .args(&argv)
                .kill_on_drop(true)
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(program = %prog.display(), error = %e, "VirusAction");
                    return;
                }
            };
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => tracing::warn!(program = %prog.display(), %s, "VirusAction failed"),
                Ok(Err(e)) => tracing::warn!(program = %prog.display(), error = %e, "VirusAction"),
                Err(_) => {
                    tracing::warn!(program = %prog.display(), ?timeout, "VirusAction killed");
                    if let Err(e) = child.kill().await {
                        tracing::warn!(program = %prog.display(), error = %e, "VirusAction kill");
                    }
                }
            }
        });
    }
}

/// What every connection of the AV filter shares.
#[derive(Debug)]
pub struct AvFilter {
    cfg: AvConfig,
    hostname: Option<String>,
    notify: Option<(Notifier, String)>,
    actions: Background,
    notifications: Background,
}

/// Readiness (see [`crate::health`]): clamd answers `PING` on one of `cfg`'s sockets, each
/// step within a fraction of [`crate::health::CHECK_TIMEOUT`].
fn register_clamd_check(cfg: &AvConfig) {
    let step = crate::health::CHECK_TIMEOUT / 2;
    let t = crate::clamd::Timeouts {
        connect: step,
        write: step,
        read: step,
    };
    let clients = cfg
        .clamd_sockets
        .iter()
        .map(|a| crate::clamd::Client::new(a.clone()).timeouts(t))
        .collect();
    crate::health::register(Arc::new(crate::health::ClamdCheck::new(clients)));
}

impl AvFilter {
    /// A filter for `cfg`. `ReportHostname` names the host in `X-Virus-Scanned`; without it,
    /// the kernel's host name. `notify` is the notifier and the address infected-mail
    /// notifications go to.
    pub fn new(cfg: AvConfig, notify: Option<(Notifier, String)>) -> Self {
        let hostname = cfg
            .report_hostname
            .clone()
            .or_else(crate::config::known_hostname);
        register_clamd_check(&cfg);
        Self {
            cfg,
            hostname,
            notify,
            actions: Background::new(MAX_BACKGROUND, VIRUS_ACTION_TIMEOUT),
            notifications: Background::new(MAX_BACKGROUND, NOTIFY_TIMEOUT),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AvConfig {
        &self.cfg
    }

    /// `VirusAction` runs and notifications not started because [`MAX_BACKGROUND`] were
    /// already running.
    pub fn background_dropped(&self) -> u64 {
        self.actions.dropped.load(Ordering::Relaxed)
            + self.notifications.dropped.load(Ordering::Relaxed)
    }

    /// Whether the client is in `LocalNet` (`local` = family `L`/`U`, non-SMTP; an Inet
    /// address that did not parse is never local).
    fn is_local(&self, addr: &ClientAddr) -> bool {
        self.cfg.local_net.iter().any(|n| match (n, addr) {
            (LocalNet::Local, ClientAddr::Local) => true,
            (_, ClientAddr::Ip(ip)) => n.contains(*ip),
            _ => false,
        })
    }

    /// Sends the infected-mail notification in the background (with its retries), within
    /// a slot and [`NOTIFY_TIMEOUT`].
    fn notify(&self, n: &Notifier, to: &str, fields: [&str; 6]) {
        let Some(permit) = self.notifications.slot("notification") else {
            return;
        };
        let (subject, body) = crate::notify::infected_text(fields);
        let timeout = self.notifications.timeout;
        match n.send(to, &subject, &body) {
            Ok(h) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let abort = h.abort_handle();
                    match tokio::time::timeout(timeout, h).await {
                        Ok(Ok(Ok(()))) => tracing::info!("notification sent"),
                        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "notification"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "notification task"),
                        Err(_) => {
                            abort.abort();
                            tracing::warn!(?timeout, "notification given up");
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "notification"),
        }
    }
}

/// What the AV filter keeps of one message: the clamd stream and what logs and
/// notifications need.
#[derive(Debug)]
pub struct AvMessage {
    scan: MessageScan,
    seen: Seen,
}

/// What the header block told us.
#[derive(Debug, Default)]
struct Seen {
    /// How many X-Virus-Scanned / X-Virus-Status fields the message already has.
    old_scanned: u32,
    old_status: u32,
    subject: Option<String>,
    message_id: Option<String>,
    date: Option<String>,
}

#[async_trait::async_trait]
impl Filter for AvFilter {
    type Message = AvMessage;

    fn needs(&self) -> Needs {
        // The verdict header is the scan's only trace in the message: an MTA that cannot take
        // it (or, with Replace, cannot remove a sender's forged `X-Virus-Status: Clean`) is
        // refused at negotiation, so its milter_default_action applies.
        let required = match self.cfg.add_header {
            AddHeader::No => Actions::empty(),
            AddHeader::Replace => Actions::ADDHDRS | Actions::CHGHDRS,
            _ => Actions::ADDHDRS,
        };
        Needs {
            actions: Actions::ADDHDRS | Actions::CHGHDRS | Actions::QUARANTINE,
            required_actions: required,
            headers: true,
            body: true,
            ..Needs::default()
        }
    }

    fn connect(&self, conn: &Connection) -> Flow {
        if self.is_local(&conn.addr) {
            Flow::Skip
        } else {
            Flow::Continue
        }
    }

    async fn mail(&self, conn: &Connection, env: &Envelope) -> Start<AvMessage> {
        let authed_skip = match (&self.cfg.skip_authenticated, env.auth_login.as_deref()) {
            (Some(s), Some(login)) if !login.is_empty() => s.matches(login),
            _ => false,
        };
        if self.is_local(&conn.addr) || authed_skip {
            return Start::Skip;
        }
        Start::Message(AvMessage {
            scan: MessageScan::new(&self.cfg),
            seen: Seen::default(),
        })
    }

    async fn header(&self, msg: &mut AvMessage, h: &Header) {
        let m = &mut msg.seen;
        let raw = String::from_utf8_lossy(&h.value);
        // As the MTA shows it without SMFIP_HDR_LEADSPC: one leading space removed.
        let value = raw.strip_prefix(' ').unwrap_or(&raw);
        let name = h.name.as_str();
        let first = |slot: &mut Option<String>| {
            if slot.is_none() {
                *slot = Some(value.to_owned());
            }
        };
        if name.eq_ignore_ascii_case("X-Virus-Scanned") {
            m.old_scanned += 1;
        } else if name.eq_ignore_ascii_case("X-Virus-Status") {
            m.old_status += 1;
        } else if name.eq_ignore_ascii_case("Subject") {
            first(&mut m.subject);
        } else if name.eq_ignore_ascii_case("Message-ID") {
            first(&mut m.message_id);
        } else if name.eq_ignore_ascii_case("Date") {
            first(&mut m.date);
        }
        msg.scan.header(name, value).await;
    }

    async fn end_of_headers(&self, m: &mut AvMessage, _: &Connection, _: &Envelope) -> Flow {
        m.scan.end_of_headers().await;
        Flow::Continue
    }

    async fn body(&self, m: &mut AvMessage, chunk: &[u8]) {
        m.scan.body(chunk).await;
    }

    async fn end_of_message(&self, m: AvMessage, eom: &EndOfMessage<'_>) -> Verdict {
        let outcome = m.scan.finish().await;
        self.verdict(&m.seen, eom.env, &outcome)
    }
}

impl AvFilter {
    /// The verdict for a scanned message, with the side effects of an infected one
    /// (`VirusAction`, notification).
    fn verdict(&self, m: &Seen, env: &Envelope, outcome: &ScanOutcome) -> Verdict {
        let cfg = &self.cfg;
        let qid = env.queue_id();
        let d = super::decide(cfg, outcome, PRODUCT, self.hostname.as_deref());
        crate::metrics::with(|mx| {
            mx.av_result(match outcome {
                ScanOutcome::Clean => "clean",
                ScanOutcome::Infected(_) => "infected",
                ScanOutcome::Failed(_) => "error",
            });
            mx.av_action(match d.action {
                OnAction::Accept => "accept",
                OnAction::Reject => "reject",
                OnAction::Tempfail => "defer",
                OnAction::Discard => "blackhole",
                OnAction::Quarantine => "quarantine",
            });
        });
        log_scan(cfg, qid, m, env, outcome, d.action);
        if let ScanOutcome::Infected(virus) = outcome {
            let virus = sanitize_virus_name(virus);
            if let Some(prog) = &cfg.virus_action {
                self.virus_action(prog, &virus, qid, m, env);
            }
            if let Some((n, to)) = &self.notify {
                self.notify(
                    n,
                    to,
                    [
                        &virus,
                        qid,
                        &env.sender,
                        &env.rcpts.join(", "),
                        m.subject.as_deref().unwrap_or(""),
                        m.message_id.as_deref().unwrap_or(""),
                    ],
                );
            }
        }
        let action = match (d.action, d.reply) {
            (OnAction::Accept, _) => filter::Action::Accept,
            (OnAction::Reject, reply) => filter::Action::Reject(reply),
            (OnAction::Tempfail, _) => filter::Action::Tempfail(None),
            (OnAction::Discard, _) => filter::Action::Discard,
            // Never delivered unscanned or infected when the MTA cannot hold it.
            (OnAction::Quarantine, _) => filter::Action::Quarantine {
                reason: QUARANTINE_REASON.to_owned(),
                fallback: Fallback::Tempfail,
            },
        };
        Verdict {
            action,
            modifications: header_modifications(cfg, m, &d.headers),
            ..Verdict::default()
        }
    }

    /// Runs `VirusAction` in the background (the verdict never waits for the program).
    fn virus_action(
        &self,
        prog: &std::path::Path,
        virus: &str,
        qid: &str,
        m: &Seen,
        env: &Envelope,
    ) {
        let rcpts: Vec<&String> = if self.cfg.support_multiple_recipients {
            env.rcpts.iter().collect()
        } else {
            env.rcpts.last().into_iter().collect()
        };
        for rcpt in rcpts {
            let argv = vec![
                clean_arg(Some(virus)),
                clean_arg(Some(qid)),
                clean_arg(Some(&env.sender)),
                clean_arg(Some(rcpt)),
                clean_arg(m.subject.as_deref()),
                clean_arg(m.message_id.as_deref()),
                clean_arg(m.date.as_deref()),
            ];
            self.actions.run(prog, argv);
        }
    }
}

/// Addresses are passed without angle brackets (clamav-milter uses the `{mail_addr}` and
/// `{rcpt_addr}` macros). Replaces quotes, tabs, CR, LF and non-printables with spaces, as
/// clamav-milter does for VirusAction arguments.
fn clean_arg(v: Option<&str>) -> String {
    match v {
        Some(v) => v
            .chars()
            .map(|c| {
                if c == '\'' || c == '"' || c.is_control() {
                    ' '
                } else {
                    c
                }
            })
            .collect(),
        None => "<unknown>".to_owned(),
    }
}

/// Logs the scan as `LogInfected` / `LogClean` ask.
fn log_scan(
    cfg: &AvConfig,
    qid: &str,
    m: &Seen,
    env: &Envelope,
    outcome: &ScanOutcome,
    action: OnAction,
) {
    let level = match outcome {
        ScanOutcome::Infected(_) => cfg.log_infected,
        ScanOutcome::Clean => cfg.log_clean,
        ScanOutcome::Failed(_) => LogLevel::Basic,
    };
    match level {
        LogLevel::Off => {}
        LogLevel::Basic => tracing::info!(queue_id = qid, ?outcome, ?action, "scanned"),
        LogLevel::Full => tracing::info!(
            queue_id = qid,
            ?outcome,
            ?action,
            sender = %env.sender,
            rcpts = ?env.rcpts,
            subject = m.subject.as_deref().unwrap_or(""),
            message_id = m.message_id.as_deref().unwrap_or(""),
            "scanned"
        ),
    }
}

/// The `AddHeader` fields as modifications: `Add` inserts ours at index 1 and keeps the
/// others; `Replace` deletes the existing `X-Virus-*` fields (last first) and appends ours.
/// clamav-milter writes them for infected mail too; the adapter applies them only when the
/// message is delivered (accept, quarantine).
fn header_modifications(
    cfg: &AvConfig,
    m: &Seen,
    headers: &[(String, String)],
) -> Vec<Modification> {
    let mut out = Vec::new();
    if headers.is_empty() {
        return out;
    }
    if cfg.add_header == AddHeader::Replace {
        for (name, n) in [
            ("X-Virus-Scanned", m.old_scanned),
            ("X-Virus-Status", m.old_status),
        ] {
            for index in (1..=n).rev() {
                out.push(Modification::Delete {
                    name: name.to_owned(),
                    index,
                });
            }
        }
    }
    for (name, value) in headers {
        let (name, value) = (name.clone(), value.clone());
        out.push(if cfg.add_header == AddHeader::Add {
            Modification::Insert {
                index: 1,
                name,
                value,
            }
        } else {
            Modification::Append { name, value }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::Ordering;

    use bytes::Bytes;
    use milter_proto::ConnAddr;
    use milter_proto::Reply;
    use milter_proto::client::{Client, ClientConfig, Connection as MtaConn, Message, Outcome};
    use milter_proto::server::{ServerConfig, serve_connection};

    use super::*;
    use crate::av::tests::fake_clamd;
    use crate::filter::Milter;

    const EICAR_FOUND: &[u8] = b"stream: Eicar-Test-Signature FOUND\0";

    fn filter(sock: &str, extra: &str) -> Arc<AvFilter> {
        let text = format!("ClamdSocket {sock}\nReportHostname mx\n{extra}");
        Arc::new(AvFilter::new(
            AvConfig::parse(Path::new("t.conf"), &text).unwrap(),
            None,
        ))
    }

    #[test]
    fn the_verdict_header_is_required_of_the_mta_when_configured() {
        let none = filter("unix:/x", "").needs().required_actions;
        assert_eq!(none, Actions::empty());
        let add = filter("unix:/x", "AddHeader Add\n")
            .needs()
            .required_actions;
        assert_eq!(add, Actions::ADDHDRS);
        let replace = filter("unix:/x", "AddHeader Replace\n")
            .needs()
            .required_actions;
        assert_eq!(replace, Actions::ADDHDRS | Actions::CHGHDRS);
        // clamav-milter's `Yes` is `Replace`.
        let yes = filter("unix:/x", "AddHeader Yes\n")
            .needs()
            .required_actions;
        assert_eq!(yes, replace);
    }

    fn message() -> Message {
        Message::parse(
            b"<a@sender.example>",
            &[b"<b@dest.example>"],
            b"X-Virus-Status: Clean\r\nSubject: hi\r\n\r\nbody\r\n",
        )
    }

    /// One connection and message through `Milter<AvFilter>`, the MTA offering `actions`.
    async fn run(f: Arc<AvFilter>, addr: ConnAddr, actions: Actions) -> (Outcome, Option<Outcome>) {
        let (mta, milter) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            serve_connection(milter, Milter::new(f), &ServerConfig::default()).await
        });
        let mut cfg = ClientConfig::default();
        cfg.actions = actions;
        let mut client = Client::negotiate(mta, cfg).await.unwrap();
        let conn = MtaConn {
            addr,
            ..MtaConn::default()
        };
        let c = client.connection(&conn).await.unwrap();
        let m = if c.decision == Reply::Continue {
            Some(client.message(&message()).await.unwrap())
        } else {
            None
        };
        client.quit().await.unwrap();
        server.await.unwrap().unwrap();
        (c, m)
    }

    fn inet(address: &'static [u8]) -> ConnAddr {
        ConnAddr::Inet {
            port: 25,
            address: Bytes::from_static(address),
        }
    }

    #[tokio::test]
    async fn an_unparsed_inet_address_is_not_local_and_is_scanned() {
        let (_d, sock, got) = fake_clamd(EICAR_FOUND);
        let f = filter(&sock, "LocalNet local\nOnInfected Reject\n");
        let (c, _) = run(f.clone(), ConnAddr::Unknown, Actions::all()).await;
        assert_eq!(c.decision, Reply::Accept, "a local submission is skipped");
        let (c, m) = run(f, inet(b"not-an-address"), Actions::all()).await;
        assert_eq!(c.decision, Reply::Continue);
        assert_eq!(m.unwrap().decision, Reply::Reject);
        assert!(got.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn quarantine_without_the_mta_granting_it_is_a_tempfail() {
        let (_d, sock, _) = fake_clamd(EICAR_FOUND);
        let no_quarantine = Actions::all() - Actions::QUARANTINE;
        let f = filter(&sock, "OnInfected Quarantine\nAddHeader Replace\n");
        let (_, m) = run(f.clone(), inet(b"192.0.2.1"), no_quarantine).await;
        let m = m.unwrap();
        assert!(
            matches!(&m.decision, Reply::ReplyCode(r) if r.starts_with(b"451 ")),
            "{m:?}"
        );
        assert!(m.modifications.is_empty(), "{m:?}");
        let (_, m) = run(f, inet(b"192.0.2.1"), Actions::all()).await;
        let m = m.unwrap();
        assert_eq!(m.decision, Reply::Accept);
        assert!(
            m.modifications
                .contains(&Reply::Quarantine(Bytes::from_static(
                    b"quarantined by av-milter"
                )))
        );
        // Held, so the fields are written: the old Clean one removed, Infected appended.
        assert!(m.modifications.contains(&Reply::ChgHeader {
            index: 1,
            name: Bytes::from_static(b"X-Virus-Status"),
            value: Bytes::new(),
        }));
        assert!(m.modifications.contains(&Reply::AddHeader {
            name: Bytes::from_static(b"X-Virus-Status"),
            value: Bytes::from_static(b" Infected (Eicar-Test-Signature)"),
        }));
        // A failed scan to quarantine (the file refuses `OnFail Quarantine`, as clamav-milter
        // does, but a library user may set it) with clamd down: the same, never delivered
        // unscanned.
        let mut cfg = AvConfig::parse(
            Path::new("t.conf"),
            "ClamdSocket unix:/nonexistent/clamd.sock\n",
        )
        .unwrap();
        cfg.on_fail = OnAction::Quarantine;
        let f = Arc::new(AvFilter::new(cfg, None));
        let (_, m) = run(f, inet(b"192.0.2.1"), no_quarantine).await;
        assert!(matches!(m.unwrap().decision, Reply::ReplyCode(r) if r.starts_with(b"451 ")));
    }

    #[tokio::test]
    async fn a_scan_not_done_never_writes_clean() {
        let f = filter(
            "unix:/nonexistent/clamd.sock",
            "OnFail Accept\nAddHeader Replace\n",
        );
        let (_, m) = run(f, inet(b"192.0.2.1"), Actions::all()).await;
        let m = m.unwrap();
        assert_eq!(m.decision, Reply::Accept);
        assert!(m.modifications.is_empty(), "{m:?}");
        // A clamd that never answers: a read timeout, no header either.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let f = filter(
            &format!("unix:{}", path.display()),
            "OnFail Accept\nAddHeader Replace\nReadTimeout 1\n",
        );
        let (_, m) = run(f, inet(b"192.0.2.1"), Actions::all()).await;
        let m = m.unwrap();
        assert_eq!(m.decision, Reply::Accept);
        assert!(m.modifications.is_empty(), "{m:?}");
        hold.abort();
    }

    #[tokio::test]
    async fn add_header_add_inserts_at_1_and_replace_deletes_then_appends() {
        let (_d, sock, _) = fake_clamd(b"stream: OK\0");
        let f = filter(&sock, "AddHeader Add\n");
        let (_, m) = run(f, inet(b"192.0.2.1"), Actions::all()).await;
        let mods = m.unwrap().modifications;
        assert_eq!(
            mods,
            [
                Reply::InsHeader {
                    index: 1,
                    name: Bytes::from_static(b"X-Virus-Scanned"),
                    value: Bytes::from(format!(" {PRODUCT} at mx")),
                },
                Reply::InsHeader {
                    index: 1,
                    name: Bytes::from_static(b"X-Virus-Status"),
                    value: Bytes::from_static(b" Clean"),
                },
            ]
        );
        let f = filter(&sock, "AddHeader Replace\n");
        let (_, m) = run(f, inet(b"192.0.2.1"), Actions::all()).await;
        let mods = m.unwrap().modifications;
        assert_eq!(
            mods[0],
            Reply::ChgHeader {
                index: 1,
                name: Bytes::from_static(b"X-Virus-Status"),
                value: Bytes::new(),
            }
        );
        assert!(
            matches!(&mods[1], Reply::AddHeader { name, .. } if &name[..] == b"X-Virus-Scanned")
        );
        assert!(
            matches!(&mods[2], Reply::AddHeader { name, value } if &name[..] == b"X-Virus-Status" && &value[..] == b" Clean")
        );
    }

    /// VirusAction children: beyond the bound the run is dropped and counted; a child that
    /// overstays the timeout is killed.
    #[tokio::test]
    async fn background_programs_are_bounded_and_killed_after_the_timeout() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = dir.path().join("action.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho $$ > {}\nexec sleep 30\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bg = Background::new(1, Duration::from_millis(500));
        bg.run(&script, vec!["Eicar".into()]);
        bg.run(&script, vec!["Eicar".into()]);
        assert_eq!(bg.dropped.load(Ordering::Relaxed), 1);
        let mut pid = String::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
            if !pid.trim().is_empty() {
                break;
            }
        }
        let proc_dir = Path::new("/proc").join(pid.trim());
        assert!(proc_dir.exists(), "the program runs");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!proc_dir.exists(), "killed and reaped after the timeout");
        // The slot is free again.
        bg.run(&script, vec!["Eicar".into()]);
        assert_eq!(bg.dropped.load(Ordering::Relaxed), 1);
    }
}
