//! Our example milters as child processes, and the libmilter C milter built on demand.
//!
//! - [`Daemon::start`] runs `stamp-milter` / `null-milter` (any binary of this package) with
//!   `--socket unix:DIR/NAME.sock` plus extra arguments, waits until the socket accepts, and
//!   kills the child on drop.
//! - [`build_c_milter`] compiles `tests/c/c_milter.c` with `cc ... -lmilter` (libmilter-dev)
//!   into a temp dir; a missing compiler or library is a test failure with the reason.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A milter child process listening on a unix socket. Killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// The socket path.
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `exe --socket unix:<dir>/<name>.sock args...` (or with `-p` for the C milter
    /// when `libmilter_style`) and waits up to 10 s for the socket.
    pub fn start(exe: &Path, dir: &Path, name: &str, args: &[&str]) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        open_dir(dir);
        let child = Command::new(exe)
            .arg("--socket")
            .arg(format!("unix:{}", socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        Self::wait(child, socket)
    }

    /// Starts the libmilter C milter `exe -p unix:<dir>/<name>.sock args...`.
    pub fn start_c(exe: &Path, dir: &Path, name: &str, args: &[&str]) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        open_dir(dir);
        let child = Command::new(exe)
            .arg("-p")
            .arg(format!("unix:{}", socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        Self::wait(child, socket)
    }

    fn wait(mut child: Child, socket: PathBuf) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Self { child, socket };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "milter exited before listening on {}: {status}",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        panic!("milter did not listen on {} within 10 s", socket.display());
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` the child and reap it (a crash, as a supervisor sees it).
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a graceful shutdown request) to the child.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory preconditions; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM");
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for milter") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `unix:<socket>` for `smtpd_milters` or a client.
    pub fn spec(&self) -> String {
        format!("unix:{}", self.socket.display())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets Postfix's smtpd (user `postfix`) reach sockets in `dir` (temp dirs are 0700).
fn open_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
}

/// Compiles `tests/c/c_milter.c` against libmilter into `dir/c_milter` and returns its path.
pub fn build_c_milter(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/c_milter.c");
    assert!(
        Path::new("/usr/include/libmilter/mfapi.h").exists(),
        "libmilter headers missing: install Debian's libmilter-dev (.ci/packages lists it)"
    );
    let out = dir.join("c_milter");
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-lmilter", "-lpthread"])
        .status()
        .expect("run cc (install gcc, listed in .ci/packages)");
    assert!(status.success(), "cc {} -lmilter failed", src.display());
    out
}

/// What the MTA offers in negotiation: every action and protocol option (as `milter-client`
/// does by default, and Postfix 3.x nearly so).
pub fn mta_config() -> milter_proto::client::ClientConfig {
    use milter_proto::{Actions, Protocol};
    milter_proto::client::ClientConfig::offer(
        6,
        Actions::from_bits_truncate(0x1FF),
        Protocol::from_bits_truncate(0x1F_FFFF),
    )
}

/// One message on a fresh milter connection to the unix socket `socket`, from the default
/// connection (`client.example [192.0.2.1]`, macro `j` = `mx.example`).
pub async fn one_message(
    socket: &Path,
    msg: &milter_proto::client::Message,
) -> Result<milter_proto::client::Outcome, milter_proto::client::ClientError> {
    use milter_proto::client::{Client, Connection};
    let spec = milter_proto::SocketSpec::Unix(socket.to_owned());
    let mut c = Client::connect(&spec, mta_config()).await?;
    c.connection(&Connection::default()).await?;
    let out = c.message(msg).await?;
    let _ = c.quit().await;
    Ok(out)
}

/// The SMTP code an MTA would answer for a milter decision (`250` for accept/continue/skip and
/// for discard, which the client is not told of; `451`, as for tempfail, for anything that is not
/// a decision, so a reply this list does not know never counts as delivered).
pub fn smtp_code(r: &milter_proto::Reply) -> u16 {
    use milter_proto::Reply;
    match r {
        Reply::Tempfail => 451,
        Reply::Reject => 550,
        Reply::ConnFail | Reply::Shutdown => 421,
        Reply::ReplyCode(b) => std::str::from_utf8(b.get(..3).unwrap_or_default())
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        Reply::Accept | Reply::Continue | Reply::Skip | Reply::Discard => 250,
        _ => 451,
    }
}

/// The header fields the milter added or changed (`name: value`), in order; deletions (a
/// change to an empty value) are left out.
pub fn added_headers(out: &milter_proto::client::Outcome) -> Vec<String> {
    use milter_proto::Reply;
    out.modifications
        .iter()
        .filter_map(|m| match m {
            Reply::AddHeader { name, value }
            | Reply::InsHeader { name, value, .. }
            | Reply::ChgHeader { name, value, .. }
                if !value.is_empty() =>
            {
                Some(format!(
                    "{}: {}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value)
                ))
            }
            _ => None,
        })
        .collect()
}

/// `dkim-milter genkey -d example.com -s SELECTOR -D DIR` (the binary `exe`); returns the TXT
/// record's text. The private key is `DIR/SELECTOR.private`.
pub fn dkim_genkey(exe: &Path, dir: &Path, selector: &str) -> String {
    let st = Command::new(exe)
        .args(["genkey", "-d", "example.com", "-s", selector, "-D"])
        .arg(dir)
        .status()
        .expect("run dkim-milter genkey");
    assert!(st.success(), "dkim-milter genkey");
    let t = std::fs::read_to_string(dir.join(format!("{selector}.txt"))).expect("key TXT file");
    t.split('"').skip(1).step_by(2).collect()
}

/// Runs Debian's `opendkim -t` (an independent verifier) on `message` with `keys` as
/// `(selector, TXT record)` for `example.com`, in `dir`; returns what it printed.
pub fn opendkim_verify(dir: &Path, keys: &[(&str, &str)], message: &str) -> String {
    let table: String = keys
        .iter()
        .map(|(sel, rec)| format!("{sel}._domainkey.example.com {rec}\n"))
        .collect();
    std::fs::write(dir.join("keys"), table).expect("write TestPublicKeys");
    std::fs::write(
        dir.join("v.conf"),
        format!("Mode v\nTestPublicKeys {}/keys\n", dir.display()),
    )
    .expect("write opendkim.conf");
    std::fs::write(dir.join("signed.eml"), message).expect("write message");
    let out = Command::new("/usr/sbin/opendkim")
        .arg("-vvv")
        .arg("-t")
        .arg(dir.join("signed.eml"))
        .arg("-x")
        .arg(dir.join("v.conf"))
        .output()
        .expect("run opendkim (Debian package opendkim)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `mailstack check --json --config CONF ARGS... EML` (the `mailstack` binary at `cli`);
/// returns the exit status and the JSON it printed (a test failure, with its output, when
/// that is not JSON).
pub fn mailstack_check(
    cli: &Path,
    conf: &Path,
    eml: &Path,
    args: &[&str],
) -> (i32, serde_json::Value) {
    let out = Command::new(cli)
        .args(["check", "--json", "--config"])
        .arg(conf)
        .args(args)
        .arg(eml)
        .output()
        .expect("run mailstack check");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "mailstack check: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// The `method=result` list of `mailstack check --json`'s results, in order.
pub fn check_clauses(json: &serde_json::Value) -> Vec<String> {
    json["results"]
        .as_array()
        .expect("results array")
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r["method"].as_str().unwrap_or_default(),
                r["result"].as_str().unwrap_or_default()
            )
        })
        .collect()
}
