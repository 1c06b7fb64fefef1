//! Helpers shared by the bench binaries in `benches/benches/`: a server child process that is
//! killed on drop, CPU time and peak RSS of a process from `/proc`, and medians of runs.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use milter_proto::SocketSpec;

/// A server child process listening on a unix socket, killed (and reaped) on drop.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub socket: SocketSpec,
}

impl Server {
    /// Waits (up to 60 s) until `child` accepts connections on the unix socket `path`;
    /// panics, naming `what`, if it exits first or never listens.
    pub fn wait_unix(child: Child, path: &Path, what: &str) -> Self {
        let mut server = Self {
            child,
            socket: SocketSpec::Unix(path.to_owned()),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(path).is_err() {
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!("{what} exited with {st}");
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {} within 60 s",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of `pid` (all its threads) in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / hz
}

/// Peak resident set size (`VmHWM`) of `pid` in kB, 0 if unreadable.
pub fn vm_hwm_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

/// Current RSS (`VmRSS` in `/proc/PID/status`) in kB; 0 when the process is gone.
pub fn vm_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One measured run: messages (or requests) per second and server CPU milliseconds per
/// message.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Messages per second.
    pub rate: f64,
    /// Server CPU (utime + stime) per message, in milliseconds.
    pub cpu_ms: f64,
}

/// The median rate and the median CPU per message of `runs` (each taken on its own).
pub fn median(mut runs: Vec<Figures>) -> Figures {
    assert!(!runs.is_empty(), "median of no runs");
    let mid = runs.len() / 2;
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let rate = runs[mid].rate;
    runs.sort_by(|a, b| a.cpu_ms.total_cmp(&b.cpu_ms));
    Figures {
        rate,
        cpu_ms: runs[mid].cpu_ms,
    }
}

/// Measures ours and theirs alternately `rounds` times (so drift on a shared machine hits
/// both alike) and returns the two medians.
pub fn alternate(
    rounds: usize,
    mut ours: impl FnMut() -> Figures,
    mut theirs: impl FnMut() -> Figures,
) -> (Figures, Figures) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        a.push(ours());
        b.push(theirs());
    }
    (median(a), median(b))
}

/// The header of the side-by-side table [`print_row`] fills; `theirs` names the other tool.
pub fn print_header(theirs: &str) {
    println!(
        "{:<8} {:>10} {:>10} {:>6} {:>10} {:>10} {:>13} {:>13} {:>6}",
        "case",
        "ours msg/s",
        format!("{theirs} msg/s"),
        "ratio",
        "ours msCPU",
        format!("{theirs} msCPU"),
        "ours msg/cpus",
        format!("{theirs} msg/cpus"),
        "ratio"
    );
}

/// One row: messages per second, CPU milliseconds per message and messages per CPU second,
/// ours and theirs, with the ratios ours / theirs.
pub fn print_row(case: &str, ours: Figures, theirs: Figures) {
    let (pa, pb) = (1000.0 / ours.cpu_ms, 1000.0 / theirs.cpu_ms);
    println!(
        "{case:<8} {:>10.0} {:>10.0} {:>6.2} {:>10.3} {:>10.3} {:>13.0} {:>13.0} {:>6.2}",
        ours.rate,
        theirs.rate,
        ours.rate / theirs.rate,
        ours.cpu_ms,
        theirs.cpu_ms,
        pa,
        pb,
        pa / pb
    );
}

/// The median of `values` (the upper one of the two middle values for an even count); NaN
/// for none.
pub fn median_f64(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One process as `/proc` shows it at a [`processes`] snapshot.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// The command line, arguments joined by spaces.
    pub cmdline: String,
    /// utime + stime in seconds (as [`cpu_seconds`]).
    pub cpu: f64,
    /// Peak RSS (`VmHWM`) in kB.
    pub hwm_kb: u64,
    /// Current RSS (`VmRSS`) in kB.
    pub rss_kb: u64,
}

/// Every process `/proc` lists now (those that vanish while it is read are left out).
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the ")" that closes the command name: state, ppid (4), utime (14),
        // stime (15).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(Proc {
            pid,
            ppid: f.get(1).and_then(|x| x.parse().ok()).unwrap_or(0),
            cmdline,
            cpu: (num(11) + num(12)) / hz,
            hwm_kb: vm_hwm_kb(pid),
            rss_kb: vm_rss_kb(pid),
        });
    }
    out
}

/// The pids in `procs` that are one of `roots` or descend from one.
pub fn descendants(procs: &[Proc], roots: &[u32]) -> std::collections::BTreeSet<u32> {
    let mut set: std::collections::BTreeSet<u32> = roots
        .iter()
        .copied()
        .filter(|r| procs.iter().any(|p| p.pid == *r))
        .collect();
    loop {
        let before = set.len();
        for p in procs {
            if set.contains(&p.ppid) {
                set.insert(p.pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// CPU seconds the processes `now` (a later snapshot restricted to some set) used since
/// `before` (an earlier full snapshot): a process absent from `before` started in between
/// and counts from zero. Processes that exited in between are not counted.
pub fn cpu_since(before: &[Proc], now: &[&Proc]) -> f64 {
    now.iter()
        .map(|p| {
            let start = before
                .iter()
                .find(|b| b.pid == p.pid)
                .map_or(0.0, |b| b.cpu);
            (p.cpu - start).max(0.0)
        })
        .sum()
}

/// An SMTP server on 127.0.0.1 that accepts every message, counts them and keeps only the
/// last one: the end of a Postfix relay chain under load (`smtp-sink` without its per-message
/// files). A thread per connection; runs until the process exits.
#[derive(Debug, Clone)]
pub struct CountingSink {
    /// The port it listens on.
    pub port: u16,
    state: std::sync::Arc<SinkState>,
}

#[derive(Debug, Default)]
struct SinkState {
    count: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<Vec<u8>>,
}

impl CountingSink {
    /// Binds 127.0.0.1 on a free port (in the calling thread's network namespace) and serves.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = std::sync::Arc::new(SinkState::default());
        let st = std::sync::Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = std::sync::Arc::clone(&st);
                std::thread::spawn(move || {
                    let _ = serve_sink(conn, &st);
                });
            }
        });
        Ok(Self { port, state })
    }

    /// Messages received so far.
    pub fn count(&self) -> usize {
        self.state.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last message received (dot-unstuffed, CRLF line ends), empty before the first.
    pub fn last(&self) -> Vec<u8> {
        self.state
            .last
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Waits until at least `n` messages arrived or `deadline` passed; true if they did.
    pub fn wait_for(&self, n: usize, deadline: Instant) -> bool {
        while self.count() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

fn serve_sink(conn: std::net::TcpStream, st: &SinkState) -> std::io::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let mut out = conn.try_clone()?;
    let mut input = std::io::BufReader::new(conn);
    out.write_all(b"220 sink ESMTP\r\n")?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        match verb.as_slice() {
            b"EHLO" => out.write_all(b"250-sink\r\n250 8BITMIME\r\n")?,
            b"QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            b"DATA" => {
                out.write_all(b"354 go\r\n")?;
                let mut msg = Vec::new();
                loop {
                    line.clear();
                    if input.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    let text = line.strip_prefix(b".").unwrap_or(&line);
                    msg.extend_from_slice(text);
                }
                if let Ok(mut last) = st.last.lock() {
                    *last = msg;
                }
                st.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                out.write_all(b"250 queued\r\n")?;
            }
            _ => out.write_all(b"250 ok\r\n")?,
        }
    }
}
