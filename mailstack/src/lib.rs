//! mailstack: mail authentication and filtering for Postfix and any MTA that speaks milter.
//!
//! Built on [`milter_proto`] and [`policy_proto`]. Each filter is library code so it can be
//! embedded in other servers; the daemons in `examples/` are thin binaries over it.
//!
//! # Layout
//! - [`config`]: reading the configuration files of the tools we replace, with located errors.
//! - [`arc`]: ARC (RFC 8617) chain validation and sealing over the DKIM core.
//! - [`auth_results`]: building `Authentication-Results` headers (RFC 8601).
//! - [`clamd`]: an async clamd client (streamed INSTREAM, IDSESSION, typed scan replies).
//! - [`av`]: clamav-milter's configuration and decisions over [`clamd`].
//! - [`dmarc`]: DMARC evaluation and enforcement, a drop-in for OpenDMARC (milter handler included).
//! - [`dkim`]: DKIM signing and verification with OpenDKIM's configuration, and its milter.
//! - [`filter`]: the one shape every filter has, the milter adapter over it, the verdict table.
//! - [`stack`]: mailstackd: every filter in one milter, its TOML configuration.
//! - [`notify`]: infected-mail notifications over SMTP from an msmtp-style file.
//! - [`privs`]: dropping root after binding sockets, refusing root without a user.
//! - [`init`]: mailstack-init, PID 1 of the mail container (services, users, run dirs, logs,
//!   scheduled jobs, health).
//! - [`metrics`], [`health`]: Prometheus metrics and the `/healthz` endpoints every daemon serves.
//! - [`store`]: shared state (DMARC records, counters, leases) on local disk or in Redis.
//!
//! # Embedding the DKIM verifier and the DMARC evaluator
//!
//! Without an MTA: a message is signed, its key published in an in-memory zone (a real
//! server passes a [`dns::HickoryResolver`]), verified, and the DKIM results judged by the
//! sender domain's DMARC policy.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use mailstack::dkim::{
//!     Canon, DkimConfig, DkimResult, GenKeyOptions, PrivateKey, SignOptions, SigningKey,
//!     VerifyOptions, generate_key, sign_message, verify_message,
//! };
//! use mailstack::dmarc::{DkimInput, DmarcEvaluator, DmarcResult, Specification};
//! use mailstack::dns::{MemoryRecord, MemoryResolver};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The sender's key, and what its DNS publishes.
//! let generated = generate_key(&GenKeyOptions {
//!     domain: "example.com".into(),
//!     selector: "sel".into(),
//!     ..GenKeyOptions::default()
//! })?;
//! let private = PrivateKey::parse(generated.private_pem.as_bytes())?;
//! let mut zone = MemoryResolver::new();
//! zone.add(
//!     "sel._domainkey.example.com",
//!     MemoryRecord::Txt(private.public_record().to_string().into_bytes()),
//! )
//! .add("_dmarc.example.com", MemoryRecord::Txt(b"v=DMARC1; p=reject".to_vec()));
//! let dns = Arc::new(zone);
//!
//! // Sign.
//! let msg = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nHello.\r\n";
//! let signer = SigningKey {
//!     domain: Some("example.com".into()),
//!     selector: "sel".into(),
//!     key: private,
//! };
//! let mut opts = SignOptions::from_config(&DkimConfig::default());
//! opts.canon = (Canon::Relaxed, Canon::Relaxed);
//! let now = 1_700_000_000;
//! let values = sign_message(&[(&signer, "example.com")], &opts, msg, false, now)?;
//! let signed = [b"DKIM-Signature:", values[0].as_bytes(), b"\r\n", msg].concat();
//!
//! // Verify, then judge with DMARC.
//! let config = DkimConfig::default();
//! let results = verify_message(&signed, dns.clone(), VerifyOptions::from_config(&config), now).await;
//! assert_eq!(results[0].result, DkimResult::Pass);
//! let dkim: Vec<DkimInput> = results.into_iter().map(DkimInput::from).collect();
//! let dmarc = DmarcEvaluator::new(dns, Specification::Rfc7489, Duration::from_secs(5));
//! let verdict = dmarc.evaluate("example.com", None, &dkim).await;
//! assert_eq!(verdict.result, DmarcResult::Pass);
//! assert!(verdict.dkim_aligned);
//! # Ok(())
//! # }
//! ```
//!
//! A milter of your own is a [`filter::Filter`] served by [`filter::Milter`]; see the
//! [`filter`] module's example.

pub mod arc;
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
pub mod init;
mod ipnet;
pub mod metrics;
pub mod notify;
pub mod privs;
pub mod spf;
pub mod stack;
pub mod store;
