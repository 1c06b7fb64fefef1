//! A private clamd (Debian's clamav-daemon, `/usr/sbin/clamd`) for the AV tests: its own
//! configuration, socket and log in a directory of the test's, and a signature database
//! written here (the EICAR string as a `.ndb` hex body signature): no freshclam, no network.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's clamd.
pub const CLAMD: &str = "/usr/sbin/clamd";
/// The EICAR test string, hex-encoded so that no source file is itself a detection.
pub const EICAR_HEX: &str = "58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a";
/// The name clamd reports for [`EICAR_HEX`] with our database.
pub const SIG: &str = "Mailstack.Test.EICAR.UNOFFICIAL";

/// The EICAR test string.
pub fn eicar() -> String {
    let bytes: Vec<u8> = (0..EICAR_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&EICAR_HEX[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// The messages `av_vs_clamav_milter` sends through clamav-milter and av-milter (and
/// `mailstackd_vs_daemons` through av-milter and mailstackd): a clean one of about 5 KiB, one
/// carrying EICAR, a clean one of 10 MiB.
pub fn av_messages() -> [(&'static str, Vec<u8>); 3] {
    let mut clean5k = b"Subject: hello\r\nFrom: a@src.example\r\n\r\n".to_vec();
    while clean5k.len() < 5 * 1024 {
        clean5k.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog, again and again.\r\n",
        );
    }
    let mut infected = b"Subject: bad\r\nFrom: a@src.example\r\n\r\n".to_vec();
    infected.extend_from_slice(eicar().as_bytes());
    infected.extend_from_slice(b"\r\n");
    let mut big = b"Subject: big\r\nFrom: a@src.example\r\n\r\n".to_vec();
    while big.len() < 10 * 1024 * 1024 {
        big.extend_from_slice(
            b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcd\r\n",
        );
    }
    [
        ("clean 5 KiB", clean5k),
        ("EICAR", infected),
        ("clean 10 MiB", big),
    ]
}

/// A private clamd, killed on drop.
pub struct Clamd {
    /// Its unix socket.
    pub socket: PathBuf,
    child: Child,
}

impl Clamd {
    /// Starts clamd in `dir` (created if needed) with `extra` configuration lines (e.g.
    /// `StreamMaxLength 1M\n`) and waits until it answers PING. A missing clamd fails the
    /// test with the reason.
    pub fn start(dir: &Path, extra: &str) -> Self {
        assert!(
            Path::new(CLAMD).exists(),
            "{CLAMD} is missing: install Debian's clamav-daemon to run this test"
        );
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(
            db.join("mailstack.ndb"),
            format!("Mailstack.Test.EICAR:0:*:{EICAR_HEX}\n"),
        )
        .unwrap();
        let socket = dir.join("clamd.sock");
        let conf = dir.join("clamd.conf");
        let log = dir.join("clamd.log");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {}\nFixStaleSocket yes\nForeground yes\nDatabaseDirectory {}\n\
                 TemporaryDirectory {}\nLogFile {}\nDisableCache yes\n{extra}",
                socket.display(),
                db.display(),
                dir.display(),
                log.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(CLAMD)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CLAMD}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ping(&socket) {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "clamd exited with {st}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "clamd did not answer PING within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { socket, child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `zPING` without tokio.
pub fn ping(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = Vec::new();
    s.write_all(b"zPING\0").is_ok() && s.read_to_end(&mut r).is_ok() && r == b"PONG\0"
}

/// What a [`StandIn`] does with each connection.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Accept and never answer (keeps the connection open).
    Hung,
    /// Read the whole INSTREAM upload, wait this long, then answer `stream: OK`.
    Slow(Duration),
}

/// A scripted clamd stand-in on a unix socket, for fault cases only (a real clamd for the
/// rest). Stops accepting and removes its socket on drop.
pub struct StandIn {
    /// Its socket.
    pub socket: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections accepted so far.
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StandIn {
    /// Listens on `socket` (removing a stale file first).
    pub fn start(socket: &Path, fault: Fault) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let _ = std::fs::remove_file(socket);
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (st, acc) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        acc.fetch_add(1, Ordering::Relaxed);
                        s.set_nonblocking(false).unwrap();
                        match fault {
                            Fault::Hung => held.push(s),
                            Fault::Slow(d) => {
                                std::thread::spawn(move || slow_answer(s, d));
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            socket: socket.to_owned(),
            stop,
            accepted,
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Reads one command (`z...\0` or `n...\n`); for INSTREAM the chunks up to the empty one;
/// then answers late, in the command's style.
fn slow_answer(mut s: std::os::unix::net::UnixStream, delay: Duration) {
    let mut cmd = Vec::new();
    let mut b = [0u8; 1];
    while s.read_exact(&mut b).is_ok() && b[0] != 0 && b[0] != b'\n' {
        cmd.push(b[0]);
    }
    let end = b[0];
    if cmd.get(1..) == Some(&b"PING"[..]) {
        let _ = s.write_all(&[&b"PONG"[..], &[end]].concat());
        return;
    }
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 {
            break;
        }
        let mut chunk = vec![0u8; n];
        if s.read_exact(&mut chunk).is_err() {
            return;
        }
    }
    std::thread::sleep(delay);
    let _ = s.write_all(&[&b"stream: OK"[..], &[end]].concat());
}
