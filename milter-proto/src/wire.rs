//! Payload field readers and writers shared by commands and replies.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::DecodeError;
use crate::macros::MacroStage;

/// A cursor over one payload; every read checks bounds.
pub(crate) struct Reader {
    cmd: char,
    rest: Bytes,
}

impl Reader {
    pub(crate) fn new(cmd: u8, payload: Bytes) -> Self {
        Self {
            cmd: char::from(cmd),
            rest: payload,
        }
    }

    pub(crate) fn truncated(&self, what: &'static str) -> DecodeError {
        DecodeError::Truncated {
            cmd: self.cmd,
            what,
        }
    }

    pub(crate) fn invalid(&self, what: &'static str) -> DecodeError {
        DecodeError::Invalid {
            cmd: self.cmd,
            what,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// A NUL-terminated string, without its NUL.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let Some(nul) = self.rest.iter().position(|&b| b == 0) else {
            return Err(self.truncated(what));
        };
        let s = self.rest.split_to(nul);
        self.rest.advance(1);
        Ok(s)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        if self.rest.len() < 4 {
            return Err(self.truncated(what));
        }
        Ok(self.rest.get_u32())
    }

    /// A macro-list stage number; one no [`MacroStage`] has is invalid.
    pub(crate) fn macro_stage(&mut self) -> Result<MacroStage, DecodeError> {
        let n = self.u32("macro stage")?;
        MacroStage::from_number(n)
            .ok_or_else(|| self.invalid("unknown macro stage (0 connect .. 6 eoh)"))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        if self.rest.len() < 2 {
            return Err(self.truncated(what));
        }
        Ok(self.rest.get_u16())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        if self.rest.is_empty() {
            return Err(self.truncated(what));
        }
        Ok(self.rest.get_u8())
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.rest)
    }

    /// Fail unless the payload was consumed entirely.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.cmd))
        }
    }
}

pub(crate) fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}
