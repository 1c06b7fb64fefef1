//! Fault campaign, item 1: `mailstackd` killed with SIGKILL every ~1.5 s while mail flows
//! through a real, private Postfix (`milter_default_action = tempfail`), and restarted each
//! time from the test as a supervisor would.
//!
//! Shown: every message that got `250` at the final dot reached the sink exactly once; none
//! that got a 4xx did (the sender retries those); every delivered message carries our
//! `Authentication-Results: mx.example;` (nothing went through unchecked).
//!
//! Needs root and Postfix (`.ci/run` has them). Run:
//! `cargo test -p mailstack-examples --test faults_kill9 -- --nocapture`.

mod spf_support;
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spf_support::Zone;
use support::milters::Daemon;
use support::postfix::{Postfix, Smtp};

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
/// Messages sent at least; sending goes on until [`KILLS`] kills happened.
const MESSAGES: usize = 200;
/// Kills at least (about [`KILL_EVERY`] apart).
const KILLS: usize = 6;
/// Messages sent at most (bounds the test's time).
const MAX_MESSAGES: usize = 5000;
/// Client threads sending them.
const THREADS: usize = 4;
/// Time between two kills.
const KILL_EVERY: Duration = Duration::from_millis(1500);

#[test]
fn sigkill_under_load_loses_nothing_and_delivers_nothing_unchecked() {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("faults-kill9")
        .tempdir()
        .unwrap();
    let d = dir.path().to_owned();
    let mut zone = Zone::default();
    zone.txt("example.com", "v=spf1 ip4:192.0.2.1 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=none");
    let dns = spf_support::start_dns_local(zone).unwrap();
    let conf = d.join("mailstackd.toml");
    std::fs::write(
        &conf,
        format!("[mailstackd]\nauthserv_id = \"mx.example\"\nnameservers = [\"{dns}\"]\n"),
    )
    .unwrap();
    let conf_arg = conf.to_str().unwrap().to_owned();
    let start = move |d: &Path| {
        let args = ["--config", &conf_arg, "--group", "postfix", "--allow-root"];
        Daemon::start(Path::new(BIN), d, "mailstackd", &args)
    };
    let milter = start(&d);
    let pf = Postfix::builder()
        .main("smtpd_milters", milter.spec())
        .main("milter_default_action", "tempfail")
        .main("milter_connect_timeout", "5s")
        .start();
    let port = pf.smtp_port();

    // The supervisor: kill -9, restart at once, until the senders are done.
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let supervisor = {
        let (done, kills, d) = (done.clone(), kills.clone(), d.clone());
        std::thread::spawn(move || {
            let mut milter = milter;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(KILL_EVERY);
                milter.kill_hard();
                kills.fetch_add(1, Ordering::Relaxed);
                milter = start(&d);
            }
            milter
        })
    };

    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let replies: Arc<Mutex<HashMap<usize, u16>>> = Arc::default();
    let senders: Vec<_> = (0..THREADS)
        .map(|_| {
            let (next, replies, kills) = (next.clone(), replies.clone(), kills.clone());
            std::thread::spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let enough = n >= MESSAGES && kills.load(Ordering::Relaxed) >= KILLS;
                    if enough || n >= MAX_MESSAGES {
                        break;
                    }
                    let msg = format!(
                        "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\n\
                         Subject: msg {n}\r\nMessage-ID: <{n}@faults.example>\r\n\r\nbody {n}\r\n"
                    );
                    let r = Smtp::try_send(
                        port,
                        Some(("192.0.2.1", "mail.example.com")),
                        "alice@example.com",
                        &["bob@dest.example"],
                        &msg,
                    );
                    assert!(
                        r.code == 250 || (400..500).contains(&r.code),
                        "message {n}: neither 250 nor 4xx: {r}"
                    );
                    replies.lock().unwrap().insert(n, r.code);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let sent_in = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    let last = supervisor.join().unwrap();

    let replies = replies.lock().unwrap().clone();
    let sent = replies.len();
    assert!(sent >= MESSAGES);
    let ok: Vec<usize> = (0..sent).filter(|n| replies[n] == 250).collect();
    let deferred = sent - ok.len();
    let kills = kills.load(Ordering::Relaxed);
    assert!(
        kills >= KILLS,
        "only {kills} kills in {sent_in:?}: no fault injected"
    );
    assert!(!ok.is_empty(), "nothing accepted at all:\n{}", pf.log());
    pf.wait_for_messages(ok.len(), Duration::from_secs(30));
    // Anything more (a duplicate, a deferred one) would arrive now; give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    let got = pf.delivered();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for m in &got {
        let id = m.header("Message-ID");
        let n: usize = id
            .first()
            .and_then(|v| v.trim_start_matches('<').split('@').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("delivered message without our Message-ID: {}", m.text()));
        *seen.entry(n).or_default() += 1;
        let ar = m.header("Authentication-Results");
        assert!(
            ar.len() == 1 && ar[0].starts_with("mx.example;"),
            "message {n} delivered without our Authentication-Results: {}",
            m.text()
        );
    }
    for n in 0..sent {
        let times = seen.get(&n).copied().unwrap_or(0);
        if replies[&n] == 250 {
            assert_eq!(times, 1, "message {n} got 250, delivered {times} times");
        } else {
            assert_eq!(times, 0, "message {n} got {}, yet delivered", replies[&n]);
        }
    }
    println!(
        "kill -9 x{kills} in {sent_in:?}: {} of {sent} accepted (250) and delivered once \
         each, {deferred} deferred (4xx) and not delivered, all with our Authentication-Results",
        ok.len()
    );
    drop(last);
}
