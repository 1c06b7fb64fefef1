//! spf-policyd vs python-policyd-spf: requests per second and latency on the same requests,
//! with warm DNS (an in-memory DNS server inside a network namespace answers at once).
//!
//! Both daemons run as child processes inside the namespace, spoken to over stdin/stdout as
//! under Postfix spawn(8), one request at a time (Postfix's policy client waits for each
//! answer). Ours is this binary re-executed with `--serve` (the same library code as the
//! `spf-policyd` example, built with the bench profile). Its SPF result cache is off
//! (`Result_Cache_Size = 0`) so both evaluate every request; a second run with the cache on
//! shows what it buys. Needs root and python-policyd-spf.
//!
//! Run: `cargo bench -p mailstack-benches --bench spf_policyd` (env `SPF_BENCH_REQUESTS`,
//! default 2000).

#[path = "../../examples/tests/spf_support/mod.rs"]
#[allow(missing_docs)]
mod spf_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailstack::dns::{HickoryResolver, Resolver};
use mailstack::spf::policyd::{PolicydConfig, SpfPolicy, SpfService};

/// The request mix: (client, helo, sender); results pass, fail, softfail, neutral, none,
/// permerror, include, redirect, mx, ptr, macro.
const MIX: &[(&str, &str, &str)] = &[
    ("192.0.2.1", "mail.pass.example", "u@pass.example"),
    ("192.0.2.9", "helo.none.example", "u@fail.example"),
    ("192.0.2.9", "helo.none.example", "u@soft.example"),
    ("192.0.2.9", "helo.none.example", "u@neutral.example"),
    ("192.0.2.9", "helo.none.example", "u@nxdomain.example"),
    ("192.0.2.9", "helo.none.example", "u@perm.example"),
    ("192.0.2.1", "helo.none.example", "u@inc.example"),
    ("192.0.2.1", "helo.none.example", "u@redir.example"),
    ("192.0.2.20", "helo.none.example", "u@mx.example"),
    ("192.0.2.30", "helo.none.example", "u@ptr.example"),
    ("192.0.2.40", "helo.none.example", "u@macro.example"),
];

const CONFIG: &str = "debugLevel = -1\nLookup_Time = 5\nResult_Cache_Size = 0\n";
const CONFIG_CACHED: &str = "debugLevel = -1\nLookup_Time = 5\n";
/// python-policyd-spf does not know our cache keys.
const CONFIG_PYTHON: &str = "debugLevel = -1\nLookup_Time = 5\n";

fn serve(config: &str) {
    let (config, _) = PolicydConfig::read(std::path::Path::new(config)).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let resolver: Arc<dyn Resolver> = Arc::new(HickoryResolver::system().expect("resolver"));
        let policy = Arc::new(SpfPolicy::new(config, resolver));
        let _ = SpfService::server(policy).serve_stdio().await;
    });
    // serve_stdio's fallback for stdin that is neither a socket nor a pipe may leave a
    // blocked reader thread: end here.
    std::process::exit(0);
}

struct Stats {
    name: &'static str,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn drive(mut child: Child, name: &'static str, n: usize) -> Stats {
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lat = Vec::with_capacity(n);
    let mut line = String::new();
    let warmup = 50;
    let start_all = Instant::now();
    let mut start_measured = start_all;
    for i in 0..n + warmup {
        if i == warmup {
            start_measured = Instant::now();
        }
        let (client, helo, sender) = MIX[i % MIX.len()];
        let req = format!(
            "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={client}\nhelo_name={helo}\nsender={sender}\nrecipient=r@dest.example\ninstance=b{i}\n\n"
        );
        let t = Instant::now();
        stdin.write_all(req.as_bytes()).expect("write request");
        stdin.flush().expect("flush");
        loop {
            line.clear();
            if stdout.read_line(&mut line).expect("read reply") == 0 {
                panic!("{name} closed the connection");
            }
            if line == "\n" {
                break;
            }
        }
        if i >= warmup {
            lat.push(t.elapsed());
        }
    }
    let total = start_measured.elapsed();
    drop(stdin);
    let _ = child.wait();
    lat.sort();
    Stats {
        name,
        per_sec: n as f64 / total.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
        mean: total / n as u32,
    }
}

/// The evaluator alone on the same mix over in-memory DNS (no sockets): what a request costs
/// us beyond DNS round trips.
fn evaluator_only(n: usize) {
    use mailstack::dns::{MemoryRecord, MemoryResolver, Mx};
    use mailstack::spf::{LookupLimits, SpfEvaluator};
    use spf_support::Rec;

    let mut z = MemoryResolver::new();
    for (name, recs) in &spf_support::golden_zone().0 {
        for r in recs {
            let rec = match r {
                Rec::Txt(parts) => MemoryRecord::Txt(parts.concat().into_bytes()),
                Rec::A(a) => MemoryRecord::A(*a),
                Rec::Aaaa(a) => MemoryRecord::Aaaa(*a),
                Rec::Mx(p, h) => MemoryRecord::Mx(Mx {
                    preference: *p,
                    exchange: h.clone(),
                }),
                Rec::Ptr(h) => MemoryRecord::Ptr(h.clone()),
                Rec::Timeout => MemoryRecord::Timeout,
                // Fault modes of the test server (slow, truncated, garbage answers) are not in
                // the golden zone; nothing in memory stands for them.
                Rec::Delay(_) | Rec::Truncated | Rec::Garbage => continue,
            };
            z.add(name, rec);
        }
    }
    let spf = SpfEvaluator::new(Arc::new(z), LookupLimits::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let (client, helo, sender) = MIX[i % MIX.len()];
            let ip = client.parse().expect("ip");
            std::hint::black_box(spf.check_helo(ip, helo).await);
            std::hint::black_box(spf.check_mail_from(ip, helo, sender).await);
        }
    });
    let took = start.elapsed();
    println!(
        "evaluator alone (HELO + MAIL FROM, in-memory DNS): {:.0} requests/s, {:.2?} per request",
        n as f64 / took.as_secs_f64(),
        took / n as u32
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve(&args[2]);
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/usr/bin/policyd-spf").exists() {
        println!("spf_policyd bench skipped: needs root and /usr/bin/policyd-spf");
        return;
    }
    let n: usize = std::env::var("SPF_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let ns = spf_support::Netns::create(&format!("spfbench{}", std::process::id())).expect("netns");
    ns.start_dns(spf_support::golden_zone()).expect("dns");
    let dir = std::env::temp_dir().join(format!("spfbench{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("config");
        p.to_string_lossy().into_owned()
    };
    let (ours, ours_cached, python) = (
        write("ours.conf", CONFIG),
        write("cached.conf", CONFIG_CACHED),
        write("python.conf", CONFIG_PYTHON),
    );
    let me = std::env::current_exe().expect("current exe");
    let me = me.to_string_lossy();
    let spawn = |prog: &str, args: &[&str]| {
        ns.command(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon")
    };
    let py = drive(
        spawn("/usr/bin/policyd-spf", &[&python]),
        "python-policyd-spf 3.0.4",
        n,
    );
    let rs = drive(
        spawn(&me, &["--serve", &ours]),
        "spf-policyd (no result cache)",
        n,
    );
    let rc = drive(
        spawn(&me, &["--serve", &ours_cached]),
        "spf-policyd (result cache on)",
        n,
    );
    println!(
        "\nSPF policy daemons, {n} sequential requests over stdin/stdout, warm in-memory DNS, {} request kinds",
        MIX.len()
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>10}",
        "daemon", "req/s", "mean", "p50", "p99"
    );
    for s in [&py, &rs, &rc] {
        println!(
            "{:<32} {:>10.0} {:>10.2?} {:>10.2?} {:>10.2?}",
            s.name, s.per_sec, s.mean, s.p50, s.p99
        );
    }
    println!(
        "ratio spf-policyd / python: {:.1}x req/s (no cache), {:.1}x (cache on); p50 latency {:.1}x lower",
        rs.per_sec / py.per_sec,
        rc.per_sec / py.per_sec,
        py.p50.as_secs_f64() / rs.p50.as_secs_f64()
    );
    evaluator_only(n * 10);
    let _ = std::fs::remove_dir_all(&dir);
}
