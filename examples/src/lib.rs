#![doc = include_str!("../../README.md")]
//!
//! ---
//!
//! This crate holds the example daemons and tools (in `src/bin/`, listed in
//! `examples/README.md`), built on `milter-proto`'s tokio server and client, `policy-proto`
//! and `mailstack`; this library only holds what the binaries share.

pub mod daemon;
pub mod logging;

/// Resolves on SIGTERM or SIGINT: pass it to `milter_proto::server::serve` as the shutdown
/// future, so a daemon stops accepting, finishes the messages in flight and exits. Never
/// resolves if the signal handlers cannot be installed.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down after the messages in flight");
}
