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
