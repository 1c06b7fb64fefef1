//! Our example milters stop gracefully on SIGTERM: a message in flight is finished (its
//! end-of-message reply and modifications arrive), then the daemon exits with status 0.
//!
//! Run: `cargo test -p mailstack-examples --test milter_shutdown`.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use milter_proto::client::{Client, ClientConfig, Connection};
use milter_proto::command::Command;
use milter_proto::reply::Reply;
use support::milters::Daemon;

const STAMP: &str = env!("CARGO_BIN_EXE_stamp-milter");

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
