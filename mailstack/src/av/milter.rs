//! The antivirus filter as a milter: [`AvFilter`] holds what all connections share (the
//! configuration, the host name for `X-Virus-Scanned`, the notifier) and makes one
//! [`AvMilter`] per MTA connection, a [`milter_proto::server::Handler`] that streams each
//! header and body chunk to clamd from its stage method and decides at end of message.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use mailstack::av::{AvConfig, milter::AvFilter};
//! use milter_proto::server::{ServerConfig, serve};
//! use milter_proto::socket::{Listener, SocketSpec, UnixSocketOptions};
//!
//! let cfg = AvConfig::read(std::path::Path::new("/etc/clamav/clamav-milter.conf"))
//!     .map_err(std::io::Error::other)?;
//! let filter = Arc::new(AvFilter::new(cfg, None));
//! let spec: SocketSpec = "unix:/run/av.sock".parse().map_err(std::io::Error::other)?;
//! let listener = Listener::bind(&spec, &UnixSocketOptions::default()).await?;
//! serve(listener, move || filter.connection(), ServerConfig::default(), std::future::pending()).await
//! # }
//! ```

use std::sync::Arc;

use bytes::Bytes;
use milter_proto::command::ConnAddr;
use milter_proto::flags::Actions;
use milter_proto::negotiate::Needs;
use milter_proto::server::{Context, Decision, Handler, async_trait};

use super::{Action, AddHeader, AvConfig, LogLevel, MessageScan, Outcome};
use crate::notify::Notifier;

/// The product name in `X-Virus-Scanned`.
pub const PRODUCT: &str = concat!("mailstack av-milter ", env!("CARGO_PKG_VERSION"));
/// The reason given to the MTA when `Quarantine` is the action.
pub const QUARANTINE_REASON: &str = "quarantined by av-milter";

/// What every connection of the AV milter shares.
#[derive(Debug)]
pub struct AvFilter {
    cfg: AvConfig,
    hostname: Option<String>,
    notify: Option<(Notifier, String)>,
}

impl AvFilter {
    /// A filter for `cfg`. `ReportHostname` names the host in `X-Virus-Scanned`; without it,
    /// the kernel's host name. `notify` is the notifier and the address infected-mail
    /// notifications go to.
    pub fn new(cfg: AvConfig, notify: Option<(Notifier, String)>) -> Self {
        let hostname = cfg.report_hostname.clone().or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        });
        Self {
            cfg,
            hostname,
            notify,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AvConfig {
        &self.cfg
    }

    /// The handler for one new MTA connection.
    pub fn connection(self: &Arc<Self>) -> AvMilter {
        AvMilter::new(Arc::clone(self))
    }
}

/// Per-message state.
#[derive(Debug, Default)]
struct Msg {
    scan: Option<MessageScan>,
    sender: String,
    rcpts: Vec<String>,
    /// How many X-Virus-Scanned / X-Virus-Status fields the message already has.
    old_scanned: u32,
    old_status: u32,
    subject: Option<String>,
    message_id: Option<String>,
    date: Option<String>,
}

/// The handler of one MTA connection (see [`AvFilter::connection`]).
#[derive(Debug)]
pub struct AvMilter {
    ctx: Arc<AvFilter>,
    /// The client is in `LocalNet`: accept without scanning.
    local: bool,
    msg: Msg,
}

impl AvMilter {
    fn new(ctx: Arc<AvFilter>) -> Self {
        Self {
            ctx,
            local: false,
            msg: Msg::default(),
        }
    }
}

/// Whether the connecting client is in `LocalNet` (family `L`/`U` = local, non-SMTP).
fn client_is_local(cfg: &AvConfig, addr: &ConnAddr) -> bool {
    let ip = match addr {
        ConnAddr::Inet { address, .. } | ConnAddr::Inet6 { address, .. } => {
            std::str::from_utf8(address)
                .ok()
                .and_then(|a| a.trim_start_matches("IPv6:").parse().ok())
        }
        _ => None,
    };
    cfg.local_net.iter().any(|n| match (n, ip) {
        (super::config::LocalNet::Local, None) => true,
        (_, Some(ip)) => n.contains(ip),
        _ => false,
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[async_trait]
impl Handler for AvMilter {
    fn needs(&self) -> Needs {
        Needs {
            actions: Actions::ADDHDRS | Actions::CHGHDRS | Actions::QUARANTINE,
            ..Needs::default()
        }
    }

    async fn connect(&mut self, _ctx: &mut Context, _host: &[u8], addr: &ConnAddr) -> Decision {
        self.local = client_is_local(&self.ctx.cfg, addr);
        if self.local {
            Decision::Accept
        } else {
            Decision::Continue
        }
    }

    async fn mail(&mut self, ctx: &mut Context, sender: &[u8], _args: &[Bytes]) -> Decision {
        let cfg = &self.ctx.cfg;
        self.msg = Msg {
            sender: lossy(sender),
            ..Msg::default()
        };
        let authed = ctx.macro_value("auth_authen").filter(|a| !a.is_empty());
        let skip = self.local
            || matches!((&cfg.skip_authenticated, authed),
                (Some(s), Some(a)) if s.matches(&String::from_utf8_lossy(a)));
        if skip {
            return Decision::Accept;
        }
        self.msg.scan = Some(MessageScan::new(cfg));
        Decision::Continue
    }

    async fn rcpt(&mut self, _ctx: &mut Context, rcpt: &[u8], _args: &[Bytes]) -> Decision {
        self.msg.rcpts.push(lossy(rcpt));
        Decision::Continue
    }

    async fn header(&mut self, _ctx: &mut Context, name: &[u8], value: &[u8]) -> Decision {
        let (name, value) = (lossy(name), lossy(value));
        let m = &mut self.msg;
        let first = |slot: &mut Option<String>| {
            if slot.is_none() {
                *slot = Some(value.clone());
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
        if let Some(scan) = m.scan.as_mut() {
            scan.header(&name, &value).await;
        }
        Decision::Continue
    }

    async fn eoh(&mut self, _ctx: &mut Context) -> Decision {
        if let Some(scan) = self.msg.scan.as_mut() {
            scan.end_of_headers().await;
        }
        Decision::Continue
    }

    async fn body(&mut self, _ctx: &mut Context, chunk: &Bytes) -> Decision {
        if let Some(scan) = self.msg.scan.as_mut() {
            scan.body(chunk).await;
        }
        Decision::Continue
    }

    async fn eom(&mut self, ctx: &mut Context) -> Decision {
        let mut m = std::mem::take(&mut self.msg);
        let Some(scan) = m.scan.take() else {
            return Decision::Accept;
        };
        let outcome = scan.finish().await;
        end_of_message(&self.ctx, ctx, &m, &outcome)
    }

    async fn abort(&mut self, _ctx: &mut Context) {
        self.msg = Msg::default();
    }

    async fn close(&mut self, _ctx: &mut Context) {
        self.msg = Msg::default();
        self.local = false;
    }
}

/// Addresses are passed without angle brackets (clamav-milter uses the `{mail_addr}` and
/// `{rcpt_addr}` macros). Replaces quotes, tabs, CR, LF and non-printables with spaces, as clamav-milter does for
/// VirusAction arguments.
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
fn log_scan(cfg: &AvConfig, qid: &str, m: &Msg, outcome: &Outcome, action: Action) {
    let level = match outcome {
        Outcome::Infected(_) => cfg.log_infected,
        Outcome::Clean => cfg.log_clean,
        Outcome::Failed(_) => LogLevel::Basic,
    };
    match level {
        LogLevel::Off => {}
        LogLevel::Basic => tracing::info!(queue_id = qid, ?outcome, ?action, "scanned"),
        LogLevel::Full => tracing::info!(
            queue_id = qid,
            ?outcome,
            ?action,
            sender = %m.sender,
            rcpts = ?m.rcpts,
            subject = m.subject.as_deref().unwrap_or(""),
            message_id = m.message_id.as_deref().unwrap_or(""),
            "scanned"
        ),
    }
}

/// Queues the `AddHeader` fields (clamav-milter adds them for infected mail too, before the
/// action).
fn queue_headers(
    cfg: &AvConfig,
    ctx: &mut Context,
    m: &Msg,
    headers: &[(String, String)],
) -> Result<(), milter_proto::ApiMisuse> {
    if headers.is_empty() {
        return Ok(());
    }
    if cfg.add_header == AddHeader::Replace {
        for (name, n) in [
            ("X-Virus-Scanned", m.old_scanned),
            ("X-Virus-Status", m.old_status),
        ] {
            for i in (1..=n).rev() {
                ctx.delete_header(name, i)?;
            }
        }
    }
    for (name, value) in headers {
        if cfg.add_header == AddHeader::Add {
            ctx.insert_header(1, name, value)?;
        } else {
            ctx.add_header(name, value)?;
        }
    }
    Ok(())
}

/// Runs `VirusAction` in the background (the verdict never waits for the program).
fn virus_action(cfg: &AvConfig, prog: &std::path::Path, virus: &str, qid: &str, m: &Msg) {
    let rcpts: Vec<String> = if cfg.support_multiple_recipients {
        m.rcpts.clone()
    } else {
        m.rcpts.last().cloned().into_iter().collect()
    };
    for rcpt in rcpts {
        let argv = [
            virus.to_owned(),
            qid.to_owned(),
            clean_arg(Some(m.sender.trim_start_matches('<').trim_end_matches('>'))),
            clean_arg(Some(rcpt.trim_start_matches('<').trim_end_matches('>'))),
            clean_arg(m.subject.as_deref()),
            clean_arg(m.message_id.as_deref()),
            clean_arg(m.date.as_deref()),
        ];
        let prog = prog.to_owned();
        tokio::spawn(async move {
            match tokio::process::Command::new(&prog)
                .args(&argv)
                .status()
                .await
            {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::warn!(program = %prog.display(), %s, "VirusAction failed"),
                Err(e) => tracing::warn!(program = %prog.display(), error = %e, "VirusAction"),
            }
        });
    }
}

/// Sends the infected-mail notification in the background (with its retries).
fn notify(n: &Notifier, to: &str, virus: &str, qid: &str, m: &Msg) {
    let (subject, body) = crate::notify::infected_text([
        virus,
        qid,
        &m.sender,
        &m.rcpts.join(", "),
        m.subject.as_deref().unwrap_or(""),
        m.message_id.as_deref().unwrap_or(""),
    ]);
    match n.send(to, &subject, &body) {
        Ok(h) => {
            tokio::spawn(async move {
                match h.await {
                    Ok(Ok(())) => tracing::info!("notification sent"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "notification"),
                    Err(e) => tracing::warn!(error = %e, "notification task"),
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "notification"),
    }
}

fn end_of_message(app: &AvFilter, ctx: &mut Context, m: &Msg, outcome: &Outcome) -> Decision {
    let cfg = &app.cfg;
    let qid = ctx
        .macro_value("i")
        .map_or_else(|| "NOQUEUE".to_owned(), |q| lossy(q));
    let d = super::decide(cfg, outcome, PRODUCT, app.hostname.as_deref());
    log_scan(cfg, &qid, m, outcome, d.action);
    if let Err(e) = queue_headers(cfg, ctx, m, &d.headers) {
        tracing::warn!(queue_id = qid, "cannot write the AddHeader fields: {e}");
    }
    if let Outcome::Infected(virus) = outcome {
        if let Some(prog) = &cfg.virus_action {
            virus_action(cfg, prog, virus, &qid, m);
        }
        if let Some((n, to)) = &app.notify {
            notify(n, to, virus, &qid, m);
        }
    }
    match (d.action, d.reply) {
        (Action::Accept, _) => Decision::Accept,
        (Action::Reject, Some(reply)) => Decision::ReplyCode(reply.into()),
        (Action::Reject, None) => Decision::Reject,
        (Action::Defer, _) => Decision::Tempfail,
        (Action::Blackhole, _) => Decision::Discard,
        (Action::Quarantine, _) => {
            if let Err(e) = ctx.quarantine(QUARANTINE_REASON) {
                tracing::warn!(queue_id = qid, "cannot quarantine: {e}");
            }
            Decision::Accept
        }
    }
}
