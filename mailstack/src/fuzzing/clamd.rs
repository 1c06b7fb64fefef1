//! clamd replies.

/// A clamd reply, through every reply parser.
pub fn reply(data: &[u8]) {
    crate::clamd::proto::fuzz_reply(data);
}
