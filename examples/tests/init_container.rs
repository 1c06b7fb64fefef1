//! mailstack-init as PID 1 of a container made here: fresh PID, mount, UTS, IPC and network
//! namespaces (`unshare`), only Docker's default capabilities (`capsh --drop` of every
//! other one, CAP_SYS_ADMIN included), the seed-shaped config tree under a temporary root, a
//! private Postfix, saslauthd and mailstackd.
//!
//! Shown: users from users.txt exist with the right uid, group and shell (in a copy of /etc
//! bind-mounted over /etc in the mount namespace, so the host's /etc is never touched), a bad
//! line and a uid clash are reported by number while the others go in; SMTP AUTH on 587
//! through saslauthd (swaks); mail through mailstackd to a sink; a SIGKILLed mailstackd is
//! restarted while Postfix applies `milter_default_action = tempfail`; orphans are reaped;
//! SIGTERM stops Postfix, then mailstackd, then saslauthd within the grace period and no
//! accepted message is lost (sink + queue = accepted). Plus the bad-input errors of
//! `--check-config`.
//!
//! Run: `cargo test -p mailstack-examples --features interop --test init_container` as root
//! with postfix, sasl2-bin, swaks, util-linux (unshare, nsenter) and libcap2-bin (capsh).

mod spf_support;
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::postfix::{Sink, Smtp};

const INIT: &str = env!("CARGO_BIN_EXE_mailstack-init");

/// Docker's default capability set; every other one is dropped.
const DOCKER_CAPS: [&str; 14] = [
    "cap_chown",
    "cap_dac_override",
    "cap_fsetid",
    "cap_fowner",
    "cap_mknod",
    "cap_net_raw",
    "cap_setgid",
    "cap_setuid",
    "cap_setfcap",
    "cap_setpcap",
    "cap_net_bind_service",
    "cap_sys_chroot",
    "cap_kill",
    "cap_audit_write",
];

fn require(tools: &[&str]) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    for t in tools {
        assert!(
            Path::new(t).exists(),
            "{t} is missing (.ci/packages: postfix, sasl2-bin, swaks, util-linux, libcap2-bin)"
        );
    }
}

/// Every capability the kernel knows except Docker's defaults, for `capsh --drop`.
fn caps_to_drop() -> String {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = Command::new("capsh")
        .arg(format!("--decode={:x}", (1u64 << (last + 1)) - 1))
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout);
    let list = all.trim().split_once('=').unwrap().1.to_owned();
    list.split(',')
        .filter(|c| !DOCKER_CAPS.contains(c))
        .collect::<Vec<_>>()
        .join(",")
}

fn docker_mask() -> u64 {
    let bits = [0, 1, 4, 3, 27, 13, 6, 7, 31, 8, 10, 18, 5, 29];
    bits.iter().fold(0, |m, b| m | (1u64 << b))
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn queue_files(queue: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| {
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    walk(&e.path())
                } else {
                    usize::from(t.is_file())
                }
            })
            .sum()
    }
    ["incoming", "active", "deferred", "hold", "maildrop"]
        .iter()
        .map(|d| walk(&queue.join(d)))
        .sum()
}

struct Container {
    child: Child,
    init_pid: u32,
    log: PathBuf,
}

impl Container {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn child_named(&self, name: &str) -> Option<u32> {
        children(self.init_pid)
            .into_iter()
            .find(|&p| comm(p) == name)
    }

    /// Each `(daemon, user)`: the daemon under init runs as `user` of the container's
    /// `etc/passwd` under `tmp`, on every id of its `Uid:` line (real, effective, saved, fs).
    fn assert_runs_as(&self, tmp: &Path, daemons: &[(&str, &str)]) {
        for &(daemon, user) in daemons {
            let pid = self
                .child_named(daemon)
                .unwrap_or_else(|| panic!("no {daemon} under init"));
            let uid = mailstack::init::users::lookup_id(&tmp.join("etc/passwd"), user)
                .unwrap_or_else(|| panic!("no {user} in the container's passwd"));
            let uids: Vec<u32> = status_field(pid, "Uid:")
                .split_whitespace()
                .map(|n| n.parse().expect("numeric uid"))
                .collect();
            assert_eq!(uids, [uid; 4], "{daemon} runs as {user}");
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions.
        unsafe {
            libc::kill(self.init_pid as i32, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seed-shaped tree under `root` and a Postfix whose queue is under `pf`.
fn seed_tree(root: &Path, pf: &Path, sink_port: u16) {
    let etc = root.join("usr/local/etc");
    let mux = root.join("var/run/saslauthd/mux");
    let milter = root.join("var/run/mailstack/mailstackd.sock");
    for sub in ["queue", "data"] {
        std::fs::create_dir_all(pf.join(sub)).unwrap();
    }
    assert!(
        Command::new("chown")
            .arg("postfix")
            .arg(pf.join("data"))
            .status()
            .unwrap()
            .success()
    );
    let d = pf.display();
    write(
        &etc.join("postfix/main.cf"),
        &format!(
            "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.dest.example
mydomain = dest.example
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = dest.example
relay_transport = smtp:[127.0.0.1]:{sink_port}
default_transport = smtp:[127.0.0.1]:{sink_port}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
alias_maps =
alias_database =
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_recipient_restrictions = reject_unauth_destination
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
in_flow_delay = 0
smtpd_milters = unix:{}
milter_default_action = tempfail
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_security_options = noanonymous
",
            milter.display()
        ),
    );
    let mut master = String::from(
        "127.0.0.1:25 inet n - n - - smtpd -o smtpd_sasl_auth_enable=no\n\
         127.0.0.1:587 inet n - n - - smtpd -o smtpd_client_restrictions=permit_sasl_authenticated,reject -o mynetworks=192.0.2.1/32\n",
    );
    for line in support::postfix::MASTER_SERVICES {
        master.push_str(line);
        master.push('\n');
    }
    write(&etc.join("postfix/master.cf"), &master);
    write(
        &etc.join("postfix/sasl/smtpd.conf"),
        &format!(
            "pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: {}\n",
            mux.display()
        ),
    );
    write(
        &etc.join("mailstack/mailstackd.toml"),
        "[mailstackd]\nauthserv_id = \"mx.dest.example\"\nnameservers = [\"127.0.0.1:53\"]\n\
         [spf]\nenabled = false\n[dmarc]\nenabled = false\n",
    );
    write(
        &etc.join("users.txt"),
        "# the seed's mail users\nalice:Secr3t:pass:2001\n\nbob:bobs-password:2002\nthis line is broken\ncarol:x:2001\n",
    );
}

fn start(tmp: &Path) -> Container {
    start_with(tmp, &[])
}

/// The container's own /dev (a tmpfs with the host's null, zero, urandom, ... bound in), as
/// a container runtime gives one: `/dev/log` there is init's receiver, not the host's.
fn private_dev(tmp: &Path) -> String {
    let d = tmp.join("dev");
    std::fs::create_dir_all(&d).unwrap();
    let d = d.display();
    format!(
        "mount -t tmpfs -o mode=755 tmpfs {d} && \
         for n in null zero full random urandom tty; do touch {d}/$n && mount --bind /dev/$n {d}/$n; done && \
         mkdir {d}/pts {d}/shm && mount --bind /dev/pts {d}/pts && mount -t tmpfs tmpfs {d}/shm && \
         ln -s /proc/self/fd {d}/fd && mount --move {d} /dev"
    )
}

fn start_with(tmp: &Path, env: &[(&str, &str)]) -> Container {
    let etc_copy = tmp.join("etc");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg("/etc")
            .arg(&etc_copy)
            .status()
            .unwrap()
            .success()
    );
    // Debian's README.Debian for saslauthd: smtpd (user postfix) reaches the mux through
    // group sasl. Done in the copy only.
    let group = std::fs::read_to_string(etc_copy.join("group")).unwrap();
    let group: String = group
        .lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("sasl:x:45:") {
                if rest.is_empty() {
                    "sasl:x:45:postfix".to_owned()
                } else {
                    format!("sasl:x:45:{rest},postfix")
                }
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(etc_copy.join("group"), group).unwrap();
    let go = tmp.join("go");
    let toml = tmp.join("mailstack-init.toml");
    let log = tmp.join("init.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let script = format!(
        "mount --bind {etc} /etc && {dev} && ip link set lo up && \
         while [ ! -e {go} ]; do sleep 0.05; done && \
         exec capsh --drop={caps} --shell={init} -- --config {toml}",
        etc = etc_copy.display(),
        dev = private_dev(tmp),
        go = go.display(),
        caps = caps_to_drop(),
        init = INIT,
        toml = toml.display(),
    );
    let child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--mount-proc",
            "--uts",
            "--ipc",
            "--net",
            "--",
            "sh",
            "-c",
        ])
        .arg(&script)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let unshare_pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let init_pid = loop {
        if let Some(&p) = children(unshare_pid).first() {
            break p;
        }
        assert!(Instant::now() < deadline, "unshare started no child");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Enter the container's network namespace with this thread: the sink, swaks and our SMTP
    // client then run on its loopback.
    let ns = std::fs::File::open(format!("/proc/{init_pid}/ns/net")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace fd; only this thread moves.
    assert_eq!(
        unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
    Container {
        child,
        init_pid,
        log,
    }
}

/// The container's /var/log/mail.log (our receiver's, the services' and init's lines).
fn mail_log(tmp: &Path) -> String {
    std::fs::read_to_string(tmp.join("root/var/log/mail.log")).unwrap_or_default()
}

fn wait_mail_log(tmp: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = mail_log(tmp);
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in mail.log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `[reports]` job every 2 s running a script that says what it was given and leaves a
/// marker: the scheduled DMARC report run, with a stand-in for `mailstack dmarc-report`.
fn reports_toml(tmp: &Path) -> String {
    let script = tmp.join("report.sh");
    write(
        &script,
        &format!(
            "#!/bin/sh\necho \"report run: $*\"\ntouch {}\n",
            tmp.join("report-ran").display()
        ),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "[reports]\nschedule = \"every 2s\"\ncommand = {:?}\nargs = [\"dmarc-report\", \"--dry-run\"]\n",
        script
    )
}

fn init_toml(tmp: &Path) -> String {
    format!(
        "root = {:?}\nbin_dir = {:?}\nsmtp = \"127.0.0.1:25\"\ngrace_seconds = 15\nrestart_backoff_ms = 1500\n",
        tmp.join("root"),
        Path::new(INIT).parent().unwrap()
    )
}

#[test]
fn mailstack_init_as_pid1_in_namespaces() {
    require(&[
        "/usr/bin/unshare",
        "/usr/bin/nsenter",
        "/usr/sbin/capsh",
        "/usr/sbin/saslauthd",
        "/usr/bin/swaks",
        "/usr/sbin/postfix",
        "/usr/sbin/useradd",
    ]);
    assert!(
        !Path::new("/home/mail_users/alice").exists(),
        "/home/mail_users/alice exists before the test"
    );
    let tmp = tempfile::Builder::new()
        .prefix("mailstack-init-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = start(tmp.path());
    // In the container's network namespace from here on.
    let sink = Sink::start();
    seed_tree(&tmp.path().join("root"), &tmp.path().join("pf"), sink.port);
    std::fs::write(
        tmp.path().join("mailstack-init.toml"),
        format!("{}{}", init_toml(tmp.path()), reports_toml(tmp.path())),
    )
    .unwrap();
    std::fs::write(tmp.path().join("go"), "").unwrap();
    assert!(
        c.wait_log("all services ready", Duration::from_secs(90)),
        "not ready; log:\n{}\npostfix:\n{}",
        c.log(),
        mail_log(tmp.path())
    );

    // PID 1 of its namespace, with Docker's capabilities and no more.
    let nspid = status_field(c.init_pid, "NSpid:");
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "NSpid {nspid}");
    assert_eq!(comm(c.init_pid), "mailstack-init");
    let eff = u64::from_str_radix(&status_field(c.init_pid, "CapEff:"), 16).unwrap();
    assert_eq!(eff, docker_mask(), "CapEff {eff:x}");
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN kept");

    // Order: saslauthd, then mailstackd, then postfix (each only after the previous was ready).
    let log = c.log();
    let pos = |s: &str| {
        log.find(s)
            .unwrap_or_else(|| panic!("{s:?} not in log:\n{log}"))
    };
    assert!(
        pos("saslauthd: ready") < pos("mailstackd: started"),
        "{log}"
    );
    assert!(pos("mailstackd: ready") < pos("postfix: started"), "{log}");
    // mailstackd runs as the user init gives it; the mail below goes through its socket.
    c.assert_runs_as(tmp.path(), &[("mailstackd", "opendkim")]);

    // Users.
    let passwd = std::fs::read_to_string(tmp.path().join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("alice:x:2001:8::/home/mail_users/alice:/bin/sh\n"),
        "{passwd}"
    );
    assert!(
        passwd.contains("bob:x:2002:8::/home/mail_users/bob:/bin/sh\n"),
        "{passwd}"
    );
    assert!(!passwd.contains("carol:"), "{passwd}");
    assert!(
        !Path::new("/home/mail_users/alice").exists(),
        "home was created"
    );
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains("alice:x:2001"),
        "host /etc touched"
    );
    assert!(log.contains("users.txt:5: no ':'"), "{log}");
    assert!(
        log.contains("users.txt:6: uid 2001 of carol is already alice's"),
        "{log}"
    );
    assert!(
        !log.contains("Secr3t") && !log.contains("bobs-password"),
        "a password reached the log"
    );

    // Run directory of the tmpfiles rule.
    let m = std::fs::metadata(tmp.path().join("root/var/run/mailstack")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o3770);
    let id = |file: &str, name: &str| {
        mailstack::init::users::lookup_id(&tmp.path().join("etc").join(file), name).unwrap()
    };
    assert_eq!(
        (m.uid(), m.gid()),
        (id("passwd", "opendkim"), id("group", "postfix"))
    );

    // SMTP AUTH on 587 through saslauthd.
    let swaks = |user: &str, pass: &str| {
        Command::new("swaks")
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                "587",
                "--from",
                "alice@dest.example",
            ])
            .args([
                "--to",
                "someone@dest.example",
                "--auth",
                "PLAIN",
                "--auth-user",
                user,
            ])
            .args([
                "--auth-password",
                pass,
                "--timeout",
                "30",
                "--h-Subject",
                "auth",
            ])
            .output()
            .unwrap()
    };
    let ok = swaks("alice", "Secr3t:pass");
    assert!(
        ok.status.success(),
        "AUTH as alice failed:\n{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let bad = swaks("alice", "wrong");
    assert!(!bad.status.success(), "a wrong password was accepted");
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("535"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let got = sink
        .wait(1, Duration::from_secs(30))
        .expect("the AUTH message reached the sink");
    assert!(
        got[0]
            .header("Authentication-Results")
            .iter()
            .any(|h| h.contains("mx.dest.example"))
    );

    // Mail on 25 through mailstackd.
    let mut accepted = 1;
    for i in 0..3 {
        let mut s = Smtp::connect(25);
        s.expect("EHLO client.example", "250");
        let r = s.send(
            "a@src.example",
            &["b@dest.example"],
            &format!("Subject: m{i}\r\n\r\nbody\r\n"),
        );
        assert_eq!(r.code, 250, "{r:?}");
        accepted += 1;
    }
    let got = sink
        .wait(accepted, Duration::from_secs(30))
        .expect("messages through mailstackd");
    assert!(
        got.iter()
            .all(|m| !m.header("Authentication-Results").is_empty())
    );

    // The mail log: Postfix through our /dev/log receiver, mailstackd's stderr, init's own
    // lines, in one file under the container's /var/log.
    let log = wait_mail_log(tmp.path(), "postfix/smtpd[", Duration::from_secs(10));
    assert!(
        log.contains(" mailstackd: ") && log.contains("listening"),
        "{log}"
    );
    assert!(
        log.contains(" mailstack-init: ") && log.contains("all services ready"),
        "{log}"
    );
    assert!(log.contains(" postfix/cleanup["), "{log}");
    // The scheduled report run: started on its schedule, its output logged, its end logged.
    let log = wait_mail_log(
        tmp.path(),
        "job dmarc-reports: finished",
        Duration::from_secs(20),
    );
    assert!(
        log.contains("dmarc-report: report run: dmarc-report --dry-run"),
        "{log}"
    );
    assert!(tmp.path().join("report-ran").exists());

    // health: every service probed for real (this thread is in the container's network).
    let health = || {
        let out = Command::new(INIT)
            .arg("--config")
            .arg(tmp.path().join("mailstack-init.toml"))
            .arg("health")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = health();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "saslauthd: up\nmailstackd: up\npostfix: up\n");

    // A killed filter: Postfix tempfails meanwhile, init restarts it.
    let old = c
        .child_named("mailstackd")
        .expect("mailstackd is a child of init");
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let r = Smtp::try_send(
        25,
        None,
        "a@src.example",
        &["b@dest.example"],
        "Subject: down\r\n\r\nx\r\n",
    );
    assert!(
        (400..500).contains(&r.code),
        "filter down: expected milter_default_action tempfail, got {r:?}"
    );
    let (code, out) = health();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("DOWN mailstackd: milter OPTNEG"), "{out}");
    assert!(out.contains("postfix: up"), "{out}");
    assert!(
        c.wait_log("mailstackd: ready again", Duration::from_secs(30)),
        "{}",
        c.log()
    );
    let new = c.child_named("mailstackd").expect("mailstackd restarted");
    assert_ne!(old, new);
    assert!(
        c.log().contains("died: killed by signal 9; restarting in"),
        "{}",
        c.log()
    );
    let r = Smtp::try_send(
        25,
        None,
        "a@src.example",
        &["b@dest.example"],
        "Subject: up\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    accepted += 1;

    // Orphans: a process in the container forks children and exits; PID 1 reaps them.
    let st = Command::new("nsenter")
        .args([
            "-t",
            &c.init_pid.to_string(),
            "--pid",
            "--mount",
            "--",
            "sh",
            "-c",
        ])
        .arg("for i in 1 2 3 4 5; do sleep 0.3 & done; exit 0")
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(1500));
    let zombies: Vec<u32> = children(c.init_pid)
        .into_iter()
        .filter(|&p| status_field(p, "State:").starts_with('Z'))
        .collect();
    assert!(zombies.is_empty(), "zombies under PID 1: {zombies:?}");

    // SIGHUP: passed on to the filter, which re-reads its configuration in place (same
    // pid); nothing else is touched.
    let before = c.child_named("mailstackd").unwrap();
    let pf_before = c.child_named("postfix");
    let reloads = mail_log(tmp.path())
        .matches("configuration reloaded")
        .count();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(c.init_pid as i32, libc::SIGHUP) };
    assert!(
        c.wait_log("mailstackd: SIGHUP passed on", Duration::from_secs(10)),
        "{}",
        c.log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while mail_log(tmp.path())
        .matches("configuration reloaded")
        .count()
        == reloads
    {
        assert!(
            Instant::now() < deadline,
            "mailstackd did not reload:\n{}",
            mail_log(tmp.path())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        c.child_named("mailstackd"),
        Some(before),
        "SIGHUP restarted it"
    );
    assert_eq!(
        c.child_named("postfix"),
        pf_before,
        "SIGHUP touched Postfix"
    );
    let r = Smtp::try_send(
        25,
        None,
        "a@src.example",
        &["b@dest.example"],
        "Subject: hup\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    accepted += 1;

    // SIGTERM with mail in flight: a sender keeps sending; nothing accepted is lost.
    // More than can go through before the SIGTERM below (200 once did, on a quiet machine):
    // the stop must find the sender mid-stream.
    const MAX_SENT: usize = 20_000;
    let sender = std::thread::spawn(|| {
        let mut ok = 0;
        for i in 0..MAX_SENT {
            let r = Smtp::try_send(
                25,
                None,
                "a@src.example",
                &["b@dest.example"],
                &format!("Subject: t{i}\r\n\r\nx\r\n"),
            );
            if r.code != 250 {
                return (ok, i);
            }
            ok += 1;
        }
        (ok, MAX_SENT)
    });
    // The sender runs in this thread's network namespace: new threads inherit it.
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(c.init_pid as i32, libc::SIGTERM) };
    let mut c = c;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "init did not stop; log:\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    let (sent_ok, tried) = sender.join().unwrap();
    assert!(
        sent_ok > 0 && tried < MAX_SENT,
        "sender: {sent_ok} accepted of {tried} tried"
    );
    accepted += sent_ok;
    let log = c.log();
    assert!(status.success(), "init exit {status:?}; log:\n{log}");
    assert!(took < Duration::from_secs(3 * 15), "stop took {took:?}");
    let pos = |s: &str| {
        log.rfind(s)
            .unwrap_or_else(|| panic!("{s:?} not in log:\n{log}"))
    };
    assert!(pos("postfix stopped") < pos("stopping mailstackd"), "{log}");
    assert!(
        pos("mailstackd stopped") < pos("stopping saslauthd"),
        "{log}"
    );
    assert!(log.contains("all services stopped"), "{log}");
    let delivered = sink.messages().len();
    let queued = queue_files(&tmp.path().join("pf/queue"));
    assert_eq!(
        delivered + queued,
        accepted,
        "sink {delivered} + queue {queued} != accepted {accepted}"
    );
    // The log drained before init exited.
    let log = mail_log(tmp.path());
    assert!(log.contains("all services stopped"), "{log}");
    eprintln!("stop took {took:?}; sink {delivered}, queue {queued}, accepted {accepted}");
}

/// A syslog receiver over TCP as rsyslog's `@@` sender expects one (LF-framed lines) on a
/// fixed port of the container's loopback, which the test can stop and start again.
struct TcpSyslog {
    port: u16,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    accepts: Option<std::thread::JoinHandle<()>>,
}

impl TcpSyslog {
    fn start(port: u16) -> Self {
        let mut r = Self {
            port,
            lines: Default::default(),
            stop: None,
            accepts: None,
        };
        r.listen();
        r
    }

    fn listen(&mut self) {
        use std::io::BufRead as _;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (lines, flag) = (self.lines.clone(), stop.clone());
        self.accepts = Some(std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if let Ok((c, _)) = listener.accept() {
                    c.set_nonblocking(false).unwrap();
                    let (lines, flag) = (lines.clone(), flag.clone());
                    let reader = c.try_clone().unwrap();
                    conns.push(c);
                    std::thread::spawn(move || {
                        for l in std::io::BufReader::new(reader).lines() {
                            let Ok(l) = l else { break };
                            if flag.load(Ordering::SeqCst) {
                                break;
                            }
                            lines.lock().unwrap().push(l);
                        }
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The receiver going away: every connection closed, as a restarting rsyslog does.
            for c in conns {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }));
        self.stop = Some(stop);
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(t) = self.accepts.take() {
            t.join().unwrap();
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn wait(&self, pred: impl Fn(&[String]) -> bool, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while !pred(&self.lines()) {
            assert!(
                Instant::now() < deadline,
                "{what}; the receiver got:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The seed's tree for the four single-purpose daemons (OpenDKIM's, OpenDMARC's,
/// clamav-milter's and python-policyd-spf's files) and clamd with our signature.
fn seed_single_purpose(tmp: &Path, dns: std::net::SocketAddr) -> String {
    let root = tmp.join("root");
    let etc = root.join("usr/local/etc");
    let run = root.join("var/run");
    write(
        &etc.join("opendkim/opendkim.conf"),
        "Mode v\nUserID opendkim\nAuthservID mx.dest.example\n",
    );
    write(
        &etc.join("opendmarc/opendmarc.conf"),
        "AuthservID mx.dest.example\nUserID opendmarc\nRejectFailures yes\n",
    );
    let db = tmp.join("clamdb");
    std::fs::create_dir_all(&db).unwrap();
    write(
        &db.join("mailstack.ndb"),
        &format!("Mailstack.Test.EICAR:0:*:{}\n", support::clamd::EICAR_HEX),
    );
    write(
        &etc.join("clamav/clamd.conf"),
        &format!(
            "LocalSocket {}\nLocalSocketMode 666\nFixStaleSocket yes\nDatabaseDirectory {}\n\
             TemporaryDirectory /tmp\nDisableCache yes\n",
            run.join("clamav/clamd.ctl").display(),
            db.display()
        ),
    );
    write(
        &etc.join("clamav/clamav-milter.conf"),
        &format!(
            "User clamav\nClamdSocket unix:{}\nOnInfected Reject\nRejectMsg Virus %v found\n\
             AddHeader Replace\nReportHostname mx.dest.example\n",
            run.join("clamav/clamd.ctl").display()
        ),
    );
    write(
        &etc.join("python-policyd-spf/policyd-spf.conf"),
        "debugLevel = 1\nTestOnly = 1\nHELO_reject = False\nMail_From_reject = Fail\n",
    );
    let main_cf = etc.join("postfix/main.cf");
    let text = std::fs::read_to_string(&main_cf).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("smtpd_milters") {
                format!(
                    "smtpd_milters = unix:{} unix:{} unix:{}",
                    run.join("opendkim/opendkim.sock").display(),
                    run.join("opendmarc/opendmarc.sock").display(),
                    run.join("clamav/clamav-milter.sock").display()
                )
            } else if l.starts_with("smtpd_recipient_restrictions") {
                format!(
                    "smtpd_recipient_restrictions = reject_unauth_destination, \
                     check_policy_service unix:{}",
                    run.join("policyd-spf/policyd-spf.sock").display()
                )
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect::<String>();
    write(
        &main_cf,
        &format!("{text}smtpd_authorized_xclient_hosts = 127.0.0.0/8\n"),
    );
    let ns = dns.to_string();
    format!(
        "filters = [\"dkim-milter\", \"dmarc-milter\", \"av-milter\", \"spf-policyd\"]\n\
         clamd = \"yes\"\n\
         [args]\n\
         dkim-milter = [\"--nameserver\", \"{ns}\"]\n\
         dmarc-milter = [\"--nameserver\", \"{ns}\"]\n\
         spf-policyd = [\"--nameserver\", \"{ns}\"]\n\
         [log]\nqueue = 16\n"
    )
}

/// The client the mail comes from (by XCLIENT): not local, so every filter checks it.
const REMOTE: Option<(&str, &str)> = Some(("192.0.2.1", "mail.src.example"));

#[test]
fn single_purpose_daemons_and_clamd_under_init_with_the_log_forwarded() {
    require(&[
        "/usr/bin/unshare",
        "/usr/sbin/capsh",
        "/usr/sbin/saslauthd",
        "/usr/sbin/postfix",
        "/usr/sbin/clamd",
    ]);
    let tmp = tempfile::Builder::new()
        .prefix("mailstack-init-4-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    const LOG_PORT: u16 = 5514;
    let host = format!("127.0.0.1:{LOG_PORT}");
    let c = start_with(tmp.path(), &[("MAIL_LOG_HOST", host.as_str())]);
    // In the container's network namespace from here on: the sink, the DNS server and the
    // syslog receiver are on its loopback.
    let mut syslog = TcpSyslog::start(LOG_PORT);
    let sink = Sink::start();
    let mut zone = spf_support::Zone::default();
    zone.txt("_dmarc.src.example", "v=DMARC1; p=none")
        .txt("_dmarc.spoofed.example", "v=DMARC1; p=reject")
        .txt("src.example", "v=spf1 ip4:192.0.2.1 -all")
        .txt("spoofed.example", "v=spf1 -all");
    let dns = spf_support::start_dns_local(zone).unwrap();
    seed_tree(&tmp.path().join("root"), &tmp.path().join("pf"), sink.port);
    let extra = seed_single_purpose(tmp.path(), dns);
    std::fs::write(
        tmp.path().join("mailstack-init.toml"),
        format!(
            "{}{extra}",
            init_toml(tmp.path()).replace("restart_backoff_ms = 1500", "restart_backoff_ms = 100")
        ),
    )
    .unwrap();
    std::fs::write(tmp.path().join("go"), "").unwrap();
    assert!(
        c.wait_log("all services ready", Duration::from_secs(120)),
        "not ready; log:\n{}\nforwarded:\n{}",
        c.log(),
        syslog.lines().join("\n")
    );
    let log = c.log();
    let pos = |s: &str| {
        log.find(s)
            .unwrap_or_else(|| panic!("{s:?} not in log:\n{log}"))
    };
    assert!(pos("clamd: ready") < pos("av-milter: started"), "{log}");
    // Each daemon runs as the user its own config names (spf-policyd: the one init gives it),
    // and Postfix's smtpd reaches its socket all the same (the mail below).
    c.assert_runs_as(
        tmp.path(),
        &[
            ("dkim-milter", "opendkim"),
            ("dmarc-milter", "opendmarc"),
            ("av-milter", "clamav"),
            ("spf-policyd", "policyd-spf"),
        ],
    );
    for (a, b) in [
        ("dkim-milter: ready", "dmarc-milter: started"),
        ("dmarc-milter: ready", "av-milter: started"),
        ("av-milter: ready", "spf-policyd: started"),
        ("spf-policyd: ready", "postfix: started"),
    ] {
        assert!(pos(a) < pos(b), "{a} before {b}:\n{log}");
    }

    // Mail through the three milters and the policy server.
    let r = Smtp::try_send(
        25,
        REMOTE,
        "alice@src.example",
        &["b@dest.example"],
        "From: alice@src.example\r\nSubject: clean\r\n\r\nhello\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let got = sink
        .wait(1, Duration::from_secs(30))
        .expect("the clean message reached the sink");
    let m = &got[0];
    assert_eq!(m.header("X-Virus-Status"), ["Clean"], "{}", m.text());
    let ar = m.header("Authentication-Results").join("\n");
    assert!(ar.contains("dmarc=pass"), "{}", m.text());
    assert!(
        m.header("Received-SPF")
            .iter()
            .any(|h| h.starts_with("Pass")),
        "{}",
        m.text()
    );
    let r = Smtp::try_send(
        25,
        REMOTE,
        "alice@src.example",
        &["b@dest.example"],
        &format!(
            "From: alice@src.example\r\nSubject: bad\r\n\r\n{}\r\n",
            support::clamd::eicar()
        ),
    );
    assert_eq!(r.code / 100, 5, "EICAR: {r:?}");
    assert!(r.to_string().contains("Virus"), "{r:?}");
    let r = Smtp::try_send(
        25,
        REMOTE,
        "mallory@spoofed.example",
        &["b@dest.example"],
        "From: boss@spoofed.example\r\nSubject: spoof\r\n\r\nx\r\n",
    );
    assert_eq!(r.code / 100, 5, "SPF -all from 127.0.0.1: {r:?}");

    // The forwarded log: Postfix's lines (through /dev/log) and our daemons' (their stderr).
    syslog.wait(
        |l| {
            l.iter().any(|x| x.contains(" postfix/smtpd["))
                && l.iter().any(|x| x.contains(" dkim-milter: "))
                && l.iter().any(|x| x.contains(" av-milter: "))
                && l.iter().any(|x| x.contains(" mailstack-init: "))
        },
        Duration::from_secs(15),
        "Postfix's and our lines forwarded",
    );
    assert!(
        syslog.lines().iter().all(|l| l.starts_with('<')),
        "RFC 3164 lines with PRI"
    );

    // The receiver restarts; while it is away more than the queue (16) is logged.
    syslog.stop();
    let before = syslog.lines().len();
    for i in 0..6 {
        let r = Smtp::try_send(
            25,
            None,
            "alice@src.example",
            &["b@dest.example"],
            &format!("From: alice@src.example\r\nSubject: away {i}\r\n\r\nx\r\n"),
        );
        assert_eq!(r.code, 250, "{r:?}");
    }
    std::thread::sleep(Duration::from_secs(1));
    syslog.listen();
    syslog.wait(
        |l| l[before..].iter().any(|x| x.contains("log lines dropped")),
        Duration::from_secs(40),
        "the drop reported after the restart",
    );
    let r = Smtp::try_send(
        25,
        REMOTE,
        "alice@src.example",
        &["b@dest.example"],
        "From: alice@src.example\r\nSubject: after\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let marker = {
        let got = sink.wait(8, Duration::from_secs(30)).expect("8 delivered");
        got.len()
    };
    assert_eq!(marker, 8);
    syslog.wait(
        |l| {
            l[before..]
                .iter()
                .filter(|x| x.contains(" postfix/smtpd["))
                .count()
                >= 3
        },
        Duration::from_secs(15),
        "lines after the restart",
    );

    // A filter that keeps dying (its configuration broken, then killed): reported, and
    // Postfix applies milter_default_action (tempfail) meanwhile.
    write(
        &tmp.path().join("root/usr/local/etc/opendkim/opendkim.conf"),
        "Mode v\nUserID opendkim\nBogusOption yes\n",
    );
    let pid = c
        .child_named("dkim-milter")
        .expect("dkim-milter under init");
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        c.wait_log("dkim-milter keeps dying", Duration::from_secs(30)),
        "{}",
        c.log()
    );
    assert!(
        c.log()
            .contains("Postfix applies its milter_default_action"),
        "{}",
        c.log()
    );
    let r = Smtp::try_send(
        25,
        REMOTE,
        "alice@src.example",
        &["b@dest.example"],
        "From: alice@src.example\r\nSubject: while down\r\n\r\nx\r\n",
    );
    assert_eq!(r.code / 100, 4, "dkim-milter down: {r:?}");
    // The exit status of the broken start names the file and line, in the forwarded log.
    syslog.wait(
        |l| {
            l.iter()
                .any(|x| x.contains("dkim-milter") && x.contains("opendkim.conf:3"))
        },
        Duration::from_secs(15),
        "dkim-milter's configuration error forwarded",
    );

    // SIGTERM: everything stops in order and init exits 0.
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(c.init_pid as i32, libc::SIGTERM) };
    let mut c = c;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "init did not stop:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "init exit {status:?}:\n{}", c.log());
    syslog.stop();
}

fn check_config(tmp: &Path, extra: &str) -> (i32, String) {
    let toml = tmp.join("i.toml");
    std::fs::write(&toml, format!("{}{extra}", init_toml(tmp))).unwrap();
    let out = Command::new(INIT)
        .arg("--config")
        .arg(&toml)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn bad_input_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    seed_tree(&tmp.path().join("root"), &tmp.path().join("pf"), 9);
    let (code, out) = check_config(tmp.path(), "");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("saslauthd (Support)") && out.contains("postfix (Mta)"),
        "{out}"
    );

    let (code, out) = check_config(tmp.path(), "filters = [\"dkim-milter\"]\n");
    assert_eq!(code, 2);
    let dir = tmp.path().join("root/usr/local/etc/opendkim");
    assert!(
        out.contains(&format!(
            "{}: missing configuration directory (dkim-milter)",
            dir.display()
        )),
        "{out}"
    );

    let (code, out) = check_config(
        tmp.path(),
        "[programs]\nsaslauthd = \"/nonexistent/saslauthd\"\n",
    );
    assert_eq!(code, 2);
    assert!(
        out.contains("/nonexistent/saslauthd: service binary of saslauthd is missing"),
        "{out}"
    );

    let (code, out) = check_config(tmp.path(), "ready_timeout_seconds = \"soon\"\n");
    assert_eq!(code, 2);
    assert!(out.contains("i.toml:6: invalid type"), "{out}");

    // add-user against a private system root: the password comes on stdin, a uid clash is
    // named.
    let sys = tmp.path().join("sys");
    std::fs::create_dir_all(sys.join("etc")).unwrap();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        std::fs::copy(Path::new("/etc").join(f), sys.join("etc").join(f)).unwrap();
    }
    let toml = tmp.path().join("u.toml");
    std::fs::write(
        &toml,
        format!("{}passwd_root = {:?}\n", init_toml(tmp.path()), sys),
    )
    .unwrap();
    let add = |name: &str, uid: &str| {
        let mut child = Command::new(INIT)
            .arg("--config")
            .arg(&toml)
            .args(["add-user", name, uid])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"pw-on-stdin\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = add("dave", "3001");
    assert_eq!(code, 0, "{out}");
    let passwd = std::fs::read_to_string(sys.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("dave:x:3001:8::/home/mail_users/dave:/bin/sh\n"),
        "{passwd}"
    );
    let shadow = std::fs::read_to_string(sys.join("etc/shadow")).unwrap();
    assert!(
        shadow.lines().any(|l| l.starts_with("dave:$")),
        "no password hash for dave"
    );
    let (code, out) = add("dave", "3001");
    assert_eq!((code, out.trim()), (0, "user dave: exists, left alone"));
    let (code, out) = add("erin", "3001");
    assert_eq!(code, 2);
    assert!(out.contains("uid 3001 of erin is already dave's"), "{out}");
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains("dave:")
    );
}
