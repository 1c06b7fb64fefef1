//! mailstack: mail authentication and filtering for Postfix and any MTA that speaks milter.
//!
//! Built on [`milter_proto`] and [`policy_proto`]. Each filter is library code so it can be
//! embedded in other servers; the daemons in `examples/` are thin binaries over it.
//!
//! # Layout
//! - [`config`]: reading the configuration files of the tools we replace, with located errors.
//! - [`auth_results`]: building `Authentication-Results` headers (RFC 8601).
//! - [`clamd`]: an async clamd client (streamed INSTREAM, IDSESSION, typed verdicts).
//! - [`av`]: clamav-milter's configuration and decisions over [`clamd`].
//! - [`dmarc`]: DMARC evaluation and enforcement, a drop-in for OpenDMARC (milter handler included).
//! - [`dkim`]: DKIM signing and verification with OpenDKIM's configuration, and its milter.
//! - [`filter`]: the one shape every filter has, the milter adapter over it, the verdict table.
//! - [`stack`]: mailstackd: every filter in one milter, its TOML configuration.
//! - [`notify`]: infected-mail notifications over SMTP from an msmtp-style file.
//! - [`privs`]: dropping root after binding sockets, refusing root without a user.

pub mod auth_results;
pub mod av;
pub mod clamd;
pub mod config;
pub mod dkim;
pub mod dmarc;
pub mod dns;
pub mod filter;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
mod ipnet;
pub mod metrics;
pub mod notify;
pub mod privs;
pub mod spf;
pub mod stack;
