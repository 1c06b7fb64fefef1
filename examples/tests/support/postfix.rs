//! A private Postfix instance for interop tests (Debian's `postfix` package, run as root).
//!
//! Each [`Postfix`] has its own config, queue and data directories under a temporary
//! directory, listens for SMTP on a free port of 127.0.0.1, writes its log to a file
//! (`maillog_file`: there is no syslog daemon here), does no DNS, and relays every accepted
//! message to an in-process SMTP [`Sink`] on another free port. Instances are independent, so
//! tests run in parallel. Dropping it stops Postfix (`postfix -c DIR abort`) and the sink.
//!
//! ```ignore
//! let pf = Postfix::builder()
//!     .main("smtpd_milters", "unix:/tmp/x/milter.sock")
//!     .main("milter_default_action", "tempfail")
//!     .start();
//! let mut smtp = pf.smtp();                      // connected, EHLO done
//! smtp.expect("MAIL FROM:<a@src.example>", "250");
//! smtp.expect("RCPT TO:<b@dest.example>", "250");
//! let queued = smtp.data("Subject: hi\r\n\r\nbody\r\n"); // the reply to the final dot
//! let msgs = pf.wait_for_messages(1, Duration::from_secs(20));
//! assert_eq!(msgs[0].header("Subject"), ["hi"]);
//! ```
//!
//! What it gives:
//! - [`PostfixBuilder::main`] / [`PostfixBuilder::master`]: extra `main.cf` parameters (they
//!   override the defaults below) and extra `master.cf` lines (spawn(8) policy services...).
//! - [`Postfix::queue_dir`]: `unix:private/NAME` sockets in `main.cf` are relative to it.
//! - [`Postfix::smtp`] / [`Smtp`]: a small SMTP client returning every reply (code + text),
//!   with XCLIENT to pretend another client address.
//! - [`Postfix::wait_for_messages`]: what reached the sink, with the envelope.
//! - [`Postfix::log`]: the Postfix log so far (also printed when a wait times out).
//!
//! Postfix missing or not running as root is a test failure with a clear message, never a
//! silent pass: CI (`.ci/run`) installs the package and runs as root.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where Debian installs the `postfix` command.
pub const POSTFIX: &str = "/usr/sbin/postfix";

/// The domain the instance relays for; send test mail to `someone@dest.example`.
pub const DEST_DOMAIN: &str = "dest.example";

/// Fails the test unless Postfix can run here.
pub fn require_postfix() {
    assert!(
        Path::new(POSTFIX).exists(),
        "{POSTFIX} is missing: install Debian's postfix package (.ci/run does)"
    );
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the Postfix interop tests run Postfix and need root"
    );
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Collects `main.cf` parameters and `master.cf` lines, then starts the instance.
#[derive(Debug, Default)]
pub struct PostfixBuilder {
    main: Vec<(String, String)>,
    master: Vec<String>,
    conf_files: Vec<(String, String)>,
}

impl PostfixBuilder {
    /// Sets a `main.cf` parameter (overrides the fixture's default of the same name).
    pub fn main(mut self, name: &str, value: impl Into<String>) -> Self {
        self.main.push((name.to_owned(), value.into()));
        self
    }

    /// Writes a file under the configuration directory before Postfix starts, e.g.
    /// `sasl/smtpd.conf` (Debian's smtpd reads Cyrus SASL's configuration from
    /// `$config_directory/sasl`).
    pub fn conf_file(mut self, relative: &str, contents: impl Into<String>) -> Self {
        self.conf_files.push((relative.to_owned(), contents.into()));
        self
    }

    /// Appends a line to `master.cf`.
    pub fn master(mut self, line: impl Into<String>) -> Self {
        self.master.push(line.into());
        self
    }

    /// Writes the configuration, starts Postfix and waits until it accepts SMTP connections.
    pub fn start(self) -> Postfix {
        require_postfix();
        let tmp = tempfile::Builder::new()
            .prefix("mailstack-postfix-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_owned();
        let sink = Sink::start();
        let port = free_port();
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create postfix dirs");
        }
        let status = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .expect("run chown");
        assert!(status.success(), "chown postfix {}", dir.display());
        std::fs::write(
            dir.join("conf/main.cf"),
            main_cf(&dir, sink.port, &self.main),
        )
        .expect("write main.cf");
        std::fs::write(dir.join("conf/master.cf"), master_cf(port, &self.master))
            .expect("write master.cf");
        for (relative, contents) in &self.conf_files {
            let path = dir.join("conf").join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create conf subdirectory");
            }
            std::fs::write(&path, contents).expect("write conf file");
        }
        let pf = Postfix {
            dir,
            port,
            sink,
            _tmp: tmp,
        };
        pf.postfix(&["start"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return pf;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postfix did not listen on {port}; log:\n{}", pf.log());
    }
}

fn main_cf(dir: &Path, sink_port: u16, extra: &[(String, String)]) -> String {
    let d = dir.display();
    let relay = format!("smtp:[127.0.0.1]:{sink_port}");
    let defaults: Vec<(&str, String)> = vec![
        ("compatibility_level", "3.6".into()),
        ("queue_directory", format!("{d}/queue")),
        ("data_directory", format!("{d}/data")),
        ("command_directory", "/usr/sbin".into()),
        ("daemon_directory", "/usr/lib/postfix/sbin".into()),
        ("shlib_directory", "/usr/lib/postfix".into()),
        ("meta_directory", "/etc/postfix".into()),
        ("mail_owner", "postfix".into()),
        ("setgid_group", "postdrop".into()),
        ("myhostname", "mx.dest.example".into()),
        ("mydomain", DEST_DOMAIN.into()),
        ("mydestination", String::new()),
        ("mynetworks", "127.0.0.0/8".into()),
        ("relay_domains", DEST_DOMAIN.into()),
        ("relay_transport", relay.clone()),
        ("default_transport", relay),
        ("inet_interfaces", "127.0.0.1".into()),
        ("inet_protocols", "ipv4".into()),
        ("alias_maps", String::new()),
        ("alias_database", String::new()),
        ("maillog_file", format!("{d}/maillog")),
        ("maillog_file_prefixes", d.to_string()),
        ("smtp_dns_support_level", "disabled".into()),
        ("smtpd_peername_lookup", "no".into()),
        ("smtpd_authorized_xclient_hosts", "127.0.0.0/8".into()),
        (
            "smtpd_recipient_restrictions",
            "reject_unauth_destination".into(),
        ),
        ("smtp_tls_security_level", "none".into()),
        ("smtpd_tls_security_level", "none".into()),
        ("biff", "no".into()),
        ("in_flow_delay", "0".into()),
    ];
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in defaults {
        params.push((k.to_owned(), v));
    }
    for (k, v) in extra {
        match params.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => params.push((k.clone(), v.clone())),
        }
    }
    params.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

/// The `master.cf` services a private Postfix needs besides its smtpd listeners (the
/// Debian defaults, unchrooted).
pub const MASTER_SERVICES: &[&str] = &[
    "pickup unix n - n 60 1 pickup",
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "rewrite unix - - n - - trivial-rewrite",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "showq unix n - n - - showq",
    "postlog unix-dgram n - n - 1 postlogd",
];

fn master_cf(port: u16, extra: &[String]) -> String {
    let mut out = format!("127.0.0.1:{port} inet n - n - - smtpd\n");
    for line in MASTER_SERVICES {
        out.push_str(line);
        out.push('\n');
    }
    for line in extra {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A running private Postfix. Stopped on drop.
#[derive(Debug)]
pub struct Postfix {
    dir: PathBuf,
    port: u16,
    sink: Sink,
    _tmp: tempfile::TempDir,
}

impl Postfix {
    /// A builder with the fixture's defaults.
    pub fn builder() -> PostfixBuilder {
        PostfixBuilder::default()
    }

    /// The instance's top directory (holds `conf/`, `queue/`, `data/`, `maillog`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The queue directory: `unix:private/NAME` in `main.cf` means `queue_dir()/private/NAME`.
    pub fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// The SMTP port on 127.0.0.1.
    pub fn smtp_port(&self) -> u16 {
        self.port
    }

    /// Runs `postfix -c CONF args...` and fails the test if it fails.
    pub fn postfix(&self, args: &[&str]) {
        let out = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.join("conf"))
            .args(args)
            .output()
            .expect("run postfix");
        assert!(
            out.status.success(),
            "postfix {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The Postfix log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// An SMTP session with `EHLO client.example` done.
    pub fn smtp(&self) -> Smtp {
        let mut s = Smtp::connect(self.port);
        s.expect("EHLO client.example", "250");
        s
    }

    /// Waits until at least `n` messages reached the sink and returns them all.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        match self.sink.wait(n, timeout) {
            Ok(msgs) => msgs,
            Err(got) => panic!(
                "{got} of {n} messages reached the sink in {timeout:?}; postfix log:\n{}",
                self.log()
            ),
        }
    }

    /// The messages that reached the sink so far.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.sink.messages()
    }

    /// Waits until the log contains `needle` (returns false on timeout).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg("abort")
            .output();
    }
}

/// One SMTP reply: its code and its full text (all lines, CRLF removed, joined by `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The lines after the code and separator, joined with `\n`.
    pub text: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// A minimal SMTP client for tests.
#[derive(Debug)]
pub struct Smtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Smtp {
    /// Connects to 127.0.0.1:`port` and reads the greeting (which must be 220).
    pub fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to postfix");
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .expect("set timeout");
        let mut c = Self {
            r: BufReader::new(s.try_clone().expect("clone socket")),
            w: s,
        };
        let greeting = c.read_reply();
        assert_eq!(greeting.code, 220, "greeting: {greeting}");
        c
    }

    /// Sends one command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write to postfix");
        self.read_reply()
    }

    /// Sends `line` and fails the test unless the reply starts with `code` (e.g. "250", "5").
    pub fn expect(&mut self, line: &str, code: &str) -> Reply {
        let reply = self.cmd(line);
        assert!(
            reply.code.to_string().starts_with(code),
            "{line:?} got {reply}, expected {code}"
        );
        reply
    }

    /// Pretends the client is `addr` with HELO `helo` (XCLIENT), then EHLOs again.
    pub fn xclient(&mut self, addr: &str, helo: &str) {
        self.expect(
            &format!("XCLIENT ADDR={addr} NAME=[UNAVAILABLE] HELO={helo}"),
            "220",
        );
        self.expect(&format!("EHLO {helo}"), "250");
    }

    /// Sends DATA and the message (CRLF line ends, dot-stuffed here), returns the reply to
    /// the final dot. Fails the test if DATA itself is refused.
    pub fn data(&mut self, message: &str) -> Reply {
        self.expect("DATA", "354");
        let mut out = String::new();
        for line in message.split("\r\n") {
            if line.starts_with('.') {
                out.push('.');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        if message.ends_with("\r\n") {
            // split() produced an empty last piece; its CRLF is already in `out`.
            out.truncate(out.len() - 2);
        }
        out.push_str(".\r\n");
        self.w.write_all(out.as_bytes()).expect("write message");
        self.read_reply()
    }

    /// One whole transaction: MAIL, each RCPT (each must be accepted), DATA. Returns the
    /// reply to the final dot.
    pub fn send(&mut self, from: &str, rcpts: &[&str], message: &str) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), "250");
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), "250");
        }
        self.data(message)
    }

    /// One whole transaction that never fails the test on a refusal (for fault tests, where
    /// any stage may be refused): the first reply that is not the positive one expected, or
    /// the reply to the final dot. A connection closed or reset mid-way is `421` with the
    /// text `connection lost` (the sender retries, as for any 4xx).
    pub fn try_send(
        port: u16,
        xclient: Option<(&str, &str)>,
        from: &str,
        rcpts: &[&str],
        message: &str,
    ) -> Reply {
        let lost = Reply {
            code: 421,
            text: "connection lost".into(),
        };
        let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
            return lost;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
        let Ok(r) = s.try_clone() else { return lost };
        let mut c = Self {
            r: BufReader::new(r),
            w: s,
        };
        let mut steps: Vec<(String, u16)> = vec![("EHLO client.example".into(), 250)];
        if let Some((addr, helo)) = xclient {
            steps.push((
                format!("XCLIENT ADDR={addr} NAME=[UNAVAILABLE] HELO={helo}"),
                220,
            ));
            steps.push((format!("EHLO {helo}"), 250));
        }
        steps.push((format!("MAIL FROM:<{from}>"), 250));
        steps.extend(rcpts.iter().map(|r| (format!("RCPT TO:<{r}>"), 250)));
        steps.push(("DATA".into(), 354));
        match c.try_read_reply() {
            Some(g) if g.code == 220 => {}
            Some(g) => return g,
            None => return lost,
        }
        for (line, want) in steps {
            if c.w.write_all(format!("{line}\r\n").as_bytes()).is_err() {
                return lost;
            }
            match c.try_read_reply() {
                Some(r) if r.code == want => {}
                Some(r) => return r,
                None => return lost,
            }
        }
        let mut out = String::new();
        for line in message.split("\r\n") {
            if line.starts_with('.') {
                out.push('.');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        if message.ends_with("\r\n") {
            out.truncate(out.len() - 2);
        }
        out.push_str(".\r\n");
        if c.w.write_all(out.as_bytes()).is_err() {
            return lost;
        }
        c.try_read_reply().unwrap_or(lost)
    }

    fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .expect("read SMTP reply: the server closed the connection")
    }

    /// The next reply; `None` when the connection is closed or broken.
    fn try_read_reply(&mut self) -> Option<Reply> {
        let mut code = 0;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).ok()?;
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(code);
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(Reply {
                    code,
                    text: lines.join("\n"),
                });
            }
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.w.write_all(b"QUIT\r\n");
    }
}

/// A message as it reached the sink.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The MAIL FROM address (without brackets).
    pub mail_from: String,
    /// The RCPT TO addresses, in order (without brackets).
    pub rcpts: Vec<String>,
    /// The message bytes as sent after DATA (dot-unstuffed, CRLF line ends).
    pub data: Vec<u8>,
}

impl Delivered {
    /// The message as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The header block (up to the first empty line), unfolded: one `(name, value)` per field.
    pub fn headers(&self) -> Vec<(String, String)> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let mut out: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = out.last_mut() {
                    last.1.push_str(line);
                }
            } else if let Some((name, value)) = line.split_once(':') {
                out.push((name.to_owned(), value.trim_start().to_owned()));
            }
        }
        out
    }

    /// The values of every header named `name` (case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// The body (after the first empty line).
    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }
}

/// An in-process SMTP server on 127.0.0.1 that accepts everything and keeps the messages.
#[derive(Debug)]
pub struct Sink {
    /// Its port.
    pub port: u16,
    state: Arc<(Mutex<Vec<Delivered>>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    /// Starts the sink on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let port = listener.local_addr().expect("sink addr").port();
        let state = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve_sink(conn, &st);
                });
            }
        });
        Self { port, state, stop }
    }

    pub fn messages(&self) -> Vec<Delivered> {
        self.state.0.lock().expect("sink lock").clone()
    }

    pub fn wait(&self, n: usize, timeout: Duration) -> Result<Vec<Delivered>, usize> {
        let (lock, cv) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut msgs = lock.lock().expect("sink lock");
        while msgs.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(msgs.len());
            }
            msgs = cv.wait_timeout(msgs, left).expect("sink lock").0;
        }
        Ok(msgs.clone())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_sink(conn: TcpStream, state: &(Mutex<Vec<Delivered>>, Condvar)) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    w.write_all(b"220 sink.example ESMTP\r\n")?;
    let mut from = String::new();
    let mut rcpts = Vec::new();
    let addr = |s: &str| {
        let s = s.split_once(':').map(|(_, a)| a).unwrap_or("").trim();
        let s = s.split_whitespace().next().unwrap_or("");
        s.trim_start_matches('<').trim_end_matches('>').to_owned()
    };
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let verb = cmd.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => w.write_all(b"250-sink.example\r\n250 8BITMIME\r\n")?,
            "MAIL" => {
                from = addr(&cmd);
                rcpts.clear();
                w.write_all(b"250 ok\r\n")?;
            }
            "RCPT" => {
                rcpts.push(addr(&cmd));
                w.write_all(b"250 ok\r\n")?;
            }
            "DATA" => {
                w.write_all(b"354 go\r\n")?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l)? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" || l == b".\n" {
                        break;
                    }
                    let l = if l.starts_with(b"..") {
                        &l[1..]
                    } else {
                        &l[..]
                    };
                    data.extend_from_slice(l);
                }
                let (lock, cv) = state;
                lock.lock().expect("sink lock").push(Delivered {
                    mail_from: std::mem::take(&mut from),
                    rcpts: std::mem::take(&mut rcpts),
                    data,
                });
                cv.notify_all();
                w.write_all(b"250 queued\r\n")?;
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => w.write_all(b"250 ok\r\n")?,
        }
    }
}
