//! `null-milter`: the smallest useful milter. It negotiates every stage and answers CONTINUE
//! to each (ACCEPT at end of message), changing nothing. It is the server side of the milter
//! throughput bench (`benches/benches/milter_throughput.rs`).
//!
//! Run: `cargo run -p mailstack-examples --bin null-milter -- --socket unix:/tmp/null.sock`
//! and point Postfix at it with `smtpd_milters = unix:/tmp/null.sock`.

use std::sync::Arc;

use clap::Parser;
use mailstack_examples::milter::{self, Filter, Message, Modification, Reply, SocketSpec};

/// A milter that accepts everything.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where to listen: unix:/path, local:/path, inet:host:port, inet:port@host,
    /// inet6:port@host, or a bare path.
    #[arg(long, default_value = "unix:/run/null-milter.sock")]
    socket: SocketSpec,
    /// Negotiate the NR_* options (no reply to connect, helo, mail, rcpt, data, header, eoh,
    /// body) that the MTA offers, so only end-of-message is answered.
    #[arg(long)]
    no_reply: bool,
}

struct Null {
    protocol: u32,
}

impl Filter for Null {
    fn actions(&self) -> u32 {
        0
    }
    fn protocol(&self) -> u32 {
        self.protocol
    }
    fn wants_body(&self) -> bool {
        false
    }
    fn end_of_message(&self, _msg: &Message) -> (Vec<Modification>, Reply) {
        (Vec::new(), Reply::Accept)
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
    let protocol = if args.no_reply {
        milter::proto::ALL_NR
    } else {
        0
    };
    milter::serve(&args.socket, Arc::new(Null { protocol })).await
}
