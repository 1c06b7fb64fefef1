//! [`RequestDecoder`]: incremental, bounded decoding of requests from a byte stream.

use bytes::BytesMut;

use crate::{DecodeError, PolicyRequest};

/// Longest attribute line accepted, 64 KiB. Postfix's own `line_length_limit` is 2048, but a
/// client certificate subject or a long `policy_context` can exceed it; 64 KiB still bounds
/// what one peer can make us hold.
pub const MAX_LINE: usize = 64 * 1024;
/// Most attributes per request: 1024, the size of Postfix's attribute hash
/// (`attr_scan_plain.c`). smtpd sends about 30.
pub const MAX_ATTRS: usize = 1024;
/// Largest request, 256 KiB: a few long lines, far above what smtpd sends (under 2 KiB).
pub const MAX_REQUEST: usize = 256 * 1024;

/// Decodes requests one at a time from a growing buffer.
///
/// `decode(&mut buf)` returns `Ok(None)` while the request is incomplete and consumes
/// nothing; it remembers how far it scanned, so every byte is looked at once however the
/// request is split. Limits are checked on what is buffered, before the caller reads more:
/// a caller that stops reading on an error never holds more than [`MAX_REQUEST`] plus one read.
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    max_line: usize,
    max_attrs: usize,
    max_request: usize,
    scanned: usize,
    line_start: usize,
    lines: usize,
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

    /// A decoder with other limits (each at least 1).
    pub fn with_limits(max_line: usize, max_attrs: usize, max_request: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            max_attrs: max_attrs.max(1),
            max_request: max_request.max(1),
            scanned: 0,
            line_start: 0,
            lines: 0,
        }
    }

    /// Splits one complete request off `buf`, or returns `Ok(None)` (need more).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<PolicyRequest>, DecodeError> {
        while let Some(rel) = buf.get(self.scanned..).and_then(memchr) {
            let nl = self.scanned + rel;
            if nl - self.line_start > self.max_line {
                return Err(DecodeError::LineTooLong {
                    limit: self.max_line,
                });
            }
            if nl == self.line_start {
                let frame = buf.split_to(nl + 1);
                self.reset();
                return parse(&frame).map(Some);
            }
            self.lines += 1;
            if self.lines > self.max_attrs {
                return Err(DecodeError::TooManyAttributes {
                    limit: self.max_attrs,
                });
            }
            self.scanned = nl + 1;
            self.line_start = nl + 1;
        }
        self.scanned = buf.len();
        if buf.len() - self.line_start > self.max_line {
            return Err(DecodeError::LineTooLong {
                limit: self.max_line,
            });
        }
        if buf.len() > self.max_request {
            return Err(DecodeError::RequestTooLarge {
                limit: self.max_request,
            });
        }
        Ok(None)
    }

    /// True when part of a request is buffered (EOF now means a truncated request).
    pub fn in_request(&self) -> bool {
        self.scanned > 0
    }

    fn reset(&mut self) {
        self.scanned = 0;
        self.line_start = 0;
        self.lines = 0;
    }
}

fn memchr(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// Parses a complete request (`name=value\n`... then `\n`).
fn parse(frame: &[u8]) -> Result<PolicyRequest, DecodeError> {
    let mut req = PolicyRequest::new();
    let body = frame.strip_suffix(b"\n").unwrap_or(frame);
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
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
        let value = value.get(1..).unwrap_or_default();
        req.push(
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        );
    }
    Ok(req)
}
