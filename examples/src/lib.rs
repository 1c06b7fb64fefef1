#![doc = include_str!("../../README.md")]
//!
//! ---
//!
//! This crate holds the example daemons and tools (in `src/bin/`, listed in
//! `examples/README.md`) and [`milter`], the small milter server and client they run on.

pub mod logging;
pub mod milter;
