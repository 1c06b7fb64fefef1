//! Real Postfix (the private instance in `support/postfix.rs`) sends mail through our
//! `stamp-milter` over `smtpd_milters`: the header, recipient and body the milter changes show
//! up at the sink, its rejection reaches the SMTP client, and a milter that is down gets
//! Postfix's `milter_default_action`.
//!
//! Run: `cargo test -p mailstack-examples --test milter_postfix` (as root, with postfix).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::milters::Daemon;
use support::postfix::{Delivered, Postfix};

const STAMP: &str = env!("CARGO_BIN_EXE_stamp-milter");

fn stamp(dir: &Path) -> Daemon {
    Daemon::start(
        Path::new(STAMP),
        dir,
        "stamp",
        &[
            "--add-header",
            "X-Stamp: yes",
            "--add-rcpt",
            "added@dest.example",
            "--replace-body",
            "replaced by the milter\\n",
            "--reject-pattern",
            "reject-me",
            "--reject-reply",
            "550 5.7.1 no thanks",
        ],
    )
}

fn with_milter(spec: &str, default_action: &str) -> Postfix {
    Postfix::builder()
        .main("smtpd_milters", spec)
        .main("milter_default_action", default_action)
        .start()
}

/// Waits until every recipient in `want` has been delivered and returns what arrived.
fn wait_for_rcpts(pf: &Postfix, want: &[&str]) -> Vec<Delivered> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msgs = pf.delivered();
        let got: Vec<&str> = msgs
            .iter()
            .flat_map(|m| m.rcpts.iter().map(String::as_str))
            .collect();
        if want.iter().all(|w| got.contains(w)) {
            return msgs;
        }
        assert!(
            Instant::now() < deadline,
            "only {got:?} of {want:?} arrived; log:\n{}",
            pf.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stamp_milter_adds_header_and_recipient_and_replaces_body() {
    let tmp = tempfile::tempdir().unwrap();
    let milter = stamp(tmp.path());
    let pf = with_milter(&milter.spec(), "tempfail");
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: hello\r\nFrom: alice@src.example\r\nX-Replace-Body: please\r\n\r\noriginal body\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = wait_for_rcpts(&pf, &["bob@dest.example", "added@dest.example"]);
    for m in &msgs {
        assert_eq!(m.header("X-Stamp"), ["yes"], "{}", m.text());
        assert_eq!(m.header("Subject"), ["hello"]);
        assert_eq!(m.body(), "replaced by the milter\r\n");
    }
}

#[test]
fn untriggered_message_keeps_its_body() {
    let tmp = tempfile::tempdir().unwrap();
    let milter = stamp(tmp.path());
    let pf = with_milter(&milter.spec(), "tempfail");
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: plain\r\n\r\nkeep me\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = wait_for_rcpts(&pf, &["bob@dest.example"]);
    assert_eq!(msgs[0].body(), "keep me\r\n");
    assert_eq!(msgs[0].header("X-Stamp"), ["yes"]);
}

#[test]
fn rejection_reaches_the_smtp_client() {
    let tmp = tempfile::tempdir().unwrap();
    let milter = stamp(tmp.path());
    let pf = with_milter(&milter.spec(), "tempfail");
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: please reject-me\r\n\r\nbody\r\n",
    );
    assert_eq!(reply.code, 550, "{reply}");
    assert_eq!(reply.text, "5.7.1 no thanks");
    // Nothing was delivered: a second, clean message is the only one at the sink.
    let ok = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: fine\r\n\r\nx\r\n",
    );
    assert_eq!(ok.code, 250, "{ok}");
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pf.delivered().len(), 1);
    assert_eq!(msgs[0].header("Subject"), ["fine"]);
}

#[test]
fn milter_down_with_tempfail_defers_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("unix:{}/nobody-listens.sock", tmp.path().display());
    let pf = with_milter(&missing, "tempfail");
    let mut smtp = pf.smtp();
    let reply = smtp.cmd("MAIL FROM:<alice@src.example>");
    assert_eq!(reply.code, 451, "{reply}");
    assert!(reply.text.starts_with("4.7.1"), "{reply}");
}

#[test]
fn milter_down_with_accept_delivers_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("unix:{}/nobody-listens.sock", tmp.path().display());
    let pf = with_milter(&missing, "accept");
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: no milter\r\n\r\nbody\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    assert!(msgs[0].header("X-Stamp").is_empty());
    assert_eq!(msgs[0].body(), "body\r\n");
}

/// Our server (in this process, `milter_proto::server`) behind real Postfix through one SMTP
/// session that rejects at MAIL, rejects one recipient, resets, and then delivers: whatever
/// Postfix sends after a rejection (ABORT or the next MAIL) must not be taken for a protocol
/// error, and the delivered message carries the header added at end of message.
#[test]
fn rejections_and_rset_keep_the_milter_session_in_step_with_postfix() {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use milter_proto::Actions;
    use milter_proto::Needs;
    use milter_proto::server::{
        Context, Decision, Handler, ServerConfig, async_trait, serve_connection,
    };
    use milter_proto::{Listener, SocketSpec, UnixOptions};

    struct Strict(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Handler for Strict {
        fn needs(&self) -> Needs {
            Needs {
                actions: Actions::ADDHDRS,
                ..Needs::default()
            }
        }
        async fn mail(&mut self, _: &mut Context, sender: &[u8], _: &[Bytes]) -> Decision {
            let sender = String::from_utf8_lossy(sender).into_owned();
            let bad = sender.contains("bad-mail");
            self.0.lock().unwrap().push(format!("mail {sender}"));
            if bad {
                Decision::Reject
            } else {
                Decision::Continue
            }
        }
        async fn rcpt(&mut self, _: &mut Context, rcpt: &[u8], _: &[Bytes]) -> Decision {
            if rcpt.windows(8).any(|w| w == b"bad-rcpt") {
                Decision::ReplyCode(Bytes::from_static(b"550 5.7.1 not this one"))
            } else {
                Decision::Continue
            }
        }
        async fn eom(&mut self, ctx: &mut Context) -> Decision {
            self.0.lock().unwrap().push("eom".into());
            match ctx.add_header("X-Strict", "seen") {
                Ok(()) => Decision::Accept,
                Err(_) => Decision::Tempfail,
            }
        }
        async fn abort(&mut self, _: &mut Context) {
            self.0.lock().unwrap().push("abort".into());
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = tmp.path().join("strict.sock");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let (spec, seen2) = (SocketSpec::Unix(path.clone()), seen.clone());
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let opts = UnixOptions {
                mode: Some(0o666),
                group: None,
            };
            let listener = Listener::bind(&spec, &opts).await.unwrap();
            bound_tx.send(()).unwrap();
            // Every Postfix connection (the fixture's readiness probe opens one too).
            loop {
                let (stream, _peer) = listener.accept().await.unwrap();
                let (tx, seen) = (tx.clone(), seen2.clone());
                tokio::spawn(async move {
                    let config = ServerConfig::default();
                    let r = serve_connection(stream, Strict(seen), &config).await;
                    let _ = tx.send(r.map_err(|e| e.to_string()));
                });
            }
        });
    });
    bound_rx.recv().unwrap();
    let pf = with_milter(&format!("unix:{}", path.display()), "tempfail");
    let mut smtp = pf.smtp();
    smtp.expect("EHLO client.example", "250");
    smtp.expect("MAIL FROM:<bad-mail@src.example>", "5");
    smtp.expect("MAIL FROM:<alice@src.example>", "250");
    let r = smtp.expect("RCPT TO:<bad-rcpt@dest.example>", "5");
    assert!(r.text.contains("not this one"), "{r}");
    smtp.expect("RCPT TO:<bob@dest.example>", "250");
    smtp.expect("RSET", "250");
    let reply = smtp.send(
        "carol@src.example",
        &["bob@dest.example"],
        "Subject: after the rejections\r\n\r\nbody\r\n",
    );
    assert_eq!(reply.code, 250, "{reply}");
    smtp.expect("QUIT", "221");
    let msgs = wait_for_rcpts(&pf, &["bob@dest.example"]);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].header("X-Strict"), ["seen"], "{}", msgs[0].text());
    // The SMTP session's milter connection ends cleanly (QUIT), like any probe before it.
    let ended = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("Postfix closed the milter connection");
    assert_eq!(ended, Ok(()), "seen: {:?}", seen.lock().unwrap());
    while let Ok(ended) = rx.try_recv() {
        assert_eq!(ended, Ok(()), "seen: {:?}", seen.lock().unwrap());
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|s| s.starts_with("mail ")).count(),
        3,
        "{seen:?}"
    );
    assert!(seen.contains(&"eom".to_owned()), "{seen:?}");
    // Postfix 3.7 sends ABORT before each new MAIL, also after a rejected one.
    for (i, _) in seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.starts_with("mail "))
    {
        assert_eq!(
            seen.get(i.wrapping_sub(1)).map(String::as_str),
            Some("abort"),
            "{seen:?}"
        );
    }
}
