//! Authentication-Results headers (RFC 8601).
