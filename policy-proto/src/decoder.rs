//! [`RequestDecoder`] and [`ReplyDecoder`]: incremental, bounded decoding of `name=value`
//! blocks ended by an empty line (`docs/spec/policy-delegation.md` §1.1, §1.6).
//!
//! Both share one [`Scanner`] that remembers where it stopped, so each byte is looked at once
//! however the input is split across reads, and that checks its limits on what is buffered
//! before the caller reads more.

use bytes::BytesMut;

use crate::{Action, DecodeError, PolicyRequest};

/// Longest attribute line accepted, 64 KiB. Postfix cuts SMTP command lines at
/// `line_length_limit` (2048) but a client certificate subject (xtext) or a long
/// `policy_context` can exceed that; 64 KiB still bounds what one peer can make us hold.
pub const MAX_LINE: usize = 64 * 1024;
/// Most attributes per request: 1024, Postfix's own limit on a plain attribute list
/// (`ATTR_HASH_LIMIT`, `attr_scan_plain.c`). smtpd sends at most 32 (3.12).
pub const MAX_ATTRS: usize = 1024;
/// Largest request, 256 KiB: a few long lines, far above what smtpd sends (under 2 KiB).
pub const MAX_REQUEST: usize = 256 * 1024;
/// Largest reply a [`ReplyDecoder`] accepts, 64 KiB. Postfix itself has no limit (the check
/// is compiled out in `attr_scan_plain.c`), but a reply is one `action=` line whose text ends
/// up in a 512-octet SMTP reply line, so 64 KiB is generous and bounds a broken server.
pub const MAX_REPLY: usize = 64 * 1024;

/// Finds the end of a block (the empty line) in a growing buffer, one pass over the bytes.
#[derive(Debug, Clone)]
struct Scanner {
    max_line: usize,
    max_lines: usize,
    max_total: usize,
    /// Bytes of the buffer already looked at.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    /// Complete non-empty lines seen.
    lines: usize,
}

impl Scanner {
    fn new(max_line: usize, max_lines: usize, max_total: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            max_lines: max_lines.max(1),
            max_total: max_total.max(1),
            scanned: 0,
            line_start: 0,
            lines: 0,
        }
    }

    /// The length of the first complete block in `buf` (through its empty line), or `None`
    /// when more is needed. `too_large` is the error for a block over `max_total`.
    fn scan(&mut self, buf: &[u8], too_large: DecodeError) -> Result<Option<usize>, DecodeError> {
        while let Some(rel) = buf.get(self.scanned..).and_then(find_lf) {
            let nl = self.scanned + rel;
            if nl - self.line_start > self.max_line {
                return Err(DecodeError::LineTooLong {
                    limit: self.max_line,
                });
            }
            if nl == self.line_start {
                self.reset();
                return Ok(Some(nl + 1));
            }
            self.lines += 1;
            if self.lines > self.max_lines {
                return Err(DecodeError::TooManyAttributes {
                    limit: self.max_lines,
                });
            }
            self.scanned = nl + 1;
            self.line_start = nl + 1;
            if self.scanned > self.max_total {
                return Err(too_large);
            }
        }
        self.scanned = buf.len();
        if buf.len() - self.line_start > self.max_line {
            return Err(DecodeError::LineTooLong {
                limit: self.max_line,
            });
        }
        if buf.len() > self.max_total {
            return Err(too_large);
        }
        Ok(None)
    }

    fn reset(&mut self) {
        self.scanned = 0;
        self.line_start = 0;
        self.lines = 0;
    }
}

fn find_lf(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// Splits one line into name and value at its first `=`.
fn split_attr(line: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    if line.contains(&0) {
        return Err(DecodeError::Nul);
    }
    let eq = line
        .iter()
        .position(|&b| b == b'=')
        .ok_or(DecodeError::MissingEquals)?;
    let (name, value) = line.split_at(eq);
    if name.is_empty() {
        return Err(DecodeError::EmptyName);
    }
    Ok((name, value.get(1..).unwrap_or_default()))
}

/// The non-empty lines of a complete block.
fn lines(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    frame.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// Decodes requests, one at a time, from a buffer that grows as bytes arrive.
///
/// `decode(&mut buf)` returns `Ok(None)` while the request is incomplete and then consumes
/// nothing; `Ok(Some(request))` splits exactly one request (through its empty line) off the
/// front of `buf`, leaving any following request in place. It remembers how far it scanned,
/// so every byte is looked at once however the request is split. Limits ([`MAX_LINE`],
/// [`MAX_ATTRS`], [`MAX_REQUEST`] by default) are checked on what is buffered: a caller that
/// stops reading at the first error never holds more than the request limit plus one read.
///
/// Values are text: bytes that are not UTF-8 become U+FFFD (Postfix sends UTF-8 or ASCII).
/// After an error the decoder is not reset; the connection is to be closed
/// ([`DecodeError::server_response`]).
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    scanner: Scanner,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestDecoder {
    /// A decoder with the default limits ([`MAX_LINE`], [`MAX_ATTRS`], [`MAX_REQUEST`]).
    pub fn new() -> Self {
        Self::with_limits(MAX_LINE, MAX_ATTRS, MAX_REQUEST)
    }

    /// A decoder with other limits (each raised to at least 1).
    pub fn with_limits(max_line: usize, max_attrs: usize, max_request: usize) -> Self {
        Self {
            scanner: Scanner::new(max_line, max_attrs, max_request),
        }
    }

    /// Splits one complete request off `buf`, or returns `Ok(None)` (need more).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<PolicyRequest>, DecodeError> {
        let too_large = DecodeError::RequestTooLarge {
            limit: self.scanner.max_total,
        };
        let Some(end) = self.scanner.scan(buf, too_large)? else {
            return Ok(None);
        };
        let frame = buf.split_to(end);
        let mut req = PolicyRequest::new();
        for line in lines(&frame) {
            let (name, value) = split_attr(line)?;
            req.push_decoded(
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
        }
        Ok(Some(req))
    }

    /// True when part of a request is buffered and scanned (EOF now means a truncated
    /// request).
    pub fn in_request(&self) -> bool {
        self.scanner.scanned > 0
    }

    /// The request size limit in force.
    pub fn max_request(&self) -> usize {
        self.scanner.max_total
    }
}

/// Decodes replies (the client side), one at a time, with the same contract as
/// [`RequestDecoder::decode`].
///
/// Reads replies the way Postfix does (`docs/spec/policy-delegation.md` §1.1): attributes
/// before and after `action` are skipped, the first `action` counts; a block without one is
/// [`DecodeError::MissingAction`], a line without `=` is [`DecodeError::MissingEquals`], an
/// action that is not UTF-8 is [`DecodeError::NotUtf8`]. Unlike Postfix, the size is bounded
/// ([`MAX_REPLY`]), and an action Postfix would misread is an error
/// ([`DecodeError::BadAction`]).
#[derive(Debug, Clone)]
pub struct ReplyDecoder {
    scanner: Scanner,
}

impl Default for ReplyDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyDecoder {
    /// A decoder with the default limits ([`MAX_LINE`], [`MAX_ATTRS`], [`MAX_REPLY`]).
    pub fn new() -> Self {
        Self {
            scanner: Scanner::new(MAX_LINE, MAX_ATTRS, MAX_REPLY),
        }
    }

    /// Splits one complete reply off `buf`, or returns `Ok(None)` (need more).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Action>, DecodeError> {
        let too_large = DecodeError::ReplyTooLarge {
            limit: self.scanner.max_total,
        };
        let Some(end) = self.scanner.scan(buf, too_large)? else {
            return Ok(None);
        };
        let frame = buf.split_to(end);
        let mut action = None;
        for line in lines(&frame) {
            let (name, value) = split_attr(line)?;
            if name == b"action" && action.is_none() {
                action = Some(value);
            }
        }
        let value = action.ok_or(DecodeError::MissingAction)?;
        let value = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
        Action::parse(value)
            .map(Some)
            .map_err(DecodeError::BadAction)
    }

    /// True when part of a reply is buffered and scanned.
    pub fn in_reply(&self) -> bool {
        self.scanner.scanned > 0
    }
}
