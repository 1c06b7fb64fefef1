//! `mailstack::store::RedisStore` against a private `redis-server` (Debian `redis-server`,
//! on a unix socket in a temp dir, started by the test), and through Postfix and mailstackd:
//! - the store's semantics on Redis: idempotent append, scan by time range and pages, trim,
//!   key-value and counters with TTL, and the lease (only one of two holders gets it, the
//!   other gets it after expiry);
//! - two mailstackd processes behind two Postfix instances writing their DMARC records to one
//!   Redis: the scan returns the sum, each message once;
//! - Redis stopped under load: every message is accepted (250, never a tempfail) and
//!   delivered, the records written while it was down are buffered to the configured bound and
//!   the rest dropped and counted, and after Redis returns the held and new records arrive;
//!   mailstackd's exit line accounts for every record.
//!
//! Needs root, Postfix and redis-server (`.ci/packages`). Run:
//! `cargo test -p mailstack-examples --features interop --test store_redis -- --nocapture`.

mod spf_support;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailstack::store::{Record, RedisStore, Scan, Store, Trim};
use spf_support::Zone;
use support::postfix::Postfix;

const BIN: &str = env!("CARGO_BIN_EXE_mailstackd");
const DMARC_BIN: &str = env!("CARGO_BIN_EXE_dmarc-milter");

/// A private redis-server on `DIR/redis.sock`, persisting to an append-only file in `DIR`
/// (fsync always) so a stop and start keep what was written. Stopped on drop.
struct Redis {
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn start(dir: &Path) -> Self {
        let mut r = Self {
            dir: dir.to_owned(),
            child: None,
        };
        r.restart();
        r
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "777", "--dir"])
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server not found ({e}): apt-get install redis-server (.ci/packages)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if Self::pong(&self.socket()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not listen within 10 s:\n{}",
            std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
        );
    }

    /// Whether the server answers PING with PONG (not LOADING while it reads its file).
    fn pong(socket: &Path) -> bool {
        use std::io::{Read, Write};
        let Ok(mut c) = std::os::unix::net::UnixStream::connect(socket) else {
            return false;
        };
        let mut buf = [0u8; 64];
        c.write_all(b"PING\r\n").is_ok()
            && c.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// SIGTERM (Redis finishes its append-only file) and wait.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGTERM);
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill");
}

/// One runtime for the whole test binary: a Redis connection lives on the runtime that
/// opened it.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

fn rec(id: &str, t: u64) -> Record {
    Record {
        id: id.into(),
        time_ms: t,
        data: format!("data {id}").into_bytes(),
    }
}

#[test]
fn redis_store_semantics_and_lease() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    rt().block_on(async {
        let s = RedisStore::open(&redis.url()).unwrap();
        assert_eq!(
            s.append("x", &[rec("a", 10), rec("b", 5)]).await.unwrap(),
            2
        );
        assert_eq!(
            s.append("x", &[rec("a", 10), rec("c", 20)]).await.unwrap(),
            1
        );
        assert_eq!(s.append("x", &[rec("b", 99)]).await.unwrap(), 0, "same id");
        assert_eq!(s.len("x").await.unwrap(), 3);
        let all = s.scan("x", &Scan::all()).await.unwrap();
        assert_eq!(all, [rec("b", 5), rec("a", 10), rec("c", 20)]);
        let recs: Vec<Record> = (0..10)
            .map(|i| rec(&format!("r{i}"), 100 + i / 2))
            .collect();
        s.append("y", &recs).await.unwrap();
        let mid = s.scan("y", &Scan::range(101, 103)).await.unwrap();
        assert_eq!(mid, recs[2..6]);
        let mut seen = Vec::new();
        let mut scan = Scan::all().limit(3);
        loop {
            let page = s.scan("y", &scan).await.unwrap();
            let Some(last) = page.last() else { break };
            scan = scan.after(last);
            seen.extend(page);
        }
        assert_eq!(seen, recs, "pages across records sharing a millisecond");
        let t = Trim {
            before_ms: Some(102),
            max_len: Some(4),
        };
        assert_eq!(s.trim("y", t).await.unwrap(), 6);
        assert_eq!(s.scan("y", &Scan::all()).await.unwrap(), recs[6..]);
        // Enforced on append too once set.
        s.set_max_len("y", 2).await.unwrap();
        s.append("y", &[rec("z", 200)]).await.unwrap();
        assert_eq!(
            s.scan("y", &Scan::all()).await.unwrap(),
            [recs[9].clone(), rec("z", 200)]
        );

        let short = Duration::from_millis(300);
        s.kv_set("k", b"v", short).await.unwrap();
        assert_eq!(s.kv_get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(s.incr("c", 2, short).await.unwrap(), 2);
        assert_eq!(s.incr("c", 3, short).await.unwrap(), 5);

        // The lease: one of two holders; the other after expiry.
        assert!(s.try_acquire("reporter", "node-a", short).await.unwrap());
        assert!(!s.try_acquire("reporter", "node-b", short).await.unwrap());
        assert!(!s.renew("reporter", "node-b", short).await.unwrap());
        assert!(!s.release("reporter", "node-b").await.unwrap());
        assert!(s.renew("reporter", "node-a", short).await.unwrap());
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(s.kv_get("k").await.unwrap(), None, "expired");
        assert_eq!(s.incr("c", 1, short).await.unwrap(), 1, "a new window");
        assert!(s.try_acquire("reporter", "node-b", short).await.unwrap());
        assert!(!s.try_acquire("reporter", "node-a", short).await.unwrap());
        assert!(s.release("reporter", "node-b").await.unwrap());
        assert!(s.try_acquire("reporter", "node-a", short).await.unwrap());

        // Two stores (two nodes) racing for the lease: exactly one wins each time.
        let other = RedisStore::open(&redis.url()).unwrap();
        for round in 0..20 {
            let name = format!("race{round}");
            let (a, b) = tokio::join!(
                s.try_acquire(&name, "node-a", Duration::from_secs(5)),
                other.try_acquire(&name, "node-b", Duration::from_secs(5)),
            );
            assert!(a.unwrap() ^ b.unwrap(), "round {round}: exactly one holder");
        }
    });
}

/// mailstackd on `DIR/NAME.sock` with `[store]` on `redis`, logging to `DIR/NAME.log`.
struct Mailstackd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Mailstackd {
    fn start(dir: &Path, name: &str, dns: std::net::SocketAddr, store: &str) -> Self {
        let conf = dir.join(format!("{name}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[mailstackd]\nauthserv_id = \"{name}.example\"\nnameservers = [\"{dns}\"]\n\n{store}"
            ),
        )
        .unwrap();
        Self::spawn(BIN, dir, name, &conf, &[])
    }

    /// `exe --socket unix:DIR/NAME.sock --config conf args...`, waiting for the socket.
    fn spawn(exe: &str, dir: &Path, name: &str, conf: &Path, args: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(exe)
            .arg("--socket")
            .arg(format!("unix:{}", socket.display()))
            .arg("--config")
            .arg(conf)
            .args(["--group", "postfix", "--allow-root"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Self { child, socket, log };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "mailstackd did not listen:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn spec(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait, and the log.
    fn stop(mut self) -> String {
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "mailstackd did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log()
    }
}

impl Drop for Mailstackd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dns() -> std::net::SocketAddr {
    let mut zone = Zone::default();
    zone.txt("example.com", "v=spf1 ip4:192.0.2.1 -all").txt(
        "_dmarc.example.com",
        "v=DMARC1; p=none; rua=mailto:dmarc@example.com",
    );
    spf_support::start_dns_local(zone).unwrap()
}

/// A Postfix named `name` (DMARC's reporter is the MTA's name) with `milter`.
fn postfix(milter: &Mailstackd, name: &str) -> Postfix {
    Postfix::builder()
        .main("myhostname", name)
        .main("smtpd_milters", milter.spec())
        .main("milter_default_action", "tempfail")
        .start()
}

/// Sends message `i` through `pf`; asserts it is accepted (never a tempfail) and returns its
/// queue id, which DMARC records as `job`.
fn send(pf: &Postfix, i: usize) -> String {
    let body = format!(
        "From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\nSubject: m{i}\r\n\
         Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m{i}@example.com>\r\n\r\nhello {i}\r\n"
    );
    let mut c = pf.smtp();
    c.xclient("192.0.2.1", "mail.example.com");
    let started = Instant::now();
    let reply = c.send("alice@example.com", &["bob@dest.example"], &body);
    assert_eq!(reply.code, 250, "message {i}: {reply}\n{}", pf.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "message {i} took {:?}: the milter waited for the store",
        started.elapsed()
    );
    reply
        .text
        .rsplit(' ')
        .next()
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The `job` of every DMARC record in Redis.
fn jobs(store: &RedisStore) -> Vec<String> {
    rt().block_on(async {
        let mut out = Vec::new();
        let mut scan = Scan::all().limit(500);
        loop {
            // The first call after a Redis restart fails on the old connection; the store
            // reconnects on the next.
            let page = match store.scan("dmarc", &scan).await {
                Ok(p) => p,
                Err(_) => store.scan("dmarc", &scan).await.unwrap(),
            };
            let Some(last) = page.last() else { break };
            scan = scan.after(last);
            for r in &page {
                let text = String::from_utf8(r.data.clone()).unwrap();
                let job = text
                    .lines()
                    .find_map(|l| l.strip_prefix("job "))
                    .unwrap_or_else(|| panic!("no job line: {text}"));
                out.push(job.to_owned());
            }
        }
        out
    })
}

fn wait_for_jobs(store: &RedisStore, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let j = jobs(store);
        if j.len() >= n || Instant::now() >= deadline {
            return j;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `mailstack dmarc-report --store URL --dry-run` over today's UTC window: what parsedmarc
/// reads from the files it wrote, as (files, total count over every row).
fn report_from_store(dir: &Path, url: &str, dns: std::net::SocketAddr) -> (usize, u64) {
    let out_dir = dir.join("reports");
    std::fs::create_dir_all(&out_dir).unwrap();
    let (begin, end) = support::reports::today_utc();
    let out = Command::new(env!("CARGO_BIN_EXE_mailstack"))
        .args(["dmarc-report", "--store", url])
        .args(["--begin", &begin.to_string()])
        .args(["--end", &end.to_string()])
        .args([
            "--org-name",
            "Receiver Inc.",
            "--email",
            "dmarc-reports@dest.example",
        ])
        .args(["--nameserver", &dns.to_string()])
        .arg("--dry-run")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dmarc-report: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let files = support::reports::gz_files(&out_dir);
    let parsed = support::reports::parsedmarc(&files);
    for (domain, rows) in &parsed {
        assert_eq!(domain, "example.com");
        for (ip, disposition) in rows.keys().map(|k| (&k.1, &k.2)) {
            assert_eq!((ip.as_str(), disposition.as_str()), ("192.0.2.1", "none"));
        }
    }
    let total = parsed.iter().flat_map(|(_, rows)| rows.values()).sum();
    (files.len(), total)
}

#[test]
fn two_mailstackd_through_postfix_sum_in_one_redis() {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("store-redis")
        .tempdir()
        .unwrap();
    let redis = Redis::start(dir.path());
    let dns = dns();
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let m1 = Mailstackd::start(dir.path(), "mx1", dns, &store);
    let m2 = Mailstackd::start(dir.path(), "mx2", dns, &store);
    let (pf1, pf2) = (postfix(&m1, "mx1.example"), postfix(&m2, "mx2.example"));
    let mut queued = BTreeSet::new();
    for i in 0..7 {
        queued.insert(send(&pf1, i));
    }
    for i in 7..12 {
        queued.insert(send(&pf2, i));
    }
    pf1.wait_for_messages(7, Duration::from_secs(30));
    pf2.wait_for_messages(5, Duration::from_secs(30));
    let s = RedisStore::open(&redis.url()).unwrap();
    let got = wait_for_jobs(&s, 12, Duration::from_secs(20));
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(
        got.len(),
        12,
        "7 + 5 records: {got:?}\n{}\n{}",
        m1.log(),
        m2.log()
    );
    assert_eq!(unique, queued, "each message once, under its queue id");
    // Both reporters wrote.
    let all = rt().block_on(s.scan("dmarc", &Scan::all())).unwrap();
    let text: String = all
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert_eq!(
        text.matches("\nreporter mx1.example\n").count(),
        7,
        "{text}"
    );
    assert_eq!(
        text.matches("\nreporter mx2.example\n").count(),
        5,
        "{text}"
    );
    // One report out of the shared store, with the sum, as parsedmarc reads it.
    drop((m1, m2));
    assert_eq!(
        report_from_store(dir.path(), &redis.url(), dns),
        (1, 12),
        "one report for example.com counting 7 + 5"
    );
}

#[test]
fn redis_stopped_under_load_loses_no_mail() {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("store-outage")
        .tempdir()
        .unwrap();
    let mut redis = Redis::start(dir.path());
    let dns = dns();
    // A small buffer so the outage overflows it.
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nbuffer = 5\n",
        redis.url()
    );
    let m = Mailstackd::start(dir.path(), "mx", dns, &store);
    let pf = postfix(&m, "mx.example");
    let s = Arc::new(RedisStore::open(&redis.url()).unwrap());
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(send(&pf, i));
    }
    assert_eq!(
        wait_for_jobs(&s, 5, Duration::from_secs(20)).len(),
        5,
        "{}",
        m.log()
    );

    redis.stop();
    let mut during = Vec::new();
    for i in 5..25 {
        during.push(send(&pf, i));
    }
    redis.restart();
    // The writer retries with backoff: once what it held is in Redis, it writes again.
    let back = wait_for_jobs(&s, 6, Duration::from_secs(30));
    assert!(
        back.len() > 5,
        "held records not written after Redis returned\n{}",
        m.log()
    );
    let mut after = Vec::new();
    for i in 25..30 {
        after.push(send(&pf, i));
    }
    pf.wait_for_messages(30, Duration::from_secs(60));

    // The held batch and the buffer are retried (backoff at most 10 s) after Redis is back.
    let deadline = Instant::now() + Duration::from_secs(40);
    let got = loop {
        let got = jobs(&s);
        if after.iter().all(|q| got.contains(q)) || Instant::now() >= deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = m.stop();
    let got_after_exit = jobs(&s);
    let unique: BTreeSet<&String> = got_after_exit.iter().collect();
    assert_eq!(unique.len(), got_after_exit.len(), "a record stored twice");
    for q in before.iter().chain(&after) {
        assert!(got.contains(q), "record of {q} missing: {got:?}\n{log}");
    }
    let kept_during = during.iter().filter(|q| got_after_exit.contains(q)).count();
    assert!(
        (1..=7).contains(&kept_during),
        "the buffer (5) plus the batch held kept some of the outage's records: {kept_during}\n{log}"
    );
    assert!(
        log.contains("record(s) dropped"),
        "the drop is logged:\n{log}"
    );
    // mailstackd's totals account for every record.
    let line = log
        .lines()
        .find(|l| l.contains("store at exit:"))
        .unwrap_or_else(|| panic!("no exit totals:\n{log}"));
    let nums: Vec<u64> = line
        .split("store at exit:")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    // submitted, stored, already there, dropped, pending, failed attempts
    let [submitted, stored, _dups, dropped, pending, failures] = nums[..] else {
        panic!("{line}");
    };
    assert_eq!(submitted, 30, "{line}");
    assert_eq!(pending, 0, "{line}");
    assert_eq!(stored + dropped, 30, "{line}");
    assert_eq!(stored as usize, got_after_exit.len(), "{line}");
    assert_eq!(dropped as usize, 20 - kept_during, "{line}");
    assert!(failures > 0, "{line}");
    // The report says what the store saw, nothing more.
    let (files, total) = report_from_store(dir.path(), &redis.url(), dns);
    assert_eq!(files, 1);
    assert_eq!(total, stored, "{line}");
    println!("outage: {line}; report counts {total} of 30 sent");
}

/// dmarc-milter on `DIR/dmarc.sock` with `MailstackStore` on `redis` and `extra` lines of
/// opendmarc.conf.
fn dmarc_milter(dir: &Path, redis: &Redis, dns: std::net::SocketAddr, extra: &str) -> Mailstackd {
    let conf = dir.join("opendmarc.conf");
    std::fs::write(
        &conf,
        format!(
            "AuthservID mx.example\nSPFSelfValidate yes\nMailstackStore {}\n{extra}",
            redis.url()
        ),
    )
    .unwrap();
    let ns = dns.to_string();
    Mailstackd::spawn(DMARC_BIN, dir, "dmarc", &conf, &["--nameserver", &ns])
}

#[test]
fn dmarc_milter_mailstack_store_gets_what_the_history_file_gets() {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("store-dmarc")
        .tempdir()
        .unwrap();
    let redis = Redis::start(dir.path());
    let dns = dns();
    let history = dir.path().join("history");
    let m = dmarc_milter(
        dir.path(),
        &redis,
        dns,
        &format!("HistoryFile {}\n", history.display()),
    );
    let pf = postfix(&m, "mx.example");
    let queued: BTreeSet<String> = (0..3).map(|i| send(&pf, i)).collect();
    pf.wait_for_messages(3, Duration::from_secs(30));
    let s = RedisStore::open(&redis.url()).unwrap();
    let got = wait_for_jobs(&s, 3, Duration::from_secs(20));
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        queued,
        "{}",
        m.log()
    );
    assert_eq!(got.len(), 3);
    // The same blocks, in the same order, as the unchanged HistoryFile.
    let all = rt().block_on(s.scan("dmarc", &Scan::all())).unwrap();
    let mut from_store: Vec<String> = all
        .iter()
        .map(|r| String::from_utf8(r.data.clone()).unwrap())
        .collect();
    let file = std::fs::read_to_string(&history).unwrap();
    let mut from_file: Vec<String> = file
        .split_inclusive("action 2\n")
        .map(str::to_owned)
        .collect();
    from_store.sort();
    from_file.sort();
    assert_eq!(from_store, from_file);
}

#[test]
fn dmarc_milter_flushes_its_store_buffer_at_exit() {
    support::postfix::require_postfix();
    let dir = tempfile::Builder::new()
        .prefix("store-flush")
        .tempdir()
        .unwrap();
    let redis = Redis::start(dir.path());
    let dns = dns();
    let m = dmarc_milter(dir.path(), &redis, dns, "");
    let pf = postfix(&m, "mx.example");
    // Redis frozen: the records of the burst wait in dmarc-milter's buffer.
    let redis_pid = redis.child.as_ref().unwrap().id();
    signal(redis_pid, libc::SIGSTOP);
    let queued: BTreeSet<String> = (0..5).map(|i| send(&pf, i)).collect();
    // The stop comes while they are buffered; Redis wakes a moment later.
    let milter_pid = m.child.id();
    signal(milter_pid, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    signal(redis_pid, libc::SIGCONT);
    let log = m.stop();
    let s = RedisStore::open(&redis.url()).unwrap();
    let got: BTreeSet<String> = jobs(&s).into_iter().collect();
    assert_eq!(
        got, queued,
        "every buffered record written before exit:\n{log}"
    );
    assert!(
        log.contains("store at exit: 5 submitted, 5 stored"),
        "{log}"
    );
}
