//! Every milter daemon (`dkim-milter`, `dmarc-milter`, `av-milter`, `mailstackd`) started as
//! root with its tool's user option (`UserID` in opendkim.conf / opendmarc.conf, `User` in
//! clamav-milter.conf, `--user` for mailstackd) set to `nobody`: after binding it runs as that
//! user (the `Uid:`/`Gid:` lines of `/proc/PID/status`), its unix socket is 0660 with group
//! `postfix` (the shared default) or the tool's own socket options when set, and it still
//! answers a milter connection. Started as root with no user, each refuses with a message
//! naming its user option and exit status 2, unless `--allow-root`.
//!
//! Needs root (the switch to `nobody`). Run: `cargo test -p mailstack-examples --test
//! daemon_privs`.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use milter_proto::Reply;
use milter_proto::SocketSpec;
use milter_proto::client::{Client, ClientConfig, Connection};
use support::milters::Daemon;

const DKIM: &str = env!("CARGO_BIN_EXE_dkim-milter");
const DMARC: &str = env!("CARGO_BIN_EXE_dmarc-milter");
const AV: &str = env!("CARGO_BIN_EXE_av-milter");
const MAILSTACKD: &str = env!("CARGO_BIN_EXE_mailstackd");

/// No DNS server answers here: nothing in these tests reaches DNS.
const NO_DNS: &str = "127.0.0.1:9";

/// `(uid, gid)` of `name` from /etc/passwd.
fn user_ids(name: &str) -> (u32, u32) {
    let text = std::fs::read_to_string("/etc/passwd").unwrap();
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .map(|f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        .unwrap_or_else(|| panic!("no user {name}"))
}

/// The gid of `name` from /etc/group.
fn group_id(name: &str) -> u32 {
    let text = std::fs::read_to_string("/etc/group").unwrap();
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .map(|f| f[2].parse().unwrap())
        .unwrap_or_else(|| panic!("no group {name} (install postfix)"))
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test runs as root");
    true
}

/// The four ids of a `Uid:` or `Gid:` line of /proc/PID/status.
fn ids(pid: u32, key: &str) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Waits up to 10 s for the daemon to have switched to `uid`/`gid` (it binds, then drops).
fn wait_for_ids(pid: u32, uid: u32, gid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (u, g) = (ids(pid, "Uid:"), ids(pid, "Gid:"));
        if u == [uid; 4] && g == [gid; 4] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs as Uid {u:?} Gid {g:?}, expected {uid}/{gid}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The socket's mode (permission bits), owner and group.
fn socket_meta(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap();
    (m.permissions().mode() & 0o777, m.uid(), m.gid())
}

/// A milter session over the socket: negotiation and CONNECT answered.
fn answers(socket: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spec = SocketSpec::Unix(socket.to_owned());
        let mut client = Client::connect(&spec, ClientConfig::default())
            .await
            .unwrap();
        let c = client.connection(&Connection::default()).await.unwrap();
        assert_eq!(c.decision, Reply::Continue);
        client.quit().await.unwrap();
    });
}

/// Runs `exe args... --socket unix:dir/refused.sock` and expects the refusal: exit status 2
/// and a message naming `option`.
fn refuses_root(exe: &str, dir: &Path, args: &[&str], option: &str) {
    let socket = dir.join("refused.sock");
    let out = Command::new(exe)
        .args(args)
        .arg("--socket")
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{exe}: {err}");
    assert!(
        err.contains("refusing to run as root without a user to switch to")
            && err.contains(option)
            && err.contains("--allow-root"),
        "{exe}: {err}"
    );
    assert!(!socket.exists(), "{exe} bound before refusing");
}

/// With `--allow-root` the same daemon starts and stays root.
fn allowed_root(exe: &str, dir: &Path, args: &[&str]) {
    let mut all = args.to_vec();
    all.push("--allow-root");
    let d = Daemon::start(Path::new(exe), dir, "root", &all);
    answers(&d.socket);
    assert_eq!(ids(d.pid(), "Uid:"), [0; 4], "{exe} --allow-root");
}

struct Case {
    exe: &'static str,
    /// The config file's text with the user option, and without it.
    with_user: String,
    without_user: String,
    /// Flags with the config that has the user (mailstackd: `--user nobody`).
    extra_with_user: Vec<&'static str>,
    file: &'static str,
    option: &'static str,
    /// The identity expected after the switch.
    uid_gid: (u32, u32),
    /// The socket's expected mode and group.
    mode_group: (u32, u32),
}

fn run(case: &Case) {
    assert!(as_root());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let conf = |name: &str, text: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let with = conf(&format!("with-{}", case.file), &case.with_user);
    let without = conf(&format!("without-{}", case.file), &case.without_user);
    let with = with.to_str().unwrap();
    let without = without.to_str().unwrap();
    let ns = ["--nameserver", NO_DNS];

    let mut args = vec!["--config", with];
    args.extend_from_slice(&ns);
    args.extend_from_slice(&case.extra_with_user);
    let d = Daemon::start(Path::new(case.exe), dir, "user", &args);
    let (uid, gid) = case.uid_gid;
    wait_for_ids(d.pid(), uid, gid);
    let (mode, owner, group) = socket_meta(&d.socket);
    assert_eq!(
        (mode, owner, group),
        (case.mode_group.0, uid, case.mode_group.1),
        "{}: socket mode, owner, group",
        case.exe
    );
    answers(&d.socket);
    drop(d);

    let mut args = vec!["--config", without];
    args.extend_from_slice(&ns);
    refuses_root(case.exe, dir, &args, case.option);
    allowed_root(case.exe, dir, &args);
}

#[test]
fn dkim_milter_switches_to_userid_user_and_group() {
    let base = "Mode v\nTestPublicKeys /dev/null\n";
    let postfix = group_id("postfix");
    run(&Case {
        exe: DKIM,
        // `user:group`: the primary group is the one named, not nobody's own.
        with_user: format!("{base}UserID nobody:postfix\n"),
        without_user: base.to_owned(),
        extra_with_user: vec![],
        file: "opendkim.conf",
        option: "UserID in opendkim.conf",
        uid_gid: (user_ids("nobody").0, postfix),
        mode_group: (0o660, postfix),
    });
}

#[test]
fn dmarc_milter_switches_to_userid() {
    let nobody = user_ids("nobody");
    run(&Case {
        exe: DMARC,
        with_user: "UserID nobody\n".into(),
        without_user: "AuthservID mx.example\n".into(),
        extra_with_user: vec![],
        file: "opendmarc.conf",
        option: "UserID in opendmarc.conf",
        uid_gid: nobody,
        mode_group: (0o660, group_id("postfix")),
    });
}

#[test]
fn dmarc_milter_umask_still_decides_the_mode() {
    let nobody = user_ids("nobody");
    run(&Case {
        exe: DMARC,
        with_user: "UserID nobody\nUMask 0026\n".into(),
        without_user: "UMask 0026\n".into(),
        extra_with_user: vec![],
        file: "opendmarc.conf",
        option: "UserID in opendmarc.conf",
        uid_gid: nobody,
        mode_group: (0o640, group_id("postfix")),
    });
}

#[test]
fn av_milter_switches_to_user() {
    let nobody = user_ids("nobody");
    let base = "ClamdSocket unix:/nonexistent/clamd.ctl\n";
    run(&Case {
        exe: AV,
        with_user: format!("{base}User nobody\n"),
        without_user: base.to_owned(),
        extra_with_user: vec![],
        file: "clamav-milter.conf",
        option: "User in clamav-milter.conf",
        uid_gid: nobody,
        mode_group: (0o660, group_id("postfix")),
    });
}

#[test]
fn av_milter_socket_mode_and_group_still_decide() {
    let nobody = user_ids("nobody");
    let base = "ClamdSocket unix:/nonexistent/clamd.ctl\nMilterSocketMode 640\n\
                MilterSocketGroup nogroup\n";
    run(&Case {
        exe: AV,
        with_user: format!("{base}User nobody\n"),
        without_user: base.to_owned(),
        extra_with_user: vec![],
        file: "clamav-milter.conf",
        option: "User in clamav-milter.conf",
        uid_gid: nobody,
        mode_group: (0o640, group_id("nogroup")),
    });
}

#[test]
fn mailstackd_switches_to_user() {
    let nobody = user_ids("nobody");
    let text = "[mailstackd]\nauthserv_id = \"mx.example\"\n";
    run(&Case {
        exe: MAILSTACKD,
        with_user: text.into(),
        without_user: text.into(),
        extra_with_user: vec!["--user", "nobody"],
        file: "mailstackd.toml",
        option: "user in [mailstackd]",
        uid_gid: nobody,
        mode_group: (0o660, group_id("postfix")),
    });
}
