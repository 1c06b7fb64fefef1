//! The clamd client against a real clamd (Debian clamav-daemon 1.4.6, `/usr/sbin/clamd`),
//! started once per test binary with a private configuration and a signature database
//! written here (the EICAR string as a `.ndb` hex body signature, and the MD5 of ClamAV's own
//! test executable `clam.exe` from Debian's clamav-testfiles as a `.hdb` signature): no
//! freshclam, no network. A missing clamd or clamav-testfiles fails the tests with a clear
//! message.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mailstack::clamd::{ClamdAddr, ClamdError, Client, ScanError, ScanReply, Timeouts};

const CLAMD: &str = "/usr/sbin/clamd";
/// The EICAR test string, hex-encoded so that this file is not itself a detection.
const EICAR_HEX: &str = "58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a";
const SIG: &str = "Mailstack.Test.EICAR.UNOFFICIAL";
const STREAM_MAX: usize = 1024 * 1024;
/// Debian's clamav-testfiles: ClamAV's test executable and the same file inside archives,
/// encodings and documents.
const TESTFILES: &str = "/usr/share/clamav-testfiles";
const CLAM_EXE_SIG: &str = "Mailstack.Test.ClamExe.UNOFFICIAL";

/// `md5:size:name`, the hash signature of `clam.exe` (written only when the package is there;
/// the test that needs it checks for the package itself).
fn clam_exe_hdb() -> Option<String> {
    let exe = std::path::Path::new(TESTFILES).join("clam.exe");
    let size = std::fs::metadata(&exe).ok()?.len();
    let out = Command::new("md5sum").arg(&exe).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let md5 = text.split_whitespace().next()?;
    Some(format!("{md5}:{size}:Mailstack.Test.ClamExe\n"))
}

fn eicar() -> Vec<u8> {
    (0..EICAR_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&EICAR_HEX[i..i + 2], 16).unwrap())
        .collect()
}

struct Clamd {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _child: Child,
}

static CLAMD_INSTANCE: OnceLock<Clamd> = OnceLock::new();

fn start_clamd() -> Clamd {
    assert!(
        std::path::Path::new(CLAMD).exists(),
        "{CLAMD} is missing: install Debian's clamav-daemon (apt-get install clamav-daemon) to run these tests"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    std::fs::write(
        db.join("mailstack.ndb"),
        format!("Mailstack.Test.EICAR:0:*:{EICAR_HEX}\n"),
    )
    .unwrap();
    if let Some(hdb) = clam_exe_hdb() {
        std::fs::write(db.join("mailstack.hdb"), hdb).unwrap();
    }
    let socket = dir.path().join("clamd.sock");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let conf = dir.path().join("clamd.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    write!(
        f,
        "LocalSocket {}\nFixStaleSocket yes\nForeground yes\nDatabaseDirectory {}\n\
         TemporaryDirectory {}\nLogFile {}\nStreamMaxLength {}\nDisableCache yes\n\
         MaxThreads 4\nReadTimeout 10\nCommandReadTimeout 10\n",
        socket.display(),
        db.display(),
        tmp.display(),
        dir.path().join("clamd.log").display(),
        STREAM_MAX
    )
    .unwrap();
    drop(f);
    // clamd runs under a tiny shell guard that kills it (and removes its directory) when our
    // end of the guard's stdin closes, i.e. when this test process exits: the shared
    // instance lives in a static and is never dropped. The guard exits when clamd does.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"exec 3<&0; "$0" -c "$1" </dev/null & pid=$!; { read _ <&3; kill -9 $pid; rm -rf "$2"; } & wait $pid"#)
        .arg(CLAMD)
        .arg(&conf)
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CLAMD}: {e}"));
    // Wait for PING (signature loading takes a moment).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if sync_ping(&socket) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.path().join("clamd.log")).unwrap_or_default();
            panic!("clamd exited with {status} before answering PING; log:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "clamd did not answer PING within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Clamd {
        _dir: dir,
        socket,
        _child: child,
    }
}

/// PING without tokio (the shared clamd may be started from inside a test's runtime).
fn sync_ping(socket: &std::path::Path) -> bool {
    use std::io::Read as _;
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = Vec::new();
    s.write_all(b"zPING\0").is_ok() && s.read_to_end(&mut r).is_ok() && r == b"PONG\0"
}

fn client() -> Client {
    let c = CLAMD_INSTANCE.get_or_init(start_clamd);
    Client::new(ClamdAddr::Unix(c.socket.clone())).timeouts(Timeouts {
        connect: Duration::from_secs(5),
        write: Duration::from_secs(10),
        read: Duration::from_secs(30),
    })
}

fn mail(body: &str) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: b@example.org\r\nSubject: test\r\nMessage-ID: <1@example.org>\r\n\
         MIME-Version: 1.0\r\n{body}"
    )
    .into_bytes()
}

/// Standard base64 (the `base64` crate mailstack already uses).
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A one-file zip archive with the entry stored (method 0).
fn stored_zip(name: &str, data: &[u8]) -> Vec<u8> {
    let crc = crc32(data);
    let len = data.len() as u32;
    let mut z = Vec::new();
    let local = |z: &mut Vec<u8>| {
        z.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        z.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]); // version, flags, method, time, date
        z.extend_from_slice(&crc.to_le_bytes());
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z.extend_from_slice(name.as_bytes());
    };
    local(&mut z);
    z.extend_from_slice(data);
    let cd_off = z.len() as u32;
    z.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    z.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&len.to_le_bytes());
    z.extend_from_slice(&len.to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&[0; 12]); // extra, comment, disk, int attr, ext attr (4)
    z.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    z.extend_from_slice(name.as_bytes());
    let cd_len = z.len() as u32 - cd_off;
    z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    z.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    z.extend_from_slice(&cd_len.to_le_bytes());
    z.extend_from_slice(&cd_off.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

fn infected() -> ScanReply {
    ScanReply::Infected(vec![SIG.to_owned()])
}

/// Feeds `data` in chunks of `chunk` bytes, as a milter would.
async fn scan_chunked(c: &Client, data: &[u8], chunk: usize) -> Result<ScanReply, ClamdError> {
    let mut s = c.instream().await?;
    for part in data.chunks(chunk) {
        s.feed(part).await?;
    }
    s.finish().await
}

#[tokio::test]
async fn ping_version_stats_reload() {
    let c = client();
    c.ping().await.unwrap();
    let v = c.version().await.unwrap();
    assert!(v.starts_with("ClamAV 1."), "{v}");
    let stats = c.stats().await.unwrap();
    assert!(
        stats.starts_with("POOLS:") && stats.contains("QUEUE:"),
        "{stats}"
    );
    c.reload().await.unwrap();
    // clamd still answers after reloading.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.ping().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "clamd did not come back after RELOAD"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn eicar_in_plain_body_is_found() {
    let mut m = mail("Content-Type: text/plain\r\n\r\n");
    m.extend_from_slice(&eicar());
    m.extend_from_slice(b"\r\n");
    assert_eq!(scan_chunked(&client(), &m, 7).await.unwrap(), infected());
}

#[tokio::test]
async fn eicar_in_base64_attachment_is_found() {
    let body = format!(
        "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
         see attachment\r\n--b1\r\nContent-Type: application/octet-stream; name=\"x.com\"\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"x.com\"\r\n\r\n\
         {}\r\n--b1--\r\n",
        base64(&eicar())
    );
    assert_eq!(
        scan_chunked(&client(), &mail(&body), 1424).await.unwrap(),
        infected()
    );
}

#[tokio::test]
async fn eicar_in_zip_is_found_raw_and_as_attachment() {
    let zip = stored_zip("eicar.com", &eicar());
    assert_eq!(client().scan_bytes(&zip).await.unwrap(), infected());
    let body = format!(
        "Content-Type: multipart/mixed; boundary=\"b2\"\r\n\r\n--b2\r\n\
         Content-Type: application/zip; name=\"e.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--b2--\r\n",
        base64(&zip)
    );
    assert_eq!(
        scan_chunked(&client(), &mail(&body), 100).await.unwrap(),
        infected()
    );
}

/// ClamAV's own test files (Debian's clamav-testfiles): `clam.exe` is found as itself, inside
/// archives and compressed files, and inside mail encodings (base64 MIME, uuencode, BinHex),
/// streamed to clamd as a mail would be.
#[tokio::test]
async fn clamav_testfiles_are_found_in_archives_and_encodings() {
    assert!(
        std::path::Path::new(TESTFILES).join("clam.exe").exists(),
        "{TESTFILES} is missing: install Debian's clamav-testfiles"
    );
    let expected = ScanReply::Infected(vec![CLAM_EXE_SIG.to_owned()]);
    let mut missed = Vec::new();
    for name in [
        "clam.exe",
        "clam.zip",
        "clam.7z",
        "clam.tar.gz",
        "clam.exe.bz2",
        "clam.cab",
        "clam.arj",
        "clam.exe.mbox.base64",
        "clam.exe.mbox.uu",
        "clam.exe.binhex",
        "clam.mail",
    ] {
        let data = std::fs::read(std::path::Path::new(TESTFILES).join(name)).unwrap();
        let v = scan_chunked(&client(), &data, 4096).await.unwrap();
        if v != expected {
            missed.push(format!("{name}: {v:?}"));
        }
    }
    assert!(
        missed.is_empty(),
        "not found as {CLAM_EXE_SIG}: {missed:#?}"
    );
    // clam.zip as a base64 attachment of a mail, in small chunks.
    let zip = std::fs::read(std::path::Path::new(TESTFILES).join("clam.zip")).unwrap();
    let body = format!(
        "Content-Type: multipart/mixed; boundary=\"b3\"\r\n\r\n--b3\r\n\
         Content-Type: application/zip; name=\"clam.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--b3--\r\n",
        base64(&zip)
    );
    assert_eq!(
        scan_chunked(&client(), &mail(&body), 100).await.unwrap(),
        expected
    );
}

#[tokio::test]
async fn clean_mail_is_clean() {
    let m = mail("Content-Type: text/plain\r\n\r\nHello, nothing to see.\r\n");
    assert_eq!(
        scan_chunked(&client(), &m, 5).await.unwrap(),
        ScanReply::Clean
    );
    // A clean zip too.
    assert_eq!(
        client()
            .scan_bytes(&stored_zip("a.txt", b"hello"))
            .await
            .unwrap(),
        ScanReply::Clean
    );
}

#[tokio::test]
async fn over_stream_max_length_is_the_size_limit_error() {
    let big = vec![b'a'; STREAM_MAX + 64 * 1024];
    let v = scan_chunked(&client(), &big, 64 * 1024).await.unwrap();
    assert_eq!(v, ScanReply::Error(ScanError::SizeLimitExceeded));
    // The client-side guard gives the same verdict without sending the excess.
    let c = client().max_stream(STREAM_MAX as u64);
    let mut s = c.instream().await.unwrap();
    for part in big.chunks(64 * 1024) {
        s.feed(part).await.unwrap();
    }
    assert!(s.sent() <= STREAM_MAX as u64);
    assert_eq!(
        s.finish().await.unwrap(),
        ScanReply::Error(ScanError::SizeLimitExceeded)
    );
}

#[tokio::test]
async fn idsession_runs_several_scans_on_one_connection() {
    let c = client();
    let mut s = c.session().await.unwrap();
    s.ping().await.unwrap();
    let mut m = mail("\r\n");
    m.extend_from_slice(&eicar());
    assert_eq!(s.scan([m.as_slice()]).await.unwrap(), infected());
    let clean = mail("\r\nhello\r\n");
    assert_eq!(s.scan(clean.chunks(3)).await.unwrap(), ScanReply::Clean);
    assert!(s.version().await.unwrap().starts_with("ClamAV"));
    s.end().await.unwrap();
}

#[tokio::test]
async fn absent_clamd_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new(ClamdAddr::Unix(dir.path().join("nothing.sock")));
    let e = c.ping().await.unwrap_err();
    assert!(matches!(e, ClamdError::Connect { .. }), "{e:?}");
    assert!(
        e.to_string().contains("cannot connect to clamd at unix:"),
        "{e}"
    );
    // A closed TCP port.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let c = Client::new(format!("tcp:127.0.0.1:{port}").parse().unwrap());
    assert!(matches!(
        c.ping().await.unwrap_err(),
        ClamdError::Connect { .. }
    ));
}

/// A fake peer on a unix socket that reads everything and answers with `reply` (or never
/// answers when `None`).
fn fake(reply: Option<&'static [u8]>) -> (tempfile::TempDir, Client) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        use std::io::Read as _;
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b);
                match reply {
                    Some(r) => {
                        let _ = s.write_all(r);
                    }
                    None => std::thread::sleep(Duration::from_secs(30)),
                }
            });
        }
    });
    let c = Client::new(ClamdAddr::Unix(path)).timeouts(Timeouts {
        connect: Duration::from_secs(1),
        write: Duration::from_secs(1),
        read: Duration::from_millis(300),
    });
    (dir, c)
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let (_d, c) = fake(None);
    let t = Instant::now();
    let e = c.ping().await.unwrap_err();
    assert!(matches!(e, ClamdError::Timeout(_, _)), "{e:?}");
    let e = c.scan_bytes(b"hello").await.unwrap_err();
    assert!(matches!(e, ClamdError::Timeout(_, _)), "{e:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn garbage_and_overlong_replies_are_errors() {
    let (_d, c) = fake(Some(b"HTTP/1.1 400 Bad Request\r\n\r\n\0"));
    assert!(matches!(
        c.ping().await.unwrap_err(),
        ClamdError::Garbage(_)
    ));
    assert!(matches!(
        c.scan_bytes(b"x").await.unwrap_err(),
        ClamdError::Garbage(_)
    ));
    let long: &'static [u8] = Box::leak(vec![b'A'; 10_000].into_boxed_slice());
    let (_d2, c) = fake(Some(long));
    assert!(matches!(
        c.version().await.unwrap_err(),
        ClamdError::ReplyTooLong(_)
    ));
    let (_d3, c) = fake(Some(b""));
    assert!(matches!(c.ping().await.unwrap_err(), ClamdError::Closed));
}

#[test]
fn clamd_killed_mid_stream_is_an_error_not_a_hang() {
    // A private clamd, so killing it does not disturb the other tests.
    let own = start_clamd();
    let Clamd {
        _dir,
        socket,
        _child: mut child,
    } = own;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = Client::new(ClamdAddr::Unix(socket)).timeouts(Timeouts {
        connect: Duration::from_secs(2),
        write: Duration::from_secs(2),
        read: Duration::from_secs(5),
    });
    let t = Instant::now();
    let r = rt.block_on(async {
        let mut s = c.instream().await?;
        s.feed(b"From: a@b\r\n\r\nfirst part\r\n").await?;
        drop(child.stdin.take()); // the guard SIGKILLs clamd
        child.wait().unwrap();
        for _ in 0..64 {
            s.feed(&[b'x'; 8192]).await?;
        }
        s.finish().await
    });
    let e = r.expect_err("a killed clamd cannot give a verdict");
    assert!(
        matches!(e, ClamdError::Io(_) | ClamdError::Closed),
        "unexpected error kind: {e:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

/// FILDES: the descriptor of a file we wrote (position left at its end) goes to clamd, which
/// scans the whole file; a clean file is clean; clamd on TCP is refused before connecting.
#[tokio::test]
async fn fildes_scans_a_passed_file_from_its_start() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mut bad = tempfile::tempfile_in(dir.path()).unwrap();
    bad.write_all(&mail(&format!(
        "Content-Type: text/plain\r\n\r\n{}\r\n",
        String::from_utf8(eicar()).unwrap()
    )))
    .unwrap();
    assert_eq!(client().scan_file(&bad).await.unwrap(), infected());
    let mut good = tempfile::tempfile_in(dir.path()).unwrap();
    good.write_all(&mail("Content-Type: text/plain\r\n\r\nHello.\r\n"))
        .unwrap();
    assert_eq!(client().scan_file(&good).await.unwrap(), ScanReply::Clean);
    let tcp = Client::new(ClamdAddr::Tcp("127.0.0.1:1".into()));
    assert!(matches!(
        tcp.scan_file(&good).await,
        Err(ClamdError::NotUnix(_))
    ));
}
