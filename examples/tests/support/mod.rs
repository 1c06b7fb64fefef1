//! Shared support for the interop tests in `examples/tests/`.
//!
//! - [`postfix`]: a private Postfix instance on loopback that delivers to an in-process SMTP
//!   sink, for tests that put our milters and policy servers behind the real MTA.
//! - [`milters`]: our example milters (and the libmilter C milter) as child processes.
//! - [`chain`]: milters and a policy server driven as Postfix chains them, and their
//!   results read back.
//! - [`clamd`]: a private clamd with an EICAR signature we write, and scripted stand-ins
//!   for its faults (hung, slow).
//! - [`http`]: GET against our metrics and health listener.
//! - [`procfs`]: peak RSS and ids of a child from `/proc/PID/status`.
//! - [`reports`]: DMARC aggregate reports read back by parsedmarc.
//!
//! Each test binary includes this with `mod support;` and uses what it needs.

#![allow(dead_code, unreachable_pub)]

pub mod chain;
pub mod clamd;
pub mod http;
pub mod milters;
pub mod postfix;
pub mod procfs;
pub mod reports;
