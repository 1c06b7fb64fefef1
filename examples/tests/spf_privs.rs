//! Root handling of `spf-policyd` and `fixed-policyd` (issue 14): started as root with
//! `--user nobody` they bind their socket, then run as nobody (checked in
//! `/proc/PID/status`: every uid and gid, and the supplementary groups from `/etc/group`);
//! started as root on a socket without `--user` they refuse unless `--allow-root`; the unix
//! socket of spf-policyd is `0660`, group `postfix`, so Postfix can connect.
//!
//! Needs root (CI runs as root); it is never skipped: not being root is a failure.
//!
//! Run: `cargo test -p mailstack-examples --test spf_privs`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SPF: &str = env!("CARGO_BIN_EXE_spf-policyd");
const FIXED: &str = env!("CARGO_BIN_EXE_fixed-policyd");

const REQUEST: &str = "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.1\nhelo_name=localhost\nsender=u@example.com\nrecipient=r@dest.example\ninstance=abc\n\n";

fn assert_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "spf_privs needs root");
}

/// Kills the child on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &Path) -> String {
    let path = dir.join("policyd-spf.conf");
    std::fs::write(&path, "debugLevel = 1\nTestOnly = 1\n").unwrap();
    path.to_string_lossy().into_owned()
}

fn connect(sock: &Path, child: &mut Child) -> UnixStream {
    for _ in 0..200 {
        if let Ok(s) = UnixStream::connect(sock) {
            return s;
        }
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} never listened", sock.display());
}

/// The four ids of a `Uid:`/`Gid:` line and the `Groups:` of `/proc/PID/status`.
fn proc_ids(pid: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// nobody's uid, gid and groups as `id` reports them.
fn nobody() -> (u32, u32, Vec<u32>) {
    let id = |flag: &str| -> Vec<u32> {
        let out = Command::new("id").args([flag, "nobody"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (id("-u")[0], id("-g")[0], id("-G"))
}

fn assert_runs_as_nobody(pid: u32) {
    let (uid, gid, mut groups) = nobody();
    let (uids, gids, mut got_groups) = proc_ids(pid);
    assert_eq!(uids, [uid; 4], "Uid: real, effective, saved, fs");
    assert_eq!(gids, [gid; 4], "Gid: real, effective, saved, fs");
    groups.sort_unstable();
    got_groups.sort_unstable();
    assert_eq!(got_groups, groups, "Groups: nobody's from /etc/group");
}

fn ask(stream: UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    writer.write_all(REQUEST.as_bytes()).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

#[test]
fn spf_policyd_drops_to_the_user_after_binding_a_postfix_socket() {
    assert_root();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spf.sock");
    let mut child = Daemon(
        Command::new(SPF)
            .args(["--config", &config(dir.path()), "--log", "none"])
            .args(["--user", "nobody", "--socket"])
            .arg(format!("unix:{}", sock.display()))
            .spawn()
            .unwrap(),
    );
    let stream = connect(&sock, &mut child.0);
    assert!(ask(stream).starts_with("action=prepend X-Comment: SPF check N/A"));
    assert_runs_as_nobody(child.0.id());
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    let postfix = mailstack::privs::lookup_group("postfix").unwrap();
    assert_eq!(Some(meta.gid()), postfix, "socket group postfix");
}

#[test]
fn spf_policyd_socket_group_and_mode_options() {
    assert_root();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spf.sock");
    let mut child = Daemon(
        Command::new(SPF)
            .args(["--config", &config(dir.path()), "--log", "none"])
            .args(["--allow-root", "--group", "nogroup", "--socket-mode", "600"])
            .arg("--socket")
            .arg(format!("unix:{}", sock.display()))
            .spawn()
            .unwrap(),
    );
    let stream = connect(&sock, &mut child.0);
    assert!(ask(stream).starts_with("action=prepend"));
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        Some(meta.gid()),
        mailstack::privs::lookup_group("nogroup").unwrap()
    );
    let (uids, _, _) = proc_ids(child.0.id());
    assert_eq!(uids, [0; 4], "--allow-root keeps root");
}

#[test]
fn root_without_user_is_refused_on_a_socket() {
    assert_root();
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", dir.path().join("x.sock").display());
    let out = Command::new(SPF)
        .args([
            "--config",
            &config(dir.path()),
            "--log",
            "stderr",
            "--socket",
            &sock,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-root"), "{stderr}");
    assert!(
        !dir.path().join("x.sock").exists(),
        "refused before binding"
    );
    let log = dir.path().join("fixed.log");
    let out = Command::new(FIXED)
        .args(["--socket", &sock, "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("--allow-root"), "{text}");
    let out = Command::new(SPF)
        .args(["--config", &config(dir.path()), "--user", "no-such-user-x"])
        .args(["--log", "stderr", "--socket", &sock])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-user-x"));
}

#[test]
fn fixed_policyd_drops_to_the_user() {
    assert_root();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fixed.sock");
    let log = dir.path().join("fixed.log");
    let mut child = Daemon(
        Command::new(FIXED)
            .args(["--user", "nobody", "--socket"])
            .arg(format!("unix:{}", sock.display()))
            .arg("--log-file")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stream = connect(&sock, &mut child.0);
    assert_eq!(ask(stream), "action=DUNNO\n");
    assert_runs_as_nobody(child.0.id());
    // The log file, opened before the switch, is still written to.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("running as nobody"), "{text}");
}
