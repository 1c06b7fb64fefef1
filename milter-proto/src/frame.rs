//! Framing: `u32 length` (big-endian, counts the command byte) + `u8 command` + data.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::DecodeError;

/// Default maximum of the length field: 64 KiB of data plus the command byte, the size libmilter
/// accepts without `SMFIP_MDS_*` (Postfix sends body chunks of at most 65535 bytes).
pub const DEFAULT_MAX_FRAME_LEN: u32 = 64 * 1024 + 1;
/// Maximum of the length field when `SMFIP_MDS_256K` was negotiated.
pub const MAX_FRAME_LEN_256K: u32 = 256 * 1024 + 1;
/// Maximum of the length field when `SMFIP_MDS_1M` was negotiated.
pub const MAX_FRAME_LEN_1M: u32 = 1024 * 1024 + 1;

/// One packet: the command byte and its payload (data without the command byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command (`SMFIC_*`) or reply (`SMFIR_*`) byte.
    pub cmd: u8,
    /// The data after the command byte, split off the input without copying.
    pub payload: Bytes,
}

/// Decode one frame from the front of `buf`.
///
/// `Ok(None)`: not enough bytes yet, nothing consumed. The length is checked against `max_len`
/// before any byte is reserved, so a peer cannot make us allocate what it merely announces.
pub fn decode_frame(buf: &mut BytesMut, max_len: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([
        head.first().copied().unwrap_or(0),
        head.get(1).copied().unwrap_or(0),
        head.get(2).copied().unwrap_or(0),
        head.get(3).copied().unwrap_or(0),
    ]);
    if len == 0 {
        return Err(DecodeError::ZeroLength);
    }
    if len > max_len {
        return Err(DecodeError::TooLong { len, max: max_len });
    }
    let total = 4usize.saturating_add(len as usize);
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let cmd = buf.get_u8();
    let payload = buf.split_to(len as usize - 1).freeze();
    Ok(Some(Frame { cmd, payload }))
}

/// Append a frame with command `cmd` and `payload` to `out`.
///
/// Payloads longer than `u32::MAX - 1` are not representable; callers keep chunks far below
/// (see [`crate::reply::MAX_REPLBODY_CHUNK`]).
pub fn encode_frame(out: &mut BytesMut, cmd: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len().saturating_add(1)).unwrap_or(u32::MAX);
    out.reserve(5 + payload.len());
    out.put_u32(len);
    out.put_u8(cmd);
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_length_needs_more_and_consumes_nothing() {
        let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(None));
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn text_read_as_length_is_rejected() {
        let mut buf = BytesMut::from(&b"UNKNOWN command"[..]);
        assert_eq!(
            decode_frame(&mut buf, DEFAULT_MAX_FRAME_LEN),
            Err(DecodeError::TooLong {
                len: 1_431_194_446,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn zero_length_is_rejected() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, b'A'][..]);
        assert_eq!(
            decode_frame(&mut buf, DEFAULT_MAX_FRAME_LEN),
            Err(DecodeError::ZeroLength)
        );
    }

    #[test]
    fn two_frames_in_one_buffer() {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, b'A', b"");
        encode_frame(&mut buf, b'B', b"xyz");
        let a = decode_frame(&mut buf, DEFAULT_MAX_FRAME_LEN);
        assert_eq!(
            a,
            Ok(Some(Frame {
                cmd: b'A',
                payload: Bytes::new()
            }))
        );
        let b = decode_frame(&mut buf, DEFAULT_MAX_FRAME_LEN);
        assert_eq!(
            b,
            Ok(Some(Frame {
                cmd: b'B',
                payload: Bytes::from_static(b"xyz")
            }))
        );
        assert!(buf.is_empty());
    }
}
