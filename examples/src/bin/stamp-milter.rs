//! `stamp-milter`: a milter that changes messages, for the interop tests and as an example of
//! every end-of-message modification. It adds a header, adds a recipient, replaces the body
//! (always, or when the message carries the header `X-Replace-Body`), and rejects messages
//! whose Subject, From header or body contains a pattern, with the SMTP reply you choose.
//!
//! Run: `cargo run -p mailstack-examples --bin stamp-milter -- --socket unix:/tmp/stamp.sock
//! --add-header "X-Stamp: yes" --reject-pattern reject-me --reject-reply "550 5.7.1 no thanks"`
//! and point Postfix at it with `smtpd_milters = unix:/tmp/stamp.sock`.

use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use mailstack_examples::shutdown_signal;
use milter_proto::Actions;
use milter_proto::Needs;
use milter_proto::server::{Context, Decision, Handler, ServerConfig, async_trait, serve};
use milter_proto::{Listener, SocketSpec, UnixOptions};

/// A milter that stamps, adds a recipient, replaces bodies and rejects on a pattern.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where to listen: unix:/path, local:/path, inet:host:port, inet:port@host,
    /// inet6:port@host, or a bare path.
    #[arg(long, default_value = "unix:/run/stamp-milter.sock")]
    socket: SocketSpec,
    /// Header to add to every accepted message, as "Name: value" (repeatable).
    #[arg(long, value_name = "NAME: VALUE")]
    add_header: Vec<String>,
    /// Recipient to add to every accepted message (repeatable).
    #[arg(long, value_name = "ADDR")]
    add_rcpt: Vec<String>,
    /// New body for messages that carry the header `X-Replace-Body` (or every message with
    /// --replace-always). `\n` in TEXT becomes a CRLF line end.
    #[arg(long, value_name = "TEXT")]
    replace_body: Option<String>,
    /// Replace the body of every message, not only those with `X-Replace-Body`.
    #[arg(long, requires = "replace_body")]
    replace_always: bool,
    /// Reject messages whose Subject, From header or body contains this text.
    #[arg(long, value_name = "TEXT")]
    reject_pattern: Option<String>,
    /// The SMTP reply for rejected messages.
    #[arg(long, default_value = "550 5.7.1 rejected by stamp-milter")]
    reject_reply: String,
    /// Mode of a unix socket file, octal. The default lets Postfix's smtpd (user postfix)
    /// connect; narrow it (660 with a shared group) where that matters.
    #[arg(long, value_parser = octal, default_value = "666")]
    socket_mode: u32,
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?}: not an octal mode: {e}"))
}

/// The configuration every connection shares.
struct Config {
    headers: Vec<(String, String)>,
    args: Args,
}

/// One MTA connection: what the current message showed so far.
struct Stamp {
    cfg: Arc<Config>,
    /// The pattern was seen in Subject, From or the body.
    matched: bool,
    /// The message carries `X-Replace-Body`.
    replace: bool,
    /// The body so far, kept only while a pattern must be searched in it.
    body: Vec<u8>,
}

impl Stamp {
    fn new(cfg: Arc<Config>) -> Self {
        Self {
            cfg,
            matched: false,
            replace: false,
            body: Vec::new(),
        }
    }

    fn pattern(&self) -> Option<&[u8]> {
        self.cfg.args.reject_pattern.as_deref().map(str::as_bytes)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[async_trait]
impl Handler for Stamp {
    fn needs(&self) -> Needs {
        Needs {
            actions: Actions::ADDHDRS | Actions::ADDRCPT | Actions::CHGBODY,
            ..Needs::default()
        }
    }

    async fn mail(&mut self, _ctx: &mut Context, _sender: &[u8], _args: &[Bytes]) -> Decision {
        (self.matched, self.replace) = (false, false);
        self.body.clear();
        Decision::Continue
    }

    async fn header(&mut self, _ctx: &mut Context, name: &[u8], value: &[u8]) -> Decision {
        if name.eq_ignore_ascii_case(b"X-Replace-Body") {
            self.replace = true;
        }
        let checked = name.eq_ignore_ascii_case(b"Subject") || name.eq_ignore_ascii_case(b"From");
        if checked && self.pattern().is_some_and(|p| contains(value, p)) {
            self.matched = true;
        }
        Decision::Continue
    }

    async fn body(&mut self, _ctx: &mut Context, chunk: &Bytes) -> Decision {
        let cfg = Arc::clone(&self.cfg);
        let pattern = cfg.args.reject_pattern.as_deref().map(str::as_bytes);
        if let Some(p) = pattern.filter(|_| !self.matched) {
            // Keep only what a match across the chunk boundary needs.
            self.body.extend_from_slice(chunk);
            self.matched = contains(&self.body, p);
            let keep = p.len().saturating_sub(1);
            let cut = self.body.len().saturating_sub(keep);
            self.body.drain(..cut);
        }
        Decision::Continue
    }

    async fn eom(&mut self, ctx: &mut Context) -> Decision {
        if self.matched {
            let from = ctx.macro_value("mail_addr").cloned().unwrap_or_default();
            tracing::info!(from = %String::from_utf8_lossy(&from), "rejecting");
            let reply = self.cfg.args.reject_reply.clone();
            return Decision::ReplyCode(reply.into());
        }
        match self.modify(ctx) {
            Ok(()) => Decision::Accept,
            Err(e) => {
                tracing::warn!("cannot modify the message: {e}");
                Decision::Tempfail
            }
        }
    }
}

impl Stamp {
    fn modify(&self, ctx: &mut Context) -> Result<(), milter_proto::ApiMisuse> {
        for (n, v) in &self.cfg.headers {
            ctx.add_header(n, v)?;
        }
        for r in &self.cfg.args.add_rcpt {
            ctx.add_rcpt(&format!("<{r}>"))?;
        }
        let triggered = self.cfg.args.replace_always || self.replace;
        if let Some(text) = self.cfg.args.replace_body.as_deref().filter(|_| triggered) {
            ctx.replace_body(text.replace("\\n", "\r\n").into())?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    mailstack_examples::logging::stderr("info");
    let args = Args::parse();
    let mut headers = Vec::new();
    for h in &args.add_header {
        let Some((n, v)) = h.split_once(':') else {
            eprintln!("--add-header {h:?}: want \"Name: value\"");
            std::process::exit(2);
        };
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let unix = UnixOptions {
        mode: Some(args.socket_mode),
        ..UnixOptions::default()
    };
    let listener = Listener::bind(&args.socket, &unix).await?;
    tracing::info!(socket = %args.socket, "listening");
    let cfg = Arc::new(Config { headers, args });
    let make = move || Stamp::new(Arc::clone(&cfg));
    serve(listener, make, ServerConfig::default(), shutdown_signal()).await
}
