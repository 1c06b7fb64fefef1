//! Our MTA-side client (`milter_proto::client::Client`, and the `milter-client` CLI) drives a
//! real libmilter milter: `tests/c/c_milter.c`, built here with `cc ... -lmilter` (Debian
//! libmilter-dev). Null mode answers CONTINUE everywhere; `-n` negotiates the `NR_*` options;
//! stamp mode (`-s`) adds a header and a recipient or rejects with its own reply.
//!
//! Run: `cargo test -p mailstack-examples --test milter_libmilter`.

mod support;

use std::process::Command;

use bytes::Bytes;
use milter_proto::Reply;
use milter_proto::SocketSpec;
use milter_proto::client::{Client, ClientConfig, Connection, Message};
use milter_proto::{Actions, Protocol};
use support::milters::{Daemon, build_c_milter};

const MESSAGE: &[u8] = b"From: alice@src.example\r\nSubject: hi\r\n\r\nbody line\r\n";

/// Runs `f`, failing the test instead of hanging if the conversation stalls.
fn run<T>(f: impl Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(30), f).await })
        .expect("the milter conversation stalled for 30 s")
}

/// Connect and negotiate as Postfix 3.x does (version 6, every action and option).
async fn connect(milter: &Daemon) -> Client<milter_proto::Stream> {
    let spec: SocketSpec = milter.spec().parse().unwrap();
    Client::connect(&spec, ClientConfig::default())
        .await
        .unwrap()
}

fn message(raw: &[u8]) -> Message {
    let mut m = Message::parse(b"<sender@src.example>", &[b"<rcpt@dest.example>"], raw);
    m.macros = vec![(b'M', vec![(Bytes::from("i"), Bytes::from("4ABCDEF"))])];
    m
}

#[test]
fn null_c_milter_continues_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_milter(tmp.path());
    let milter = Daemon::start_c(&exe, tmp.path(), "null", &[]);
    run(async {
        let mut c = connect(&milter).await;
        let n = c.negotiated().clone();
        assert_eq!(n.version, 6);
        assert_eq!(
            n.actions,
            Actions::ADDHDRS | Actions::ADDRCPT,
            "the C milter registers ADDHDRS|ADDRCPT"
        );
        assert!(!n.protocol.intersects(Protocol::ALL_NR));
        let greeting = c.connection(&Connection::default()).await.unwrap();
        let stages: Vec<u8> = greeting.replies.iter().map(|(s, _)| *s).collect();
        assert_eq!(stages, b"CH");
        // Two messages on one connection (ABORT between them, as Postfix does).
        for _ in 0..2 {
            let o = c.message(&message(MESSAGE)).await.unwrap();
            let stages: Vec<u8> = o.replies.iter().map(|(s, _)| *s).collect();
            assert_eq!(stages, b"MRTLLNBE");
            assert!(
                o.replies.iter().all(|(_, r)| *r == Reply::Continue),
                "{o:?}"
            );
            assert!(o.modifications.is_empty());
            assert_eq!(o.decision, Reply::Continue);
        }
        c.quit().await.unwrap();
    });
}

#[test]
fn no_reply_c_milter_answers_only_end_of_message() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_milter(tmp.path());
    let milter = Daemon::start_c(&exe, tmp.path(), "nr", &["-n"]);
    run(async {
        let mut c = connect(&milter).await;
        let protocol = c.negotiated().protocol;
        assert!(protocol.contains(Protocol::ALL_NR), "{protocol:?}");
        let greeting = c.connection(&Connection::default()).await.unwrap();
        assert!(greeting.replies.is_empty(), "{greeting:?}");
        let o = c.message(&message(MESSAGE)).await.unwrap();
        assert_eq!(o.replies, [(b'E', Reply::Continue)]);
        c.quit().await.unwrap();
    });
}

#[test]
fn stamp_c_milter_modifies_and_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_milter(tmp.path());
    let milter = Daemon::start_c(&exe, tmp.path(), "stamp", &["-s"]);
    run(async {
        let mut c = connect(&milter).await;
        c.connection(&Connection::default()).await.unwrap();
        let o = c.message(&message(MESSAGE)).await.unwrap();
        assert_eq!(
            o.modifications,
            [
                Reply::AddHeader {
                    name: Bytes::from("X-C-Milter"),
                    value: Bytes::from("stamped"),
                },
                Reply::AddRcpt(Bytes::from("<added@dest.example>")),
            ]
        );
        assert_eq!(o.decision, Reply::Continue);
        let spam = b"Subject: please reject-me\r\n\r\nx\r\n";
        let o = c.message(&message(spam)).await.unwrap();
        assert!(o.modifications.is_empty());
        assert_eq!(
            o.decision,
            Reply::ReplyCode(Bytes::from("550 5.7.1 c-milter says no"))
        );
        c.quit().await.unwrap();
    });
}

#[test]
fn v2_peer_gets_v2_masks_from_libmilter() {
    // An MTA speaking protocol version 2 (sendmail 8.13 era): libmilter answers with version 2
    // and only the v2 actions and protocol bits, and the conversation still works.
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_milter(tmp.path());
    let milter = Daemon::start_c(&exe, tmp.path(), "v2", &["-s"]);
    run(async {
        let spec: SocketSpec = milter.spec().parse().unwrap();
        let config = ClientConfig::offer(
            2,
            Actions::from_bits_retain(0x3F),
            Protocol::from_bits_retain(0x7F),
        );
        let mut c = Client::connect(&spec, config).await.unwrap();
        assert_eq!(c.negotiated().version, 2);
        assert_eq!(c.negotiated().actions, Actions::ADDHDRS | Actions::ADDRCPT);
        c.connection(&Connection::default()).await.unwrap();
        let o = c.message(&message(MESSAGE)).await.unwrap();
        assert_eq!(o.modifications.len(), 2, "{o:?}");
        assert_eq!(o.decision, Reply::Continue);
        c.quit().await.unwrap();
    });
}

#[test]
fn milter_client_cli_prints_negotiation_replies_and_modifications() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_milter(tmp.path());
    let milter = Daemon::start_c(&exe, tmp.path(), "cli", &["-s"]);
    let eml = tmp.path().join("m.eml");
    std::fs::write(&eml, MESSAGE).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_milter-client"))
        .args(["--socket", &milter.spec(), "--from", "a@src.example"])
        .args(["--rcpt", "b@dest.example", "--macro", "j=mx.dest.example"])
        .arg(&eml)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("negotiated: version 6 actions 0x5"),
        "{stdout}"
    );
    assert!(stdout.contains("reply rcpt: Continue"), "{stdout}");
    assert!(
        stdout.contains(r#"modification: AddHeader("X-C-Milter", "stamped")"#),
        "{stdout}"
    );
    assert!(stdout.contains("decision: Continue"), "{stdout}");
}
