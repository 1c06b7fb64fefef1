//! The whole stack behind a real Postfix, side by side in one run: bare Postfix (the
//! ceiling), `mailstackd` (every filter in one milter), our four single-purpose daemons
//! (`dkim-milter`, `dmarc-milter`, `av-milter`, `spf-policyd` under spawn(8)), the seed's four
//! (Debian's OpenDKIM, OpenDMARC, clamav-milter, python-policyd-spf under spawn(8)) and rspamd
//! 3.4 as a self-scanning milter doing only SPF, DKIM, DMARC and (AV on) its antivirus module.
//!
//! Needs root and, besides Postfix, OpenDKIM, OpenDMARC, clamav-daemon, clamav-milter and
//! postfix-policyd-spf-python (all in `.ci/packages`), rspamd:
//!
//! ```text
//! apt-get install --no-install-recommends rspamd
//! ```
//!
//! (a setup whose programs are missing is skipped with a printed line, never given a figure).
//!
//! Everything runs in a private network namespace (loopback only) with a mount namespace whose
//! `/etc/resolv.conf` points at a small authoritative DNS server on 127.0.0.1:53 in it (the
//! seed's tools read resolv.conf; ours and rspamd are told the same server). Each setup has
//! its own Postfix instance (own config and queue, no DNS, `maillog_file`) relaying to an
//! in-process counting SMTP sink. Load is Postfix's `smtp-source` (10 parallel sessions, one
//! message per session, `-F` a prepared message). Two listeners per Postfix make the
//! direction: inbound mail connects to 192.0.2.10 (an address on the namespace's loopback,
//! external to every filter: DKIM-verified, DMARC- and SPF-checked), outbound to 127.0.0.1
//! (internal by every tool's default: DKIM-signed; DMARC and SPF skip it). Both directions
//! are scanned when AV is on. One shared private clamd (`DisableCache yes`, a one-signature
//! database) serves every AV setup.
//!
//! Cases: inbound/outbound × 5 KB/100 KB, AV off then on, unix sockets (TCP on request). The setups run
//! alternately, run by run; each figure is the median of the runs. A run's time is from the
//! start of `smtp-source` until the sink has every message; a run that does not finish within
//! its time limit is reported as failed, not measured. The last message of each run is
//! checked for the expected results (`dkim=pass`, `dmarc=pass`, SPF pass inbound; a
//! `DKIM-Signature` outbound) and clamd's CPU must grow when AV is on: a row marked `!` failed
//! a check (printed below the table).
//!
//! Columns: messages per second; the filters' CPU seconds per 1,000 messages (every process
//! of the setup's filters, including spawn(8)'s policy children, clamd apart; each program's
//! share on the lines under each case); Postfix's own
//! CPU seconds per 1,000; clamd's; the sum of the filter processes' peak RSS (VmHWM, over the
//! AV phase so far); rate against bare Postfix and against the seed, filter CPU against the
//! seed's. Processes that exit during a run are not counted (Postfix's `max_use` is raised so
//! smtpd and its policy children live through a run).
//!
//! Run: `cargo bench -p mailstack-benches --bench postfix_stack`. Env:
//! `STACK_BENCH_MESSAGES` (per run, default 300), `STACK_BENCH_RUNS` (default 3),
//! `STACK_BENCH_TIMEOUT` (seconds per run, default 60); `STACK_BENCH_TCP=1` adds a second
//! pass with every milter on TCP 127.0.0.1 (the policy services stay on spawn(8));
//! `STACK_BENCH_SOAK=SECONDS` runs the soak instead (see `soak`: RSS over an hour of mixed
//! mail). The bench builds the daemons with
//! `cargo build --profile bench -p mailstack-examples` first; `mailstackd` is skipped with a
//! printed line when it does not build. rspamd's first start compiles its hyperscan
//! databases (minutes); they are kept in `target/release/rspamd-hs-cache` for later runs.

#[path = "../../examples/tests/spf_support/mod.rs"]
#[allow(missing_docs)]
mod spf_support;

#[path = "../../examples/tests/support/clamd.rs"]
#[allow(missing_docs, dead_code, unreachable_pub)]
mod clamd;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailstack::dkim::DkimConfig;
use mailstack::dkim::{GenKeyOptions, KeyType, PrivateKey};
use mailstack::dkim::{SignOptions, SigningKey, sign_message};
use mailstack_benches::{
    CountingSink, Figures, Proc, cpu_since, descendants, median, median_f64, processes,
};
use spf_support::{Netns, Rec, Zone};

/// The address inbound mail comes from (on the namespace's loopback; external to the filters).
const EXTERNAL: &str = "192.0.2.10";
/// The address outbound mail comes from (internal by every tool's default).
const INTERNAL: &str = "127.0.0.1";
const DOMAIN: &str = "src.example";
const HELO: &str = "mail.src.example";
const SELECTOR: &str = "bench";
const AUTHSERV: &str = "mx.dest.example";
const SESSIONS: usize = 10;

const OPENDKIM: &str = "/usr/sbin/opendkim";
const OPENDMARC: &str = "/usr/sbin/opendmarc";
const CLAMAV_MILTER: &str = "/usr/sbin/clamav-milter";
const POLICYD_SPF: &str = "/usr/bin/policyd-spf";
const RSPAMD: &str = "/usr/bin/rspamd";
const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";
const POSTFIX: &str = "/usr/sbin/postfix";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bare,
    Stack,
    Ours,
    Seed,
    Rspamd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare Postfix",
            Self::Stack => "mailstackd",
            Self::Ours => "our four",
            Self::Seed => "seed's four",
            Self::Rspamd => "rspamd",
        }
    }
    fn slug(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Stack => "stack",
            Self::Ours => "ours",
            Self::Seed => "seed",
            Self::Rspamd => "rspamd",
        }
    }
}

struct Settings {
    messages: usize,
    runs: usize,
    timeout: Duration,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "postfix_stack runs Postfix and network namespaces: run it as root"
    );
    for exe in [POSTFIX, SMTP_SOURCE, clamd::CLAMD] {
        assert!(Path::new(exe).exists(), "{exe} is missing: install it");
    }
    let settings = Settings {
        messages: usize::try_from(env_num("STACK_BENCH_MESSAGES", 300)).unwrap_or(300),
        runs: usize::try_from(env_num("STACK_BENCH_RUNS", 3)).unwrap_or(3),
        timeout: Duration::from_secs(env_num("STACK_BENCH_TIMEOUT", 60)),
    };
    let bins = build_daemons();
    let tmp = tempfile::Builder::new()
        .prefix("stack-bench-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path().to_owned();
    open(&dir);
    if std::env::var_os("STACK_BENCH_KEEP").is_some() {
        println!("keeping {} (STACK_BENCH_KEEP)", dir.display());
        std::mem::forget(tmp);
    }
    let keys = write_key(&dir);
    let ns = enter_namespace(&keys.txt);
    let clamd_dir = dir.join("clamd");
    std::fs::create_dir_all(&clamd_dir).expect("clamd dir");
    let clamd = clamd::Clamd::start(&clamd_dir, "LocalSocketMode 666\n");
    open(&clamd_dir);
    let msgs = Messages::write(&dir, &keys);
    let clamd_pid = clamd.pid();
    if let Some(secs) = std::env::var("STACK_BENCH_SOAK")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let env = Env {
            dir: dir.join("soak"),
            bins: &bins,
            key: &keys.path,
            clamd: &clamd.socket,
            av: true,
            tcp: false,
        };
        soak(Duration::from_secs(secs), &env, &msgs, &settings, clamd_pid);
        drop(clamd);
        drop(ns);
        return;
    }
    println!(
        "Postfix + filters, smtp-source -s {SESSIONS}, {} messages per run, \
         median of {} alternating runs, time limit {} s per run",
        settings.messages,
        settings.runs,
        settings.timeout.as_secs()
    );
    for kind in [Kind::Stack, Kind::Ours, Kind::Seed, Kind::Rspamd] {
        if let Some(why) = missing(kind, &bins) {
            println!("{}: {why}; skipped", kind.name());
        }
    }
    let mut phases = vec![(false, false), (false, true)];
    if std::env::var_os("STACK_BENCH_TCP").is_some() {
        phases.extend([(true, false), (true, true)]);
    }
    for (tcp, av) in phases {
        let phase = dir.join(format!(
            "{}-av-{}",
            if tcp { "tcp" } else { "unix" },
            if av { "on" } else { "off" }
        ));
        std::fs::create_dir_all(&phase).expect("phase dir");
        open(&phase);
        let env = Env {
            dir: phase,
            bins: &bins,
            key: &keys.path,
            clamd: &clamd.socket,
            av,
            tcp,
        };
        let mut setups = Vec::new();
        for kind in [
            Kind::Bare,
            Kind::Stack,
            Kind::Ours,
            Kind::Seed,
            Kind::Rspamd,
        ] {
            if missing(kind, &bins).is_some() {
                continue;
            }
            match Setup::start(kind, &env) {
                Ok(s) => setups.push(s),
                Err(e) => println!("{}: did not start: {e}; skipped", kind.name()),
            }
        }
        println!();
        println!(
            "AV {}, filters on {}",
            if av { "on" } else { "off" },
            if tcp {
                "TCP (127.0.0.1)"
            } else {
                "unix sockets"
            }
        );
        print_header();
        let mut notes = Vec::new();
        for (direction, size) in [
            (Dir::Inbound, 5),
            (Dir::Inbound, 100),
            (Dir::Outbound, 5),
            (Dir::Outbound, 100),
        ] {
            let file = msgs.file(direction, size);
            let case = format!(
                "{} {size}K",
                if direction == Dir::Inbound {
                    "in"
                } else {
                    "out"
                }
            );
            let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
            for s in &setups {
                // Warm-up: spawn(8) children, smtpd processes, DNS caches, connections.
                let _ = s.run(direction, file, SESSIONS * 2, &settings, clamd_pid);
            }
            for _ in 0..settings.runs {
                for (s, r) in setups.iter().zip(runs.iter_mut()) {
                    r.push(s.run(direction, file, settings.messages, &settings, clamd_pid));
                }
            }
            let rows: Vec<Row> = setups
                .iter()
                .zip(runs)
                .map(|(s, r)| Row::of(s, &r, &mut notes, &case))
                .collect();
            let bare = rows
                .iter()
                .find(|r| r.kind == Kind::Bare)
                .and_then(|r| r.fig);
            let seed = rows
                .iter()
                .find(|r| r.kind == Kind::Seed)
                .and_then(|r| r.fig);
            for r in &rows {
                print_row(&case, r, bare, seed);
            }
            for r in rows.iter().filter(|r| !r.per_program.is_empty()) {
                let parts: Vec<String> = r
                    .per_program
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect();
                println!("{:<8}   {}: {}", "", r.kind.name(), parts.join(", "));
            }
        }
        for n in &notes {
            println!("  ! {n}");
        }
    }
    println!(
        "(filter CPU: utime+stime of the setup's filter processes, clamd apart; RSS: sum of \
         their VmHWM; x bare / x seed: msg/s ratios; cpu/seed: filter CPU ratio, lower is better)"
    );
    println!("machine: {} cores", num_cores());
    drop(clamd);
    drop(ns);
}

/// `STACK_BENCH_SOAK=SECONDS` (not a CI test): mixed mail (inbound and outbound, 5 KB and
/// 100 KB, AV on) through `mailstackd` and through our four daemons, alternating run by run,
/// `STACK_BENCH_MESSAGES` per run with `STACK_BENCH_SOAK_PAUSE_MS` (default 2000) between
/// runs, for that long. After every run the setup's filters' current RSS (`VmRSS`, summed over
/// its filter processes) is sampled. Prints a line every five minutes and, at the end, each
/// setup's peak RSS over the first and the last ten minutes (a third of the soak each when it
/// is shorter than half an hour), with every failed run.
fn soak(length: Duration, env: &Env<'_>, msgs: &Messages, st: &Settings, clamd_pid: u32) {
    std::fs::create_dir_all(&env.dir).expect("soak dir");
    open(&env.dir);
    let pause = Duration::from_millis(env_num("STACK_BENCH_SOAK_PAUSE_MS", 2000));
    let mut setups = Vec::new();
    for kind in [Kind::Stack, Kind::Ours] {
        if missing(kind, env.bins).is_some() {
            continue;
        }
        match Setup::start(kind, env) {
            Ok(s) => setups.push(s),
            Err(e) => println!("{}: did not start: {e}; skipped", kind.name()),
        }
    }
    assert!(!setups.is_empty(), "soak: no setup started");
    println!(
        "soak: {} s of mixed mail (in/out, 5K/100K, AV on), {} messages per run, {} ms \
         between runs, setups alternating",
        length.as_secs(),
        st.messages,
        pause.as_millis()
    );
    let cases = [
        (Dir::Inbound, 5),
        (Dir::Outbound, 5),
        (Dir::Inbound, 100),
        (Dir::Outbound, 100),
    ];
    // (seconds since start, kB) per setup.
    let mut samples: Vec<Vec<(f64, u64)>> = setups.iter().map(|_| Vec::new()).collect();
    let mut delivered = vec![0usize; setups.len()];
    let mut failures: Vec<Vec<String>> = setups.iter().map(|_| Vec::new()).collect();
    let t0 = Instant::now();
    let mut next_line = Duration::from_secs(300);
    let mut round = 0usize;
    while t0.elapsed() < length {
        let (d, size) = cases[round % cases.len()];
        round += 1;
        for (k, s) in setups.iter().enumerate() {
            let r = s.run(d, msgs.file(d, size), st.messages, st, clamd_pid);
            match (&r.fig, &r.problem) {
                (Some(_), None) => delivered[k] += st.messages,
                (_, p) => failures[k].push(format!(
                    "{:.0} s, {:?} {size}K: {}",
                    t0.elapsed().as_secs_f64(),
                    d,
                    p.as_deref().unwrap_or("no figure")
                )),
            }
            let procs = processes();
            let (filters, _) = s.split(&procs);
            samples[k].push((
                t0.elapsed().as_secs_f64(),
                filters.iter().map(|p| p.rss_kb).sum(),
            ));
            std::thread::sleep(pause);
        }
        if t0.elapsed() >= next_line {
            next_line += Duration::from_secs(300);
            for (k, s) in setups.iter().enumerate() {
                println!(
                    "  {:>4.0} min  {:<16} {:>8} delivered  {:>3} failed runs  RSS now {} KiB",
                    t0.elapsed().as_secs_f64() / 60.0,
                    s.kind.name(),
                    delivered[k],
                    failures[k].len(),
                    samples[k].last().map_or(0, |x| x.1)
                );
            }
        }
    }
    let total = t0.elapsed().as_secs_f64();
    let window = if total >= 1800.0 { 600.0 } else { total / 3.0 };
    println!(
        "soak done after {:.1} min; peak RSS of the filters over the first and the last \
         {:.1} min:",
        total / 60.0,
        window / 60.0
    );
    for (k, s) in setups.iter().enumerate() {
        let peak = |keep: &dyn Fn(f64) -> bool| {
            samples[k]
                .iter()
                .filter(|(t, _)| keep(*t))
                .map(|x| x.1)
                .max()
                .unwrap_or(0)
        };
        let first = peak(&|t| t <= window);
        let last = peak(&|t| t >= total - window);
        println!(
            "  {:<16} {:>8} delivered, {} failed runs; first {first} KiB, last {last} KiB \
             (last/first x{:.2}); {} samples",
            s.kind.name(),
            delivered[k],
            failures[k].len(),
            last as f64 / first.max(1) as f64,
            samples[k].len()
        );
        for f in failures[k].iter().take(10) {
            println!("    ! {f}");
        }
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Our daemons' paths (in the bench profile's directory); `mailstackd` only if it built.
struct Bins {
    dir: PathBuf,
    ours: bool,
    stack: bool,
}

impl Bins {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Builds our daemons with `cargo build --profile bench` (the artifacts this bench's own
/// build shares); mailstackd separately so that its absence skips only it.
fn build_daemons() -> Bins {
    let exe = std::env::current_exe().expect("current exe");
    // target/release/deps/postfix_stack-HASH -> target/release
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("bench exe in target/PROFILE/deps")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let build = |bins: &[&str]| {
        let mut c = Command::new(&cargo);
        // The variables `cargo bench` sets for this process would make the nested build see a
        // changed environment and rebuild: it gets the caller's environment back.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
                || k == "LD_LIBRARY_PATH"
                || k == "OUT_DIR"
            {
                c.env_remove(k);
            }
        }
        c.args([
            "build",
            "--quiet",
            "--profile",
            "bench",
            "-p",
            "mailstack-examples",
        ])
        .arg("--manifest-path")
        .arg(&manifest);
        for b in bins {
            c.args(["--bin", b]);
        }
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let four = ["dkim-milter", "dmarc-milter", "av-milter", "spf-policyd"];
    let ours = build(&four) && four.iter().all(|b| dir.join(b).exists());
    let stack = build(&["mailstackd"]) && dir.join("mailstackd").exists();
    Bins { dir, ours, stack }
}

/// Why `kind` cannot run here, if it cannot.
fn missing(kind: Kind, bins: &Bins) -> Option<String> {
    let absent = |list: &[&str]| {
        list.iter()
            .find(|p| !Path::new(p).exists())
            .map(|p| format!("{p} is not installed"))
    };
    match kind {
        Kind::Bare => None,
        Kind::Stack => (!bins.stack).then(|| "mailstackd: not built".to_owned()),
        Kind::Ours => (!bins.ours).then(|| "our daemons did not build".to_owned()),
        Kind::Seed => absent(&[OPENDKIM, OPENDMARC, CLAMAV_MILTER, POLICYD_SPF]),
        Kind::Rspamd => absent(&[RSPAMD]),
    }
}

/// Lets Postfix's smtpd, `nobody` (spawn children) and `_rspamd` reach `dir`.
fn open(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
}

struct Key {
    path: PathBuf,
    pem: Vec<u8>,
    txt: String,
}

/// An RSA-2048 key for src.example, readable by every filter's user (a bench key).
fn write_key(dir: &Path) -> Key {
    let g = mailstack::dkim::generate_key(&GenKeyOptions {
        key_type: KeyType::Rsa,
        selector: SELECTOR.into(),
        domain: DOMAIN.into(),
        ..GenKeyOptions::default()
    })
    .expect("genkey");
    let path = dir.join("bench.private");
    std::fs::write(&path, &g.private_pem).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod key");
    Key {
        path,
        pem: g.private_pem.into_bytes(),
        txt: mailstack::dkim::txt_record_value(&g.txt),
    }
}

/// Creates the network namespace with the DNS server in it, moves this process's main
/// thread into it (every child and thread started afterwards inherits it) and gives the main
/// thread a private mount namespace whose /etc/resolv.conf names that server.
fn enter_namespace(dkim_txt: &str) -> Netns {
    let name = format!("stackbench{}", std::process::id());
    let ns = Netns::create(&name).expect("create a network namespace (root and `ip` needed)");
    let mut zone = Zone::default();
    let chunks: Vec<String> = dkim_txt
        .as_bytes()
        .chunks(250)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    zone.add(&format!("{SELECTOR}._domainkey.{DOMAIN}"), Rec::Txt(chunks))
        .txt(DOMAIN, &format!("v=spf1 ip4:{EXTERNAL} -all"))
        .txt(HELO, &format!("v=spf1 ip4:{EXTERNAL} -all"))
        .add(HELO, Rec::A(EXTERNAL.parse().expect("ip")))
        .txt(&format!("_dmarc.{DOMAIN}"), "v=DMARC1; p=reject");
    ns.start_dns(zone).expect("DNS server in the namespace");
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a namespace fd we own; it changes only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    // SAFETY: unshare has no memory preconditions; it affects only this thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    let resolv = format!("/etc/netns/{name}/resolv.conf");
    let (root, target) = (c"/", c"/etc/resolv.conf");
    let source = std::ffi::CString::new(resolv).expect("no NUL in a path");
    // SAFETY: mount(2) with valid NUL-terminated strings; MS_PRIVATE keeps the bind mount
    // below from propagating out of this mount namespace.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount --make-rprivate /");
    // SAFETY: as above; a bind mount of a file we wrote over /etc/resolv.conf.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "bind /etc/resolv.conf");
    let ok = Command::new("ip")
        .args(["addr", "add", &format!("{EXTERNAL}/32"), "dev", "lo"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip addr add {EXTERNAL}/32 dev lo");
    ns
}

/// The four prepared messages: inbound ones DKIM-signed by src.example, outbound plain.
struct Messages {
    files: Vec<(Dir, usize, PathBuf)>,
}

impl Messages {
    fn write(dir: &Path, key: &Key) -> Self {
        let signing = SigningKey {
            domain: Some(DOMAIN.into()),
            selector: SELECTOR.into(),
            key: PrivateKey::parse(&key.pem).expect("key"),
        };
        let cfg = DkimConfig::parse(
            Path::new("bench"),
            "Canonicalization relaxed/simple\nOversignHeaders From\n",
        )
        .expect("dkim options");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let mut files = Vec::new();
        for size in [5, 100] {
            let plain = message(size * 1024);
            let sig = sign_message(
                &[(&signing, DOMAIN)],
                &SignOptions::from_config(&cfg),
                &plain,
                false,
                now,
            )
            .expect("sign");
            let mut signed =
                format!("DKIM-Signature: {}\r\n", sig[0].replace('\n', "\r\n")).into_bytes();
            signed.extend_from_slice(&plain);
            for (d, body) in [(Dir::Inbound, signed), (Dir::Outbound, plain)] {
                let path = dir.join(format!("{d:?}-{size}k.eml"));
                std::fs::write(&path, body).expect("write message");
                files.push((d, size, path));
            }
        }
        Self { files }
    }

    fn file(&self, d: Dir, size: usize) -> &Path {
        self.files
            .iter()
            .find(|(fd, fs, _)| *fd == d && *fs == size)
            .map(|(_, _, p)| p.as_path())
            .expect("every case has a file")
    }
}

/// A plain-text message from alice@src.example of about `size` bytes.
fn message(size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Alice Example <alice@{DOMAIN}>\r\nTo: Bob <bob@dest.example>\r\n\
         Subject: quarterly figures and the plan for next week\r\n\
         Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench.1@{DOMAIN}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() < size {
        m.push_str(line);
    }
    m.into_bytes()
}

/// What every setup of a phase shares.
struct Env<'a> {
    dir: PathBuf,
    bins: &'a Bins,
    key: &'a Path,
    clamd: &'a Path,
    av: bool,
    tcp: bool,
}

/// A child process killed (and reaped) on drop.
struct Kill(Child);

impl Drop for Kill {
    /// Kills the child and every process it started (rspamd's workers outlive a killed
    /// main process otherwise).
    fn drop(&mut self) {
        let tree = descendants(&processes(), &[self.0.id()]);
        let _ = self.0.kill();
        let _ = self.0.wait();
        for pid in tree.into_iter().filter(|p| *p != self.0.id()) {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) has no memory preconditions; these are our child's children,
                // snapshotted just now.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// One setup: its Postfix instance, its filter processes and its sink.
struct Setup {
    kind: Kind,
    /// Filter processes started here (their descendants count too).
    filters: Vec<Kill>,
    /// Filter processes Postfix's spawn(8) starts carry this directory in their argv.
    marker: String,
    postfix: PostfixInstance,
    av: bool,
}
/// The milters' and the policy service's configuration files, the same for every tool that
/// reads them (ours read the seed's formats): tool options only, no sockets.
fn write_tool_files(f: &Path, env: &Env<'_>) {
    let w = |name: &str, text: String| {
        let p = f.join(name);
        std::fs::write(&p, text).expect("write tool config");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    };
    w(
        "opendkim.conf",
        format!(
            "Mode sv\nDomain {DOMAIN}\nSelector {SELECTOR}\nKeyFile {}\n\
             Canonicalization relaxed/simple\nOversignHeaders From\nAuthservID {AUTHSERV}\n\
             InternalHosts 127.0.0.1\nRequireSafeKeys no\nNameservers 127.0.0.1\nUMask 0000\n",
            env.key.display()
        ),
    );
    w(
        "opendmarc.conf",
        format!("AuthservID {AUTHSERV}\nTrustedAuthservIDs {AUTHSERV}\nUMask 0000\n"),
    );
    w(
        "clamav-milter.conf",
        format!(
            "ClamdSocket unix:{}\nOnInfected Reject\nAddHeader Replace\nReadTimeout 120\n\
             ReportHostname {AUTHSERV}\nMilterSocketMode 666\n",
            env.clamd.display()
        ),
    );
    w("policyd-spf.conf", "debugLevel = 1\n".to_owned());
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// Where a filter listens: a unix socket in the setup's directory or a TCP port on 127.0.0.1.
#[derive(Debug, Clone)]
enum Ep {
    Unix(PathBuf),
    Tcp(u16),
}

impl Ep {
    fn new(tcp: bool, f: &Path, name: &str) -> std::io::Result<Self> {
        Ok(if tcp {
            Self::Tcp(free_port()?)
        } else {
            Self::Unix(f.join(format!("{name}.sock")))
        })
    }

    /// Postfix's and our daemons' spelling.
    fn spec(&self) -> String {
        match self {
            Self::Unix(p) => format!("unix:{}", p.display()),
            Self::Tcp(port) => format!("inet:{INTERNAL}:{port}"),
        }
    }

    /// libmilter's spelling (OpenDKIM, OpenDMARC, clamav-milter).
    fn libmilter(&self) -> String {
        match self {
            Self::Unix(p) => format!("local:{}", p.display()),
            Self::Tcp(port) => format!("inet:{port}@{INTERNAL}"),
        }
    }

    /// rspamd's `bind_socket`.
    fn rspamd(&self) -> String {
        match self {
            Self::Unix(p) => format!("{} mode=0666", p.display()),
            Self::Tcp(port) => format!("{INTERNAL}:{port}"),
        }
    }

    fn ready(&self) -> bool {
        match self {
            Self::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            Self::Tcp(port) => std::net::TcpStream::connect((INTERNAL, *port)).is_ok(),
        }
    }
}

/// Waits (up to 60 s; rspamd 300 s, its first start compiles hyperscan databases) until
/// `child` listens at `ep`.
fn listening(child: Child, ep: &Ep, what: &str) -> std::io::Result<Kill> {
    let mut k = Kill(child);
    let wait = if what == "rspamd" { 300 } else { 60 };
    let deadline = Instant::now() + Duration::from_secs(wait);
    while !ep.ready() {
        if let Ok(Some(st)) = k.0.try_wait() {
            return Err(io_err(format!("{what} exited with {st}")));
        }
        if Instant::now() > deadline {
            return Err(io_err(format!("{what} did not listen within {wait} s")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(k)
}

fn spawn(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    let err = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
}

impl Setup {
    fn start(kind: Kind, env: &Env<'_>) -> std::io::Result<Self> {
        let top = env.dir.join(kind.slug());
        let f = top.join("f");
        std::fs::create_dir_all(&f)?;
        open(&top);
        open(&f);
        write_tool_files(&f, env);
        let p = |name: &str| f.join(name);
        let ep = |name: &str| Ep::new(env.tcp, &f, name);
        let ns = "127.0.0.1:53";
        let mut filters = Vec::new();
        let mut milters = Vec::new();
        let mut policy = None;
        let mut start = |c: &mut Command, ep: Ep, what: &str| -> std::io::Result<()> {
            let child = spawn(c, &f.join(format!("{what}.log")))?;
            filters.push(listening(child, &ep, what)?);
            milters.push(ep.spec());
            Ok(())
        };
        match kind {
            Kind::Bare => {}
            Kind::Ours => {
                for (bin, conf) in [
                    ("dkim-milter", "opendkim.conf"),
                    ("dmarc-milter", "opendmarc.conf"),
                ] {
                    let e = ep(bin)?;
                    let mut c = Command::new(env.bins.path(bin));
                    c.arg("--config").arg(p(conf)).args([
                        "--socket",
                        &e.spec(),
                        "--nameserver",
                        ns,
                        "--allow-root",
                    ]);
                    start(&mut c, e, bin)?;
                }
                if env.av {
                    let e = ep("av-milter")?;
                    let mut c = Command::new(env.bins.path("av-milter"));
                    c.arg("--config").arg(p("clamav-milter.conf")).args([
                        "--socket",
                        &e.spec(),
                        "--allow-root",
                    ]);
                    start(&mut c, e, "av-milter")?;
                }
                policy = Some(format!(
                    "{} --config {} --nameserver {ns}",
                    env.bins.path("spf-policyd").display(),
                    p("policyd-spf.conf").display()
                ));
            }
            Kind::Seed => {
                let e = ep("opendkim")?;
                let odk = p("opendkim-daemon.conf");
                std::fs::write(
                    &odk,
                    format!(
                        "{}Socket {}\nBackground no\nSyslog no\n",
                        std::fs::read_to_string(p("opendkim.conf"))?,
                        e.libmilter()
                    ),
                )?;
                start(
                    Command::new(OPENDKIM).arg("-f").arg("-x").arg(&odk),
                    e,
                    "opendkim",
                )?;
                let e = ep("opendmarc")?;
                let odm = p("opendmarc-daemon.conf");
                std::fs::write(
                    &odm,
                    format!(
                        "{}Socket {}\nBackground no\nSyslog false\n",
                        std::fs::read_to_string(p("opendmarc.conf"))?,
                        e.libmilter()
                    ),
                )?;
                start(
                    Command::new(OPENDMARC).arg("-f").arg("-c").arg(&odm),
                    e,
                    "opendmarc",
                )?;
                if env.av {
                    let e = ep("clamav-milter")?;
                    let cm = p("clamav-milter-daemon.conf");
                    std::fs::write(
                        &cm,
                        format!(
                            "{}MilterSocket {}\nForeground yes\n\
                             TemporaryDirectory {}\n",
                            std::fs::read_to_string(p("clamav-milter.conf"))?,
                            e.libmilter(),
                            f.display()
                        ),
                    )?;
                    start(
                        Command::new(CLAMAV_MILTER).arg("-c").arg(&cm),
                        e,
                        "clamav-milter",
                    )?;
                }
                policy = Some(format!("{POLICYD_SPF} {}", p("policyd-spf.conf").display()));
            }
            Kind::Stack => {
                let toml = p("mailstackd.toml");
                let av = if env.av {
                    format!(
                        "enabled = true\nconfig = \"{}\"\n",
                        p("clamav-milter.conf").display()
                    )
                } else {
                    "enabled = false\n".to_owned()
                };
                std::fs::write(
                    &toml,
                    format!(
                        "[mailstackd]\nauthserv_id = \"{AUTHSERV}\"\nnameservers = [\"{ns}\"]\n\n\
                         [spf]\nconfig = \"{}\"\n\n[dkim]\nconfig = \"{}\"\n\n\
                         [dmarc]\nconfig = \"{}\"\n\n[av]\n{av}",
                        p("policyd-spf.conf").display(),
                        p("opendkim.conf").display(),
                        p("opendmarc.conf").display()
                    ),
                )?;
                let e = ep("mailstackd")?;
                let mut c = Command::new(env.bins.path("mailstackd"));
                c.arg("--config").arg(&toml).args([
                    "--socket",
                    &e.spec(),
                    "--group",
                    "postfix",
                    "--allow-root",
                ]);
                start(&mut c, e, "mailstackd")?;
            }
            Kind::Rspamd => {
                let e = ep("rspamd")?;
                let conf = write_rspamd_conf(&f, env, &e)?;
                let mut c = Command::new(RSPAMD);
                c.args(["-f", "-u", "_rspamd", "-g", "_rspamd", "-c"])
                    .arg(&conf)
                    .arg(format!("--var=DBDIR={}", p("db").display()))
                    .arg(format!("--var=RUNDIR={}", f.display()))
                    .arg(format!("--var=LOGDIR={}", f.display()));
                start(&mut c, e, "rspamd")?;
            }
        }
        let postfix = PostfixInstance::start(&top.join("pf"), &milters.join(", "), policy)?;
        Ok(Self {
            kind,
            filters,
            marker: format!("{}/", f.display()),
            postfix,
            av: env.av,
        })
    }

    /// Sends `n` messages of `file` through this setup and measures them.
    fn run(&self, d: Dir, file: &Path, n: usize, st: &Settings, clamd_pid: u32) -> Run {
        let sink = &self.postfix.sink;
        let target = sink.count() + n;
        let port = match d {
            Dir::Inbound => format!("{EXTERNAL}:{}", self.postfix.port_in),
            Dir::Outbound => format!("{INTERNAL}:{}", self.postfix.port_out),
        };
        let before = processes();
        let t0 = Instant::now();
        let deadline = t0 + st.timeout;
        let errlog = self.postfix.dir.join("smtp-source.err");
        let mut source = match spawn(
            Command::new(SMTP_SOURCE)
                .args(["-s", &SESSIONS.to_string(), "-m", &n.to_string(), "-F"])
                .arg(file)
                .args([
                    "-f",
                    &format!("alice@{DOMAIN}"),
                    "-t",
                    "bob@dest.example",
                    "-M",
                    HELO,
                    &port,
                ]),
            &errlog,
        ) {
            Ok(c) => Kill(c),
            Err(e) => return Run::failed(format!("smtp-source: {e}")),
        };
        loop {
            match source.0.try_wait() {
                Ok(Some(s)) if s.success() => break,
                Ok(Some(s)) => {
                    let err = std::fs::read_to_string(&errlog).unwrap_or_default();
                    return Run::failed(format!("smtp-source {s}: {}", err.trim()));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => return Run::failed("smtp-source did not finish in time".into()),
            }
        }
        if !sink.wait_for(target, deadline) {
            return Run::failed(format!(
                "{} of {n} messages reached the sink in time",
                n + sink.count() - target
            ));
        }
        let secs = t0.elapsed().as_secs_f64();
        let after = processes();
        let (filters, postfix) = self.split(&after);
        let clamd: Vec<&Proc> = after.iter().filter(|p| p.pid == clamd_pid).collect();
        let per_k = |cpu: f64| cpu * 1000.0 / n as f64;
        let clamd_k = per_k(cpu_since(&before, &clamd));
        let mut problem = check(self.kind, d, &sink.last());
        if problem.is_none() && self.av && self.kind != Kind::Bare && clamd_k <= 0.0 {
            problem = Some("clamd used no CPU: nothing was scanned".into());
        }
        let mut per_program: BTreeMap<String, f64> = BTreeMap::new();
        for p in &filters {
            *per_program.entry(program(&p.cmdline)).or_default() +=
                per_k(cpu_since(&before, &[*p]));
        }
        Run {
            fig: Some(Figures {
                rate: n as f64 / secs,
                cpu_ms: per_k(cpu_since(&before, &filters)),
            }),
            per_program,
            postfix_k: per_k(cpu_since(&before, &postfix)),
            clamd_k,
            rss_kb: filters.iter().map(|p| p.hwm_kb).sum(),
            problem,
        }
    }

    /// This setup's filter processes and Postfix's own in the snapshot `procs`.
    fn split<'a>(&self, procs: &'a [Proc]) -> (Vec<&'a Proc>, Vec<&'a Proc>) {
        let roots: Vec<u32> = self.filters.iter().map(|k| k.0.id()).collect();
        let mut fset = descendants(procs, &roots);
        for p in procs {
            if p.cmdline.contains(&self.marker) && !p.cmdline.starts_with("spawn") {
                fset.insert(p.pid);
            }
        }
        let pset = descendants(procs, &[self.postfix.master_pid()]);
        let filters = procs.iter().filter(|p| fset.contains(&p.pid)).collect();
        let postfix = procs
            .iter()
            .filter(|p| pset.contains(&p.pid) && !fset.contains(&p.pid))
            .collect();
        (filters, postfix)
    }
}

/// The program a command line runs: the script under an interpreter, rspamd for its
/// retitled workers.
fn program(cmdline: &str) -> String {
    let mut words = cmdline.split_whitespace();
    let first = words.next().unwrap_or("?");
    let base = |w: &str| {
        w.rsplit('/')
            .next()
            .unwrap_or(w)
            .trim_end_matches(':')
            .to_owned()
    };
    if base(first).starts_with("python") {
        words.next().map_or_else(|| base(first), base)
    } else {
        base(first)
    }
}

/// What the last message of a run must show, if it does not.
fn check(kind: Kind, d: Dir, msg: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(msg).to_ascii_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let want: &[&[&str]] = match (kind, d) {
        (Kind::Bare, _) => &[],
        (_, Dir::Inbound) => &[
            &["dkim=pass"],
            &["dmarc=pass"],
            &["spf=pass", "received-spf: pass"],
        ],
        (_, Dir::Outbound) => &[&["dkim-signature:"]],
    };
    if msg.is_empty() {
        return Some("no message reached the sink".into());
    }
    let missing: Vec<&str> = want
        .iter()
        .filter(|any| !any.iter().any(|w| head.contains(w)))
        .map(|any| any[0])
        .collect();
    (!missing.is_empty()).then(|| {
        let shown: String = head.lines().take(40).collect::<Vec<_>>().join("\n      ");
        format!("missing {missing:?} in:\n      {shown}")
    })
}

/// rspamd's whole configuration (no stock file included): the self-scanning milter proxy and
/// only the SPF, DKIM (verify; signing for local senders), DMARC, Authentication-Results and
/// (AV on) antivirus modules; DNS at the namespace's server.
fn write_rspamd_conf(f: &Path, env: &Env<'_>, ep: &Ep) -> std::io::Result<PathBuf> {
    let db = f.join("db");
    std::fs::create_dir_all(&db)?;
    // Hyperscan databases take minutes to compile on the first start: kept across runs.
    let hs = env.bins.dir.join("rspamd-hs-cache");
    std::fs::create_dir_all(&hs)?;
    let ok = Command::new("chown")
        .args(["_rspamd:_rspamd"])
        .arg(&db)
        .arg(f)
        .arg(&hs)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(io_err("chown _rspamd (is rspamd installed?)".into()));
    }
    let mut av = String::new();
    if env.av {
        let _ = write!(
            av,
            "antivirus {{\n  clamav {{\n    type = \"clamav\";\n    servers = \"{}\";\n    \
             scan_mime_parts = false;\n    action = \"reject\";\n    symbol = \"CLAM_VIRUS\";\n    \
             log_clean = false;\n  }}\n}}\n",
            env.clamd.display()
        );
    }
    let conf = format!(
        r#"options {{
  pidfile = "{d}/rspamd.pid";
  filters = "dkim";
  dns {{ nameserver = ["127.0.0.1:53"]; timeout = 1s; retransmits = 2; sockets = 16; }}
  url_tld = "/usr/share/rspamd/effective_tld_names.dat";
  hs_cache_dir = "{hs}/";
  cache_file = "{d}/db/symbols.cache";
  explicit_modules = [];
  local_addrs = [127.0.0.0/8];
  task_timeout = 8s;
}}
logging {{ type = "file"; filename = "{d}/rspamd.log"; level = "warning"; }}
worker "rspamd_proxy" {{
  bind_socket = "{bind}";
  milter = yes;
  timeout = 120s;
  upstream "local" {{ default = yes; self_scan = yes; }}
  count = {cores};
}}
# Every plugin is loaded; only those with a section below are enabled.
modules {{ path = "/usr/share/rspamd/plugins"; }}
spf {{ }}
dkim {{ }}
dmarc {{ }}
dkim_signing {{
  sign_local = true;
  sign_inbound = false;
  sign_authenticated = true;
  use_domain = "header";
  allow_hdrfrom_mismatch = false;
  domain {{ {DOMAIN} {{ selector = "{SELECTOR}"; path = "{key}"; }} }}
}}
milter_headers {{
  use = ["authentication-results"];
  skip_local = false;
  skip_authenticated = false;
}}
{av}"#,
        d = f.display(),
        cores = num_cores(),
        key = env.key.display(),
        hs = hs.display(),
        bind = ep.rspamd(),
    );
    let path = f.join("rspamd.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// A private Postfix listening on 192.0.2.10 (inbound) and 127.0.0.1 (outbound), relaying to
/// its own counting sink; stopped (`postfix abort`) on drop.
struct PostfixInstance {
    dir: PathBuf,
    port_in: u16,
    port_out: u16,
    sink: CountingSink,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PostfixInstance {
    fn start(dir: &Path, milters: &str, policy: Option<String>) -> std::io::Result<Self> {
        let sink = CountingSink::start()?;
        let (port_in, port_out) = (free_port()?, free_port()?);
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let ok = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(io_err("chown postfix".into()));
        }
        let d = dir.display();
        let mut restrictions = "reject_unauth_destination".to_owned();
        let mut master = format!(
            "127.0.0.1:{port_out} inet n - n - - smtpd\n{EXTERNAL}:{port_in} inet n - n - - smtpd\n"
        );
        for line in [
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "showq unix n - n - - showq",
            "postlog unix-dgram n - n - 1 postlogd",
        ] {
            master.push_str(line);
            master.push('\n');
        }
        if let Some(argv) = &policy {
            let _ = writeln!(master, "spf unix - n n - 0 spawn user=nobody argv={argv}");
            restrictions.push_str(", check_policy_service unix:private/spf");
        }
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
             command_directory = /usr/sbin\ndaemon_directory = /usr/lib/postfix/sbin\n\
             shlib_directory = /usr/lib/postfix\nmeta_directory = /etc/postfix\n\
             mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = {AUTHSERV}\n\
             mydomain = dest.example\nmydestination =\nmynetworks = 127.0.0.0/8\n\
             relay_domains = dest.example\nrelay_transport = smtp:[127.0.0.1]:{sink}\n\
             default_transport = smtp:[127.0.0.1]:{sink}\ninet_interfaces = all\n\
             inet_protocols = ipv4\nalias_maps =\nalias_database =\n\
             maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\n\
             smtp_dns_support_level = disabled\nsmtpd_peername_lookup = no\n\
             smtpd_recipient_restrictions = {restrictions}\nsmtp_tls_security_level = none\n\
             smtpd_tls_security_level = none\nbiff = no\nin_flow_delay = 0\n\
             max_use = 100000\nspf_time_limit = 3600\nsmtpd_milters = {milters}\n\
             milter_default_action = tempfail\nqueue_minfree = 0\n",
            sink = sink.port
        );
        std::fs::write(dir.join("conf/main.cf"), main)?;
        std::fs::write(dir.join("conf/master.cf"), master)?;
        let pf = Self {
            dir: dir.to_owned(),
            port_in,
            port_out,
            sink,
        };
        let out = pf.postfix("start")?;
        if !out.status.success() {
            return Err(io_err(format!(
                "postfix start: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((INTERNAL, port_out)).is_err() {
            if Instant::now() > deadline {
                return Err(io_err(format!("postfix did not listen; see {d}/maillog")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pf)
    }

    fn postfix(&self, what: &str) -> std::io::Result<std::process::Output> {
        Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg(what)
            .output()
    }

    fn master_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("queue/pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        let _ = self.postfix("abort");
    }
}

/// One measured run, or why it failed.
struct Run {
    fig: Option<Figures>,
    /// Filter CPU seconds per 1,000 messages by program.
    per_program: BTreeMap<String, f64>,
    postfix_k: f64,
    clamd_k: f64,
    rss_kb: u64,
    problem: Option<String>,
}

impl Run {
    fn failed(why: String) -> Self {
        Self {
            fig: None,
            per_program: BTreeMap::new(),
            postfix_k: f64::NAN,
            clamd_k: f64::NAN,
            rss_kb: 0,
            problem: Some(why),
        }
    }
}

/// The medians of a setup's runs of one case.
struct Row {
    kind: Kind,
    fig: Option<Figures>,
    per_program: BTreeMap<String, f64>,
    postfix_k: f64,
    clamd_k: f64,
    rss_kb: u64,
    flagged: bool,
}

impl Row {
    fn of(s: &Setup, runs: &[Run], notes: &mut Vec<String>, case: &str) -> Self {
        let mut flagged = false;
        for r in runs {
            if let Some(p) = &r.problem {
                flagged = true;
                let note = format!("{} {case}: {p}", s.kind.name());
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        let good: Vec<&Run> = runs.iter().filter(|r| r.fig.is_some()).collect();
        Self {
            kind: s.kind,
            fig: (!good.is_empty()).then(|| median(good.iter().filter_map(|r| r.fig).collect())),
            per_program: good
                .iter()
                .flat_map(|r| r.per_program.keys())
                .map(|k| {
                    let v = good
                        .iter()
                        .map(|r| r.per_program.get(k).copied().unwrap_or(0.0))
                        .collect();
                    (k.clone(), median_f64(v))
                })
                .collect(),
            postfix_k: median_f64(good.iter().map(|r| r.postfix_k).collect()),
            clamd_k: median_f64(good.iter().map(|r| r.clamd_k).collect()),
            rss_kb: good.iter().map(|r| r.rss_kb).max().unwrap_or(0),
            flagged,
        }
    }
}

fn print_header() {
    println!(
        "{:<8} {:<13} {:>7} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>8}",
        "case",
        "setup",
        "msg/s",
        "filt s/1k",
        "pfix s/1k",
        "clamd s/1k",
        "RSS MiB",
        "x bare",
        "x seed",
        "cpu/seed"
    );
}

fn print_row(case: &str, r: &Row, bare: Option<Figures>, seed: Option<Figures>) {
    let name = format!("{}{}", r.kind.name(), if r.flagged { " !" } else { "" });
    let Some(f) = r.fig else {
        println!("{case:<8} {name:<13} failed (see below)");
        return;
    };
    let ratio =
        |a: f64, b: Option<f64>| b.map_or_else(|| "-".to_owned(), |b| format!("{:.2}", a / b));
    let filt = if r.kind == Kind::Bare {
        "-".to_owned()
    } else {
        format!("{:.2}", f.cpu_ms)
    };
    let cpu_seed = if matches!(r.kind, Kind::Bare) {
        "-".to_owned()
    } else {
        ratio(f.cpu_ms, seed.map(|s| s.cpu_ms))
    };
    println!(
        "{case:<8} {name:<13} {:>7.0} {filt:>9} {:>9.2} {:>9.2} {:>8.1} {:>7} {:>7} {cpu_seed:>8}",
        f.rate,
        r.postfix_k,
        r.clamd_k,
        r.rss_kb as f64 / 1024.0,
        ratio(f.rate, bare.map(|b| b.rate)),
        ratio(f.rate, seed.map(|s| s.rate)),
    );
}
