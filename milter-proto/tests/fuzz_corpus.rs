//! Replays every file of `fuzz/corpus/milter_*` through the fuzz entry points on stable.
//! `MILTER_REGEN_CORPUS=1` (re)writes the seed files from encoded commands and replies, and
//! copies the binary test vectors (`tests/vectors/*.bin`) in as `vector-*` seeds: command
//! streams for the frame, command and session targets, reply streams for the frame and reply
//! targets.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use milter_proto::Reply;
use milter_proto::fuzzing;
use milter_proto::{Command, ConnAddr};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    let cmds = [
        Command::Macro {
            command: b'C',
            pairs: vec![(b("j"), b("mx.example"))],
        },
        Command::Connect {
            hostname: b("client.example"),
            addr: ConnAddr::Inet {
                port: 25,
                address: b("192.0.2.1"),
            },
        },
        Command::Helo(b("client.example")),
        Command::Mail {
            sender: b("<a@example.org>"),
            args: vec![b("SIZE=100")],
        },
        Command::Rcpt {
            rcpt: b("<b@example.net>"),
            args: vec![],
        },
        Command::Header {
            name: b("Subject"),
            value: b("hi"),
        },
        Command::Body(b("hello\r\n")),
        Command::BodyEob(Bytes::new()),
        Command::Abort,
        Command::Quit,
    ];
    let mut session = BytesMut::new();
    Command::OptNeg {
        version: 6,
        actions: milter_proto::Actions::all(),
        protocol: milter_proto::Protocol::empty(),
    }
    .encode(&mut session);
    for c in &cmds {
        c.encode(&mut session);
    }
    let mut replies = BytesMut::new();
    for r in [
        Reply::Continue,
        Reply::AddHeader {
            name: b("X-Test"),
            value: b("yes"),
        },
        Reply::ChgFrom {
            from: b("<c@example.com>"),
            args: None,
        },
        Reply::ReplyCode(b("550 5.7.1 no")),
    ] {
        r.encode(&mut replies);
    }
    vec![
        ("milter_frame", session.to_vec()),
        ("milter_command", session.to_vec()),
        ("milter_reply", replies.to_vec()),
        ("milter_session", session.to_vec()),
    ]
}

/// Copy each test vector into the corpora of the targets that read its direction.
fn copy_vectors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let targets: &[&str] = if name.ends_with(".mta.bin") {
            &["milter_frame", "milter_command", "milter_session"]
        } else if name.ends_with(".milter.bin") {
            &["milter_frame", "milter_reply"]
        } else {
            continue;
        };
        let seed = format!("vector-{}", name.trim_end_matches(".bin"));
        for target in targets {
            std::fs::copy(&path, corpus(target).join(&seed)).unwrap();
        }
    }
}

#[test]
fn replay_corpus() {
    if std::env::var_os("MILTER_REGEN_CORPUS").is_some() {
        for (target, data) in seeds() {
            std::fs::create_dir_all(corpus(target)).unwrap();
            std::fs::write(corpus(target).join("seed-session"), data).unwrap();
        }
        copy_vectors();
    }
    let mut replayed = 0;
    for (target, run) in [
        ("milter_frame", fuzzing::milter_frame as fn(&[u8])),
        ("milter_command", fuzzing::milter_command),
        ("milter_reply", fuzzing::milter_reply),
        ("milter_session", fuzzing::milter_session),
    ] {
        for entry in std::fs::read_dir(corpus(target)).unwrap() {
            run(&std::fs::read(entry.unwrap().path()).unwrap());
            replayed += 1;
        }
    }
    assert!(
        replayed >= 4,
        "corpus missing: run with MILTER_REGEN_CORPUS=1"
    );
}
