//! DKIM signing and verification (RFC 6376, RFC 8463), as a drop-in for OpenDKIM.
//!
//! - [`config`]: `opendkim.conf` with OpenDKIM's option names, defaults and data sets.

pub mod canon;
pub mod config;
pub mod dataset;
pub mod key;
pub mod sig;
pub mod sign;
pub mod verify;

pub use config::{Action, Actions, Canon, DkimConfig};
pub use dataset::{Dataset, PeerList};
