//! Reads `corpus.txt` beside this file: the DKIM edge-case messages both the mailstack and
//! the examples tests run through OpenDKIM and our milter. Included with
//! `#[path = ".../tests/data/dkim/corpus.rs"] mod dkim_corpus;`.

use std::path::Path;

/// The corpus: messages separated by lines `=== name`; `\n` becomes CRLF, `<SP>`/`<TAB>`
/// make trailing whitespace visible, `\xNN` is a raw byte.
pub(crate) fn corpus() -> Vec<(String, Vec<u8>)> {
    // The same path from the mailstack package and from the examples package.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../mailstack/tests/data/dkim/corpus.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let blocks: Vec<&str> = text.split("\n=== ").skip(1).collect();
    for (i, block) in blocks.iter().enumerate() {
        let (name, body) = block.split_once('\n').unwrap();
        // The separator took the newline ending the message's last line.
        let body = if i + 1 < blocks.len() {
            format!("{body}\n")
        } else {
            body.to_owned()
        };
        let msg = body
            .replace("<SP>", " ")
            .replace("<TAB>", "\t")
            .replace('\n', "\r\n");
        out.push((name.trim().to_owned(), unescape(&msg)));
    }
    assert!(out.len() >= 10, "corpus too small");
    out
}

/// `\xNN` → the byte NN.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}
