//! `stamp-milter`: a milter that changes messages, for the interop tests and as an example of
//! every end-of-message modification. It adds a header, adds a recipient, replaces the body
//! (always, or when the message carries the header `X-Replace-Body`), and rejects messages
//! whose Subject, From header or body contains a pattern, with the SMTP reply you choose.
//!
//! Run: `cargo run -p mailstack-examples --bin stamp-milter -- --socket unix:/tmp/stamp.sock
//! --add-header "X-Stamp: yes" --reject-pattern reject-me --reject-reply "550 5.7.1 no thanks"`
//! and point Postfix at it with `smtpd_milters = unix:/tmp/stamp.sock`.

use std::sync::Arc;

use clap::Parser;
use mailstack_examples::milter::{self, Filter, Message, Modification, Reply, SocketSpec, action};

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
}

struct Stamp {
    headers: Vec<(String, String)>,
    args: Args,
}

impl Stamp {
    fn rejects(&self, msg: &Message) -> bool {
        let Some(p) = self.args.reject_pattern.as_deref() else {
            return false;
        };
        msg.header("Subject")
            .chain(msg.header("From"))
            .any(|v| v.contains(p))
            || String::from_utf8_lossy(&msg.body).contains(p)
    }
}

impl Filter for Stamp {
    fn actions(&self) -> u32 {
        action::ADDHDRS | action::ADDRCPT | action::CHGBODY
    }
    fn protocol(&self) -> u32 {
        0
    }
    fn end_of_message(&self, msg: &Message) -> (Vec<Modification>, Reply) {
        if self.rejects(msg) {
            tracing::info!(from = %msg.mail_from, "rejecting");
            return (Vec::new(), Reply::Code(self.args.reject_reply.clone()));
        }
        let mut mods: Vec<Modification> = (self.headers.iter())
            .map(|(n, v)| Modification::AddHeader(n.clone(), v.clone()))
            .collect();
        mods.extend(
            self.args
                .add_rcpt
                .iter()
                .map(|r| Modification::AddRcpt(format!("<{r}>"))),
        );
        let triggered = self.args.replace_always || msg.header("X-Replace-Body").next().is_some();
        if let Some(text) = self.args.replace_body.as_deref().filter(|_| triggered) {
            let body = text.replace("\\n", "\r\n");
            mods.push(Modification::ReplaceBody(body.into_bytes()));
        }
        (mods, Reply::Accept)
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut headers = Vec::new();
    for h in &args.add_header {
        let Some((n, v)) = h.split_once(':') else {
            eprintln!("--add-header {h:?}: want \"Name: value\"");
            std::process::exit(2);
        };
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let socket = args.socket.clone();
    milter::serve(&socket, Arc::new(Stamp { headers, args })).await
}
