//! `kill -9` of a process while it writes DMARC-sized records to the embedded store
//! (`mailstack::store::EmbeddedStore`, redb): after each kill the store reopens, every record
//! the writer had acknowledged (its append returned) is there, none is there twice, nothing
//! appears that was never written, and re-appending acknowledged records (what a retry after
//! the crash does) stores nothing new.
//!
//! The writer is this test binary itself, run again with `STORE_KILL9_CHILD=PATH` (the test
//! has its own `main`, `harness = false`), so no extra binary is shipped. It appends batches
//! of 1..=4 records, re-sends every fifth batch as a retry would, and prints `ack ID` for
//! each record once the append that carried it has returned.
//!
//! Run: `cargo test -p mailstack-examples --features interop --test store_kill9`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailstack::store::{EmbeddedLimits, EmbeddedStore, Record, Scan, Store};

const ROUNDS: usize = 5;

fn main() {
    if let Ok(path) = std::env::var("STORE_KILL9_CHILD") {
        let from: u64 = std::env::var("STORE_KILL9_FROM")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        child(Path::new(&path), from);
        return;
    }
    parent();
    println!("test store_kill9 ... ok");
}

fn record(i: u64) -> Record {
    // A history block's size (about 400 bytes).
    let data = format!(
        "job Q{i}\nreporter mx.example\nreceived {i}\n{}",
        "x".repeat(380)
    );
    Record {
        id: format!("r{i:08}"),
        time_ms: 1_764_000_000_000 + i,
        data: data.into_bytes(),
    }
}

fn child(path: &Path, from: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(path, EmbeddedLimits::default()).unwrap();
        let mut out = std::io::stdout().lock();
        // First a retry of what the previous writer acknowledged last.
        if from > 0 {
            let again: Vec<Record> = (from.saturating_sub(10)..from).map(record).collect();
            let new = store.append("dmarc", &again).await.unwrap();
            writeln!(out, "retry-new {new}").unwrap();
            out.flush().unwrap();
        }
        let mut i = from;
        let mut n = 0u64;
        let mut prev: Vec<Record> = Vec::new();
        loop {
            n += 1;
            let size = 1 + n % 4;
            let batch: Vec<Record> = (i..i + size).map(record).collect();
            store.append("dmarc", &batch).await.unwrap();
            for r in &batch {
                writeln!(out, "ack {}", r.id).unwrap();
            }
            out.flush().unwrap();
            if n.is_multiple_of(5) {
                let new = store.append("dmarc", &prev).await.unwrap();
                assert_eq!(new, 0, "a retried batch is not stored again");
            }
            prev = batch;
            i += size;
        }
    });
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut next = 0u64;
    let mut unacked_before = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .env("STORE_KILL9_CHILD", &path)
            .env("STORE_KILL9_FROM", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a different number of acknowledgements each round, mid-stream.
        let kill_after = 150 + round * 37;
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen < kill_after {
            assert!(Instant::now() < deadline, "round {round}: writer too slow");
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("round {round}: writer ended early"))
                .unwrap();
            if let Some(id) = line.strip_prefix("ack ") {
                acked.insert(id.to_owned());
                seen += 1;
            } else if let Some(n) = line.strip_prefix("retry-new ") {
                assert_eq!(
                    n, "0",
                    "round {round}: re-appending acknowledged records stored some again"
                );
            }
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed: {status}");
        // Acks printed before the kill that we had not read yet are acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("ack ") {
                acked.insert(id.to_owned());
            }
        }
        let (count, ids) = rt.block_on(async {
            let store = EmbeddedStore::open(&path, EmbeddedLimits::default())
                .expect("the store reopens after kill -9");
            let mut ids = Vec::new();
            let mut scan = Scan::all().limit(1000);
            loop {
                let page = store.scan("dmarc", &scan).await.unwrap();
                let Some(last) = page.last() else { break };
                scan = scan.after(last);
                for r in &page {
                    let i: u64 = r.id[1..].parse().unwrap();
                    assert_eq!(*r, record(i), "record {} intact", r.id);
                }
                ids.extend(page.into_iter().map(|r| r.id));
            }
            (store.len("dmarc").await.unwrap(), ids)
        });
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "round {round}: a record stored twice"
        );
        assert_eq!(
            count,
            ids.len() as u64,
            "round {round}: index and records agree"
        );
        let missing: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged records lost: {missing:?}"
        );
        // At most the one batch in flight (4 records) was stored without its ack being seen.
        let unacked = ids.iter().filter(|id| !acked.contains(*id)).count();
        assert!(
            unacked - unacked_before <= 4,
            "round {round}: {} records never acknowledged",
            unacked - unacked_before
        );
        unacked_before = unacked;
        next = ids.len() as u64;
        assert_eq!(
            ids.last().map(|s| s.as_str()),
            Some(format!("r{:08}", next - 1).as_str()),
            "round {round}: records are contiguous"
        );
        println!(
            "round {round}: killed after {seen} acks read; {} records stored, {} acknowledged, {unacked} stored unacknowledged",
            ids.len(),
            acked.len()
        );
    }
}
