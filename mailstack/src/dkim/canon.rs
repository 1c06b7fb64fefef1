//! Canonicalization (RFC 6376 §3.4) and hashing, written here rather than taken from
//! mail-auth 0.13.3, whose relaxed body canonicalization keeps whitespace-only lines at the
//! end of the body (fixed upstream only in 0.15, which needs a newer rustc).
//!
//! The body is canonicalized as it streams in ([`BodyHasher`]), so neither signing nor
//! verifying keeps the body in memory.

use aws_lc_rs::digest::{self, Context, Digest};

use super::config::Canon;

/// A header field as it appears in the message: `name` and the raw bytes after the colon
/// (leading space and CRLF folds included, no final CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name as written.
    pub name: String,
    /// Raw value after `:`, with `\r\n` between folded lines.
    pub value: Vec<u8>,
}

impl Header {
    /// A header from a milter `SMFIC_HEADER`: folds arrive as bare `\n`; `leadspc` says
    /// whether `SMFIP_HDR_LEADSPC` was negotiated (else Postfix removed one space after the
    /// colon, which we put back).
    pub fn from_milter(name: &[u8], value: &[u8], leadspc: bool) -> Self {
        let mut v = Vec::with_capacity(value.len() + 8);
        if !leadspc && !value.is_empty() {
            v.push(b' ');
        }
        let mut prev = 0u8;
        for &b in value {
            if b == b'\n' && prev != b'\r' {
                v.push(b'\r');
            }
            v.push(b);
            prev = b;
        }
        Self {
            name: String::from_utf8_lossy(name).into_owned(),
            value: v,
        }
    }

    /// Splits a CRLF message into its header fields and the offset of the body.
    pub fn split_message(msg: &[u8]) -> (Vec<Self>, usize) {
        let mut headers: Vec<Self> = Vec::new();
        let mut pos = 0;
        while pos < msg.len() {
            let end = find_crlf(&msg[pos..]).map_or(msg.len(), |e| pos + e);
            let line = &msg[pos..end];
            let next = (end + 2).min(msg.len());
            if line.is_empty() {
                return (headers, next);
            }
            if matches!(line[0], b' ' | b'\t') {
                if let Some(h) = headers.last_mut() {
                    h.value.extend_from_slice(b"\r\n");
                    h.value.extend_from_slice(line);
                }
            } else if let Some(colon) = line.iter().position(|b| *b == b':') {
                headers.push(Self {
                    name: String::from_utf8_lossy(&line[..colon]).into_owned(),
                    value: line[colon + 1..].to_vec(),
                });
            }
            pos = next;
        }
        (headers, msg.len())
    }

    /// Feeds the canonical form (with the final CRLF) into `out`.
    pub fn canonicalize(&self, canon: Canon, out: &mut Vec<u8>) {
        match canon {
            Canon::Simple => {
                out.extend_from_slice(self.name.as_bytes());
                out.push(b':');
                out.extend_from_slice(&self.value);
            }
            Canon::Relaxed => {
                out.extend(self.name.trim().bytes().map(|b| b.to_ascii_lowercase()));
                out.push(b':');
                relax_value(&self.value, out);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn find_crlf(s: &[u8]) -> Option<usize> {
    s.windows(2).position(|w| w == b"\r\n")
}

/// Relaxed header value: unfold, runs of WSP to one SP, no WSP at either end.
fn relax_value(v: &[u8], out: &mut Vec<u8>) {
    let mut wsp = false;
    let mut started = false;
    for &b in v {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => wsp = true,
            _ => {
                if wsp && started {
                    out.push(b' ');
                }
                wsp = false;
                started = true;
                out.push(b);
            }
        }
    }
}

/// Selects the header instances named in `h=` (RFC 6376 §5.4.2: for a repeated name, the
/// last unused instance first; a name with no instance left contributes nothing) and feeds
/// their canonical forms to `ctx`.
pub(crate) fn hash_headers(ctx: &mut Context, canon: Canon, headers: &[Header], names: &[String]) {
    let mut used = vec![false; headers.len()];
    let mut buf = Vec::with_capacity(256);
    for name in names {
        let found = headers
            .iter()
            .enumerate()
            .rev()
            .find(|(i, h)| !used[*i] && h.name.trim().eq_ignore_ascii_case(name.trim()));
        if let Some((i, h)) = found {
            used[i] = true;
            buf.clear();
            h.canonicalize(canon, &mut buf);
            ctx.update(&buf);
        }
    }
}

/// The DKIM-Signature field itself, canonicalized with the `b=` value removed and without the
/// final CRLF (RFC 6376 §3.7).
pub(crate) fn hash_signature_field(ctx: &mut Context, canon: Canon, sig: &Header) {
    let stripped = Header {
        name: sig.name.clone(),
        value: strip_b_value(&sig.value),
    };
    let mut buf = Vec::with_capacity(512);
    stripped.canonicalize(canon, &mut buf);
    buf.truncate(buf.len() - 2);
    ctx.update(&buf);
}

/// Removes the value of the `b=` tag (keeping `b=`), whitespace included.
pub(crate) fn strip_b_value(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for (i, seg) in value.split(|b| *b == b';').enumerate() {
        if i > 0 {
            out.push(b';');
        }
        match seg.iter().position(|b| *b == b'=') {
            Some(eq) if seg[..eq].trim_ascii() == b"b" => out.extend_from_slice(&seg[..=eq]),
            _ => out.extend_from_slice(seg),
        }
    }
    out
}

/// Streams a body through one canonicalization into a hash, honouring an `l=` limit.
#[derive(Clone)]
pub(crate) struct BodyHasher {
    canon: Canon,
    ctx: Context,
    limit: Option<u64>,
    /// Canonical bytes produced (whether or not hashed, for `l=` checks).
    produced: u64,
    empty_lines: u64,
    line_started: bool,
    pending_wsp: bool,
    pending_cr: bool,
    buf: Vec<u8>,
}

impl std::fmt::Debug for BodyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyHasher")
            .field("canon", &self.canon)
            .field("limit", &self.limit)
            .field("produced", &self.produced)
            .finish_non_exhaustive()
    }
}

impl BodyHasher {
    /// A hasher for `canon` with `alg` (SHA-256 or SHA-1), hashing at most `limit` canonical
    /// bytes.
    pub(crate) fn new(canon: Canon, alg: &'static digest::Algorithm, limit: Option<u64>) -> Self {
        Self {
            canon,
            ctx: Context::new(alg),
            limit,
            produced: 0,
            empty_lines: 0,
            line_started: false,
            pending_wsp: false,
            pending_cr: false,
            buf: Vec::with_capacity(8192),
        }
    }

    /// The canonicalization.
    pub(crate) fn canon(&self) -> Canon {
        self.canon
    }

    /// Whether the hash is SHA-1 (`rsa-sha1`).
    pub(crate) fn is_sha1(&self) -> bool {
        self.ctx.algorithm().output_len() == 20
    }

    /// The `l=` limit.
    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }

    fn out(&mut self, bytes: &[u8]) {
        self.produced += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 8192 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let already = self.produced - self.buf.len() as u64;
        let take = match self.limit {
            Some(l) => usize::try_from(l.saturating_sub(already))
                .unwrap_or(usize::MAX)
                .min(self.buf.len()),
            None => self.buf.len(),
        };
        self.ctx.update(&self.buf[..take]);
        self.buf.clear();
    }

    fn start_line(&mut self) {
        if !self.line_started {
            for _ in 0..self.empty_lines {
                self.out(b"\r\n");
            }
            self.empty_lines = 0;
            self.line_started = true;
        }
    }

    fn content(&mut self, b: u8) {
        if self.canon == Canon::Relaxed && (b == b' ' || b == b'\t') {
            self.pending_wsp = true;
            return;
        }
        self.start_line();
        if self.pending_wsp {
            self.pending_wsp = false;
            self.out(b" ");
        }
        self.out(&[b]);
    }

    fn end_line(&mut self) {
        self.pending_wsp = false;
        if self.line_started {
            self.out(b"\r\n");
            self.line_started = false;
        } else {
            self.empty_lines += 1;
        }
    }

    /// Feeds body bytes (CRLF line ends).
    pub(crate) fn update(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            i += 1;
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    self.end_line();
                    continue;
                }
                self.content(b'\r');
            }
            if b == b'\r' {
                self.pending_cr = true;
                continue;
            }
            // Fast path: copy a run of ordinary bytes at once (simple, or relaxed non-WSP).
            if self.line_started && !self.pending_wsp && !is_special(b, self.canon) {
                let start = i - 1;
                let mut end = i;
                while end < chunk.len() && !is_special(chunk[end], self.canon) {
                    end += 1;
                }
                self.out(&chunk[start..end]);
                i = end;
                continue;
            }
            self.content(b);
        }
    }

    /// Ends the body: returns the hash and the canonical length (before any `l=` cut).
    pub(crate) fn finish(mut self) -> (Digest, u64) {
        if self.pending_cr {
            self.pending_cr = false;
            self.content(b'\r');
        }
        if self.line_started {
            self.out(b"\r\n");
        }
        if self.canon == Canon::Simple && self.produced == 0 {
            self.out(b"\r\n");
        }
        self.flush();
        (self.ctx.finish(), self.produced)
    }
}

fn is_special(b: u8, canon: Canon) -> bool {
    b == b'\r' || (canon == Canon::Relaxed && (b == b' ' || b == b'\t'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    fn bh(canon: Canon, body: &[u8]) -> String {
        let mut h = BodyHasher::new(canon, &digest::SHA256, None);
        // Feed byte by byte and whole, results must agree.
        let mut h2 = h.clone();
        for b in body {
            h2.update(std::slice::from_ref(b));
        }
        h.update(body);
        let (a, _) = h.finish();
        let (b, _) = h2.finish();
        assert_eq!(a.as_ref(), b.as_ref());
        B64.encode(a.as_ref())
    }

    #[test]
    fn body_hashes_match_rfc_6376_and_the_reference_table() {
        // Values from the anchors' §5.13 table (computed per RFC 6376 §3.4.3/§3.4.4).
        let empty = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let crlf = "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=";
        let hello = bh(Canon::Relaxed, b"Hello\r\n");
        assert!(hello.starts_with("Ba3gj8+x"), "{hello}");
        assert_eq!(bh(Canon::Relaxed, b"Hello\r\n  \r\n"), hello);
        assert_eq!(bh(Canon::Relaxed, b"Hello\r\n \t \r\n\r\n"), hello);
        assert_eq!(bh(Canon::Relaxed, b"Hello"), hello);
        assert_eq!(bh(Canon::Relaxed, b"  \r\n"), empty);
        assert_eq!(bh(Canon::Relaxed, b""), empty);
        assert_eq!(bh(Canon::Relaxed, b"\r\n"), empty);
        assert_eq!(bh(Canon::Simple, b""), crlf);
        assert_eq!(bh(Canon::Simple, b"\r\n\r\n"), crlf);
        assert!(bh(Canon::Simple, b"  \r\n").starts_with("kiExZrYG"));
        assert_eq!(bh(Canon::Simple, b"Hello"), bh(Canon::Simple, b"Hello\r\n"));
        assert_eq!(
            bh(Canon::Relaxed, b" a \t b  \r\nc\r\n"),
            bh(Canon::Simple, b" a b\r\nc\r\n")
        );
    }

    #[test]
    fn length_limit_hashes_a_prefix() {
        let mut h = BodyHasher::new(Canon::Simple, &digest::SHA256, Some(7));
        h.update(b"Hello\r\nWorld\r\n");
        let (d, n) = h.finish();
        assert_eq!(n, 14);
        assert_eq!(
            d.as_ref(),
            digest::digest(&digest::SHA256, b"Hello\r\n").as_ref()
        );
    }

    #[test]
    fn headers_split_canonicalize_and_strip_b() {
        let msg = b"From: a@b\r\nSubject:  Hi \r\n\tthere\r\nX: 1\r\n\r\nbody";
        let (hs, body) = Header::split_message(msg);
        assert_eq!(&msg[body..], b"body");
        assert_eq!(hs[1].value, b"  Hi \r\n\tthere");
        let mut out = Vec::new();
        hs[1].canonicalize(Canon::Relaxed, &mut out);
        assert_eq!(out, b"subject:Hi there\r\n");
        out.clear();
        hs[1].canonicalize(Canon::Simple, &mut out);
        assert_eq!(out, b"Subject:  Hi \r\n\tthere\r\n");
        assert_eq!(
            strip_b_value(b" v=1; bh=xx; b=abc\r\n\t def; x=1"),
            b" v=1; bh=xx; b=; x=1"
        );
        assert_eq!(
            Header::from_milter(b"S", b" a\n\tb", true).value,
            Header::from_milter(b"S", b"a\n\tb", false).value
        );
    }

    /// RFC 6376 §3.4.3/§3.4.4 written the obvious way over the whole body.
    fn reference(canon: Canon, body: &[u8]) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut rest = body;
        while let Some(at) = find_crlf(rest) {
            lines.push(rest[..at].to_vec());
            rest = &rest[at + 2..];
        }
        if !rest.is_empty() {
            lines.push(rest.to_vec());
        }
        if canon == Canon::Relaxed {
            for l in &mut lines {
                let mut out = Vec::new();
                let mut wsp = false;
                for &b in l.iter() {
                    if b == b' ' || b == b'\t' {
                        wsp = true;
                    } else {
                        if wsp {
                            out.push(b' ');
                        }
                        wsp = false;
                        out.push(b);
                    }
                }
                *l = out;
            }
        }
        while lines.last().is_some_and(Vec::is_empty) {
            lines.pop();
        }
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(&l);
            out.extend_from_slice(b"\r\n");
        }
        if canon == Canon::Simple && out.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn streaming_matches_the_reference_for_any_split(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![&b"a"[..], b" ", b"\t", b"\r\n", b"\r", b"\n", b"xy"]),
                0..40,
            ),
            cut in 0usize..200,
            limit in proptest::option::of(0u64..60),
        ) {
            let body: Vec<u8> = parts.concat();
            for canon in [Canon::Simple, Canon::Relaxed] {
                let want = reference(canon, &body);
                let hashed = &want[..limit.map_or(want.len(), |l| (l as usize).min(want.len()))];
                let mut h = BodyHasher::new(canon, &digest::SHA256, limit);
                let cut = cut.min(body.len());
                h.update(&body[..cut]);
                h.update(&body[cut..]);
                let (d, n) = h.finish();
                let expected = digest::digest(&digest::SHA256, hashed);
                proptest::prop_assert_eq!(n, want.len() as u64);
                proptest::prop_assert_eq!(d.as_ref(), expected.as_ref());
            }
        }
    }
}
