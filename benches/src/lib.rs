//! Helpers shared by the bench binaries in `benches/benches/`: a server child process that is
//! killed on drop, CPU time and peak RSS of a process from `/proc`, and medians of runs.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use milter_proto::socket::SocketSpec;

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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
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
