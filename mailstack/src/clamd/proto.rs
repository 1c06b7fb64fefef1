//! The clamd wire protocol as sans-IO functions: command encoding, INSTREAM chunk framing and
//! reply parsing. Nothing here does I/O; [`super::Client`] drives these over a socket.

use std::fmt;

/// The terminator style of a command and of clamd's reply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// `z` prefix, NUL-terminated (the style clamd's man page recommends).
    Nul,
    /// `n` prefix, newline-terminated: what clamav-milter sends, and the default here. In
    /// `benches/av_milter` clamd 1.4.6 spent about 0.2-0.4 ms more CPU per scan on the same
    /// bytes when the command came in the `z` form (0.95 vs 0.56 ms per 5 KB message).
    #[default]
    Newline,
}

impl Style {
    /// The byte ending a command and its reply.
    pub fn terminator(self) -> u8 {
        match self {
            Self::Nul => 0,
            Self::Newline => b'\n',
        }
    }

    fn prefix(self) -> u8 {
        match self {
            Self::Nul => b'z',
            Self::Newline => b'n',
        }
    }
}

/// Encodes `name` (e.g. `PING`, `INSTREAM`) as a prefixed, terminated command.
pub(crate) fn encode_command(name: &str, style: Style) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    out.push(style.prefix());
    out.extend_from_slice(name.as_bytes());
    out.push(style.terminator());
    out
}

/// The zero-length chunk that ends an INSTREAM.
pub(crate) const END_OF_STREAM: [u8; 4] = [0; 4];

/// The 4-byte big-endian length header of an INSTREAM chunk.
///
/// # Panics
/// Never for `len <= u32::MAX`; [`frame_chunk`] splits larger data.
pub(crate) fn chunk_header(len: u32) -> [u8; 4] {
    len.to_be_bytes()
}

/// Appends `data` to `out` as INSTREAM chunks (split at `u32::MAX` bytes). Empty data
/// appends nothing: a zero-length chunk would end the stream.
pub(crate) fn frame_chunk(data: &[u8], out: &mut Vec<u8>) {
    for part in data.chunks(u32::MAX as usize) {
        // chunks() bounds every part by u32::MAX.
        out.extend_from_slice(&chunk_header(part.len() as u32));
        out.extend_from_slice(part);
    }
}

/// Why a scan did not produce a verdict on the content. Every kind, known or added later,
/// means the content was not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScanError {
    /// `INSTREAM size limit exceeded. ERROR`: the stream passed clamd's `StreamMaxLength`.
    SizeLimitExceeded,
    /// Any other `... ERROR` reply, with clamd's message (without the `stream: ` prefix and
    /// the ` ERROR` suffix).
    Other(String),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SizeLimitExceeded => f.write_str("INSTREAM size limit exceeded"),
            Self::Other(m) => write!(f, "clamd error: {m}"),
        }
    }
}

/// clamd's reply to one scanned stream or file (what the scan found; a filter's decision is
/// [`crate::filter::Verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanReply {
    /// `<name>: OK`.
    Clean,
    /// `<name>: <signature> FOUND`, one signature per reply line (several only with
    /// ALLMATCHSCAN).
    Infected(Vec<String>),
    /// `... ERROR`.
    Error(ScanError),
}

/// A reply that is not in clamd's grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply from clamd: {0:?}")]
pub struct Garbage(pub String);

/// Splits an IDSESSION reply `<id>: <rest>` into the id and the rest. Replies outside a
/// session give `None`.
pub(crate) fn split_session_id(reply: &str) -> Option<(u64, &str)> {
    let (id, rest) = reply.split_once(": ")?;
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.parse().ok()?, rest))
}

/// Decodes a raw reply (terminator already removed) as UTF-8, replacing invalid bytes, and
/// trims a trailing `\n`/`\r` (clamd ends multi-line replies with `\n` even in `z` style).
pub fn reply_text(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.trim_end_matches(['\n', '\r', '\0']).to_owned()
}

/// Longest virus name kept from a reply, in bytes. ClamAV's own signature names stay far
/// below it (`Win.Test.EICAR_HDB-1`, `Heuristics.Phishing.Email.SpoofedDomain`: under 64
/// bytes in the official databases); the name goes into headers, logs and reject texts, so
/// a peer must not be able to make it arbitrarily long.
pub(crate) const MAX_VIRUS_NAME_LEN: usize = 128;

/// A virus name as it may be shown anywhere: control characters (CR, LF, NUL, ESC, ...)
/// removed, then cut to [`MAX_VIRUS_NAME_LEN`] bytes on a char boundary.
pub(crate) fn clean_virus_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(MAX_VIRUS_NAME_LEN));
    for c in name.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_VIRUS_NAME_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// Parses a scan reply (`stream: OK`, `stream: Eicar FOUND`, `stream: ... ERROR`,
/// `INSTREAM size limit exceeded. ERROR`, or several such lines), with or without an
/// IDSESSION id prefix on each line.
pub fn parse_scan_reply(reply: &str) -> Result<ScanReply, Garbage> {
    let mut found = Vec::new();
    let mut clean = false;
    let mut lines = 0;
    for line in reply.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        lines += 1;
        let line = split_session_id(line).map_or(line, |(_, rest)| rest);
        if line == "INSTREAM size limit exceeded. ERROR" {
            return Ok(ScanReply::Error(ScanError::SizeLimitExceeded));
        }
        if let Some(msg) = line.strip_suffix(" ERROR") {
            let msg = msg.split_once(": ").map_or(msg, |(_, m)| m);
            return Ok(ScanReply::Error(ScanError::Other(msg.to_owned())));
        }
        if let Some(head) = line.strip_suffix(" FOUND") {
            // `<object>: <signature> FOUND`; the object (a path) may contain ": " itself, the
            // signature never contains spaces.
            let name = clean_virus_name(head.rsplit_once(": ").map(|(_, n)| n).unwrap_or(""));
            if name.is_empty() || name.contains(' ') {
                return Err(Garbage(reply.to_owned()));
            }
            found.push(name);
            continue;
        }
        if line.ends_with(": OK") {
            clean = true;
            continue;
        }
        return Err(Garbage(reply.to_owned()));
    }
    match (lines, found.is_empty(), clean) {
        (0, _, _) => Err(Garbage(reply.to_owned())),
        (_, false, _) => Ok(ScanReply::Infected(found)),
        (_, true, true) => Ok(ScanReply::Clean),
        _ => Err(Garbage(reply.to_owned())),
    }
}

/// Parses a `PING` reply: `PONG` (or `<id>: PONG`).
pub(crate) fn parse_pong(reply: &str) -> Result<(), Garbage> {
    let r = split_session_id(reply).map_or(reply, |(_, r)| r);
    if r == "PONG" {
        Ok(())
    } else {
        Err(Garbage(reply.to_owned()))
    }
}

/// Parses a `VERSION` reply: `ClamAV 1.4.6[/<db>/<date>]`; returns it unchanged.
pub(crate) fn parse_version(reply: &str) -> Result<String, Garbage> {
    let r = split_session_id(reply).map_or(reply, |(_, r)| r);
    if r.starts_with("ClamAV ") && r.len() < 256 {
        Ok(r.to_owned())
    } else {
        Err(Garbage(reply.to_owned()))
    }
}

/// Parses a `STATS` reply: the lines up to and excluding the final `END`.
pub(crate) fn parse_stats(reply: &str) -> Result<String, Garbage> {
    let r = split_session_id(reply).map_or(reply, |(_, r)| r);
    let body = r.trim_end();
    match body.strip_suffix("END") {
        Some(b) if body.starts_with("POOLS:") => Ok(b.trim_end().to_owned()),
        _ => Err(Garbage(reply.to_owned())),
    }
}

/// Parses a `RELOAD` reply: `RELOADING`.
pub(crate) fn parse_reload(reply: &str) -> Result<(), Garbage> {
    if reply == "RELOADING" {
        Ok(())
    } else {
        Err(Garbage(reply.to_owned()))
    }
}

/// Incremental reply splitter: collects bytes until the terminator, bounded by `max` bytes.
#[derive(Debug)]
pub(crate) struct ReplyBuffer {
    buf: Vec<u8>,
    term: u8,
    max: usize,
}

/// What [`ReplyBuffer::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// No terminator yet; consumed all input.
    NeedMore,
    /// A complete reply (without terminator) and how many input bytes were consumed.
    Reply(Vec<u8>, usize),
    /// The reply grew past the bound without a terminator.
    TooLong,
}

impl ReplyBuffer {
    /// A splitter for replies ending with `style`'s terminator, at most `max` bytes each.
    pub(crate) fn new(style: Style, max: usize) -> Self {
        Self {
            buf: Vec::new(),
            term: style.terminator(),
            max,
        }
    }

    /// Feeds received bytes.
    pub(crate) fn push(&mut self, data: &[u8]) -> Pushed {
        if let Some(pos) = data.iter().position(|&b| b == self.term) {
            if self.buf.len() + pos > self.max {
                return Pushed::TooLong;
            }
            self.buf.extend_from_slice(&data[..pos]);
            return Pushed::Reply(std::mem::take(&mut self.buf), pos + 1);
        }
        if self.buf.len() + data.len() > self.max {
            return Pushed::TooLong;
        }
        self.buf.extend_from_slice(data);
        Pushed::NeedMore
    }

    /// The bytes collected so far (a reply cut short by EOF).
    pub(crate) fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Fuzzing entry point (`mailstack::fuzzing::clamd_reply` and the property tests): runs every
/// reply parser over `data`. Must never panic.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_reply(data: &[u8]) {
    for style in [Style::Nul, Style::Newline] {
        let mut rb = ReplyBuffer::new(style, 128);
        let mut rest = data;
        while !rest.is_empty() {
            match rb.push(rest) {
                Pushed::Reply(r, used) => {
                    let t = reply_text(&r);
                    let _ = parse_scan_reply(&t);
                    let _ = parse_pong(&t);
                    let _ = parse_version(&t);
                    let _ = parse_stats(&t);
                    let _ = parse_reload(&t);
                    rest = &rest[used..];
                }
                Pushed::NeedMore | Pushed::TooLong => break,
            }
        }
    }
    let t = reply_text(data);
    let _ = parse_scan_reply(&t);
    let _ = split_session_id(&t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_chunks() {
        assert_eq!(encode_command("INSTREAM", Style::Nul), b"zINSTREAM\0");
        assert_eq!(encode_command("PING", Style::Newline), b"nPING\n");
        let mut out = Vec::new();
        frame_chunk(b"abc", &mut out);
        frame_chunk(b"", &mut out);
        assert_eq!(out, b"\0\0\0\x03abc");
        assert_eq!(chunk_header(0x0102_0304), [1, 2, 3, 4]);
    }

    #[test]
    fn scan_replies() {
        assert_eq!(parse_scan_reply("stream: OK"), Ok(ScanReply::Clean));
        assert_eq!(
            parse_scan_reply("stream: Eicar-Signature FOUND"),
            Ok(ScanReply::Infected(vec!["Eicar-Signature".into()]))
        );
        assert_eq!(
            parse_scan_reply("3: stream: X.UNOFFICIAL FOUND"),
            Ok(ScanReply::Infected(vec!["X.UNOFFICIAL".into()]))
        );
        assert_eq!(
            parse_scan_reply("/a: b/c: Sig FOUND\n/a: b/d: Sig2 FOUND\n"),
            Ok(ScanReply::Infected(vec!["Sig".into(), "Sig2".into()]))
        );
        assert_eq!(
            parse_scan_reply("INSTREAM size limit exceeded. ERROR"),
            Ok(ScanReply::Error(ScanError::SizeLimitExceeded))
        );
        assert_eq!(
            parse_scan_reply("2: INSTREAM size limit exceeded. ERROR"),
            Ok(ScanReply::Error(ScanError::SizeLimitExceeded))
        );
        assert_eq!(
            parse_scan_reply("stream: Can't create temporary file ERROR"),
            Ok(ScanReply::Error(ScanError::Other(
                "Can't create temporary file".into()
            )))
        );
        assert_eq!(
            parse_scan_reply("UNKNOWN COMMAND"),
            Err(Garbage("UNKNOWN COMMAND".into()))
        );
        assert!(parse_scan_reply("").is_err());
        assert!(parse_scan_reply("stream:  FOUND").is_err());
        assert!(parse_scan_reply("HTTP/1.1 400 Bad Request").is_err());
    }

    #[test]
    fn virus_names_cut_on_a_char_boundary_without_controls() {
        let long = "\u{e9}".repeat(100); // 200 bytes of two-byte chars
        let Ok(ScanReply::Infected(n)) = parse_scan_reply(&format!("stream: A{long} FOUND")) else {
            panic!("not infected");
        };
        assert_eq!(n[0].len(), MAX_VIRUS_NAME_LEN - 1);
        assert_eq!(n[0], format!("A{}", "\u{e9}".repeat(63)));
        assert_eq!(
            parse_scan_reply("stream: Evil\r\x1b[2J\0Sig FOUND"),
            Ok(ScanReply::Infected(vec!["Evil[2JSig".into()]))
        );
        assert_eq!(
            parse_scan_reply("stream: Sig\r FOUND\n"),
            Ok(ScanReply::Infected(vec!["Sig".into()]))
        );
        assert!(parse_scan_reply("stream: \r\x07 FOUND").is_err());
    }

    #[test]
    fn other_replies() {
        assert_eq!(parse_pong("PONG"), Ok(()));
        assert_eq!(parse_pong("1: PONG"), Ok(()));
        assert!(parse_pong("PONGX").is_err());
        assert_eq!(parse_version("ClamAV 1.4.6").as_deref(), Ok("ClamAV 1.4.6"));
        assert!(parse_version("SSH-2.0-OpenSSH").is_err());
        assert_eq!(
            parse_stats("POOLS: 1\n\nSTATE: VALID PRIMARY\nQUEUE: 0 items\nEND\n").as_deref(),
            Ok("POOLS: 1\n\nSTATE: VALID PRIMARY\nQUEUE: 0 items")
        );
        assert!(parse_stats("POOLS: 1").is_err());
        assert_eq!(parse_reload("RELOADING"), Ok(()));
        assert_eq!(split_session_id("12: PONG"), Some((12, "PONG")));
        assert_eq!(split_session_id("stream: OK"), None);
    }

    #[test]
    fn reply_buffer_bounds_and_splits() {
        let mut rb = ReplyBuffer::new(Style::Nul, 10);
        assert_eq!(rb.push(b"stre"), Pushed::NeedMore);
        assert_eq!(
            rb.push(b"am: OK\0rest"),
            Pushed::Reply(b"stream: OK".to_vec(), 7)
        );
        let mut rb = ReplyBuffer::new(Style::Newline, 4);
        assert_eq!(rb.push(b"abcde"), Pushed::TooLong);
        let mut rb = ReplyBuffer::new(Style::Newline, 4);
        assert_eq!(rb.push(b"ab"), Pushed::NeedMore);
        assert_eq!(rb.push(b"cde\n"), Pushed::TooLong);
        assert_eq!(reply_text(b"PONG\n\r"), "PONG");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_replies_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            fuzz_reply(&data);
        }

        #[test]
        fn virus_names_are_bounded_and_clean(
            name in "[^ ]{1,400}",
            id in proptest::option::of(0u32..1000),
        ) {
            let prefix = id.map(|i| format!("{i}: ")).unwrap_or_default();
            let reply = format!("{prefix}stream: {name} FOUND");
            if let Ok(ScanReply::Infected(names)) = parse_scan_reply(&reply) {
                for n in names {
                    proptest::prop_assert!(n.len() <= MAX_VIRUS_NAME_LEN, "{n:?}");
                    proptest::prop_assert!(!n.chars().any(char::is_control), "{n:?}");
                    proptest::prop_assert!(!n.is_empty());
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "[ -~\\n\\r:0-9]{0,200}") {
            let _ = parse_scan_reply(&s);
            fuzz_reply(s.as_bytes());
        }
    }
}
