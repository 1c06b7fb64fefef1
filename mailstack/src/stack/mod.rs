//! `mailstackd`'s library side: every filter in one milter, one pass over the message.
//!
//! [`StackConfig`] reads `mailstackd.toml` (a section per filter, each naming the tool's own
//! file or holding its options inline; an embedded default without any file).
//! [`Pipeline`] runs a [`crate::filter::Chain`] of SPF → DKIM → DMARC → AV behind one
//! authserv-id: SPF is checked at MAIL FROM inside the milter, the body streams once to the
//! DKIM hashers and to clamd, DMARC takes SPF and DKIM from the filters that ran (never from
//! headers), and one `Authentication-Results` field is written with every clause.

mod build;
mod config;
mod pipeline;

pub use build::{BuildError, Filters, Mailstack};
pub use config::{
    DEFAULT_DKIM, DEFAULT_DMARC, DEFAULT_DNS_TIMEOUT, DEFAULT_SPF, DaemonSettings, Source,
    StackConfig,
};
pub use pipeline::{Pipeline, PipelineMessage};
