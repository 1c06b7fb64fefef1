//! Shared state: the one place where records and counters that outlive a message live.
//!
//! A [`Store`] keeps
//! - **streams** of [`Record`]s: bytes with a time and a unique id, appended idempotently (a
//!   record whose id is already in the stream is not stored again, so a retried write is never
//!   counted twice), scanned by time range ([`Scan`]), trimmed by age and length ([`Trim`]);
//! - **key-value** entries with a time to live;
//! - **counters** with a time to live (rate limits);
//! - **leases** (`try_acquire(name, holder, ttl)` / [`Store::renew`] / [`Store::release`]), to
//!   elect the one node that sends DMARC reports among several.
//!
//! Two implementations: [`EmbeddedStore`] on local disk (the default, nothing to install;
//! [redb](https://www.redb.org), ACID with a checksummed copy-on-write B-tree and an fsync per
//! commit, so a crash or `kill -9` loses no committed record and duplicates none) and
//! [`RedisStore`], the store several filter nodes share. [`StoreConfig`] selects one
//! (`[store]` in `mailstackd.toml`, `MailstackStore` in `opendmarc.conf`).
//!
//! The filters never write to a store directly: they hand records to a [`BufferedWriter`],
//! which queues them in a bounded channel and writes them from a background task, so a store
//! that is down or slow never holds up mail (overflow is dropped, counted and logged) and what
//! was buffered is written when the store returns.
//!
//! DMARC evaluations are stored in the stream [`DMARC_STREAM`] as their OpenDMARC history
//! block ([`crate::dmarc::MessageRecord::to_history_block`]), through [`HistoryTee`].

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod embedded;
mod redis;
mod writer;

pub use embedded::{EmbeddedLimits, EmbeddedStore};
pub use redis::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RedisStore};
pub use writer::{BufferedWriter, DEFAULT_BUFFER, HistoryTee, WriterConfig, WriterStats};

/// The stream DMARC evaluation records go to.
pub const DMARC_STREAM: &str = "dmarc";
/// Longest stream, key, lease or holder name (bytes).
pub const MAX_NAME_LEN: usize = 128;
/// Longest record id (bytes).
pub const MAX_ID_LEN: usize = 128;
/// Largest record or value (bytes): a DMARC history block is well under 4 KiB.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most records one [`Store::scan`] returns; page on with [`Scan::after`].
pub const MAX_SCAN: usize = 10_000;
/// Most records one [`Store::append`] takes.
pub const MAX_APPEND: usize = 1_000;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A stream, key, lease or holder name that is empty, too long or not printable ASCII.
    #[error("invalid name {0:?}: expected 1..={MAX_NAME_LEN} printable ASCII bytes without spaces")]
    InvalidName(String),
    /// A record id that is empty, too long or not printable ASCII.
    #[error(
        "invalid record id {0:?}: expected 1..={MAX_ID_LEN} printable ASCII bytes without spaces"
    )]
    InvalidId(String),
    /// A record or value over [`MAX_VALUE_LEN`], or a batch over [`MAX_APPEND`].
    #[error("too large: {0}")]
    TooLarge(&'static str),
    /// The store holds as many entries of that kind as it may.
    #[error("store full: {0}")]
    Full(&'static str),
    /// The store could not be reached (connection refused, reset, timed out).
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store answered with an error or its data could not be read.
    #[error("store error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store's data is not what this version wrote.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// No tokio runtime to run the background writer on.
    #[error("no tokio runtime: the buffered writer must be started inside one")]
    NoRuntime,
}

/// One record of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unique within the stream: appending a record whose id is there already stores nothing.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The payload (a DMARC history block for [`DMARC_STREAM`]).
    pub data: Vec<u8>,
}

impl Record {
    /// A record with a fresh random id ([`new_id`]).
    pub fn new(time_ms: u64, data: impl Into<Vec<u8>>) -> Self {
        Self {
            id: new_id(),
            time_ms,
            data: data.into(),
        }
    }
}

/// A fresh record id: 128 random bits in hex (aws-lc's system random source).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // The system random source failed (it does not on Linux): fall back to time, pid and
        // a process-wide counter, which is still unique per process and per run.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return format!("{:x}-{:x}-{seq:x}", now_ms(), std::process::id());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Which records [`Store::scan`] returns: `from_ms <= time_ms < to_ms`, in (time, id) order,
/// at most `limit` (capped at [`MAX_SCAN`]), starting after the record `after` when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// First millisecond included.
    pub from_ms: u64,
    /// First millisecond excluded.
    pub to_ms: u64,
    /// Resume after this (time, id): the last record of the previous page.
    pub after: Option<(u64, String)>,
    /// Most records returned.
    pub limit: usize,
}

impl Scan {
    /// Records in `[from_ms, to_ms)`, a page of [`MAX_SCAN`].
    pub fn range(from_ms: u64, to_ms: u64) -> Self {
        Self {
            from_ms,
            to_ms,
            after: None,
            limit: MAX_SCAN,
        }
    }

    /// Everything.
    pub fn all() -> Self {
        Self::range(0, u64::MAX)
    }

    /// The next page after `last`.
    pub fn after(mut self, last: &Record) -> Self {
        self.after = Some((last.time_ms, last.id.clone()));
        self
    }

    /// At most `limit` records.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    fn effective_limit(&self) -> usize {
        self.limit.clamp(1, MAX_SCAN)
    }
}

/// What [`Store::trim`] removes: records older than `before_ms`, then the oldest beyond
/// `max_len`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trim {
    /// Remove records with `time_ms < before_ms`.
    pub before_ms: Option<u64>,
    /// Keep at most this many records (the newest).
    pub max_len: Option<u64>,
}

/// Where shared state lives. Object-safe: use it as `Arc<dyn Store>`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Appends `records` to `stream`; a record whose id the stream holds already is skipped.
    /// Returns how many were new. All or none are stored.
    async fn append(&self, stream: &str, records: &[Record]) -> Result<usize, StoreError>;
    /// The records `scan` selects, in (time, id) order.
    async fn scan(&self, stream: &str, scan: &Scan) -> Result<Vec<Record>, StoreError>;
    /// How many records `stream` holds.
    async fn len(&self, stream: &str) -> Result<u64, StoreError>;
    /// Removes what `trim` says; returns how many records went.
    async fn trim(&self, stream: &str, trim: Trim) -> Result<u64, StoreError>;

    /// Sets `key` to `value` for `ttl`.
    async fn kv_set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;
    /// The value of `key`, unless absent or expired.
    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes `key`; whether it was there.
    async fn kv_delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Adds `by` to the counter `key` and returns the new value. A counter that did not exist
    /// (or expired) starts at 0 and lives for `ttl` from now: a fixed-window rate limit.
    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64, StoreError>;

    /// Takes the lease `name` for `holder` for `ttl` if it is free or expired; `true` when
    /// `holder` holds it now (a holder that has it already gets it extended).
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Extends the lease `name` by `ttl` from now if `holder` holds it; `false` otherwise.
    async fn renew(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Gives the lease `name` up if `holder` holds it; whether it did.
    async fn release(&self, name: &str, holder: &str) -> Result<bool, StoreError>;
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

pub(crate) fn check_name(s: &str) -> Result<(), StoreError> {
    if printable(s, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(StoreError::InvalidName(
            s.chars().take(MAX_NAME_LEN).collect(),
        ))
    }
}

pub(crate) fn check_records(records: &[Record]) -> Result<(), StoreError> {
    if records.len() > MAX_APPEND {
        return Err(StoreError::TooLarge(
            "more records in one append than MAX_APPEND",
        ));
    }
    for r in records {
        if !printable(&r.id, MAX_ID_LEN) {
            return Err(StoreError::InvalidId(
                r.id.chars().take(MAX_ID_LEN).collect(),
            ));
        }
        if r.data.len() > MAX_VALUE_LEN {
            return Err(StoreError::TooLarge("record over MAX_VALUE_LEN"));
        }
    }
    Ok(())
}

pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Default retention of stream records (31 days: a daily report's window and then some).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);
/// Default cap of records per stream (2,000,000: about 2 GB of DMARC blocks at most).
pub const DEFAULT_MAX_RECORDS: u64 = 2_000_000;

/// Which store, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// [`EmbeddedStore`] in this file.
    Embedded {
        /// The database file.
        path: PathBuf,
    },
    /// [`RedisStore`] at this URL (`redis://host:port/db`, `redis+unix:///path`,
    /// `unix:///path`).
    Redis {
        /// The server.
        url: String,
    },
}

/// The store selection and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Which store.
    pub kind: StoreKind,
    /// Stream records older than this are removed (by the writer, every
    /// [`WriterConfig::trim_interval`]).
    pub retention: Duration,
    /// At most this many records per stream (the oldest go first).
    pub max_records: u64,
    /// The buffered writer's settings.
    pub writer: WriterConfig,
}

/// A store selection that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreSpecError {
    /// Neither a Redis URL nor an absolute path.
    #[error(
        "expected a Redis URL (redis://HOST[:PORT][/DB], redis+unix:///PATH, unix:///PATH) or an absolute path of the embedded database, found {0:?}"
    )]
    Unrecognized(String),
}

impl StoreConfig {
    /// A selection with the default bounds.
    pub fn new(kind: StoreKind) -> Self {
        Self {
            kind,
            retention: DEFAULT_RETENTION,
            max_records: DEFAULT_MAX_RECORDS,
            writer: WriterConfig::default(),
        }
    }

    /// `MailstackStore`'s value: a Redis URL, or the absolute path of an embedded database.
    pub fn from_spec(spec: &str) -> Result<Self, StoreSpecError> {
        let spec = spec.trim();
        let kind = if ["redis://", "redis+unix://", "unix://"]
            .iter()
            .any(|p| spec.starts_with(p))
        {
            StoreKind::Redis { url: spec.into() }
        } else if spec.starts_with('/') {
            StoreKind::Embedded { path: spec.into() }
        } else {
            return Err(StoreSpecError::Unrecognized(spec.into()));
        };
        Ok(Self::new(kind))
    }

    /// Opens the store (the embedded database file is created when missing; Redis is
    /// connected on first use).
    pub fn open(&self) -> Result<std::sync::Arc<dyn Store>, StoreError> {
        Ok(match &self.kind {
            StoreKind::Embedded { path } => std::sync::Arc::new(EmbeddedStore::open(
                path,
                EmbeddedLimits {
                    max_records_per_stream: self.max_records,
                    ..EmbeddedLimits::default()
                },
            )?),
            StoreKind::Redis { url } => std::sync::Arc::new(RedisStore::open(url)?),
        })
    }

    /// Opens the store and starts a [`BufferedWriter`] on it (inside a tokio runtime), which
    /// also trims every stream it writes to [`Self::retention`] and [`Self::max_records`].
    pub fn spawn_writer(&self) -> Result<BufferedWriter, StoreError> {
        let mut w = self.writer.clone();
        w.trim = Trim {
            before_ms: None,
            max_len: Some(self.max_records),
        };
        w.retention = Some(self.retention);
        BufferedWriter::spawn(self.open()?, w)
    }
}

impl std::fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            StoreKind::Embedded { path } => write!(f, "embedded {}", path.display())?,
            StoreKind::Redis { url } => write!(f, "redis {url}")?,
        }
        write!(
            f,
            " (retention {} s, at most {} records, buffer {})",
            self.retention.as_secs(),
            self.max_records,
            self.writer.capacity
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_selects_the_store() {
        assert_eq!(
            StoreConfig::from_spec("redis://127.0.0.1:6379/0")
                .unwrap()
                .kind,
            StoreKind::Redis {
                url: "redis://127.0.0.1:6379/0".into()
            }
        );
        assert_eq!(
            StoreConfig::from_spec("/var/lib/mailstack/store.redb")
                .unwrap()
                .kind,
            StoreKind::Embedded {
                path: "/var/lib/mailstack/store.redb".into()
            }
        );
        assert!(StoreConfig::from_spec("store.redb").is_err());
        assert!(StoreConfig::from_spec("http://x").is_err());
    }

    #[test]
    fn ids_are_unique_and_valid() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(printable(&a, MAX_ID_LEN) && a.len() == 32, "{a}");
        assert!(check_name("dmarc").is_ok());
        assert!(check_name("a b").is_err() && check_name("").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
