//! Fault campaign, item 4: hostile message shapes sent to `mailstackd` by the MTA side
//! (`milter_proto::client`): a 100 MB body, 10,000 header fields, 10,000 recipients, a 1 MB
//! header line, NUL bytes, bare LF and bare CR in headers and body.
//!
//! Shown: each gets a clear outcome (asserted below: the reply, or for the over-long frame
//! the milter closing the connection, which Postfix turns into `milter_default_action`),
//! the daemon keeps serving afterwards, and its peak RSS (VmHWM) stays bounded (printed).
//!
//! Run: `cargo test -p mailstack-examples --test faults_input -- --nocapture`.

mod spf_support;
mod support;

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use milter_proto::client::Message;
use spf_support::Zone;
use support::milters::{Daemon, added_headers, one_message, smtp_code};

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
/// Peak RSS allowed (kB): far below the 100 MB body, so nothing is buffered whole.
const MAX_RSS_KB: u64 = 64 * 1024;

/// The SMTP code and whether our AR was added, or why the conversation ended.
type Got = Result<(u16, bool), String>;

/// What happened to one message.
fn outcome(rt: &tokio::runtime::Runtime, sock: &Path, msg: &Message) -> Got {
    let out = rt
        .block_on(one_message(sock, msg))
        .map_err(|e| e.to_string())?;
    let ar = added_headers(&out)
        .iter()
        .filter_map(|h| h.strip_prefix("Authentication-Results:"))
        .any(|v| v.trim_start().starts_with("mx.example;"));
    Ok((smtp_code(&out.decision), ar))
}

fn msg(headers: Vec<(Bytes, Bytes)>, body: Bytes, rcpts: usize) -> Message {
    let mut m = Message::parse(b"<a@src.example>", &[], b"");
    m.headers = headers;
    m.body = body;
    m.rcpts = (0..rcpts)
        .map(|i| (Bytes::from(format!("<r{i}@dest.example>")), Vec::new()))
        .collect();
    m
}

fn h(name: &str, value: &[u8]) -> (Bytes, Bytes) {
    (Bytes::from(name.to_owned()), Bytes::copy_from_slice(value))
}

/// A signature whose key is absent (NXDOMAIN), but whose body hash DKIM must compute.
const SIG: &[u8] = b" v=1; a=rsa-sha256; c=relaxed/relaxed; d=src.example; s=x; h=from:subject; \
    bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA";

fn base() -> Vec<(Bytes, Bytes)> {
    vec![h("From", b" a@src.example"), h("Subject", b" shape")]
}

#[test]
fn hostile_shapes_get_clear_answers_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dns = spf_support::start_dns_local(Zone::default()).unwrap();
    let conf = tmp.path().join("mailstackd.toml");
    std::fs::write(
        &conf,
        format!("[mailstackd]\nauthserv_id = \"mx.example\"\nnameservers = [\"{dns}\"]\ndns_timeout = 1\n"),
    )
    .unwrap();
    let milter = Daemon::start(
        Path::new(BIN),
        tmp.path(),
        "mailstackd",
        &["--config", conf.to_str().unwrap(), "--allow-root"],
    );
    let sock = milter.socket.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ok = Ok((250, true));
    // The milter ends the connection (the MTA then applies `milter_default_action`).
    let closed = Err("closed".to_owned());

    let line = b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcd\r\n";
    let big: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(100 * 1024 * 1024)
        .collect();
    let many_headers: Vec<_> = base()
        .into_iter()
        .chain((0..10_000).map(|i| h(&format!("X-Filler-{i}"), b" v")))
        .collect();
    let long_line = [b" ".as_slice(), &vec![b'a'; 1024 * 1024]].concat();
    let cases: Vec<(&str, Message, Got)> = vec![
        (
            // With a DKIM-Signature, so the body is hashed (streamed), not skipped.
            "100 MB body",
            msg(
                [base(), vec![h("DKIM-Signature", SIG)]].concat(),
                Bytes::from(big),
                1,
            ),
            ok.clone(),
        ),
        // Over milter-proto's DEFAULT_MAX_HEADERS (1,000; Postfix's header_size_limit of
        // 100 KB keeps real mail far below 10,000 fields).
        (
            "10,000 header fields",
            msg(many_headers, Bytes::from_static(b"hi\r\n"), 1),
            closed.clone(),
        ),
        (
            "10,000 recipients",
            msg(base(), Bytes::from_static(b"hi\r\n"), 10_000),
            ok.clone(),
        ),
        (
            "1 MB header line",
            msg(
                [base(), vec![h("X-Long", &long_line)]].concat(),
                Bytes::from_static(b"hi\r\n"),
                1,
            ),
            // One frame over MAX_FRAME_LEN (64 KiB + 1): refused before any allocation.
            closed.clone(),
        ),
        (
            // A header value cannot hold NUL on the milter wire (C strings): the HEADER frame
            // has trailing data, a decode error, answered with the default reply (tempfail).
            "NUL in a header",
            msg(
                [base(), vec![h("X-Nul", b" a\0b")]].concat(),
                Bytes::from_static(b"hi\r\n"),
                1,
            ),
            Ok((451, false)),
        ),
        (
            "NUL in the body",
            msg(base(), Bytes::from_static(b"a\0b\r\n"), 1),
            ok.clone(),
        ),
        (
            "bare LF in header and body",
            msg(
                [base(), vec![h("X-Lf", b" a\nb")]].concat(),
                Bytes::from_static(b"a\nb\r\n"),
                1,
            ),
            ok.clone(),
        ),
        (
            "bare CR in header and body",
            msg(
                [base(), vec![h("X-Cr", b" a\rb")]].concat(),
                Bytes::from_static(b"a\rb\r\n"),
                1,
            ),
            ok.clone(),
        ),
    ];
    let mut failures = Vec::new();
    for (label, m, want) in cases {
        let t = Instant::now();
        let got = outcome(&rt, &sock, &m).map_err(|e| {
            println!("{label}: {e}");
            "closed".to_owned()
        });
        drop(m);
        let hwm = support::procfs::status_kb(milter.pid(), "VmHWM:");
        println!("{label}: {got:?} in {:?}, VmHWM {hwm} kB", t.elapsed());
        if got != want {
            failures.push(format!("{label}: got {got:?}, expected {want:?}"));
        }
        // Still serving.
        let after = msg(base(), Bytes::from_static(b"hi\r\n"), 1);
        assert_eq!(outcome(&rt, &sock, &after), ok, "after {label}");
    }
    let peak = support::procfs::status_kb(milter.pid(), "VmHWM:");
    println!("mailstackd VmHWM after every shape: {peak} kB");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(peak < MAX_RSS_KB, "VmHWM {peak} kB");
}
