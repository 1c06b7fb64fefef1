//! `spf-policyd` behind a real, private Postfix (Debian `postfix` 3.7), started under spawn(8)
//! exactly as python-policyd-spf is:
//!
//! ```text
//! policy-spf  unix  -  n  n  -  0  spawn  user=policyd-spf argv=.../spf-policyd --config ...
//! ```
//!
//! with `check_policy_service unix:private/policy-spf` after `reject_unauth_destination`.
//! The client address comes from XCLIENT (so it is not loopback, which `skip_addresses`
//! would skip); DNS is a test server on 127.0.0.1 given to the daemon with `--nameserver`.
//! Accepted messages are put on hold (`static:HOLD`) and read back with `postcat`.
//!
//! Shown: a `-all` sender from a disallowed address is rejected `550 5.7.23`; a pass gets
//! exactly one `Received-SPF` header for a two-recipient message; a DNS timeout defers with
//! `TempError_Defer = True` (`450 4.7.24`) and is accepted with a `Temperror` header otherwise.
//!
//! Needs root and Postfix; outside CI it is skipped with a message when they are missing.
//! Run: `cargo test -p mailstack-examples --test spf_postfix -- --nocapture`.

mod spf_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_spf-policyd");

struct Postfix {
    dir: PathBuf,
    port: u16,
}

impl Postfix {
    fn start(dir: &Path, dns: std::net::SocketAddr) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let spf_conf = |name: &str, extra: &str| {
            let p = conf.join(name);
            std::fs::write(&p, format!("debugLevel = 1\nLookup_Time = 3\n{extra}")).unwrap();
            p
        };
        let normal = spf_conf("policyd-spf.conf", "");
        let defer = spf_conf("policyd-spf-defer.conf", "TempError_Defer = True\n");
        let d = dir.display();
        std::fs::write(
            conf.join("main.cf"),
            format!(
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
relay_domains = dest.example
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
alias_maps =
alias_database =
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_restriction_classes = spf_defer
spf_defer = check_policy_service unix:private/policy-spf-defer, permit
smtpd_recipient_restrictions = reject_unauth_destination, check_client_access inline:{{192.0.2.77=spf_defer}}, check_policy_service unix:private/policy-spf
smtpd_data_restrictions = check_client_access static:HOLD
policy-spf_time_limit = 3600
policy-spf-defer_time_limit = 3600
"
            ),
        )
        .unwrap();
        let argv =
            |conf: &Path| format!("argv={BIN} --config {} --nameserver {dns}", conf.display());
        std::fs::write(
            conf.join("master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
showq unix n - n - - showq
postlog unix-dgram n - n - 1 postlogd
policy-spf  unix  -  n  n  -  0  spawn  user=policyd-spf {}
policy-spf-defer  unix  -  n  n  -  0  spawn  user=policyd-spf {}
",
                argv(&normal),
                argv(&defer)
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("queue")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(chown.success());
        let pf = Self {
            dir: dir.to_owned(),
            port,
        };
        pf.postfix(&["start"]);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return pf;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("postfix did not listen; log:\n{}", pf.log());
    }

    fn postfix(&self, args: &[&str]) {
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.dir.join("conf"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    fn postcat(&self, queue_id: &str) -> String {
        let out = Command::new("/usr/sbin/postcat")
            .arg("-c")
            .arg(self.dir.join("conf"))
            .args(["-hq", queue_id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg("stop")
            .output();
    }
}

/// A minimal SMTP client speaking through XCLIENT.
struct Smtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Smtp {
    fn connect(port: u16, addr: &str, helo: &str) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut c = Self {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        c.expect("", "220");
        c.expect("EHLO client.test", "250");
        c.expect(
            &format!("XCLIENT ADDR={addr} NAME=[UNAVAILABLE] HELO={helo}"),
            "220",
        );
        c.expect(&format!("EHLO {helo}"), "250");
        c
    }

    /// Sends `cmd` (unless empty) and returns the whole reply.
    fn cmd(&mut self, cmd: &str) -> String {
        if !cmd.is_empty() {
            self.w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        }
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.r.read_line(&mut line).unwrap() > 0,
                "server closed after {reply:?}"
            );
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    }

    fn expect(&mut self, cmd: &str, code: &str) -> String {
        let reply = self.cmd(cmd);
        assert!(
            reply.starts_with(code),
            "{cmd:?} -> {reply:?}, expected {code}"
        );
        reply
    }

    /// Sends a message to `rcpts` (all must be accepted); returns the queue id.
    fn send(&mut self, from: &str, rcpts: &[&str]) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), "250");
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), "250");
        }
        self.expect("DATA", "354");
        let reply = self.expect("Subject: spf test\r\n\r\nhello\r\n.", "250");
        reply.rsplit("queued as ").next().unwrap().trim().to_owned()
    }
}

fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root to run Postfix".into());
    }
    for p in ["/usr/sbin/postfix", "/usr/lib/postfix/sbin/spawn"] {
        if !Path::new(p).exists() {
            return Err(format!("{p} missing (apt-get install postfix)"));
        }
    }
    Ok(())
}

#[test]
fn postfix_rejects_prepends_once_and_defers() {
    if let Err(why) = prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "spf_postfix cannot run in CI: {why}"
        );
        eprintln!("skipping spf_postfix: {why}");
        return;
    }
    let dns = spf_support::start_dns_local(spf_support::golden_zone()).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("spf-postfix")
        .tempdir()
        .unwrap();
    // The spawn child runs as policyd-spf and must read its configuration.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pf = Postfix::start(tmp.path(), dns);

    // 1. A `-all` domain through a disallowed address.
    let mut c = Smtp::connect(pf.port, "192.0.2.9", "helo.none.example");
    c.expect("MAIL FROM:<u@fail.example>", "250");
    let reply = c.cmd("RCPT TO:<a@dest.example>");
    assert!(reply.starts_with("550 5.7.23 "), "{reply}\n{}", pf.log());
    assert!(
        reply.contains("Message rejected due to: SPF fail - not authorized"),
        "{reply}"
    );
    c.cmd("QUIT");

    // 2. A pass, two recipients: one Received-SPF header.
    let mut c = Smtp::connect(pf.port, "192.0.2.1", "mail.pass.example");
    let id = c.send("u@pass.example", &["a@dest.example", "b@dest.example"]);
    c.cmd("QUIT");
    let headers = pf.postcat(&id);
    let spf: Vec<&str> = headers
        .lines()
        .filter(|l| l.starts_with("Received-SPF:"))
        .collect();
    assert_eq!(
        spf,
        [
            "Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=192.0.2.1; helo=mail.pass.example; envelope-from=u@pass.example; receiver=dest.example "
        ],
        "{headers}"
    );

    // 3a. DNS timeout with TempError_Defer = True: deferred.
    let mut c = Smtp::connect(pf.port, "192.0.2.77", "helo.none.example");
    c.expect("MAIL FROM:<u@temp.example>", "250");
    let reply = c.cmd("RCPT TO:<a@dest.example>");
    assert!(reply.starts_with("450 4.7.24 "), "{reply}\n{}", pf.log());
    assert!(reply.contains("SPF Temporary Error: DNS"), "{reply}");
    c.cmd("QUIT");

    // 3b. The same with the default TempError_Defer = False: accepted with a Temperror header.
    let mut c = Smtp::connect(pf.port, "192.0.2.78", "helo.none.example");
    let id = c.send("u@temp.example", &["a@dest.example"]);
    c.cmd("QUIT");
    let headers = pf.postcat(&id);
    assert!(
        headers.contains(
            "Received-SPF: Temperror (mailfrom) identity=mailfrom; client-ip=192.0.2.78;"
        ),
        "{headers}"
    );
}
