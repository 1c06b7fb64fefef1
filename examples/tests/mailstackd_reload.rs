//! Live reload of `mailstackd` behind a real, private Postfix (the fixture in
//! `support/postfix.rs`), under load:
//! - mailstackd signs for example.com with key A (selector `a`) from a KeyTable; while
//!   clients keep sending, the KeyTable is switched to key B (selector `b`) and mailstackd gets
//!   SIGHUP: no message is lost or tempfailed, every SMTP session that began before the signal
//!   is signed with `a` (also a message sent on such a session after the reload: connections
//!   in flight keep their configuration), every session that began after the reload was
//!   logged is signed with `b`, and OpenDKIM (`opendkim -t`) verifies every message;
//! - a broken configuration on SIGHUP is refused, the log names the file and the line, and the
//!   next messages are still signed with the key in force (`b`); `mailstackd reload --config`
//!   refuses to signal for it (exit 2, file and line);
//! - SIGUSR1 reopens `--log-file` after it was moved;
//! - dkim-milter (the single-purpose daemons share the path) refuses a broken opendkim.conf
//!   on SIGHUP with file and line, keeps serving, and takes the fixed file.
//!
//! Needs root, Postfix and opendkim (`.ci/run` has them). Run:
//! `cargo test -p mailstack-examples --features interop --test mailstackd_reload -- --nocapture`.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::milters::Daemon;
use support::postfix::{Delivered, Postfix, Smtp};

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
const DKIM_BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");

/// Parallel clients sending while the reload happens.
const SENDERS: usize = 3;

fn config(d: &Path, broken: bool) -> String {
    // Line 5 is the DKIM options; `broken` puts an unknown canonicalization there.
    let canon = if broken {
        "bogus/simple"
    } else {
        "relaxed/simple"
    };
    format!(
        "[mailstackd]\nauthserv_id = \"mx.example\"\n\n[dkim]\n\
         options = {{ Mode = \"sv\", KeyTable = \"file:{0}/keytable\", \
         SigningTable = \"refile:{0}/signingtable\", Canonicalization = \"{canon}\" }}\n\n\
         [spf]\nenabled = false\n\n[dmarc]\nenabled = false\n",
        d.display()
    )
}

fn keytable(d: &Path, selector: &str) {
    let tmp = d.join("keytable.new");
    std::fs::write(
        &tmp,
        format!(
            "key example.com:{selector}:{}/{selector}.private\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::rename(tmp, d.join("keytable")).unwrap();
}

/// The `s=` of the message's one DKIM-Signature.
fn selector(m: &Delivered) -> String {
    let sigs = m.header("DKIM-Signature");
    assert_eq!(sigs.len(), 1, "one signature: {}", m.text());
    let flat: String = sigs[0].split_whitespace().collect();
    flat.split(';')
        .find_map(|t| t.trim().strip_prefix("s="))
        .unwrap_or_else(|| panic!("no s= in {flat}"))
        .to_owned()
}

fn message(subject: &str) -> String {
    format!(
        "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\nSubject: {subject}\r\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nHello Bob, {subject}\r\n"
    )
}

fn hup(pid: u32, sig: i32) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) has no memory preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

fn wait_for(path: &Path, needle: &str, from: usize, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.get(from..).is_some_and(|t| t.contains(needle)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One sent message: its subject, when its SMTP session began (greeting read) and the reply.
struct Sent {
    subject: String,
    began: Instant,
    code: u16,
}

fn load(port: u16, stop: Arc<AtomicBool>, n: Arc<AtomicUsize>, out: Arc<Mutex<Vec<Sent>>>) {
    while !stop.load(Ordering::Relaxed) {
        let subject = format!("load {}", n.fetch_add(1, Ordering::Relaxed));
        let mut c = Smtp::connect(port);
        let began = Instant::now();
        c.expect("EHLO client.example", "250");
        let reply = c.send(
            "alice@example.com",
            &["bob@dest.example"],
            &message(&subject),
        );
        drop(c);
        out.lock().unwrap().push(Sent {
            subject,
            began,
            code: reply.code,
        });
    }
}

#[test]
fn sighup_switches_keys_under_load_and_refuses_a_broken_config() {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("mailstackd-reload")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let rec_a = support::milters::dkim_genkey(Path::new(DKIM_BIN), d, "a");
    let rec_b = support::milters::dkim_genkey(Path::new(DKIM_BIN), d, "b");
    keytable(d, "a");
    std::fs::write(d.join("signingtable"), "*@example.com key\n").unwrap();
    let conf = d.join("mailstackd.toml");
    std::fs::write(&conf, config(d, false)).unwrap();
    let (pid_file, log) = (d.join("mailstackd.pid"), d.join("mailstackd.log"));
    let args = [
        "--config",
        conf.to_str().unwrap(),
        "--group",
        "postfix",
        "--allow-root",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ];
    let milter = Daemon::start(Path::new(BIN), d, "mailstackd", &args);
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, milter.pid(), "the pid file names the daemon");
    let pf = Postfix::builder()
        .main("smtpd_milters", milter.spec())
        .main("milter_default_action", "tempfail")
        .start();

    // A session opened on key A, kept open across the reload.
    let mut held = pf.smtp();
    let r = held.send(
        "alice@example.com",
        &["bob@dest.example"],
        &message("held 1"),
    );
    assert_eq!(r.code, 250, "{r}\n{}", pf.log());

    let stop = Arc::new(AtomicBool::new(false));
    let (n, sent) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (stop, n, sent) = (stop.clone(), n.clone(), sent.clone());
            let port = pf.smtp_port();
            std::thread::spawn(move || load(port, stop, n, sent))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // Switch to key B mid-stream.
    keytable(d, "b");
    let logged = std::fs::read_to_string(&log).unwrap().len();
    let hup_at = Instant::now();
    hup(pid, libc::SIGHUP);
    wait_for(
        &log,
        "configuration reloaded",
        logged,
        Duration::from_secs(20),
    );
    let reloaded_at = Instant::now();
    let r = held.send(
        "alice@example.com",
        &["bob@dest.example"],
        &message("held 2"),
    );
    assert_eq!(r.code, 250, "{r}\n{}", pf.log());
    drop(held);
    std::thread::sleep(Duration::from_secs(1));

    // A broken configuration: refused with file and line, B stays in force.
    std::fs::write(&conf, config(d, true)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let at_line = format!("{}:5:", conf.display());
    assert!(stderr.contains(&at_line), "names file and line: {stderr}");
    assert!(stderr.contains("not signalled"), "{stderr}");
    let logged = std::fs::read_to_string(&log).unwrap().len();
    let broken_at = Instant::now();
    hup(pid, libc::SIGHUP);
    let text = wait_for(&log, "reload refused", logged, Duration::from_secs(20));
    let refusal = text[logged..]
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap();
    assert!(refusal.contains(&at_line), "{refusal}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }

    // SIGUSR1 after logrotate moved the log: a new file at the path.
    std::fs::rename(&log, d.join("mailstackd.log.1")).unwrap();
    hup(pid, libc::SIGUSR1);
    wait_for(&log, "log file reopened", 0, Duration::from_secs(20));
    std::fs::write(&conf, config(d, false)).unwrap();
    keytable(d, "a");
    hup(pid, libc::SIGHUP);
    wait_for(&log, "configuration reloaded", 0, Duration::from_secs(20));
    let moved = std::fs::read_to_string(d.join("mailstackd.log.1")).unwrap();
    assert!(!moved.contains("log file reopened"), "{moved}");

    // Nothing lost or tempfailed; each message signed with the key of its session's start.
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let refused: Vec<_> = sent.iter().filter(|s| s.code != 250).collect();
    assert!(
        refused.is_empty(),
        "{} of {} refused: {:?}\n{}",
        refused.len(),
        sent.len(),
        refused
            .iter()
            .map(|s| (&s.subject, s.code))
            .collect::<Vec<_>>(),
        pf.log()
    );
    let got = pf.wait_for_messages(sent.len() + 2, Duration::from_secs(60));
    assert_eq!(got.len(), sent.len() + 2, "no message lost or duplicated");
    let by_subject = |s: &str| {
        got.iter()
            .find(|m| m.header("Subject") == [s])
            .unwrap_or_else(|| panic!("{s:?} not delivered"))
    };
    assert_eq!(selector(by_subject("held 1")), "a");
    assert_eq!(
        selector(by_subject("held 2")),
        "a",
        "a connection in flight keeps the configuration it began with"
    );
    let (mut old, mut new, mut after_broken) = (0, 0, 0);
    for s in &sent {
        let sel = selector(by_subject(&s.subject));
        if s.began < hup_at {
            assert_eq!(sel, "a", "{} began before SIGHUP", s.subject);
            old += 1;
        } else if s.began > reloaded_at {
            assert_eq!(sel, "b", "{} began after the reload", s.subject);
            new += 1;
            after_broken += usize::from(s.began > broken_at);
        }
    }
    eprintln!(
        "{} messages under load: {old} before SIGHUP (a), {new} after the reload (b), \
         {after_broken} of those after the refused reload",
        sent.len()
    );
    assert!(old > 0 && new > 0 && after_broken > 0, "load on every side");
    let keys = [("a", rec_a.as_str()), ("b", rec_b.as_str())];
    let vdir = d.join("verify");
    std::fs::create_dir_all(&vdir).unwrap();
    for m in &got {
        let odk = support::milters::opendkim_verify(&vdir, &keys, &m.text());
        assert_eq!(
            odk.matches("dkim=pass").count(),
            1,
            "{}\n{odk}",
            m.header("Subject").join("")
        );
    }
    drop(milter);
}

/// The single-purpose daemons share the reload path: dkim-milter refuses a broken
/// opendkim.conf on SIGHUP (file and line logged, still serving) and takes a good one.
#[test]
fn dkim_milter_reloads_and_refuses_a_broken_file() {
    let dir = tempfile::Builder::new()
        .prefix("dkim-milter-reload")
        .tempdir()
        .unwrap();
    let d = dir.path();
    support::milters::dkim_genkey(Path::new(DKIM_BIN), d, "a");
    let conf = d.join("opendkim.conf");
    let good = format!(
        "Mode sv\nDomain example.com\nSelector a\nKeyFile {}/a.private\n",
        d.display()
    );
    std::fs::write(&conf, &good).unwrap();
    let log = d.join("dkim-milter.log");
    let args = [
        "--config",
        conf.to_str().unwrap(),
        "--allow-root",
        "--log-file",
        log.to_str().unwrap(),
    ];
    let milter = Daemon::start(Path::new(DKIM_BIN), d, "dkim-milter", &args);
    std::fs::write(&conf, format!("{good}Canonicalization bogus/simple\n")).unwrap();
    let logged = std::fs::read_to_string(&log).unwrap_or_default().len();
    hup(milter.pid(), libc::SIGHUP);
    let text = wait_for(&log, "reload refused", logged, Duration::from_secs(20));
    assert!(
        text[logged..].contains(&format!("{}:5:", conf.display())),
        "names file and line: {text}"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&milter.socket).is_ok(),
        "still serving"
    );
    std::fs::write(&conf, &good).unwrap();
    let logged = text.len();
    hup(milter.pid(), libc::SIGHUP);
    wait_for(
        &log,
        "configuration reloaded",
        logged,
        Duration::from_secs(20),
    );
}
