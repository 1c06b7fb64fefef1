//! `null-milter`: the smallest useful milter. It negotiates every stage and answers CONTINUE
//! to each, ACCEPT at end of message, changing nothing. It is the server side of the milter
//! throughput bench (`benches/benches/milter_throughput.rs`).
//!
//! Run: `cargo run -p mailstack-examples --bin null-milter -- --socket unix:/tmp/null.sock`
//! and point Postfix at it with `smtpd_milters = unix:/tmp/null.sock`.

use clap::Parser;
use mailstack_examples::shutdown_signal;
use milter_proto::Needs;
use milter_proto::server::{Context, Decision, Handler, ServerConfig, async_trait, serve};
use milter_proto::{Actions, Protocol};
use milter_proto::{Listener, SocketSpec, UnixOptions};

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
    /// Actions to ask for (SMFIF_* mask; none are used). The bench asks for what its libmilter
    /// counterpart registers, so both negotiate the same options.
    #[arg(long, default_value_t = 0)]
    actions: u32,
    /// Mode of a unix socket file, octal. The default lets Postfix's smtpd (user postfix)
    /// connect; narrow it (660 with a shared group) where that matters.
    #[arg(long, value_parser = octal, default_value = "666")]
    socket_mode: u32,
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?}: not an octal mode: {e}"))
}

/// Every stage keeps its default (CONTINUE); end of message accepts.
struct Null {
    needs: Needs,
}

#[async_trait]
impl Handler for Null {
    fn needs(&self) -> Needs {
        self.needs.clone()
    }
    async fn eom(&mut self, _ctx: &mut Context) -> Decision {
        Decision::Accept
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    mailstack_examples::logging::stderr("info");
    let args = Args::parse();
    let needs = Needs {
        actions: Actions::from_bits_truncate(args.actions),
        protocol: if args.no_reply {
            Protocol::ALL_NR
        } else {
            Protocol::empty()
        },
        ..Needs::default()
    };
    let unix = UnixOptions {
        mode: Some(args.socket_mode),
        ..UnixOptions::default()
    };
    let listener = Listener::bind(&args.socket, &unix).await?;
    tracing::info!(socket = %args.socket, "listening");
    serve(
        listener,
        move || Null {
            needs: needs.clone(),
        },
        ServerConfig::default(),
        shutdown_signal(),
    )
    .await
}
