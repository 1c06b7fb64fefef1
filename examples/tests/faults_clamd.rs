//! Fault campaign, item 2: clamd killed, hung (a stand-in that accepts and never answers) and
//! slow, under concurrent load through `mailstackd`'s AV (`OnFail Defer`, `ReadTimeout 2`,
//! `AddHeader Replace`), driven as the MTA with `milter_proto::client`.
//!
//! Shown, for each fault: every message gets `451` (Defer) within the timeout plus a margin;
//! none gets `X-Virus-Status: Clean` (it was not scanned); after the fault, messages are
//! still answered and mailstackd's open descriptors are back to where they were (no
//! connection slot leaked); when clamd returns, clean mail gets `Clean` and EICAR is refused.
//!
//! Needs clamd (`.ci/run` installs it). Run:
//! `cargo test -p mailstack-examples --test faults_clamd -- --nocapture`.

mod spf_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use milter_proto::client::Message;
use support::clamd::{Clamd, Fault, StandIn, eicar};
use support::milters::{Daemon, added_headers, one_message, smtp_code};

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
/// `ReadTimeout` in the `[av]` options.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages in flight at once in each phase.
const CONCURRENT: usize = 8;

fn message(n: usize, body: &str) -> Message {
    let raw =
        format!("From: a@src.example\r\nSubject: m{n}\r\nX-Virus-Status: Clean\r\n\r\n{body}\r\n");
    Message::parse(b"<a@src.example>", &[b"<b@dest.example>"], raw.as_bytes())
}

/// Sends `CONCURRENT` messages at once; returns (code, X-Virus-Status values, elapsed) each.
fn burst(
    rt: &tokio::runtime::Runtime,
    sock: &Path,
    body: &str,
) -> Vec<(u16, Vec<String>, Duration)> {
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for n in 0..CONCURRENT {
            let (sock, msg) = (sock.to_owned(), message(n, body));
            set.spawn(async move {
                let t = Instant::now();
                let out = one_message(&sock, &msg).await.expect("milter conversation");
                let status = added_headers(&out)
                    .into_iter()
                    .filter(|h| h.starts_with("X-Virus-Status"))
                    .collect();
                (smtp_code(&out.decision), status, t.elapsed())
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.push(r.unwrap());
        }
        all
    })
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Every message deferred within `limit`, none marked Clean.
fn assert_deferred(phase: &str, got: &[(u16, Vec<String>, Duration)], limit: Duration) {
    for (code, status, took) in got {
        assert_eq!(*code, 451, "{phase}: {got:?}");
        assert!(
            !status.iter().any(|s| s.contains("Clean")),
            "{phase}: Clean on an unscanned message: {got:?}"
        );
        assert!(
            *took < limit,
            "{phase}: answered after {took:?} (limit {limit:?})"
        );
    }
    let slowest = got.iter().map(|g| g.2).max().unwrap_or_default();
    println!("{phase}: {CONCURRENT} x 451, slowest {slowest:?}");
}

fn assert_scanned(phase: &str, rt: &tokio::runtime::Runtime, sock: &Path) {
    let got = burst(rt, sock, "clean text");
    for (code, status, _) in &got {
        assert_eq!(*code, 250, "{phase}: {got:?}");
        assert_eq!(status.len(), 1, "{phase}: {got:?}");
        assert!(status[0].contains("Clean"), "{phase}: {got:?}");
    }
    let virus = burst(rt, sock, &eicar());
    assert!(virus.iter().all(|v| v.0 == 550), "{phase}: EICAR {virus:?}");
    println!("{phase}: {CONCURRENT} clean x 250 + Clean, {CONCURRENT} EICAR x 550");
}

#[test]
fn clamd_killed_hung_slow_defers_in_time_and_recovers() {
    let tmp = tempfile::Builder::new()
        .prefix("faults-clamd")
        .tempdir()
        .unwrap();
    let d = tmp.path();
    let clamd_dir: PathBuf = d.join("clamd");
    let clamd = Clamd::start(&clamd_dir, "");
    let csock = clamd.socket.clone();
    let conf = d.join("mailstackd.toml");
    std::fs::write(
        &conf,
        format!(
            "[mailstackd]\nauthserv_id = \"mx.example\"\n\n[spf]\nenabled = false\n\n\
             [dkim]\nenabled = false\n\n[dmarc]\nenabled = false\n\n\
             [av]\noptions = {{ ClamdSocket = \"unix:{}\", OnFail = \"Defer\", \
             ReadTimeout = {}, AddHeader = \"Replace\", OnInfected = \"Reject\" }}\n",
            csock.display(),
            READ_TIMEOUT.as_secs()
        ),
    )
    .unwrap();
    let milter = Daemon::start(
        Path::new(BIN),
        d,
        "mailstackd",
        &["--config", conf.to_str().unwrap(), "--allow-root"],
    );
    let sock = milter.socket.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_scanned("clamd up", &rt, &sock);
    let base_fds = fds(milter.pid());

    // Killed: nothing listens on the socket.
    drop(clamd);
    let t = Instant::now();
    assert_deferred(
        "clamd killed",
        &burst(&rt, &sock, "x"),
        READ_TIMEOUT + Duration::from_secs(2),
    );
    let killed = t.elapsed();

    // Hung: accepts, never answers.
    let hung = StandIn::start(&csock, Fault::Hung);
    let t = Instant::now();
    let got = burst(&rt, &sock, "x");
    let hung_took = t.elapsed();
    assert_deferred(
        "clamd hung",
        &got,
        READ_TIMEOUT * 2 + Duration::from_secs(2),
    );
    assert!(hung.accepted.load(std::sync::atomic::Ordering::Relaxed) >= CONCURRENT);
    drop(hung);

    // Slow beyond the timeout, then slow within it (that one is a scan: Clean is right).
    let slow = StandIn::start(&csock, Fault::Slow(READ_TIMEOUT + Duration::from_secs(1)));
    assert_deferred(
        "clamd slow (3 s)",
        &burst(&rt, &sock, "x"),
        READ_TIMEOUT * 2 + Duration::from_secs(2),
    );
    drop(slow);
    let slow = StandIn::start(&csock, Fault::Slow(Duration::from_millis(500)));
    let got = burst(&rt, &sock, "x");
    assert!(
        got.iter()
            .all(|g| g.0 == 250 && g.1.len() == 1 && g.1[0].contains("Clean")),
        "slow within the timeout is a scan: {got:?}"
    );
    drop(slow);

    // Slots freed: the held and timed-out clamd connections are closed.
    std::thread::sleep(Duration::from_millis(500));
    let after_fds = fds(milter.pid());
    assert!(
        after_fds <= base_fds + 2,
        "descriptors {base_fds} before the faults, {after_fds} after"
    );

    // clamd returns.
    let clamd = Clamd::start(&clamd_dir, "");
    assert_scanned("clamd back", &rt, &sock);
    println!(
        "killed burst {killed:?}, hung burst {hung_took:?}; mailstackd fds {base_fds} -> {after_fds}, VmHWM {} kB",
        support::procfs::status_kb(milter.pid(), "VmHWM:")
    );
    drop(clamd);
}
