//! Fuzz entry points (used by `fuzz/` and by the corpus replay test). Not a stable API.

use bytes::BytesMut;

use crate::command::Command;
use crate::frame::{DEFAULT_MAX_FRAME_LEN, decode_frame};
use crate::reply::Reply;

/// Split `data` into frames until it runs out or errors.
pub fn milter_frame(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_frame(&mut buf, DEFAULT_MAX_FRAME_LEN) {}
}

/// Decode commands; each decoded one must re-encode to a frame that decodes to itself.
pub fn milter_command(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(cmd)) = Command::decode(&mut buf, DEFAULT_MAX_FRAME_LEN) {
        let mut out = BytesMut::new();
        cmd.encode(&mut out);
        assert_eq!(Command::decode(&mut out, u32::MAX), Ok(Some(cmd)));
    }
}

/// Decode replies; each decoded one must re-encode to a frame that decodes to itself.
pub fn milter_reply(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(reply)) = Reply::decode(&mut buf, DEFAULT_MAX_FRAME_LEN) {
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        assert_eq!(Reply::decode(&mut out, u32::MAX), Ok(Some(reply)));
    }
}

/// Drive a [`crate::session::Session`] with decoded commands until an error or the end.
pub fn milter_session(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut session = crate::session::Session::default();
    while let Ok(Some(cmd)) = Command::decode(&mut buf, DEFAULT_MAX_FRAME_LEN) {
        if session.handle(&cmd).is_err() {
            break;
        }
    }
}
