//! Data-driven runner over `tests/vectors/*.bin`: binary frame sequences for documented
//! exchanges (a Postfix-style version 6 session with macros, a version 2 peer, NR_*
//! negotiation, every reply and modification) and for malformed input. `NAME.mta.bin` holds
//! commands (MTA to filter), `NAME.milter.bin` replies (filter to MTA); both are written by
//! `tests/vectors/gen.py`, independently of our encoder.
//!
//! Each file is decoded frame by frame and rendered as text: one line per frame (and, for
//! commands, what the [`Session`] says is due, under the negotiation in the paired
//! `.milter.bin` when there is one), then how the input ended. The text must equal
//! `NAME.*.txt`; every decoded frame must re-encode to the same bytes. Set
//! `MILTER_REGEN_VECTORS=1` to rewrite the expected files after a deliberate change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use milter_proto::Command;
use milter_proto::DEFAULT_MAX_FRAME_LEN;
use milter_proto::DecodeError;
use milter_proto::Reply;
use milter_proto::{Needs, Negotiated};
use milter_proto::{Session, SessionLimits};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Decode `bytes` with `decode`, checking that each item re-encodes to its own bytes; return
/// the items and how decoding ended.
fn decode_all<T>(
    bytes: &[u8],
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, DecodeError>,
    encode: impl Fn(&T, &mut BytesMut),
    name: &str,
) -> (Vec<T>, String) {
    let mut buf = BytesMut::from(bytes);
    let mut items = Vec::new();
    loop {
        let before = buf.clone();
        match decode(&mut buf) {
            Ok(Some(item)) => {
                let used = before.len() - buf.len();
                let mut again = BytesMut::new();
                encode(&item, &mut again);
                assert_eq!(&again[..], &before[..used], "{name}: re-encode differs");
                items.push(item);
            }
            Ok(None) if buf.is_empty() => return (items, "end: complete".into()),
            Ok(None) => {
                let n = buf.len();
                return (items, format!("end: incomplete, {n} bytes wait for more"));
            }
            Err(e) => return (items, format!("end: error: {e} ({e:?})")),
        }
    }
}

fn replies(bytes: &[u8], name: &str) -> (Vec<Reply>, String) {
    decode_all(
        bytes,
        |b| Reply::decode(b, DEFAULT_MAX_FRAME_LEN),
        Reply::encode,
        name,
    )
}

fn render_replies(bytes: &[u8], name: &str) -> String {
    let (items, end) = replies(bytes, name);
    let mut out = format!("# {name}: {} frames, {} bytes\n", items.len(), bytes.len());
    for (i, r) in items.iter().enumerate() {
        let _ = writeln!(out, "{:>3} {} {r:?}", i + 1, char::from(r.code()));
    }
    out + &end + "\n"
}

/// The negotiation a paired `.milter.bin` answers with (its first frame, if OPTNEG).
fn negotiated(pair: &Path, name: &str) -> Option<Negotiated> {
    let bytes = std::fs::read(pair).ok()?;
    match replies(&bytes, name).0.into_iter().next()? {
        Reply::OptNeg {
            version,
            actions,
            protocol,
            macros,
        } => Some(Negotiated {
            version,
            actions,
            protocol,
            macros,
        }),
        _ => None,
    }
}

fn render_commands(bytes: &[u8], name: &str, negotiated: Option<Negotiated>) -> String {
    let (items, end) = decode_all(
        bytes,
        |b| Command::decode(b, DEFAULT_MAX_FRAME_LEN),
        Command::encode,
        name,
    );
    let mut out = format!("# {name}: {} frames, {} bytes", items.len(), bytes.len());
    match &negotiated {
        Some(n) => {
            let _ = writeln!(
                out,
                "; session under version {} actions {:#x} protocol {:#x}",
                n.version,
                n.actions.bits(),
                n.protocol.bits()
            );
        }
        None => out.push_str("; session without negotiation (every event replied)\n"),
    }
    // The session asks for what the paired answer agreed (the MTA offered at least that).
    let needs = negotiated.map_or_else(Needs::default, |n| Needs {
        actions: n.actions,
        protocol: n.protocol,
        macros: n.macros,
        ..Needs::default()
    });
    let mut session = Session::new(needs, SessionLimits::default());
    for (i, c) in items.iter().enumerate() {
        let due = match session.handle(c) {
            Ok(step) if step.close() => "close".to_owned(),
            Ok(step) if step.reply_due() => "reply".to_owned(),
            Ok(_) => "no reply".to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        let _ = writeln!(out, "{:>3} {} {c:?} => {due}", i + 1, char::from(c.code()));
    }
    out + &end + "\n"
}

#[test]
fn vectors_decode_as_expected() {
    let regen = std::env::var_os("MILTER_REGEN_VECTORS").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "vectors missing: {files:?}");
    let mut failed = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(path).unwrap();
        let text = if let Some(stem) = name.strip_suffix(".mta.bin") {
            let pair = dir().join(format!("{stem}.milter.bin"));
            render_commands(&bytes, &name, negotiated(&pair, &name))
        } else if name.ends_with(".milter.bin") {
            render_replies(&bytes, &name)
        } else {
            panic!("{name}: vectors are NAME.mta.bin or NAME.milter.bin");
        };
        let expected_path = path.with_extension("txt");
        if regen {
            std::fs::write(&expected_path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (MILTER_REGEN_VECTORS=1 writes it)",
                expected_path.display()
            )
        });
        if expected != text {
            failed.push(format!("{name}:\n--- expected\n{expected}--- got\n{text}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn every_strict_prefix_of_a_complete_vector_needs_more() {
    for name in ["postfix-v6-session.mta.bin", "v2-peer.mta.bin"] {
        let bytes = std::fs::read(dir().join(name)).unwrap();
        // Cut inside the last frame: everything before decodes, the rest waits.
        let mut buf = BytesMut::from(&bytes[..]);
        let mut starts = vec![0];
        while Command::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
            .unwrap()
            .is_some()
        {
            starts.push(bytes.len() - buf.len());
        }
        for w in starts.windows(2) {
            for cut in w[0] + 1..w[1] {
                let mut b = BytesMut::from(&bytes[w[0]..cut]);
                assert_eq!(
                    Command::decode(&mut b, DEFAULT_MAX_FRAME_LEN),
                    Ok(None),
                    "{name} cut at {cut}"
                );
                assert_eq!(b.len(), cut - w[0], "nothing consumed");
            }
        }
    }
}

/// Our server, fed the Postfix session's commands, answers exactly the bytes of
/// `postfix-v6-session.milter.bin` (written by hand in gen.py from the protocol notes).
#[cfg(feature = "tokio")]
#[tokio::test]
async fn server_answers_the_postfix_session_byte_for_byte() {
    use bytes::Bytes;
    use milter_proto::Actions;
    use milter_proto::Needs;
    use milter_proto::server::{Context, Decision, Handler, ServerConfig, serve_connection};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Scanner;

    #[milter_proto::server::async_trait]
    impl Handler for Scanner {
        fn needs(&self) -> Needs {
            Needs {
                actions: Actions::ADDHDRS | Actions::ADDRCPT | Actions::CHGBODY,
                macros: vec![(milter_proto::MacroStage::Eom, Bytes::from_static(b"i"))],
                ..Needs::default()
            }
        }
        async fn eom(&mut self, ctx: &mut Context) -> Decision {
            assert_eq!(ctx.macro_value("i").map(|v| &v[..]), Some(&b"4ABCDEF"[..]));
            ctx.add_header("X-Scanned", "yes").unwrap();
            ctx.add_rcpt("<archive@example.net>").unwrap();
            ctx.replace_body(Bytes::from_static(b"Replaced.\r\n"))
                .unwrap();
            Decision::Accept
        }
    }

    let input = std::fs::read(dir().join("postfix-v6-session.mta.bin")).unwrap();
    let expected = std::fs::read(dir().join("postfix-v6-session.milter.bin")).unwrap();
    let (mut mta, milter) = tokio::io::duplex(1 << 16);
    let server =
        tokio::spawn(
            async move { serve_connection(milter, Scanner, &ServerConfig::default()).await },
        );
    mta.write_all(&input).await.unwrap();
    let mut out = Vec::new();
    mta.read_to_end(&mut out).await.unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(out, expected);
}
