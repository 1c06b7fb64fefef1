//! Our MTA-side client (`mailstack_examples::milter::Client`, and the `milter-client` CLI)
//! drives a real libmilter milter: `tests/c/c_milter.c`, built here with `cc ... -lmilter`
//! (Debian libmilter-dev). Null mode answers CONTINUE everywhere; `-n` negotiates the `NR_*`
//! options; stamp mode (`-s`) adds a header and a recipient or rejects with its own reply.
//!
//! Run: `cargo test -p mailstack-examples --test milter_libmilter`.

mod support;

use std::process::Command;

use mailstack_examples::milter::{AnyClient, Envelope, Modification, Reply, proto};
use support::milters::{Daemon, build_c_milter};

const ALL_ACTIONS: u32 = 0x1FF;
const ALL_PROTOCOL: u32 = 0x1F_FFFF;
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

#[test]
fn null_c_milter_continues_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_milter(tmp.path());
    let milter = Daemon::start_c(&exe, tmp.path(), "null", &[]);
    let socket = milter.spec().parse().unwrap();
    run(async {
        let mut c = AnyClient::connect(&socket).await.unwrap();
        let (version, actions, protocol) = c.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap();
        assert_eq!(version, 6);
        assert_eq!(actions, 0x1 | 0x4, "the C milter registers ADDHDRS|ADDRCPT");
        assert_eq!(protocol & proto::ALL_NR, 0);
        // Two messages on one connection (ABORT between them, as Postfix does).
        let message_stages = [
            "mail", "rcpt", "data", "header", "header", "eoh", "body", "eom",
        ];
        for first in [true, false] {
            let o = c.send_message(&Envelope::default(), MESSAGE).await.unwrap();
            let stages: Vec<&str> = o.replies.iter().map(|(s, _)| *s).collect();
            let greeting: &[&str] = if first { &["connect", "helo"] } else { &[] };
            assert_eq!(stages, [greeting, &message_stages].concat());
            assert!(
                o.replies.iter().all(|(_, r)| *r == Reply::Continue),
                "{o:?}"
            );
            assert!(o.modifications.is_empty());
        }
        c.quit().await.unwrap();
    });
}

#[test]
fn no_reply_c_milter_answers_only_end_of_message() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_milter(tmp.path());
    let milter = Daemon::start_c(&exe, tmp.path(), "nr", &["-n"]);
    let socket = milter.spec().parse().unwrap();
    run(async {
        let mut c = AnyClient::connect(&socket).await.unwrap();
        let (_, _, protocol) = c.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap();
        assert_eq!(protocol & proto::ALL_NR, proto::ALL_NR, "{protocol:#x}");
        let o = c.send_message(&Envelope::default(), MESSAGE).await.unwrap();
        assert_eq!(o.replies, [("eom", Reply::Continue)]);
        c.quit().await.unwrap();
    });
}

#[test]
fn stamp_c_milter_modifies_and_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_milter(tmp.path());
    let milter = Daemon::start_c(&exe, tmp.path(), "stamp", &["-s"]);
    let socket = milter.spec().parse().unwrap();
    run(async {
        let mut c = AnyClient::connect(&socket).await.unwrap();
        c.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap();
        let o = c.send_message(&Envelope::default(), MESSAGE).await.unwrap();
        assert_eq!(
            o.modifications,
            [
                Modification::AddHeader("X-C-Milter".into(), "stamped".into()),
                Modification::AddRcpt("<added@dest.example>".into()),
            ]
        );
        assert_eq!(o.decision, Some(Reply::Continue));
        let spam = b"Subject: please reject-me\r\n\r\nx\r\n";
        let o = c.send_message(&Envelope::default(), spam).await.unwrap();
        assert!(o.modifications.is_empty());
        assert_eq!(
            o.decision,
            Some(Reply::Code("550 5.7.1 c-milter says no".into()))
        );
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
    assert!(stdout.contains("decision: Some(Continue)"), "{stdout}");
}
