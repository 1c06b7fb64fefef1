//! Fault campaign, item 5: `mailstackd` started as root with `--user nobody` (and, in a
//! second run, `[mailstackd] user = "nobody"` with `socket_group = "postfix"`) runs as nobody
//! (every id of the `Uid:`/`Gid:` lines of `/proc/PID/status`), its socket is `0660` with
//! group `postfix`, and it still signs mail with a key only root can read (loaded before
//! the switch).
//!
//! Needs root (CI runs as root). Run: `cargo test -p mailstack-examples --test faults_privs`.

mod spf_support;
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use milter_proto::ConnAddr;
use milter_proto::SocketSpec;
use milter_proto::client::{Client, Connection, Message};
use spf_support::Zone;
use support::milters::{Daemon, added_headers, dkim_genkey, mta_config, smtp_code};
use support::procfs::status_ids;

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
const DKIM_BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");

fn id(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, "nobody"]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Writes keys (in a 0700 root directory) and the configuration; `in_file`: user and group
/// in `[mailstackd]` rather than on the command line.
fn setup(d: &Path, in_file: bool) -> std::path::PathBuf {
    let keys = d.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    dkim_genkey(Path::new(DKIM_BIN), &keys, "rsa");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        keys.join("keytable"),
        format!("rsa example.com:rsa:{}/rsa.private\n", keys.display()),
    )
    .unwrap();
    std::fs::write(keys.join("signingtable"), "*@example.com rsa\n").unwrap();
    let dns = spf_support::start_dns_local(Zone::default()).unwrap();
    let daemon = if in_file {
        "user = \"nobody\"\nsocket_group = \"postfix\"\n"
    } else {
        ""
    };
    let conf = d.join("mailstackd.toml");
    std::fs::write(
        &conf,
        format!(
            "[mailstackd]\nauthserv_id = \"mx.example\"\nnameservers = [\"{dns}\"]\n{daemon}\n\
             [dkim]\noptions = {{ Mode = \"sv\", KeyTable = \"file:{0}/keytable\", \
             SigningTable = \"refile:{0}/signingtable\" }}\n",
            keys.display()
        ),
    )
    .unwrap();
    conf
}

fn runs_as_nobody_and_signs(in_file: bool) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "faults_privs needs root");
    let tmp = tempfile::tempdir().unwrap();
    let conf = setup(tmp.path(), in_file);
    let mut args = vec!["--config", conf.to_str().unwrap()];
    if !in_file {
        args.extend(["--user", "nobody", "--group", "postfix"]);
    }
    let milter = Daemon::start(Path::new(BIN), tmp.path(), "mailstackd", &args);
    let (uid, gid) = (id("-u"), id("-g"));
    let pid = milter.pid();
    assert_eq!(
        status_ids(pid, "Uid:"),
        [uid; 4],
        "Uid: real, effective, saved, fs"
    );
    assert_eq!(
        status_ids(pid, "Gid:"),
        [gid; 4],
        "Gid: real, effective, saved, fs"
    );
    let meta = std::fs::metadata(&milter.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    let postfix = mailstack::privs::lookup_group("postfix").unwrap();
    assert_eq!(Some(meta.gid()), postfix, "socket group postfix");
    let keys = std::fs::metadata(tmp.path().join("keys")).unwrap();
    assert_eq!(
        (keys.uid(), keys.permissions().mode() & 0o777),
        (0, 0o700),
        "the key is out of nobody's reach: it was loaded before the switch"
    );

    // Outbound from 127.0.0.1 (InternalHosts): signed with the key read before the switch.
    let raw = b"From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\nSubject: out\r\n\
        Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nHello\r\n";
    let msg = Message::parse(b"<alice@example.com>", &[b"<bob@dest.example>"], raw);
    let conn = Connection {
        hostname: Bytes::from_static(b"localhost"),
        addr: ConnAddr::Inet {
            port: 40000,
            address: Bytes::from_static(b"127.0.0.1"),
        },
        ..Connection::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(async {
        let spec = SocketSpec::Unix(milter.socket.clone());
        let mut c = Client::connect(&spec, mta_config()).await.unwrap();
        c.connection(&conn).await.unwrap();
        c.message(&msg).await.unwrap()
    });
    assert_eq!(smtp_code(&out.decision), 250, "{out:?}");
    let sigs: Vec<String> = added_headers(&out)
        .into_iter()
        .filter(|h| h.starts_with("DKIM-Signature:"))
        .collect();
    assert_eq!(sigs.len(), 1, "{out:?}");
    assert!(
        sigs[0].contains("d=example.com") && sigs[0].contains("s=rsa"),
        "{sigs:?}"
    );
    println!(
        "mailstackd ({}): uid {uid} gid {gid}, socket 0660 group postfix, signed",
        if in_file {
            "[mailstackd] user"
        } else {
            "--user nobody"
        }
    );
}

#[test]
fn user_flag_drops_to_nobody_after_loading_keys() {
    runs_as_nobody_and_signs(false);
}

#[test]
fn user_in_config_drops_to_nobody_after_loading_keys() {
    runs_as_nobody_and_signs(true);
}
