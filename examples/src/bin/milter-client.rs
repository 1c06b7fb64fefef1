//! `milter-client`: plays the MTA. Sends one .eml file through any milter and prints the
//! negotiated options, each stage's reply and the modifications the milter asked for.
//!
//! Run: `cargo run -p mailstack-examples --bin milter-client -- --socket unix:/tmp/stamp.sock
//! --from alice@src.example --rcpt bob@dest.example message.eml`

use bytes::Bytes;
use clap::Parser;
use milter_proto::ConnAddr;
use milter_proto::PROTOCOL_VERSION;
use milter_proto::Reply;
use milter_proto::SocketSpec;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::{Actions, Protocol};

/// Send a message through a milter and show what it answers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The milter: unix:/path, local:/path, inet:host:port, inet:port@host, inet6:port@host.
    #[arg(long)]
    socket: SocketSpec,
    /// Envelope sender.
    #[arg(long, default_value = "sender@src.example")]
    from: String,
    /// Envelope recipient (repeatable).
    #[arg(long, default_values_t = ["rcpt@dest.example".to_owned()])]
    rcpt: Vec<String>,
    /// Client address sent in CONNECT (IPv4, or IPv6 when it contains a colon).
    #[arg(long, default_value = "192.0.2.1")]
    client_addr: String,
    /// Client port sent in CONNECT.
    #[arg(long, default_value_t = 40000)]
    client_port: u16,
    /// Client host name sent in CONNECT.
    #[arg(long, default_value = "client.example")]
    client_name: String,
    /// HELO name.
    #[arg(long, default_value = "client.example")]
    helo: String,
    /// Macro sent at connect, as NAME=VALUE (repeatable), e.g. `--macro j=mx.example`.
    #[arg(long = "macro", value_name = "NAME=VALUE")]
    macros: Vec<String>,
    /// Macro sent with MAIL FROM, as NAME=VALUE (repeatable), e.g. `--mail-macro i=4ABC`.
    #[arg(long = "mail-macro", value_name = "NAME=VALUE")]
    mail_macros: Vec<String>,
    /// Protocol version offered (2 to 6).
    #[arg(long, default_value_t = PROTOCOL_VERSION)]
    protocol_version: u32,
    /// Actions offered (SMFIF_* mask).
    #[arg(long, default_value_t = 0x1FF)]
    actions: u32,
    /// Protocol options offered (SMFIP_* mask).
    #[arg(long, default_value_t = 0x1F_FFFF)]
    protocol: u32,
    /// The message (headers, blank line, body).
    eml: std::path::PathBuf,
}

fn pairs(list: &[String]) -> Result<Vec<(Bytes, Bytes)>, String> {
    list.iter()
        .map(|m| {
            let (k, v) = m
                .split_once('=')
                .ok_or_else(|| format!("macro {m:?}: want NAME=VALUE"))?;
            Ok((Bytes::from(k.to_owned()), Bytes::from(v.to_owned())))
        })
        .collect()
}

/// The stage a command byte stands for.
fn stage(code: u8) -> &'static str {
    match code {
        b'C' => "connect",
        b'H' => "helo",
        b'M' => "mail",
        b'R' => "rcpt",
        b'T' => "data",
        b'L' => "header",
        b'N' => "eoh",
        b'B' => "body",
        b'E' => "eom",
        b'U' => "unknown",
        _ => "?",
    }
}

/// A reply with its byte fields shown as text.
fn show(r: &Reply) -> String {
    let t = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    match r {
        Reply::AddHeader { name, value } => format!("AddHeader({:?}, {:?})", t(name), t(value)),
        Reply::InsHeader { index, name, value } => {
            format!("InsHeader({index}, {:?}, {:?})", t(name), t(value))
        }
        Reply::ChgHeader { index, name, value } => {
            format!("ChgHeader({:?}, {index}, {:?})", t(name), t(value))
        }
        Reply::AddRcpt(r) => format!("AddRcpt({:?})", t(r)),
        Reply::AddRcptPar { rcpt, args } => {
            format!("AddRcptPar({:?}, {:?})", t(rcpt), args.as_ref().map(t))
        }
        Reply::DelRcpt(r) => format!("DelRcpt({:?})", t(r)),
        Reply::ChgFrom { from, args } => {
            format!("ChgFrom({:?}, {:?})", t(from), args.as_ref().map(t))
        }
        Reply::Quarantine(r) => format!("Quarantine({:?})", t(r)),
        Reply::ReplyCode(c) => format!("ReplyCode({:?})", t(c)),
        Reply::ReplBody(b) => format!("ReplaceBody({:?})", t(b)),
        other => format!("{other:?}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    mailstack_examples::logging::stderr("warn");
    let args = Args::parse();
    let raw = std::fs::read(&args.eml)?;
    let address = Bytes::from(args.client_addr.clone());
    let port = args.client_port;
    let conn = Connection {
        hostname: args.client_name.into(),
        addr: if args.client_addr.contains(':') {
            ConnAddr::Inet6 { port, address }
        } else {
            ConnAddr::Inet { port, address }
        },
        helo: Some(args.helo.into()),
        macros: vec![(b'C', pairs(&args.macros)?)],
    };
    let from = format!("<{}>", args.from);
    let rcpts: Vec<String> = args.rcpt.iter().map(|r| format!("<{r}>")).collect();
    let rcpts: Vec<&[u8]> = rcpts.iter().map(|r| r.as_bytes()).collect();
    let mut msg = Message::parse(from.as_bytes(), &rcpts, &raw);
    msg.macros = vec![(b'M', pairs(&args.mail_macros)?)];

    let config = ClientConfig::offer(
        args.protocol_version,
        Actions::from_bits_retain(args.actions),
        Protocol::from_bits_retain(args.protocol),
    );
    let mut client = Client::connect(&args.socket, config).await?;
    let n = client.negotiated();
    println!(
        "negotiated: version {} actions {:#x} protocol {:#x}",
        n.version,
        n.actions.bits(),
        n.protocol.bits()
    );
    let mut outcome = client.connection(&conn).await?;
    let message = client.message(&msg).await?;
    outcome.replies.extend(message.replies.iter().cloned());
    for (code, reply) in &outcome.replies {
        println!("reply {}: {}", stage(*code), show(reply));
    }
    let mut body_shown = false;
    for m in &message.modifications {
        match (m, message.replaced_body()) {
            // REPLBODY chunks are shown once, joined.
            (Reply::ReplBody(_), Some(body)) if !body_shown => {
                body_shown = true;
                println!("modification: {}", show(&Reply::ReplBody(body)));
            }
            (Reply::ReplBody(_), _) => {}
            _ => println!("modification: {}", show(m)),
        }
    }
    if message.progress > 0 {
        println!("progress: {}", message.progress);
    }
    println!("decision: {}", show(&message.decision));
    client.quit().await?;
    Ok(())
}
