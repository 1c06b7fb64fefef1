//! `spf-policyd` as a process: under spawn(8) conditions (one UNIX socket as stdin and stdout),
//! standalone on `--socket unix:PATH` and on TCP (`inet:HOST:PORT`, and the bare `HOST:PORT`
//! earlier versions took), stopping on SIGTERM, and refusing a bad configuration with file and
//! line.
//! Only loopback clients are used, which `skip_addresses` answers without DNS. The socket
//! tests run as root (CI does) and pass `--allow-root`; `spf_privs.rs` tests `--user`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_spf-policyd");

const REQUEST: &str = "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.1\nhelo_name=localhost\nsender=u@example.com\nrecipient=r@dest.example\ninstance=abc\n\n";
const PREPEND: &str = "action=prepend X-Comment: SPF check N/A for local connections - client-ip=127.0.0.1; helo=localhost; envelope-from=u@example.com; receiver=dest.example \n\n";

fn read_reply(r: &mut impl BufRead) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "daemon closed after {reply:?}"
        );
        reply.push_str(&line);
        if line == "\n" {
            return reply;
        }
    }
}

fn empty_config(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("policyd-spf.conf");
    std::fs::write(&path, "debugLevel = 1\nTestOnly = 1\n").unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn serves_a_spawn_style_socket_on_stdin_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs2 = theirs.try_clone().unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", &empty_config(&dir)])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs2)))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(ours.try_clone().unwrap());
    let mut writer = ours;
    writer.write_all(REQUEST.as_bytes()).unwrap();
    assert_eq!(read_reply(&mut reader), PREPEND);
    // Second recipient of the same message: no second header.
    writer
        .write_all(REQUEST.replace("r@dest", "s@dest").as_bytes())
        .unwrap();
    assert_eq!(read_reply(&mut reader), "action=dunno\n\n");
    // Nothing unsolicited: after EOF from us the daemon exits without writing more.
    writer.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    assert!(child.wait().unwrap().success());
}

#[test]
fn serves_a_unix_socket_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spf.sock");
    let mut child = Command::new(BIN)
        .args([
            "--config",
            &empty_config(&dir),
            "--log",
            "none",
            "--allow-root",
        ])
        .arg("--socket")
        .arg(format!("unix:{}", sock.display()))
        .spawn()
        .unwrap();
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = UnixStream::connect(&sock) {
            stream = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stream = stream.expect("spf-policyd listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for i in 0..3 {
        writer
            .write_all(
                REQUEST
                    .replace("instance=abc", &format!("instance=m{i}"))
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(read_reply(&mut reader), PREPEND);
    }
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn serves_tcp_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    for form in ["inet:127.0.0.1:{port}", "127.0.0.1:{port}"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = form.replace("{port}", &port.to_string());
        let mut child = Command::new(BIN)
            .args([
                "--config",
                &empty_config(&dir),
                "--log",
                "none",
                "--allow-root",
                "--socket",
                &spec,
            ])
            .spawn()
            .unwrap();
        let mut stream = None;
        for _ in 0..100 {
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                stream = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let stream = stream.unwrap_or_else(|| panic!("spf-policyd listens on {spec}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        writer.write_all(REQUEST.as_bytes()).unwrap();
        assert_eq!(read_reply(&mut reader), PREPEND, "{spec}");
        drop((reader, writer));
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        assert!(
            child.wait().unwrap().success(),
            "{spec}: exit after SIGTERM"
        );
    }
}

#[test]
fn bad_configuration_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.conf");
    std::fs::write(&path, "HELO_reject = Fail\nTempError_Defer = perhaps\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--log", "stderr"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2: TempError_Defer", path.display())),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
