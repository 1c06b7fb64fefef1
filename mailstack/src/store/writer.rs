//! [`BufferedWriter`]: how filters write to a [`Store`] without ever waiting for it.
//!
//! [`BufferedWriter::submit`] puts a record in a bounded channel and returns at once; a
//! background task takes records out in batches and appends them. When the store fails or
//! is slower than [`WriterConfig::write_timeout`], the task keeps the batch and tries again
//! with exponential backoff (the same ids, so a write that did land but whose answer was lost
//! is not stored twice), while new records queue up to [`WriterConfig::capacity`]; beyond
//! that they are dropped, counted in [`WriterStats::dropped`] and logged at most once per
//! [`WriterConfig::log_interval`]. Mail flow never depends on the store.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{DMARC_STREAM, Record, Store, StoreError, Trim, new_id, now_ms};
use crate::dmarc::history::{HistoryFile, HistoryStore, MessageRecord};

/// Default buffer (10,000 records: minutes of a busy MX's DMARC records, about 20 MB).
pub const DEFAULT_BUFFER: usize = 10_000;

/// How the [`BufferedWriter`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterConfig {
    /// Records buffered while the store is slow or down ([`DEFAULT_BUFFER`]).
    pub capacity: usize,
    /// Records per append (256, within [`super::MAX_APPEND`]).
    pub batch: usize,
    /// One append may take this long before it counts as failed (5 s).
    pub write_timeout: Duration,
    /// First wait after a failure (100 ms), doubled up to `max_backoff` (10 s).
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// How often the streams written are trimmed (10 min).
    pub trim_interval: Duration,
    /// Records older than this are trimmed (`None`: by length only).
    pub retention: Option<Duration>,
    /// The length bound of each trim (`before_ms` is computed from `retention`).
    pub trim: Trim,
    /// At most one warning per this interval about drops or failures (10 s).
    pub log_interval: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_BUFFER,
            batch: 256,
            write_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            trim_interval: Duration::from_secs(600),
            retention: None,
            trim: Trim::default(),
            log_interval: Duration::from_secs(10),
        }
    }
}

/// What the writer did so far (counters since start), for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Records handed to [`BufferedWriter::submit`].
    pub submitted: u64,
    /// Records the store acknowledged.
    pub stored: u64,
    /// Of those, records the store had already (a retry of a write that had landed).
    pub duplicates: u64,
    /// Records dropped because the buffer was full.
    pub dropped: u64,
    /// Appends that failed or timed out (each retried).
    pub failures: u64,
    /// Records waiting (buffered or being written).
    pub pending: u64,
}

#[derive(Debug, Default)]
struct Shared {
    submitted: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
    dropped_unlogged: AtomicU64,
    last_drop_log_ms: AtomicU64,
}

impl Shared {
    fn stats(&self) -> WriterStats {
        let submitted = self.submitted.load(Ordering::Relaxed);
        let stored = self.stored.load(Ordering::Relaxed);
        let dropped = self.dropped.load(Ordering::Relaxed);
        WriterStats {
            submitted,
            stored,
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dropped,
            failures: self.failures.load(Ordering::Relaxed),
            pending: submitted.saturating_sub(stored + dropped),
        }
    }
}

/// The buffered writer (see the module docs). Cheap to clone; the task stops when every
/// clone is dropped and the buffer is written.
#[derive(Debug, Clone)]
pub struct BufferedWriter {
    tx: mpsc::Sender<(Arc<str>, Record)>,
    shared: Arc<Shared>,
    log_interval_ms: u64,
    capacity: usize,
}

impl BufferedWriter {
    /// Starts the background task on the current tokio runtime.
    pub fn spawn(store: Arc<dyn Store>, cfg: WriterConfig) -> Result<Self, StoreError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
        let capacity = cfg.capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared::default());
        let w = Self {
            tx,
            shared: shared.clone(),
            log_interval_ms: super::ttl_ms(cfg.log_interval),
            capacity,
        };
        handle.spawn(run(store, cfg, rx, shared));
        Ok(w)
    }

    /// Queues `record` for `stream`; never waits. `false` when it was dropped (buffer full,
    /// or the task gone).
    pub fn submit(&self, stream: &str, record: Record) -> bool {
        let s = &self.shared;
        s.submitted.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send((Arc::from(stream), record)).is_ok() {
            return true;
        }
        s.dropped.fetch_add(1, Ordering::Relaxed);
        let unlogged = s.dropped_unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = s.last_drop_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.log_interval_ms
            && s.last_drop_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            s.dropped_unlogged.fetch_sub(unlogged, Ordering::Relaxed);
            tracing::warn!(
                "store: buffer of {} records full (store down or slow): {unlogged} record(s) dropped, {} in all",
                self.capacity,
                s.dropped.load(Ordering::Relaxed)
            );
        }
        false
    }

    /// The counters so far.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    /// Logs [`Self::stats`] every `every` while they change (a task on the current runtime,
    /// ending with the writer's last clone).
    pub fn log_stats_every(&self, every: Duration) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut last = WriterStats::default();
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let st = shared.stats();
                if st != last {
                    tracing::info!(
                        "store: {} submitted, {} stored ({} already there), {} dropped, {} pending, {} failed attempts",
                        st.submitted,
                        st.stored,
                        st.duplicates,
                        st.dropped,
                        st.pending,
                        st.failures
                    );
                    last = st;
                }
            }
        });
    }

    /// Waits until nothing is pending, at most `timeout`; whether everything was written.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stats().pending == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Most distinct streams the writer trims (more are written, but not trimmed by it).
const MAX_TRIMMED_STREAMS: usize = 64;

async fn run(
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    mut rx: mpsc::Receiver<(Arc<str>, Record)>,
    shared: Arc<Shared>,
) {
    let batch_max = cfg.batch.clamp(1, super::MAX_APPEND);
    let mut streams: BTreeSet<Arc<str>> = BTreeSet::new();
    let mut next_trim = Instant::now() + cfg.trim_interval;
    let mut batch = Vec::with_capacity(batch_max);
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            () = tokio::time::sleep_until(next_trim) => {
                trim(&*store, &cfg, &streams).await;
                next_trim = Instant::now() + cfg.trim_interval;
                continue;
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        for (s, _) in &batch {
            if streams.len() < MAX_TRIMMED_STREAMS && !streams.contains(s) {
                streams.insert(s.clone());
            }
        }
        write(&*store, &cfg, &shared, &batch).await;
        batch.clear();
    }
}

/// Appends `batch` (grouped by consecutive stream), retrying until the store takes it.
async fn write(
    store: &dyn Store,
    cfg: &WriterConfig,
    shared: &Shared,
    batch: &[(Arc<str>, Record)],
) {
    let mut backoff = cfg.min_backoff;
    let mut failed_attempts = 0u64;
    let mut last_log: Option<Instant> = None;
    let mut rest = batch;
    while let Some((stream, _)) = rest.first() {
        let n = rest.iter().take_while(|(s, _)| s == stream).count();
        let recs: Vec<Record> = rest[..n].iter().map(|(_, r)| r.clone()).collect();
        let outcome = tokio::time::timeout(cfg.write_timeout, store.append(stream, &recs)).await;
        match outcome {
            Ok(Ok(new)) => {
                shared.stored.fetch_add(n as u64, Ordering::Relaxed);
                shared
                    .duplicates
                    .fetch_add(n.saturating_sub(new) as u64, Ordering::Relaxed);
                rest = &rest[n..];
                if failed_attempts > 0 {
                    tracing::info!(
                        "store: writing again after {failed_attempts} failed attempt(s)"
                    );
                    failed_attempts = 0;
                }
                backoff = cfg.min_backoff;
            }
            Ok(Err(
                StoreError::InvalidName(_) | StoreError::InvalidId(_) | StoreError::TooLarge(_),
            )) => {
                // Never accepted however often it is retried: count it dropped.
                tracing::warn!("store: {n} record(s) for stream {stream} refused as invalid");
                shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
                rest = &rest[n..];
            }
            other => {
                failed_attempts += 1;
                shared.failures.fetch_add(1, Ordering::Relaxed);
                if last_log.is_none_or(|t| t.elapsed() >= cfg.log_interval) {
                    last_log = Some(Instant::now());
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", cfg.write_timeout),
                    };
                    tracing::warn!(
                        "store: append failed ({why}); {} record(s) held, retrying",
                        rest.len()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.max_backoff);
            }
        }
    }
}

async fn trim(store: &dyn Store, cfg: &WriterConfig, streams: &BTreeSet<Arc<str>>) {
    let before_ms = cfg
        .retention
        .map(|r| now_ms().saturating_sub(super::ttl_ms(r)));
    let t = Trim {
        before_ms,
        ..cfg.trim
    };
    if t.before_ms.is_none() && t.max_len.is_none() {
        return;
    }
    for s in streams {
        match tokio::time::timeout(cfg.write_timeout, store.trim(s, t)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!("store: {n} old record(s) of {s} removed"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("store: trimming {s}: {e}"),
            Err(_) => tracing::warn!("store: trimming {s}: no answer"),
        }
    }
}

/// A [`HistoryStore`] that writes DMARC records to the `HistoryFile` (when configured, as
/// before) and hands each, as its history block, to a [`BufferedWriter`] for the stream
/// [`DMARC_STREAM`] under a fresh id.
#[derive(Debug)]
pub struct HistoryTee {
    file: Option<Arc<dyn HistoryStore>>,
    writer: BufferedWriter,
}

impl HistoryTee {
    /// Writes to `file` (if any) and `writer`.
    pub fn new(file: Option<Arc<dyn HistoryStore>>, writer: BufferedWriter) -> Self {
        Self { file, writer }
    }

    /// The `HistoryFile` of `cfg` (if set) and `writer`.
    pub fn for_config(cfg: &crate::dmarc::DmarcConfig, writer: BufferedWriter) -> Self {
        let file = cfg
            .history_file
            .as_ref()
            .map(|p| Arc::new(HistoryFile::new(p.clone())) as Arc<dyn HistoryStore>);
        Self::new(file, writer)
    }

    /// The writer.
    pub fn writer(&self) -> &BufferedWriter {
        &self.writer
    }
}

impl HistoryStore for HistoryTee {
    fn record(&self, record: &MessageRecord) -> std::io::Result<()> {
        let rec = Record {
            id: new_id(),
            time_ms: record.received.saturating_mul(1000),
            data: record.to_history_block().into_bytes(),
        };
        // Dropped records are counted and logged by the writer; mail goes on either way.
        let _ = self.writer.submit(DMARC_STREAM, rec);
        match &self.file {
            Some(f) => f.record(record),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EmbeddedLimits, EmbeddedStore, Scan};
    use std::sync::atomic::AtomicBool;

    /// A store that fails while `down`, and whose first append after coming back "loses its
    /// answer" once (it stores, then reports a failure), as a connection reset would.
    #[derive(Debug)]
    struct Flaky {
        inner: EmbeddedStore,
        down: AtomicBool,
        lose_answer: AtomicBool,
    }

    fn unavailable() -> StoreError {
        StoreError::Unavailable(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    #[async_trait::async_trait]
    impl Store for Flaky {
        async fn append(&self, s: &str, r: &[Record]) -> Result<usize, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(unavailable());
            }
            let n = self.inner.append(s, r).await?;
            if self.lose_answer.swap(false, Ordering::SeqCst) {
                return Err(unavailable());
            }
            Ok(n)
        }
        async fn scan(&self, s: &str, q: &Scan) -> Result<Vec<Record>, StoreError> {
            self.inner.scan(s, q).await
        }
        async fn len(&self, s: &str) -> Result<u64, StoreError> {
            self.inner.len(s).await
        }
        async fn trim(&self, s: &str, t: Trim) -> Result<u64, StoreError> {
            self.inner.trim(s, t).await
        }
        async fn kv_set(&self, k: &str, v: &[u8], t: Duration) -> Result<(), StoreError> {
            self.inner.kv_set(k, v, t).await
        }
        async fn kv_get(&self, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.kv_get(k).await
        }
        async fn kv_delete(&self, k: &str) -> Result<bool, StoreError> {
            self.inner.kv_delete(k).await
        }
        async fn incr(&self, k: &str, by: i64, t: Duration) -> Result<i64, StoreError> {
            self.inner.incr(k, by, t).await
        }
        async fn try_acquire(&self, n: &str, h: &str, t: Duration) -> Result<bool, StoreError> {
            self.inner.try_acquire(n, h, t).await
        }
        async fn renew(&self, n: &str, h: &str, t: Duration) -> Result<bool, StoreError> {
            self.inner.renew(n, h, t).await
        }
        async fn release(&self, n: &str, h: &str) -> Result<bool, StoreError> {
            self.inner.release(n, h).await
        }
    }

    #[tokio::test]
    async fn outage_buffers_drops_beyond_the_bound_and_catches_up_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky {
            inner: EmbeddedStore::open(&dir.path().join("s"), EmbeddedLimits::default()).unwrap(),
            down: AtomicBool::new(true),
            lose_answer: AtomicBool::new(true),
        });
        let cfg = WriterConfig {
            capacity: 50,
            batch: 10,
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ..WriterConfig::default()
        };
        let w = BufferedWriter::spawn(store.clone(), cfg).unwrap();
        let mut accepted = Vec::new();
        let started = std::time::Instant::now();
        for i in 0..200u64 {
            let r = Record::new(i, format!("r{i}"));
            if w.submit("dmarc", r.clone()) {
                accepted.push(r);
            }
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "submit never waits"
        );
        let st = w.stats();
        // 50 in the channel plus at most one batch of 10 taken out by the task.
        assert!((50..=60).contains(&accepted.len()), "{}", accepted.len());
        assert_eq!(st.dropped, 200 - accepted.len() as u64);
        assert!(
            !w.flush(Duration::from_millis(200)).await,
            "store still down"
        );
        assert!(w.stats().failures > 0);
        store.down.store(false, Ordering::SeqCst);
        assert!(w.flush(Duration::from_secs(10)).await, "{:?}", w.stats());
        let st = w.stats();
        assert_eq!(st.stored, accepted.len() as u64);
        assert_eq!(st.duplicates, 10, "the lost answer's batch was retried");
        let got = store.scan("dmarc", &Scan::all()).await.unwrap();
        let mut want = accepted.clone();
        want.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
        assert_eq!(got, want, "every accepted record once, nothing else");
    }

    #[tokio::test]
    async fn history_tee_stores_the_history_block_and_keeps_the_file() {
        use crate::dmarc::eval::DmarcResult;
        use crate::dmarc::record::Policy;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            EmbeddedStore::open(&dir.path().join("s"), EmbeddedLimits::default()).unwrap(),
        );
        let w = BufferedWriter::spawn(store.clone(), WriterConfig::default()).unwrap();
        let file = dir.path().join("history");
        let cfg = crate::dmarc::DmarcConfig::parse(
            std::path::Path::new("/etc/opendmarc.conf"),
            &format!("HistoryFile {}\n", file.display()),
        )
        .unwrap();
        let tee = HistoryTee::for_config(&cfg, w.clone());
        let rec = MessageRecord {
            job_id: "Q1".into(),
            reporter: "mx.example".into(),
            received: 1_764_000_000,
            source_ip: Some("192.0.2.1".parse().unwrap()),
            header_from: "sender.example".into(),
            envelope_from: "sender.example".into(),
            dkim: Vec::new(),
            spf: None,
            policy: None,
            result: DmarcResult::None,
            policy_in_force: Policy::None,
            dkim_aligned: false,
            spf_aligned: false,
            disposition: Policy::None,
            spf_domain: String::new(),
            spf_scope: None,
            overrides: Vec::new(),
            is_report: false,
        };
        tee.record(&rec).unwrap();
        tee.record(&rec).unwrap();
        assert!(w.flush(Duration::from_secs(5)).await);
        let got = store.scan(DMARC_STREAM, &Scan::all()).await.unwrap();
        assert_eq!(got.len(), 2, "two evaluations, two records");
        assert_ne!(got[0].id, got[1].id);
        assert_eq!(got[0].time_ms, 1_764_000_000_000);
        assert_eq!(got[0].data, rec.to_history_block().into_bytes());
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            rec.to_history_block().repeat(2),
            "HistoryFile as before"
        );
    }

    #[test]
    fn spawn_outside_a_runtime_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s"), EmbeddedLimits::default()).unwrap();
        assert!(matches!(
            BufferedWriter::spawn(Arc::new(s), WriterConfig::default()),
            Err(StoreError::NoRuntime)
        ));
    }
}
