//! [`EmbeddedStore`]: the store on local disk, in one [redb](https://www.redb.org) file.
//!
//! Why redb: it is pure Rust (nothing to install, no C library to build), ACID with
//! serializable write transactions, and its commits are durable by default (a copy-on-write
//! B-tree whose new root is made live only after the pages it points to are on disk, with
//! checksums to detect a torn write): a crash or `kill -9` in the middle of a write leaves the
//! last committed state, so a record acknowledged before the crash is there after it, and
//! one that was not acknowledged is either wholly there or not at all. It is actively
//! maintained and has a stable file format since 2.0. (sled is unmaintained in practice,
//! RocksDB and LMDB need a C/C++ library, SQLite would bring a C library and SQL for what is
//! a handful of ordered maps.)
//!
//! Layout: per stream `s:NAME` ((time, id) → bytes) and `i:NAME` (id → time) for the
//! idempotent append; `kv` (key → (expiry, bytes)), `counters` (key → (expiry, value)),
//! `leases` (name → (expiry, holder)). Expiry times are wall-clock milliseconds.
//!
//! redb takes a file lock: one process opens the file at a time (several nodes share state
//! through [`super::RedisStore`]).

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    MAX_VALUE_LEN, Record, Scan, Store, StoreError, Trim, check_name, check_records, now_ms, ttl_ms,
};

const KV: TableDefinition<'static, &str, (u64, &[u8])> = TableDefinition::new("kv");
const COUNTERS: TableDefinition<'static, &str, (u64, i64)> = TableDefinition::new("counters");
const LEASES: TableDefinition<'static, &str, (u64, &str)> = TableDefinition::new("leases");

/// Bounds of an [`EmbeddedStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmbeddedLimits {
    /// Records kept per stream: an append beyond it removes the oldest
    /// ([`super::DEFAULT_MAX_RECORDS`]).
    pub max_records_per_stream: u64,
    /// Live entries per table of key-value entries, counters and leases (100,000): expired
    /// ones are purged when it is reached, and a new key beyond it is refused with
    /// [`StoreError::Full`].
    pub max_entries: u64,
}

impl Default for EmbeddedLimits {
    fn default() -> Self {
        Self {
            max_records_per_stream: super::DEFAULT_MAX_RECORDS,
            max_entries: 100_000,
        }
    }
}

/// The store on local disk (see the module docs).
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    limits: EmbeddedLimits,
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(Box::new(e.into()))
}

type Records<'a> = TableDefinition<'a, (u64, &'static str), &'static [u8]>;
type Ids<'a> = TableDefinition<'a, &'static str, u64>;

fn tables(stream: &str) -> (String, String) {
    (format!("s:{stream}"), format!("i:{stream}"))
}

/// Removes the oldest record of an open stream table pair; whether there was one.
fn pop_oldest(
    recs: &mut redb::Table<'_, (u64, &'static str), &'static [u8]>,
    ids: &mut redb::Table<'_, &'static str, u64>,
    before_ms: Option<u64>,
) -> Result<bool, StoreError> {
    let id = match recs.first().map_err(backend)? {
        Some((k, _)) => {
            let (t, id) = k.value();
            if before_ms.is_some_and(|b| t >= b) {
                return Ok(false);
            }
            (t, id.to_owned())
        }
        None => return Ok(false),
    };
    recs.remove((id.0, id.1.as_str())).map_err(backend)?;
    ids.remove(id.1.as_str()).map_err(backend)?;
    Ok(true)
}

impl EmbeddedStore {
    /// Opens (creating when missing) the database at `path`. Fails when another process has
    /// it open.
    pub fn open(path: &Path, limits: EmbeddedLimits) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        Ok(Self {
            db: Arc::new(db),
            limits,
        })
    }

    /// Its bounds.
    pub fn limits(&self) -> EmbeddedLimits {
        self.limits
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, EmbeddedLimits) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let limits = self.limits;
        tokio::task::spawn_blocking(move || f(&db, limits))
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
    }
}

/// Purges expired entries of `table` when it holds `max` or more and `key` is new; refuses
/// when it is still full.
fn make_room<V: redb::Value + 'static>(
    t: &mut redb::Table<'_, &'static str, V>,
    key: &str,
    max: u64,
    expiry: impl Fn(V::SelfType<'_>) -> u64,
    what: &'static str,
) -> Result<(), StoreError> {
    if t.len().map_err(backend)? < max || t.get(key).map_err(backend)?.is_some() {
        return Ok(());
    }
    let now = now_ms();
    t.retain(|_, v| expiry(v) > now).map_err(backend)?;
    if t.len().map_err(backend)? >= max {
        return Err(StoreError::Full(what));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn append(&self, stream: &str, records: &[Record]) -> Result<usize, StoreError> {
        check_name(stream)?;
        check_records(records)?;
        let (sn, inn) = tables(stream);
        let records = records.to_vec();
        self.run(move |db, limits| {
            let tx = db.begin_write().map_err(backend)?;
            let mut new = 0;
            {
                let mut recs = tx.open_table(Records::new(&sn)).map_err(backend)?;
                let mut ids = tx.open_table(Ids::new(&inn)).map_err(backend)?;
                for r in &records {
                    if ids.get(r.id.as_str()).map_err(backend)?.is_some() {
                        continue;
                    }
                    ids.insert(r.id.as_str(), r.time_ms).map_err(backend)?;
                    recs.insert((r.time_ms, r.id.as_str()), r.data.as_slice())
                        .map_err(backend)?;
                    new += 1;
                }
                while recs.len().map_err(backend)? > limits.max_records_per_stream {
                    if !pop_oldest(&mut recs, &mut ids, None)? {
                        break;
                    }
                }
            }
            tx.commit().map_err(backend)?;
            Ok(new)
        })
        .await
    }

    async fn scan(&self, stream: &str, scan: &Scan) -> Result<Vec<Record>, StoreError> {
        check_name(stream)?;
        let (sn, _) = tables(stream);
        let scan = scan.clone();
        self.run(move |db, _| {
            let tx = db.begin_read().map_err(backend)?;
            let recs = match tx.open_table(Records::new(&sn)) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(backend(e)),
            };
            let start = match &scan.after {
                Some((t, id)) if *t >= scan.from_ms => Bound::Excluded((*t, id.as_str())),
                _ => Bound::Included((scan.from_ms, "")),
            };
            let end = Bound::Excluded((scan.to_ms, ""));
            let mut out = Vec::new();
            if let (Bound::Excluded(s) | Bound::Included(s), Bound::Excluded(e)) = (&start, &end)
                && s >= e
            {
                return Ok(out);
            }
            for item in recs.range((start, end)).map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let (time_ms, id) = k.value();
                out.push(Record {
                    id: id.to_owned(),
                    time_ms,
                    data: v.value().to_vec(),
                });
                if out.len() >= scan.effective_limit() {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn len(&self, stream: &str) -> Result<u64, StoreError> {
        check_name(stream)?;
        let (sn, _) = tables(stream);
        self.run(move |db, _| {
            let tx = db.begin_read().map_err(backend)?;
            match tx.open_table(Records::new(&sn)) {
                Ok(t) => t.len().map_err(backend),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn trim(&self, stream: &str, trim: Trim) -> Result<u64, StoreError> {
        check_name(stream)?;
        let (sn, inn) = tables(stream);
        self.run(move |db, _| {
            let tx = db.begin_write().map_err(backend)?;
            let mut removed = 0;
            {
                let mut recs = tx.open_table(Records::new(&sn)).map_err(backend)?;
                let mut ids = tx.open_table(Ids::new(&inn)).map_err(backend)?;
                if let Some(before) = trim.before_ms {
                    while pop_oldest(&mut recs, &mut ids, Some(before))? {
                        removed += 1;
                    }
                }
                if let Some(max) = trim.max_len {
                    while recs.len().map_err(backend)? > max
                        && pop_oldest(&mut recs, &mut ids, None)?
                    {
                        removed += 1;
                    }
                }
            }
            tx.commit().map_err(backend)?;
            Ok(removed)
        })
        .await
    }

    async fn kv_set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        check_name(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(StoreError::TooLarge("value over MAX_VALUE_LEN"));
        }
        let (key, value) = (key.to_owned(), value.to_vec());
        self.run(move |db, limits| {
            let tx = db.begin_write().map_err(backend)?;
            {
                let mut t = tx.open_table(KV).map_err(backend)?;
                make_room(
                    &mut t,
                    &key,
                    limits.max_entries,
                    |v| v.0,
                    "key-value entries",
                )?;
                let exp = now_ms().saturating_add(ttl_ms(ttl));
                t.insert(key.as_str(), (exp, value.as_slice()))
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_name(key)?;
        let key = key.to_owned();
        self.run(move |db, _| {
            let tx = db.begin_read().map_err(backend)?;
            let t = match tx.open_table(KV) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(backend(e)),
            };
            let v = t.get(key.as_str()).map_err(backend)?;
            Ok(v.and_then(|g| {
                let (exp, data) = g.value();
                (exp > now_ms()).then(|| data.to_vec())
            }))
        })
        .await
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, StoreError> {
        check_name(key)?;
        let key = key.to_owned();
        self.run(move |db, _| {
            let tx = db.begin_write().map_err(backend)?;
            let live = {
                let mut t = tx.open_table(KV).map_err(backend)?;
                let old = t.remove(key.as_str()).map_err(backend)?;
                old.is_some_and(|g| g.value().0 > now_ms())
            };
            tx.commit().map_err(backend)?;
            Ok(live)
        })
        .await
    }

    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64, StoreError> {
        check_name(key)?;
        let key = key.to_owned();
        self.run(move |db, limits| {
            let tx = db.begin_write().map_err(backend)?;
            let value = {
                let mut t = tx.open_table(COUNTERS).map_err(backend)?;
                make_room(&mut t, &key, limits.max_entries, |v| v.0, "counters")?;
                let now = now_ms();
                let current = t
                    .get(key.as_str())
                    .map_err(backend)?
                    .map(|g| g.value())
                    .filter(|(exp, _)| *exp > now);
                let (exp, value) = match current {
                    Some((exp, v)) => (exp, v.saturating_add(by)),
                    None => (now.saturating_add(ttl_ms(ttl)), by),
                };
                t.insert(key.as_str(), (exp, value)).map_err(backend)?;
                value
            };
            tx.commit().map_err(backend)?;
            Ok(value)
        })
        .await
    }

    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        lease_op(self, name, holder, Some(ttl), LeaseOp::Acquire).await
    }

    async fn renew(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        lease_op(self, name, holder, Some(ttl), LeaseOp::Renew).await
    }

    async fn release(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        lease_op(self, name, holder, None, LeaseOp::Release).await
    }
}

#[derive(Clone, Copy)]
enum LeaseOp {
    Acquire,
    Renew,
    Release,
}

async fn lease_op(
    s: &EmbeddedStore,
    name: &str,
    holder: &str,
    ttl: Option<Duration>,
    op: LeaseOp,
) -> Result<bool, StoreError> {
    check_name(name)?;
    check_name(holder)?;
    let (name, holder) = (name.to_owned(), holder.to_owned());
    s.run(move |db, limits| {
        let tx = db.begin_write().map_err(backend)?;
        let ok = {
            let mut t = tx.open_table(LEASES).map_err(backend)?;
            let now = now_ms();
            let current = t
                .get(name.as_str())
                .map_err(backend)?
                .map(|g| {
                    let (exp, h) = g.value();
                    (exp, h.to_owned())
                })
                .filter(|(exp, _)| *exp > now);
            let mine = current.as_ref().is_some_and(|(_, h)| *h == holder);
            let exp = now.saturating_add(ttl.map_or(0, ttl_ms));
            match op {
                LeaseOp::Acquire if current.is_none() || mine => {
                    make_room(&mut t, &name, limits.max_entries, |v| v.0, "leases")?;
                    t.insert(name.as_str(), (exp, holder.as_str()))
                        .map_err(backend)?;
                    true
                }
                LeaseOp::Renew if mine => {
                    t.insert(name.as_str(), (exp, holder.as_str()))
                        .map_err(backend)?;
                    true
                }
                LeaseOp::Release if mine => {
                    t.remove(name.as_str()).map_err(backend)?;
                    true
                }
                _ => false,
            }
        };
        tx.commit().map_err(backend)?;
        Ok(ok)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, t: u64) -> Record {
        Record {
            id: id.into(),
            time_ms: t,
            data: format!("data {id}").into_bytes(),
        }
    }

    fn ids(v: &[Record]) -> Vec<&str> {
        v.iter().map(|r| r.id.as_str()).collect()
    }

    #[tokio::test]
    async fn append_is_idempotent_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = EmbeddedStore::open(&path, EmbeddedLimits::default()).unwrap();
            assert_eq!(
                s.append("dmarc", &[rec("a", 10), rec("b", 5)])
                    .await
                    .unwrap(),
                2
            );
            // A retry of a and a new c: only c is new.
            assert_eq!(
                s.append("dmarc", &[rec("a", 10), rec("c", 20)])
                    .await
                    .unwrap(),
                1
            );
            // The same id with another time is still the same record.
            assert_eq!(s.append("dmarc", &[rec("b", 99)]).await.unwrap(), 0);
            assert_eq!(s.len("dmarc").await.unwrap(), 3);
            assert_eq!(s.len("other").await.unwrap(), 0);
        }
        let s = EmbeddedStore::open(&path, EmbeddedLimits::default()).unwrap();
        let all = s.scan("dmarc", &Scan::all()).await.unwrap();
        assert_eq!(ids(&all), ["b", "a", "c"]);
        assert_eq!(all[1], rec("a", 10));
        assert_eq!(s.append("dmarc", &[rec("c", 20)]).await.unwrap(), 0);
        assert_eq!(s.len("dmarc").await.unwrap(), 3);
    }

    #[tokio::test]
    async fn scan_by_range_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s"), EmbeddedLimits::default()).unwrap();
        let recs: Vec<Record> = (0..10)
            .map(|i| rec(&format!("r{i}"), 100 + i / 2))
            .collect();
        assert_eq!(s.append("x", &recs).await.unwrap(), 10);
        let mid = s.scan("x", &Scan::range(101, 103)).await.unwrap();
        assert_eq!(ids(&mid), ["r2", "r3", "r4", "r5"]);
        // Pages of 3 across records sharing a millisecond.
        let mut seen = Vec::new();
        let mut scan = Scan::all().limit(3);
        loop {
            let page = s.scan("x", &scan).await.unwrap();
            let Some(last) = page.last() else { break };
            scan = scan.after(last);
            seen.extend(page.iter().map(|r| r.id.clone()));
        }
        assert_eq!(seen, recs.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
        assert!(
            s.scan("x", &Scan::range(200, 100))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn expiry_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let limits = EmbeddedLimits {
            max_records_per_stream: 5,
            ..EmbeddedLimits::default()
        };
        let s = EmbeddedStore::open(&dir.path().join("s"), limits).unwrap();
        let recs: Vec<Record> = (0..8).map(|i| rec(&format!("r{i}"), i)).collect();
        s.append("x", &recs).await.unwrap();
        // Capped at 5 on append: the oldest went.
        assert_eq!(
            ids(&s.scan("x", &Scan::all()).await.unwrap()),
            ["r3", "r4", "r5", "r6", "r7"]
        );
        let trim = Trim {
            before_ms: Some(5),
            max_len: None,
        };
        assert_eq!(s.trim("x", trim).await.unwrap(), 2);
        let trim = Trim {
            before_ms: None,
            max_len: Some(2),
        };
        assert_eq!(s.trim("x", trim).await.unwrap(), 1);
        assert_eq!(ids(&s.scan("x", &Scan::all()).await.unwrap()), ["r6", "r7"]);
        // A removed id can be stored again (idempotency holds while the record is kept).
        assert_eq!(s.append("x", &[rec("r3", 9)]).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn kv_counters_and_leases_expire() {
        let dir = tempfile::tempdir().unwrap();
        let limits = EmbeddedLimits {
            max_entries: 2,
            ..EmbeddedLimits::default()
        };
        let s = EmbeddedStore::open(&dir.path().join("s"), limits).unwrap();
        let short = Duration::from_millis(200);
        s.kv_set("k", b"v", short).await.unwrap();
        s.kv_set("long", b"w", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(s.kv_get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert!(matches!(
            s.kv_set("third", b"x", short).await,
            Err(StoreError::Full(_))
        ));
        assert_eq!(s.incr("c", 2, short).await.unwrap(), 2);
        assert_eq!(s.incr("c", 3, short).await.unwrap(), 5);
        assert!(s.try_acquire("reporter", "node-a", short).await.unwrap());
        assert!(!s.try_acquire("reporter", "node-b", short).await.unwrap());
        assert!(!s.renew("reporter", "node-b", short).await.unwrap());
        assert!(s.renew("reporter", "node-a", short).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(s.kv_get("k").await.unwrap(), None);
        // The expired entry made room.
        s.kv_set("third", b"x", short).await.unwrap();
        assert_eq!(s.incr("c", 1, short).await.unwrap(), 1, "a new window");
        assert!(s.try_acquire("reporter", "node-b", short).await.unwrap());
        assert!(!s.release("reporter", "node-a").await.unwrap());
        assert!(s.release("reporter", "node-b").await.unwrap());
        assert!(s.try_acquire("reporter", "node-a", short).await.unwrap());
        assert!(s.kv_delete("long").await.unwrap());
        assert!(!s.kv_delete("long").await.unwrap());
    }

    #[tokio::test]
    async fn invalid_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s"), EmbeddedLimits::default()).unwrap();
        assert!(matches!(
            s.append("bad name", &[rec("a", 1)]).await,
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            s.append("x", &[rec("a\nb", 1)]).await,
            Err(StoreError::InvalidId(_))
        ));
        let big = Record {
            id: "big".into(),
            time_ms: 1,
            data: vec![0; MAX_VALUE_LEN + 1],
        };
        assert!(matches!(
            s.append("x", &[big]).await,
            Err(StoreError::TooLarge(_))
        ));
        // A second open of the same file is refused while the first is open.
        assert!(EmbeddedStore::open(&dir.path().join("s"), EmbeddedLimits::default()).is_err());
    }
}
