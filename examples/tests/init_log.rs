//! Interop tests of mailstack-init's log path and scheduled jobs against Debian's tools:
//! `logger` (bsdutils) writing to our syslog receiver, `rsyslogd` (imtcp) receiving what
//! we forward and restarting under us, GNU `tar` reading the Maildir backup back.
//! A missing tool fails the test with its name; nothing passes silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailstack::init::backup::{BackupConfig, MaildirBackup};
use mailstack::init::forward::{ForwardConfig, Forwarder};
use mailstack::init::logfile::{FileConfig, FileLog};
use mailstack::init::schedule::{JobSpec, Schedule, Scheduler};
use mailstack::init::syslog::{Facility, Receiver, Severity, Sink, local_hostname};
use tokio::sync::oneshot;

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed (see .ci/packages): this test needs the real program");
}

/// Polls `cond` every 50 ms until it holds or `secs` pass.
async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A receiver on `path` running until the returned sender is used or dropped.
fn start_receiver(path: &Path, sink: &Sink) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let receiver = Receiver::bind(path, sink.clone()).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        receiver
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (tx, task)
}

/// Runs `logger -u SOCKET ARGS` without blocking the runtime (the receiver runs on it).
async fn logger(socket: &Path, args: &[&str]) {
    let status = tokio::process::Command::new(tool("logger"))
        .arg("-u")
        .arg(socket)
        .args(args)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "logger {args:?}: {status}");
}

#[tokio::test]
async fn logger_lines_reach_mail_log() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log");
    let file = dir.path().join("mail.log");
    let (sink, queue) = Sink::channel(100);
    let writer = FileLog::spawn(FileConfig::new(&file), queue).unwrap();
    let (stop, recv) = start_receiver(&socket, &sink);
    let host = local_hostname();

    // logger's default on a unix socket: the local format glibc's syslog() uses.
    logger(
        &socket,
        &[
            "-t",
            "postfix/smtpd",
            "-p",
            "mail.info",
            "--id=4242",
            "connect from x",
        ],
    )
    .await;
    logger(
        &socket,
        &[
            "--rfc5424",
            "-t",
            "saslauthd",
            "-p",
            "auth.notice",
            "auth ok",
        ],
    )
    .await;
    logger(
        &socket,
        &["--rfc3164", "-t", "tab", "-p", "mail.err", "a\tb"],
    )
    .await;
    wait_for("three lines in mail.log", 10, || {
        read(&file).lines().count() == 3
    })
    .await;
    sink.log(
        Facility::Mail,
        Severity::Informational,
        "mailstackd",
        "our own line",
    );
    wait_for("four lines in mail.log", 10, || {
        read(&file).lines().count() == 4
    })
    .await;
    stop.send(()).unwrap();
    recv.await.unwrap();
    assert!(!socket.exists(), "the receiver removes its socket");
    drop(sink);
    assert!(writer.finish(Duration::from_secs(5)).await);

    let text = read(&file);
    let lines: Vec<_> = text.lines().collect();
    // `Mmm dd hh:mm:ss HOST TAG: MSG`, rsyslog's traditional file format.
    let stamp = |l: &str| {
        let b = l.as_bytes();
        b.len() > 16
            && b[3] == b' '
            && b[6] == b' '
            && b[9] == b':'
            && b[12] == b':'
            && b[15] == b' '
    };
    assert!(lines.iter().all(|l| stamp(l)), "{text}");
    assert!(
        lines[0].ends_with(&format!(" {host} postfix/smtpd[4242]: connect from x")),
        "{text}"
    );
    assert!(lines[1].ends_with(" saslauthd: auth ok"), "{text}");
    assert!(lines[2].ends_with(" tab: a#011b"), "{text}");
    assert!(
        lines[3].ends_with(&format!(" {host} mailstackd: our own line")),
        "{text}"
    );
}

#[tokio::test]
async fn mail_log_rotates_at_size() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log");
    let file = dir.path().join("mail.log");
    let (sink, queue) = Sink::channel(1000);
    let mut config = FileConfig::new(&file);
    config.max_bytes = 2000;
    config.keep = 2;
    let writer = FileLog::spawn(config, queue).unwrap();
    let (stop, recv) = start_receiver(&socket, &sink);
    // 200 lines of about 55 bytes: five files' worth, so the oldest are deleted.
    let input = dir.path().join("input");
    let body: String = (0..200)
        .map(|i| format!("line {i:03} of the rotation test\n"))
        .collect();
    std::fs::write(&input, body).unwrap();
    logger(
        &socket,
        &[
            "-t",
            "rot",
            "-p",
            "mail.info",
            "-f",
            input.to_str().unwrap(),
        ],
    )
    .await;
    wait_for("the last line", 10, || read(&file).contains("line 199 ")).await;
    stop.send(()).unwrap();
    recv.await.unwrap();
    drop(sink);
    assert!(writer.finish(Duration::from_secs(5)).await);

    let numbered = |n| dir.path().join(format!("mail.log.{n}"));
    assert!(!numbered(3).exists(), "only two rotated files are kept");
    let files = [read(&numbered(2)), read(&numbered(1)), read(&file)];
    let mut seen = Vec::new();
    for f in &files {
        assert!(!f.is_empty() && f.len() <= 2000, "{} bytes", f.len());
        for line in f.lines() {
            let n: u32 = line.split("line ").nth(1).unwrap()[..3].parse().unwrap();
            seen.push(n);
        }
    }
    // Contiguous and in order across mail.log.2, mail.log.1, mail.log, ending at 199.
    assert_eq!(seen.last(), Some(&199));
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    assert!(seen[0] > 0, "the oldest lines went with the deleted file");
}

struct Rsyslog {
    child: Child,
}

impl Rsyslog {
    fn start(dir: &Path, port: u16) -> Self {
        let conf = dir.join("rsyslog.conf");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="seen" type="string" string="%pri% %hostname% %syslogtag%%msg%\n")
action(type="omfile" file="{out}" template="seen")
"#,
                work = work.display(),
                out = dir.join("received.log").display(),
            ),
        )
        .unwrap();
        let child = Command::new(tool("rsyslogd"))
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn forwarding_to_rsyslog_survives_a_restart_and_reports_drops() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let received = dir.path().join("received.log");
    let rsyslog = Rsyslog::start(dir.path(), port);

    let (sink, queue) = Sink::channel(5);
    let mut config = ForwardConfig::new("127.0.0.1", port);
    config.hostname = "mx".into();
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(400);
    let forwarder = Forwarder::spawn(config, queue);
    let socket = dir.path().join("log");
    let (stop, recv) = start_receiver(&socket, &sink);

    // A Postfix-style line through /dev/log, and one of ours.
    logger(
        &socket,
        &[
            "-t",
            "postfix/qmgr",
            "-p",
            "mail.info",
            "--id=77",
            "4ABC: removed",
        ],
    )
    .await;
    sink.log(
        Facility::Mail,
        Severity::Warning,
        "mailstackd",
        "ours before",
    );
    wait_for("the first two lines at rsyslog", 10, || {
        let r = read(&received);
        r.contains("22 mx postfix/qmgr[77]: 4ABC: removed")
            && r.contains("20 mx mailstackd: ours before")
    })
    .await;

    // The receiver goes down: the queue (5) fills and the rest is dropped and counted.
    rsyslog.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        sink.log(
            Facility::Mail,
            Severity::Informational,
            "mailstackd",
            &format!("during {i}"),
        );
    }
    let dropped = sink.dropped();
    assert!(dropped >= 14, "dropped {dropped}");
    assert_eq!(forwarder.dropped(), dropped);

    // Back on the same port: the report comes first, then what the queue held.
    let _rsyslog = Rsyslog::start(dir.path(), port);
    let report = format!(
        "44 mx mailstack-log: {dropped} log lines dropped (log host unreachable or queue full)"
    );
    wait_for("the drop report", 15, || read(&received).contains(&report)).await;
    wait_for("the queued lines", 10, || {
        read(&received).contains("mailstackd: during 4")
    })
    .await;
    assert!(
        !read(&received).contains("during 19"),
        "line 19 was dropped"
    );

    // And lines after the restart arrive, through /dev/log and ours.
    logger(
        &socket,
        &["-t", "postfix/smtpd", "-p", "mail.notice", "after restart"],
    )
    .await;
    sink.log(
        Facility::Mail,
        Severity::Informational,
        "mailstackd",
        "ours after",
    );
    wait_for("the lines after the restart", 10, || {
        let r = read(&received);
        r.contains("21 mx postfix/smtpd: after restart")
            && r.contains("22 mx mailstackd: ours after")
    })
    .await;
    let text = read(&received);
    let order: Vec<_> = ["ours before", &report, "during 0", "during 4", "ours after"]
        .iter()
        .map(|s| text.find(s).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    stop.send(()).unwrap();
    recv.await.unwrap();
    drop(sink);
    assert!(forwarder.finish(Duration::from_secs(5)).await);
}

fn maildir(homes: &Path, user: &str, messages: &[&str]) {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(homes.join(user).join("Maildir").join(sub)).unwrap();
    }
    for m in messages {
        std::fs::write(
            homes.join(user).join("Maildir").join(m),
            format!("Subject: {m}\n\nbody\n"),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn scheduled_backup_archives_every_maildir() {
    let tar = tool("tar");
    tool("xz");
    let dir = tempfile::tempdir().unwrap();
    let homes = dir.path().join("mail_users");
    maildir(&homes, "alice", &["cur/1.host:2,S", "new/2.host"]);
    maildir(&homes, "bob", &["cur/3.host:2,"]);
    std::fs::create_dir_all(homes.join("carol")).unwrap(); // no Maildir
    std::fs::write(homes.join("carol/notes"), "not mail").unwrap();
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let log = dir.path().join("mail.log");
    let (sink, queue) = Sink::channel(100);
    let writer = FileLog::spawn(FileConfig::new(&log), queue).unwrap();

    let mut scheduler = Scheduler::new(sink.clone());
    scheduler
        .register(
            JobSpec::new(
                "maildir-backup",
                Schedule::every(Duration::from_secs(1)).unwrap(),
            ),
            MaildirBackup::new(BackupConfig::new(&homes, &dest)),
        )
        .unwrap();
    // One run at 1 s; stop at 1.5 s and give it time to finish.
    scheduler
        .run(
            tokio::time::sleep(Duration::from_millis(1500)),
            Duration::from_secs(60),
        )
        .await;
    drop(sink);
    assert!(writer.finish(Duration::from_secs(5)).await);

    let archives: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let name = &archives[0];
    assert!(
        name.starts_with("maildir-backup-") && name.ends_with(".tar.xz"),
        "{name}"
    );
    let out = Command::new(tar)
        .arg("-tJf")
        .arg(dest.join(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    for path in [
        "alice/Maildir/cur/1.host:2,S",
        "alice/Maildir/new/2.host",
        "alice/Maildir/tmp/",
        "bob/Maildir/cur/3.host:2,",
    ] {
        assert!(
            listing.lines().any(|l| l == path),
            "{path} missing from\n{listing}"
        );
    }
    assert!(!listing.contains("carol"), "{listing}");
    let text = read(&log);
    assert!(
        text.contains("mailstack-init: job maildir-backup: started"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} (2 users, ", dest.join(name).display())),
        "{text}"
    );
}
