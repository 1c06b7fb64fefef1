//! Replays the fuzzing corpus of clamd replies (`fuzz/corpus/clamd_reply/`) through the
//! parsers on stable Rust: every input must parse or be rejected without a panic, and the
//! seed replies must keep their meaning.

use mailstack::clamd::{ScanError, ScanReply, parse_scan_reply, reply_text};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/clamd_reply");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn scan(data: &[u8]) -> Option<ScanReply> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    parse_scan_reply(&reply_text(&data[..end])).ok()
}

#[test]
fn corpus_replays_without_panic() {
    let c = corpus();
    assert!(c.len() >= 10, "corpus too small: {}", c.len());
    for (_, data) in &c {
        mailstack::fuzzing::clamd::reply(data);
    }
}

#[test]
fn seed_replies_keep_their_meaning() {
    let c: std::collections::HashMap<_, _> = corpus().into_iter().collect();
    assert_eq!(scan(&c["ok"]), Some(ScanReply::Clean));
    assert_eq!(
        scan(&c["found"]),
        Some(ScanReply::Infected(vec!["Eicar-Signature".into()]))
    );
    assert_eq!(
        scan(&c["session_found"]),
        Some(ScanReply::Infected(vec!["X.UNOFFICIAL".into()]))
    );
    assert_eq!(
        scan(&c["size_limit"]),
        Some(ScanReply::Error(ScanError::SizeLimitExceeded))
    );
    assert!(matches!(
        scan(&c["error"]),
        Some(ScanReply::Error(ScanError::Other(_)))
    ));
    assert_eq!(scan(&c["unknown"]), None);
    assert_eq!(scan(&c["edge_colons"]), None);
}
