//! mailstack-init's syslog receiver.

/// A datagram from `/dev/log` through the syslog parser and both renderings, which
/// parse back to the same message.
pub fn line(data: &[u8]) {
    crate::init::syslog::fuzz_line(data);
}
