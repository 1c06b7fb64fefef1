//! Real Postfix (the private instance in `support/postfix.rs`) asks our `fixed-policyd` through
//! `check_policy_service` over each transport, and falls back to
//! `smtpd_policy_service_default_action` when the policy server is down or answers garbage.
//!
//! One Postfix instance per test; XCLIENT picks the client address, and
//! `check_client_access inline:{...}` sends each address to its own restriction class, so each
//! class asks a different policy server:
//!
//! | client | policy server | transport | expected at the SMTP client | delivered |
//! |---|---|---|---|---|
//! | 192.0.2.1 | `--action "REJECT 5.7.1 ..."` | unix socket | `554 5.7.1 ...` at RCPT | no |
//! | 192.0.2.2 | `--action "DEFER_IF_PERMIT 4.7.1 ..."` | TCP | `450 4.7.1 ...` at RCPT | no |
//! | 192.0.2.3 | `--action "PREPEND X-Policy: ..."` | spawn(8) | 250 | with the header |
//! | 192.0.2.4 | nothing listens | unix socket | the explicit default action, `451 4.3.5 ...` | no |
//! | 192.0.2.5 | nothing listens, `default_action=DUNNO` | unix socket | 250 | yes |
//! | 192.0.2.6 | answers garbage | TCP | the explicit default action | no |
//! | 192.0.2.7 | answers garbage, `default_action=DUNNO` | TCP | 250 | yes |
//!
//! Needs root and Postfix (`.ci/run` has both). Run:
//! `cargo test -p mailstack-examples --test policy_postfix -- --nocapture`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::postfix::{Delivered, Postfix, Smtp, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_fixed-policyd");

/// Postfix's answer when all attempts at the policy server failed (set explicitly, so the test
/// sees this text and not the built-in `451 4.3.5 Server configuration problem`).
const DEFAULT_ACTION: &str = "451 4.3.5 Policy service unavailable, try again later";

/// A `fixed-policyd --socket ...` child, killed on drop.
struct Policyd {
    child: Child,
    log: PathBuf,
}

impl Policyd {
    fn start(dir: &Path, name: &str, socket: &str, action: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args([
                "--socket",
                socket,
                "--action",
                action,
                "--allow-root",
                "--log-file",
            ])
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{BIN}: {e}"));
        let p = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.log().contains("listening on") {
            assert!(
                Instant::now() < deadline,
                "{name} did not start: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Policyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A policy server that answers every request with `reply` (not a valid policy reply).
fn garbage_server(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\n" && w.write_all(reply).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

/// A temporary directory Postfix's smtpd (user postfix) and a spawned child (user nobody) can
/// reach.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("policy-postfix")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn session(pf: &Postfix, client: &str) -> Smtp {
    let mut c = pf.smtp();
    c.xclient(client, "client.example");
    c
}

/// Waits for a message to `rcpt` at the sink.
fn delivered_to(pf: &Postfix, rcpt: &str) -> Delivered {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(m) = pf
            .delivered()
            .into_iter()
            .find(|m| m.rcpts.iter().any(|r| r == rcpt))
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "nothing for {rcpt} reached the sink; log:\n{}",
            pf.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reject_defer_and_prepend_over_unix_tcp_and_spawn() {
    support::postfix::require_postfix();
    let dir = shared_dir();
    let unix = dir.path().join("reject.sock");
    let reject = Policyd::start(
        dir.path(),
        "reject",
        &format!("unix:{}", unix.display()),
        "REJECT 5.7.1 fixed-policyd says no",
    );
    let port = free_port();
    let defer = Policyd::start(
        dir.path(),
        "defer",
        &format!("inet:127.0.0.1:{port}"),
        "DEFER_IF_PERMIT 4.7.1 fixed-policyd says later",
    );
    // The spawned child runs as nobody: its log file must be writable for it.
    let spawn_log = dir.path().join("spawn.log");
    std::fs::write(&spawn_log, "").unwrap();
    std::fs::set_permissions(&spawn_log, std::fs::Permissions::from_mode(0o666)).unwrap();
    let pf = Postfix::builder()
        .master(format!(
            "fixed-prepend  unix  -  n  n  -  0  spawn  user=nobody argv={BIN} --log-file {} --action {{ PREPEND X-Policy: prepended by fixed-policyd }}",
            spawn_log.display()
        ))
        .main("fixed-prepend_time_limit", "3600")
        .main("smtpd_restriction_classes", "pol_reject, pol_defer, pol_prepend")
        .main(
            "pol_reject",
            format!("check_policy_service unix:{}", unix.display()),
        )
        .main(
            "pol_defer",
            format!("check_policy_service inet:127.0.0.1:{port}"),
        )
        .main("pol_prepend", "check_policy_service unix:private/fixed-prepend")
        .main(
            "smtpd_recipient_restrictions",
            "reject_unauth_destination, check_client_access inline:{192.0.2.1=pol_reject, 192.0.2.2=pol_defer, 192.0.2.3=pol_prepend}",
        )
        .main("smtpd_policy_service_default_action", DEFAULT_ACTION)
        .start();

    // REJECT over the unix socket: Postfix's access_map_reject_code (554) with our text.
    let mut c = session(&pf, "192.0.2.1");
    c.expect("MAIL FROM:<u@src.example>", "250");
    let reply = c.cmd("RCPT TO:<a@dest.example>");
    assert_eq!(reply.code, 554, "{reply}\n{}", pf.log());
    assert!(
        reply.text.starts_with("5.7.1 ") && reply.text.ends_with("fixed-policyd says no"),
        "{reply}"
    );
    drop(c);
    assert!(
        reject
            .log()
            .contains("state=RCPT client=unknown[192.0.2.1] sender=<u@src.example> recipient=<a@dest.example> action=REJECT 5.7.1 fixed-policyd says no"),
        "{}",
        reject.log()
    );

    // DEFER_IF_PERMIT over TCP: nothing else rejects, so the recipient is deferred (450).
    let mut c = session(&pf, "192.0.2.2");
    c.expect("MAIL FROM:<u@src.example>", "250");
    let reply = c.cmd("RCPT TO:<b@dest.example>");
    assert_eq!(reply.code, 450, "{reply}\n{}", pf.log());
    assert!(
        reply.text.starts_with("4.7.1 ") && reply.text.ends_with("fixed-policyd says later"),
        "{reply}"
    );
    drop(c);
    assert!(
        defer.log().contains(
            "client=unknown[192.0.2.2] sender=<u@src.example> recipient=<b@dest.example>"
        ),
        "{}",
        defer.log()
    );

    // PREPEND under spawn(8): accepted, and the header is in the delivered message.
    let mut c = session(&pf, "192.0.2.3");
    let reply = c.send(
        "u@src.example",
        &["c@dest.example"],
        "Subject: prepend\r\n\r\nhello\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let msg = delivered_to(&pf, "c@dest.example");
    assert_eq!(
        msg.header("X-Policy"),
        ["prepended by fixed-policyd"],
        "{}",
        msg.text()
    );
    let log = std::fs::read_to_string(&spawn_log).unwrap();
    assert!(
        log.contains("state=RCPT client=unknown[192.0.2.3] sender=<u@src.example> recipient=<c@dest.example> action=PREPEND X-Policy: prepended by fixed-policyd"),
        "spawned fixed-policyd log:\n{log}\npostfix log:\n{}",
        pf.log()
    );
    // Nothing but replies went to Postfix: no policy warnings in its log.
    assert!(
        !pf.log().contains("warning: problem talking to server"),
        "{}",
        pf.log()
    );
}

#[test]
fn down_or_garbage_gets_the_default_action_and_loses_no_mail() {
    support::postfix::require_postfix();
    let dir = shared_dir();
    let down = dir.path().join("nobody-listens.sock");
    let garbage = garbage_server(b"this is not a policy reply\n\n");
    let pf = Postfix::builder()
        .main(
            "smtpd_restriction_classes",
            "pol_down, pol_down_dunno, pol_garbage, pol_garbage_dunno",
        )
        .main(
            "pol_down",
            format!("check_policy_service unix:{}", down.display()),
        )
        .main(
            "pol_down_dunno",
            format!(
                "check_policy_service {{ unix:{}, default_action=DUNNO }}",
                down.display()
            ),
        )
        .main(
            "pol_garbage",
            format!("check_policy_service inet:127.0.0.1:{garbage}"),
        )
        .main(
            "pol_garbage_dunno",
            format!("check_policy_service {{ inet:127.0.0.1:{garbage}, default_action=DUNNO }}"),
        )
        .main(
            "smtpd_recipient_restrictions",
            "reject_unauth_destination, check_client_access inline:{192.0.2.4=pol_down, 192.0.2.5=pol_down_dunno, 192.0.2.6=pol_garbage, 192.0.2.7=pol_garbage_dunno}",
        )
        .main("smtpd_policy_service_default_action", DEFAULT_ACTION)
        .main("smtpd_policy_service_try_limit", "2")
        .main("smtpd_policy_service_retry_delay", "1s")
        .start();

    for (client, what) in [("192.0.2.4", "down"), ("192.0.2.6", "garbage")] {
        let mut c = session(&pf, client);
        c.expect("MAIL FROM:<u@src.example>", "250");
        let reply = c.cmd(&format!("RCPT TO:<{what}@dest.example>"));
        // Postfix adds its context ("<client>: Client host rejected:") before the text.
        let (code, text) = DEFAULT_ACTION.split_at(3);
        let (dsn, text) = text.trim_start().split_at(5);
        assert_eq!(
            reply.code.to_string(),
            code,
            "{what}: {reply}\n{}",
            pf.log()
        );
        assert!(
            reply.text.starts_with(dsn) && reply.text.ends_with(text),
            "{what}: {reply}"
        );
        // A temporary failure: the client keeps the message and retries; nothing was
        // accepted, so nothing can be lost.
        drop(c);
    }
    for (client, what) in [("192.0.2.5", "down-dunno"), ("192.0.2.7", "garbage-dunno")] {
        let rcpt = format!("{what}@dest.example");
        let mut c = session(&pf, client);
        let reply = c.send(
            "u@src.example",
            &[&rcpt],
            &format!("Subject: {what}\r\n\r\nstill delivered\r\n"),
        );
        assert_eq!(reply.code, 250, "{what}: {reply}\n{}", pf.log());
        drop(c);
        let msg = delivered_to(&pf, &rcpt);
        assert_eq!(msg.header("Subject"), [what], "{}", msg.text());
        assert_eq!(msg.body(), "still delivered\r\n");
    }
    let log = pf.log();
    assert!(
        log.contains("warning: problem talking to server"),
        "Postfix did not see the failures:\n{log}"
    );
    assert!(log.contains("nobody-listens.sock"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{garbage}")), "{log}");
}

/// What this Postfix (Debian 12: 3.7) really sends has the attribute names, in the order, of
/// the 3.2-3.7 test vector (`policy-proto/tests/vectors/3.5.txt`), and decodes with no unknown
/// attribute.
#[test]
fn real_postfix_requests_match_the_test_vectors() {
    support::postfix::require_postfix();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                let mut request = Vec::new();
                let mut line = Vec::new();
                while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    request.extend_from_slice(&line);
                    if line == b"\n" {
                        let _ = tx.send(std::mem::take(&mut request));
                        if w.write_all(b"action=DUNNO\n\n").is_err() {
                            return;
                        }
                    }
                    line.clear();
                }
            });
        }
    });
    let pf = Postfix::builder()
        .main(
            "smtpd_recipient_restrictions",
            format!("reject_unauth_destination, check_policy_service inet:127.0.0.1:{port}"),
        )
        .start();
    let mut c = session(&pf, "192.0.2.8");
    let reply = c.send(
        "u@src.example",
        &["d@dest.example"],
        "Subject: capture\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}\n{}", pf.log());
    drop(c);
    let wire = rx.recv_timeout(Duration::from_secs(30)).expect("a request");
    let decode = |wire: &[u8]| {
        policy_proto::RequestDecoder::new()
            .decode(&mut bytes::BytesMut::from(wire))
            .unwrap()
            .unwrap()
    };
    let real = decode(&wire);
    let vector = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-proto/tests/vectors/3.5.txt"),
    )
    .unwrap();
    let names = |r: &policy_proto::PolicyRequest| {
        r.attributes()
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&real),
        names(&decode(&vector)),
        "{}",
        String::from_utf8_lossy(&wire)
    );
    assert_eq!(real.unknown().count(), 0);
    assert_eq!(
        real.protocol_state(),
        Some(policy_proto::ProtocolState::Rcpt)
    );
    assert_eq!(real.client_address(), Some("192.0.2.8".parse().unwrap()));
    assert_eq!(real.sender_address(), Some("u@src.example"));
    assert_eq!(real.recipient(), Some("d@dest.example"));
    println!("{}", String::from_utf8_lossy(&wire));
}
