//! Our example milters stop gracefully on SIGTERM: a message in flight is finished (its
//! end-of-message reply and modifications arrive), then the daemon exits with status 0; a
//! message left open by an MTA that has gone quiet holds `dkim-milter` no longer than the
//! shutdown grace period.
//!
//! Run: `cargo test -p mailstack-examples --test milter_shutdown`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use milter_proto::Command;
use milter_proto::Protocol;
use milter_proto::Reply;
use milter_proto::client::{Client, ClientConfig, Connection};
use support::milters::Daemon;

const STAMP: &str = env!("CARGO_BIN_EXE_stamp-milter");
const DKIM: &str = env!("CARGO_BIN_EXE_dkim-milter");

#[test]
fn sigterm_finishes_the_message_in_flight_then_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut milter = Daemon::start(
        Path::new(STAMP),
        tmp.path(),
        "stamp",
        &["--add-header", "X-Stamp: yes"],
    );
    let spec = milter.spec().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Client::connect(&spec, ClientConfig::default())
            .await
            .unwrap();
        c.connection(&Connection::default()).await.unwrap();
        let b = Bytes::from_static;
        let mail = Command::Mail {
            sender: b(b"<a@src.example>"),
            args: vec![],
        };
        assert_eq!(c.command(&mail).await.unwrap(), [Reply::Continue]);
        // The message is open: SIGTERM now must not cut it off.
        milter.terminate();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rest = [
            Command::Rcpt {
                rcpt: b(b"<b@dest.example>"),
                args: vec![],
            },
            Command::Data,
            Command::Header {
                name: b(b"Subject"),
                value: b(b"in flight"),
            },
            Command::Eoh,
            Command::Body(b(b"body\r\n")),
        ];
        for cmd in &rest {
            assert_eq!(c.command(cmd).await.unwrap(), [Reply::Continue], "{cmd:?}");
        }
        let eom = c.command(&Command::BodyEob(Bytes::new())).await.unwrap();
        let stamp = Reply::AddHeader {
            name: b(b"X-Stamp"),
            value: b(b"yes"),
        };
        assert_eq!(eom, [stamp, Reply::Accept]);
    });
    let status = milter
        .wait_exit(Duration::from_secs(10))
        .expect("stamp-milter exits once the message is done");
    assert!(status.success(), "{status}");
}

/// `dkim-milter` (verifying only) with a message open (connection, MAIL, one header) from an
/// MTA that then says nothing more: after SIGTERM it waits for the message no longer than
/// its shutdown grace period (`DEFAULT_SHUTDOWN_GRACE`, 10 s), then exits with status 0 and
/// the MTA's connection is closed.
#[test]
fn sigterm_with_a_quiet_mta_exits_within_the_grace_period() {
    assert_eq!(
        milter_proto::server::DEFAULT_SHUTDOWN_GRACE,
        Duration::from_secs(10)
    );
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("opendkim.conf");
    std::fs::write(&conf, "Mode v\n").unwrap();
    let mut milter = Daemon::start(
        Path::new(DKIM),
        tmp.path(),
        "dkim",
        &["--config", conf.to_str().unwrap(), "--allow-root"],
    );
    let spec = milter.spec().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = rt.block_on(async {
        // Without NR_HDR offered the header is answered, so it has surely been sent.
        let mut config = ClientConfig::default();
        config.protocol.remove(Protocol::NR_HDR);
        let mut c = Client::connect(&spec, config).await.unwrap();
        c.connection(&Connection::default()).await.unwrap();
        let b = Bytes::from_static;
        let open = [
            Command::Mail {
                sender: b(b"<a@src.example>"),
                args: vec![],
            },
            Command::Header {
                name: b(b"From"),
                value: b(b" a@src.example"),
            },
        ];
        for cmd in &open {
            assert_eq!(c.command(cmd).await.unwrap(), [Reply::Continue], "{cmd:?}");
        }
        c
    });
    let sent = Instant::now();
    milter.terminate();
    let status = milter
        .wait_exit(Duration::from_secs(15))
        .expect("dkim-milter exits within its grace period with the message still open");
    let took = sent.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    eprintln!("dkim-milter exited {took:?} after SIGTERM");
    // The MTA's connection was closed, not left hanging.
    let eom = rt.block_on(async {
        let eom = Command::BodyEob(Bytes::new());
        tokio::time::timeout(Duration::from_secs(2), c.command(&eom)).await
    });
    assert!(matches!(eom, Ok(Err(_))), "{eom:?}");
}
