//! Real Postfix (the private instance in `support/postfix.rs`) sends mail through `av-milter`,
//! which scans it with a real clamd (Debian's 1.4.6, started here with a private
//! configuration and an EICAR `.ndb` signature written at run time): an EICAR mail is
//! rejected with the `RejectMsg` text, a clean mail is delivered with `X-Virus-Status: Clean`
//! (a forged status field replaced), and a clamd that is down gets `OnFail Defer`.
//!
//! Run: `cargo test -p mailstack-examples --test av_postfix` (as root, with postfix and
//! clamav-daemon installed; a missing one fails the test with the reason).

mod support;

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use support::clamd::{Clamd, SIG, eicar};
use support::milters::Daemon;
use support::postfix::Postfix;

const AV_MILTER: &str = env!("CARGO_BIN_EXE_av-milter");
/// clamd's own limit, so a bigger message gets `OnFail`.
const CLAMD_CONF: &str = "StreamMaxLength 1M\n";

fn start_clamd(dir: &Path) -> Clamd {
    Clamd::start(dir, CLAMD_CONF)
}

fn av_milter(dir: &Path, clamd_socket: &Path, extra: &str) -> Daemon {
    av_milter_args(dir, clamd_socket, extra, &[])
}

fn av_milter_args(dir: &Path, clamd_socket: &Path, extra: &str, args: &[&str]) -> Daemon {
    let conf = dir.join("clamav-milter.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    write!(
        f,
        "MilterSocketMode 666\nClamdSocket unix:{}\nOnInfected Reject\n\
         RejectMsg Virus %v found, rejected\nAddHeader Replace\nReportHostname mx.test\n{extra}",
        clamd_socket.display()
    )
    .unwrap();
    drop(f);
    let mut all = vec!["--config", conf.to_str().unwrap(), "--allow-root"];
    all.extend_from_slice(args);
    Daemon::start(Path::new(AV_MILTER), dir, "av", &all)
}

fn postfix(spec: &str) -> Postfix {
    Postfix::builder()
        .main("smtpd_milters", spec)
        .main("milter_default_action", "accept")
        .start()
}

#[test]
fn eicar_is_rejected_with_reject_msg_and_clean_mail_is_stamped_clean() {
    eicar_rejected_clean_stamped("");
}

/// The same with `ClamdTransfer Fildes`: spooled to an unlinked file in TemporaryDirectory,
/// the descriptor passed to clamd at end of message (nothing is left in the directory).
#[test]
fn with_fildes_transfer_eicar_is_rejected_and_clean_mail_stamped_clean() {
    let spool = tempfile::tempdir().unwrap();
    eicar_rejected_clean_stamped(&format!(
        "ClamdTransfer Fildes\nTemporaryDirectory {}\n",
        spool.path().display()
    ));
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}

fn eicar_rejected_clean_stamped(extra: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let clamd = start_clamd(&tmp.path().join("clamd"));
    let milter = av_milter(tmp.path(), &clamd.socket, extra);
    let pf = postfix(&milter.spec());

    let infected = format!(
        "Subject: infected\r\nFrom: alice@src.example\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain\r\n\r\n{}\r\n",
        eicar()
    );
    let reply = pf
        .smtp()
        .send("alice@src.example", &["bob@dest.example"], &infected);
    assert_eq!(reply.code, 550, "{reply}; log:\n{}", pf.log());
    assert!(
        reply.text.contains(&format!("Virus {SIG} found, rejected")),
        "{reply}"
    );

    let clean = "Subject: clean\r\nFrom: alice@src.example\r\nX-Virus-Status: Infected (forged)\r\n\r\n\
                 nothing to see\r\n";
    let reply = pf
        .smtp()
        .send("alice@src.example", &["carol@dest.example"], clean);
    assert_eq!(reply.code, 250, "{reply}; log:\n{}", pf.log());
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1, "only the clean message is delivered");
    let m = &msgs[0];
    assert_eq!(m.rcpts, ["carol@dest.example"]);
    assert_eq!(m.header("X-Virus-Status"), ["Clean"], "{}", m.text());
    let scanned = m.header("X-Virus-Scanned");
    assert_eq!(scanned.len(), 1, "{}", m.text());
    assert!(scanned[0].starts_with("mailstack av-milter ") && scanned[0].ends_with(" at mx.test"));
    assert!(m.body().contains("nothing to see"));
}

#[test]
fn clamd_down_defers_with_on_fail_defer() {
    let tmp = tempfile::tempdir().unwrap();
    let milter = av_milter(
        tmp.path(),
        &tmp.path().join("no-clamd.sock"),
        "OnFail Defer\n",
    );
    let pf = postfix(&milter.spec());
    let reply = pf.smtp().send(
        "alice@src.example",
        &["bob@dest.example"],
        "Subject: x\r\n\r\nbody\r\n",
    );
    assert_eq!(reply.code / 100, 4, "{reply}; log:\n{}", pf.log());
    assert!(pf.delivered().is_empty());
}

#[test]
fn quarantine_holds_infected_mail_runs_virus_action_and_add_keeps_old_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let clamd = start_clamd(&tmp.path().join("clamd"));
    let script = tmp.path().join("virus-action.sh");
    let args_file = tmp.path().join("virus-action.args");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {}.tmp\nmv {0}.tmp {0}\n",
            args_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let milter = av_milter(
        tmp.path(),
        &clamd.socket,
        &format!(
            "OnInfected Quarantine\nAddHeader Add\nVirusAction {}\n",
            script.display()
        ),
    );
    let pf = postfix(&milter.spec());
    let infected = format!(
        "Subject: infected one\r\nFrom: alice@src.example\r\nMessage-ID: <m1@src.example>\r\n\
         Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n{}\r\n",
        eicar()
    );
    let reply = pf
        .smtp()
        .send("alice@src.example", &["bob@dest.example"], &infected);
    assert_eq!(reply.code, 250, "{reply}");
    assert!(
        pf.wait_for_log("milter-hold: END-OF-MESSAGE", Duration::from_secs(20)),
        "no milter-hold in the log:\n{}",
        pf.log()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !args_file.exists() {
        assert!(Instant::now() < deadline, "VirusAction did not run");
        std::thread::sleep(Duration::from_millis(50));
    }
    let args = std::fs::read_to_string(&args_file).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args.len(), 7, "{args:?}");
    assert_eq!(args[0], SIG);
    assert!(
        !args[1].is_empty() && args[1] != "NOQUEUE",
        "queue id: {args:?}"
    );
    assert_eq!(args[2], "alice@src.example");
    assert_eq!(args[3], "bob@dest.example");
    assert_eq!(args[4], "infected one");
    assert_eq!(args[5], "<m1@src.example>");
    assert_eq!(args[6], "Tue, 24 Nov 2026 10:00:00 +0000");

    // Add keeps an existing field and inserts ours.
    let clean = "Subject: clean\r\nFrom: alice@src.example\r\nX-Virus-Status: Old\r\n\r\nhello\r\n";
    let reply = pf
        .smtp()
        .send("alice@src.example", &["carol@dest.example"], clean);
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(
        msgs.len(),
        1,
        "the quarantined message is held, not delivered"
    );
    let mut status = msgs[0].header("X-Virus-Status");
    status.sort();
    assert_eq!(status, ["Clean", "Old"], "{}", msgs[0].text());
}

#[test]
fn local_net_clients_are_not_scanned() {
    let tmp = tempfile::tempdir().unwrap();
    let clamd = start_clamd(&tmp.path().join("clamd"));
    let milter = av_milter(tmp.path(), &clamd.socket, "LocalNet 127.0.0.0/8\n");
    let pf = postfix(&milter.spec());
    let infected = format!("Subject: from local\r\n\r\n{}\r\n", eicar());
    let reply = pf
        .smtp()
        .send("alice@src.example", &["bob@dest.example"], &infected);
    assert_eq!(reply.code, 250, "{reply}");
    let msgs = pf.wait_for_messages(1, Duration::from_secs(30));
    assert!(
        msgs[0].header("X-Virus-Status").is_empty(),
        "{}",
        msgs[0].text()
    );
}

#[test]
fn infected_mail_sends_a_notification() {
    let tmp = tempfile::tempdir().unwrap();
    let clamd = start_clamd(&tmp.path().join("clamd"));
    // The notification goes to a second Postfix (no milter) relaying to its own sink.
    let relay = Postfix::builder().start();
    let rc = tmp.path().join("msmtprc");
    std::fs::write(
        &rc,
        format!(
            "account av\nhost 127.0.0.1\nport {}\nfrom av@src.example\ntls off\n",
            relay.smtp_port()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let milter = av_milter_args(
        tmp.path(),
        &clamd.socket,
        "",
        &[
            "--notify-msmtp",
            rc.to_str().unwrap(),
            "--notify-to",
            "postmaster@dest.example",
        ],
    );
    let pf = postfix(&milter.spec());
    let infected = format!(
        "Subject: infected\r\nFrom: alice@src.example\r\n\r\n{}\r\n",
        eicar()
    );
    let reply = pf
        .smtp()
        .send("alice@src.example", &["bob@dest.example"], &infected);
    assert_eq!(reply.code, 550, "{reply}");
    let msgs = relay.wait_for_messages(1, Duration::from_secs(30));
    assert_eq!(msgs[0].rcpts, ["postmaster@dest.example"]);
    assert_eq!(msgs[0].header("Subject"), [format!("Virus found: {SIG}")]);
    assert!(
        msgs[0].body().contains("Subject: infected"),
        "{}",
        msgs[0].text()
    );
}
