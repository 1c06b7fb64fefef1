//! What `/proc/PID/status` says about a child: peak memory (`VmHWM`) and the ids it runs as.

/// A `kB` line of `/proc/PID/status` (`VmHWM:`, `VmRSS:`), in kB.
pub fn status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The numbers of a `Uid:`, `Gid:` or `Groups:` line of `/proc/PID/status`.
pub fn status_ids(pid: u32, key: &str) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(|n| n.parse().expect("numeric id"))
        .collect()
}

/// The largest peak RSS (kB) of the children this process has waited for
/// (`getrusage(RUSAGE_CHILDREN)`): an upper bound on the peak of a short-lived CLI run.
pub fn children_max_rss_kb() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other preconditions.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) },
        0
    );
    u64::try_from(ru.ru_maxrss).unwrap_or(0)
}
