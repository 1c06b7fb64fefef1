//! `milter-client`: plays the MTA. Sends one .eml file through any milter and prints the
//! negotiated options, each stage's reply and the modifications the milter asked for.
//!
//! Run: `cargo run -p mailstack-examples --bin milter-client -- --socket unix:/tmp/stamp.sock
//! --from alice@src.example --rcpt bob@dest.example message.eml`

use clap::Parser;
use mailstack_examples::milter::{AnyClient, Envelope, Modification, SocketSpec};

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
    /// Client IPv4 address sent in CONNECT.
    #[arg(long, default_value = "192.0.2.1")]
    client_addr: String,
    /// Client host name sent in CONNECT.
    #[arg(long, default_value = "client.example")]
    client_name: String,
    /// HELO name.
    #[arg(long, default_value = "client.example")]
    helo: String,
    /// Macro sent at connect, as NAME=VALUE (repeatable), e.g. `--macro j=mx.example`.
    #[arg(long = "macro", value_name = "NAME=VALUE")]
    macros: Vec<String>,
    /// Actions offered (SMFIF_* mask).
    #[arg(long, default_value_t = 0x1FF)]
    actions: u32,
    /// Protocol options offered (SMFIP_* mask).
    #[arg(long, default_value_t = 0x1F_FFFF)]
    protocol: u32,
    /// The message (headers, blank line, body).
    eml: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let raw = std::fs::read(&args.eml)?;
    let mut env = Envelope {
        hostname: args.client_name,
        addr: args.client_addr,
        helo: args.helo,
        from: args.from,
        rcpts: args.rcpt,
        ..Envelope::default()
    };
    for m in &args.macros {
        let (k, v) = m.split_once('=').ok_or("--macro wants NAME=VALUE")?;
        env.macros.push((k.to_owned(), v.to_owned()));
    }
    let mut client = AnyClient::connect(&args.socket).await?;
    let (v, a, p) = client.negotiate(args.actions, args.protocol).await?;
    println!("negotiated: version {v} actions {a:#x} protocol {p:#x}");
    let outcome = client.send_message(&env, &raw).await?;
    for (stage, reply) in &outcome.replies {
        println!("reply {stage}: {reply:?}");
    }
    for m in &outcome.modifications {
        match m {
            Modification::ReplaceBody(b) => {
                println!(
                    "modification: ReplaceBody({:?})",
                    String::from_utf8_lossy(b)
                );
            }
            other => println!("modification: {other:?}"),
        }
    }
    println!("decision: {:?}", outcome.decision);
    client.quit().await?;
    Ok(())
}
