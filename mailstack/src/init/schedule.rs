//! Scheduled jobs without cron: named jobs that run every interval or daily at a UTC time,
//! never overlapping themselves, with optional jitter and a bound on each run, logging
//! start, end and failure to the log [`Sink`].
//!
//! Another feature registers its job before [`Scheduler::run`] (the DMARC aggregate
//! reports, the Maildir backup of [`super::backup`]):
//!
//! ```no_run
//! # async fn demo(sink: mailstack::init::syslog::Sink) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use mailstack::init::schedule::{JobError, JobSpec, Schedule, Scheduler, job_fn};
//!
//! let mut scheduler = Scheduler::new(sink);
//! scheduler.register(
//!     JobSpec::new("dmarc-reports", Schedule::daily(0, 30)?).jitter(Duration::from_secs(600)),
//!     job_fn(|| async { Ok::<_, JobError>(Some("sent 3 reports".to_owned())) }),
//! )?;
//! scheduler.run(tokio::signal::ctrl_c(), Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! A job runs in one loop of its own, so a run that takes longer than its interval delays
//! the next one (the missed slots are skipped, and that is logged) instead of overlapping.
//! An interval job first runs one interval after the start, a daily job at its next time.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::syslog::{Facility, Severity, Sink};

/// What a job's failure is: any error (the scheduler only logs it).
pub type JobError = Box<dyn std::error::Error + Send + Sync>;

/// The tag of the scheduler's log lines.
pub const TAG: &str = "mailstack-init";

/// The shortest interval accepted: a job every second is already a loop, not a schedule.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The bound of one run unless the job says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The most jobs one scheduler holds.
pub const MAX_JOBS: usize = 64;

const DAY: u64 = 86_400;

/// When a job runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Schedule {
    /// Every interval, counted from the scheduler's start.
    Every(Duration),
    /// Every day at `hour:minute` UTC.
    DailyAt {
        /// 0..=23.
        hour: u8,
        /// 0..=59.
        minute: u8,
    },
}

/// Why a schedule or a registration is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScheduleError {
    /// An interval below [`MIN_INTERVAL`].
    #[error("interval {0:?} is shorter than the minimum of 1 s")]
    IntervalTooShort(Duration),
    /// An hour above 23 or a minute above 59.
    #[error("{hour:02}:{minute:02} is not a time of day (00:00..23:59)")]
    BadTime {
        /// The hour given.
        hour: u8,
        /// The minute given.
        minute: u8,
    },
    /// Text that is neither `daily HH:MM` nor `every N[s|m|h|d]`.
    #[error("{0:?}: expected \"daily HH:MM\" (UTC) or \"every N\" with unit s, m, h or d")]
    Syntax(String),
    /// A job with this name is already registered.
    #[error("a job named {0:?} is already registered")]
    Duplicate(String),
    /// More than [`MAX_JOBS`] jobs.
    #[error("more than {MAX_JOBS} jobs")]
    TooManyJobs,
}

impl Schedule {
    /// Every `interval` (at least [`MIN_INTERVAL`]).
    pub fn every(interval: Duration) -> Result<Self, ScheduleError> {
        if interval < MIN_INTERVAL {
            return Err(ScheduleError::IntervalTooShort(interval));
        }
        Ok(Self::Every(interval))
    }

    /// Daily at `hour:minute` UTC.
    pub fn daily(hour: u8, minute: u8) -> Result<Self, ScheduleError> {
        if hour > 23 || minute > 59 {
            return Err(ScheduleError::BadTime { hour, minute });
        }
        Ok(Self::DailyAt { hour, minute })
    }

    /// How long from `now` (wall clock) until a daily job's next time; for an interval
    /// job, the interval.
    pub fn delay_from(&self, now: SystemTime) -> Duration {
        match *self {
            Self::Every(interval) => interval,
            Self::DailyAt { hour, minute } => {
                let since = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let into_day = since.as_secs() % DAY;
                let target = u64::from(hour) * 3600 + u64::from(minute) * 60;
                let secs = if target > into_day {
                    target - into_day
                } else {
                    target + DAY - into_day
                };
                Duration::from_secs(secs) - Duration::from_nanos(u64::from(since.subsec_nanos()))
            }
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// `daily HH:MM` (UTC) or `every N` with a unit `s`, `m`, `h` or `d` (`every 6h`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ScheduleError::Syntax(s.chars().take(64).collect());
        let mut words = s.split_whitespace();
        let (Some(kind), Some(arg), None) = (words.next(), words.next(), words.next()) else {
            return Err(syntax());
        };
        match kind {
            "daily" => {
                let (h, m) = arg.split_once(':').ok_or_else(syntax)?;
                if h.len() > 2 || m.len() != 2 {
                    return Err(syntax());
                }
                Self::daily(
                    h.parse().map_err(|_| syntax())?,
                    m.parse().map_err(|_| syntax())?,
                )
            }
            "every" => {
                let split = arg.len().checked_sub(1).ok_or_else(syntax)?;
                let (n, unit) = arg.split_at(split);
                let n: u64 = n.parse().map_err(|_| syntax())?;
                let unit = match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => DAY,
                    _ => return Err(syntax()),
                };
                Self::every(Duration::from_secs(n.checked_mul(unit).ok_or_else(syntax)?))
            }
            _ => Err(syntax()),
        }
    }
}

/// A job: one run, with an optional summary for the log line that ends it.
#[async_trait::async_trait]
pub trait Job: Send + Sync + 'static {
    /// Runs once. `Ok(Some(text))` adds `text` to the "finished" line.
    async fn run(&self) -> Result<Option<String>, JobError>;
}

/// A [`Job`] from an async closure (see [`job_fn`]).
pub struct FnJob<F>(F);

impl<F> std::fmt::Debug for FnJob<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnJob")
    }
}

/// Makes a [`Job`] of `f`, called once per run.
pub fn job_fn<F, Fut>(f: F) -> FnJob<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<String>, JobError>> + Send + 'static,
{
    FnJob(f)
}

#[async_trait::async_trait]
impl<F, Fut> Job for FnJob<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<String>, JobError>> + Send + 'static,
{
    async fn run(&self) -> Result<Option<String>, JobError> {
        (self.0)().await
    }
}

/// A [`Job`] that runs a program (the DMARC report run of `[reports]`): its stdout and
/// stderr lines go to the log [`Sink`] tagged with `tag`; a non-zero exit is the job's
/// failure. The child is started through [`super::reaper`] (PID 1 collects every exit) and
/// killed when the run is cancelled at its timeout or at shutdown.
#[derive(Debug, Clone)]
pub struct CommandJob {
    program: std::path::PathBuf,
    args: Vec<std::ffi::OsString>,
    sink: Sink,
    tag: String,
}

impl CommandJob {
    /// `program` with `args`, its output logged to `sink` as `tag`.
    pub fn new(
        program: impl Into<std::path::PathBuf>,
        args: impl IntoIterator<Item = impl Into<std::ffi::OsString>>,
        sink: Sink,
        tag: impl Into<String>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            sink,
            tag: tag.into(),
        }
    }
}

#[async_trait::async_trait]
impl Job for CommandJob {
    async fn run(&self) -> Result<Option<String>, JobError> {
        use std::process::Stdio;
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = super::reaper::spawn(&mut cmd)
            .map_err(|e| format!("{}: cannot start: {e}", self.program.display()))?;
        let log = |pipe: Option<tokio::net::unix::pipe::Receiver>| async {
            match pipe {
                Some(p) => super::syslog::pipe_lines(
                    p,
                    &self.sink,
                    Facility::Cron,
                    Severity::Informational,
                    &self.tag,
                )
                .await
                .unwrap_or(0),
                None => 0,
            }
        };
        let (out, err) = tokio::join!(log(child.stdout.take()), log(child.stderr.take()));
        let status = child.wait().await?;
        let lines = out + err;
        if status.success() {
            Ok(Some(format!(
                "{} exited 0 ({lines} lines of output)",
                self.program.display()
            )))
        } else {
            Err(format!(
                "{} {} ({lines} lines of output, logged as {})",
                self.program.display(),
                super::supervise::describe_exit(status),
                self.tag
            )
            .into())
        }
    }
}

/// A job's name and timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    name: String,
    schedule: Schedule,
    jitter: Duration,
    timeout: Duration,
}

impl JobSpec {
    /// `name` (used in the log lines) on `schedule`, no jitter, [`DEFAULT_TIMEOUT`].
    pub fn new(name: impl Into<String>, schedule: Schedule) -> Self {
        Self {
            name: name.into(),
            schedule,
            jitter: Duration::ZERO,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Each start is delayed by a random amount in `0..=jitter` (so many containers do
    /// not all report to the same host in the same second).
    #[must_use]
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// A run still going after `timeout` is cancelled and logged as failed.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The registered jobs, and the loop that runs them.
pub struct Scheduler {
    sink: Sink,
    jobs: Vec<(JobSpec, Arc<dyn Job>)>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field(
                "jobs",
                &self.jobs.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Scheduler {
    /// A scheduler logging to `sink`.
    pub fn new(sink: Sink) -> Self {
        Self {
            sink,
            jobs: Vec::new(),
        }
    }

    /// Adds a job; names are unique.
    pub fn register(&mut self, spec: JobSpec, job: impl Job) -> Result<(), ScheduleError> {
        if self.jobs.iter().any(|(s, _)| s.name == spec.name) {
            return Err(ScheduleError::Duplicate(spec.name));
        }
        if self.jobs.len() >= MAX_JOBS {
            return Err(ScheduleError::TooManyJobs);
        }
        self.jobs.push((spec, Arc::new(job)));
        Ok(())
    }

    /// The registered jobs' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.jobs.iter().map(|(s, _)| s.name())
    }

    /// Runs the jobs until `shutdown` completes (whatever its output); a run in progress then gets `grace` to
    /// end before it is cancelled.
    pub async fn run(self, shutdown: impl Future, grace: Duration) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut set = JoinSet::new();
        for (spec, job) in self.jobs {
            set.spawn(job_loop(spec, job, self.sink.clone(), stop_rx.clone()));
        }
        let _ = shutdown.await;
        let _ = stop_tx.send(true);
        let drained =
            tokio::time::timeout(grace, async { while set.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            self.sink.log(
                Facility::Cron,
                Severity::Warning,
                TAG,
                "shutdown: cancelling jobs still running after the grace period",
            );
            set.abort_all();
        }
    }
}

async fn job_loop(spec: JobSpec, job: Arc<dyn Job>, sink: Sink, mut stop: watch::Receiver<bool>) {
    let started = Instant::now();
    // For interval jobs: the slot the next run belongs to.
    let mut slot = 1u32;
    loop {
        let wait = match spec.schedule {
            Schedule::Every(interval) => {
                let due = started + interval.saturating_mul(slot);
                due.saturating_duration_since(Instant::now())
            }
            daily @ Schedule::DailyAt { .. } => daily.delay_from(SystemTime::now()),
        };
        let jitter = if spec.jitter.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(spec.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(fastrand::u64(0..=nanos))
        };
        tokio::select! {
            () = tokio::time::sleep(wait + jitter) => {}
            _ = stop.wait_for(|&s| s) => return,
        }
        let name = &spec.name;
        let info = |sev, text: String| sink.log(Facility::Cron, sev, TAG, &text);
        info(Severity::Informational, format!("job {name}: started"));
        let t0 = Instant::now();
        let result = tokio::time::timeout(spec.timeout, job.run()).await;
        let took = t0.elapsed();
        match result {
            Ok(Ok(summary)) => info(
                Severity::Informational,
                match summary {
                    Some(s) => format!("job {name}: finished in {took:.1?}: {s}"),
                    None => format!("job {name}: finished in {took:.1?}"),
                },
            ),
            Ok(Err(e)) => info(
                Severity::Error,
                format!("job {name}: failed after {took:.1?}: {e}"),
            ),
            Err(_) => info(
                Severity::Error,
                format!("job {name}: timed out after {:?}, cancelled", spec.timeout),
            ),
        };
        if let Schedule::Every(interval) = spec.schedule {
            // The first slot still ahead; the ones the run overlapped are skipped.
            let behind = Instant::now().saturating_duration_since(started);
            let next = u32::try_from(behind.as_nanos() / interval.as_nanos().max(1))
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            let skipped = next.saturating_sub(slot + 1);
            if skipped > 0 {
                info(
                    Severity::Warning,
                    format!("job {name}: ran longer than its interval, {skipped} runs skipped"),
                );
            }
            slot = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::syslog::{Item, Queue};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn lines(queue: &mut Queue) -> Vec<(Severity, String)> {
        let mut out = Vec::new();
        while let Ok(Item::Line(m)) = queue.rx.try_recv() {
            assert_eq!(m.app, TAG);
            assert_eq!(m.priority.facility, Facility::Cron);
            out.push((m.priority.severity, m.text));
        }
        out
    }

    #[tokio::test]
    async fn command_job_logs_output_and_fails_on_exit_status() {
        let (sink, mut queue) = Sink::channel(100);
        let ok = CommandJob::new("sh", ["-c", "echo one; echo two >&2"], sink.clone(), "rep");
        let summary = ok.run().await.unwrap().unwrap();
        assert_eq!(summary, "sh exited 0 (2 lines of output)");
        let bad = CommandJob::new("sh", ["-c", "echo oops; exit 4"], sink.clone(), "rep");
        let e = bad.run().await.unwrap_err().to_string();
        assert_eq!(e, "sh exit status 4 (1 lines of output, logged as rep)");
        let missing = CommandJob::new("/nonexistent/prog", ["x"], sink, "rep");
        let e = missing.run().await.unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/prog: cannot start:"), "{e}");
        let mut got = Vec::new();
        while let Ok(Item::Line(m)) = queue.rx.try_recv() {
            assert_eq!(m.app, "rep");
            got.push(m.text);
        }
        got.sort();
        assert_eq!(got, ["one", "oops", "two"]);
    }

    #[test]
    fn daily_delay() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let daily = Schedule::daily(3, 30).unwrap();
        let day = 20_000 * DAY;
        assert_eq!(
            daily.delay_from(at(day)),
            Duration::from_secs(3 * 3600 + 1800)
        );
        // Exactly at the time: tomorrow's.
        assert_eq!(daily.delay_from(at(day + 12_600)), Duration::from_secs(DAY));
        assert_eq!(
            daily.delay_from(at(day + 12_601)),
            Duration::from_secs(DAY - 1)
        );
        assert_eq!(
            daily.delay_from(at(day) + Duration::from_millis(500)),
            Duration::from_secs(12_600) - Duration::from_millis(500)
        );
    }

    #[test]
    fn schedule_text() {
        assert_eq!("daily 03:05".parse(), Schedule::daily(3, 5));
        assert_eq!(
            "every 6h".parse(),
            Ok(Schedule::Every(Duration::from_secs(6 * 3600)))
        );
        assert_eq!(
            "every 90s".parse(),
            Schedule::every(Duration::from_secs(90))
        );
        for bad in [
            "",
            "daily",
            "daily 3",
            "daily 24:00",
            "daily 1:5",
            "every 5",
            "every 0s",
            "hourly 1",
            "every 1x",
            "every 99999999999999999d",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad}");
        }
        assert_eq!(
            Schedule::daily(23, 60),
            Err(ScheduleError::BadTime {
                hour: 23,
                minute: 60
            })
        );
    }

    #[test]
    fn names_are_unique() {
        let (sink, _q) = Sink::channel(4);
        let mut s = Scheduler::new(sink);
        let every = Schedule::every(Duration::from_secs(60)).unwrap();
        let job = || job_fn(|| async { Ok(None) });
        s.register(JobSpec::new("a", every), job()).unwrap();
        assert_eq!(
            s.register(JobSpec::new("a", every), job()),
            Err(ScheduleError::Duplicate("a".into()))
        );
        s.register(JobSpec::new("b", every), job()).unwrap();
        assert_eq!(s.names().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn interval_jobs_run_log_and_do_not_overlap() {
        let (sink, mut queue) = Sink::channel(256);
        let mut s = Scheduler::new(sink);
        let runs = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let max_running = Arc::new(AtomicUsize::new(0));
        {
            let (runs, running, max_running) = (runs.clone(), running.clone(), max_running.clone());
            // Takes 25 s, scheduled every 10 s.
            s.register(
                JobSpec::new("slow", Schedule::every(Duration::from_secs(10)).unwrap()),
                job_fn(move || {
                    let (runs, running, max_running) =
                        (runs.clone(), running.clone(), max_running.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        max_running.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(25)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(Some("done".into()))
                    }
                }),
            )
            .unwrap();
        }
        s.register(
            JobSpec::new("bad", Schedule::every(Duration::from_secs(30)).unwrap()),
            job_fn(|| async { Err::<Option<String>, JobError>("disk full".into()) }),
        )
        .unwrap();
        s.register(
            JobSpec::new("stuck", Schedule::every(Duration::from_secs(100)).unwrap())
                .timeout(Duration::from_secs(5)),
            job_fn(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(None)
            }),
        )
        .unwrap();
        // Runs of "slow": 10..35, 40..65, 70..95; the scheduler stops at 101.
        s.run(
            tokio::time::sleep(Duration::from_secs(101)),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(max_running.load(Ordering::SeqCst), 1);
        // The fourth run (100..125) ended within the grace period.
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        let got = lines(&mut queue);
        let has = |sev: Severity, text: &str| got.iter().any(|(s, t)| *s == sev && t == text);
        assert!(has(Severity::Informational, "job slow: started"), "{got:?}");
        assert!(
            has(Severity::Informational, "job slow: finished in 25.0s: done"),
            "{got:?}"
        );
        assert!(
            has(
                Severity::Warning,
                "job slow: ran longer than its interval, 2 runs skipped"
            ),
            "{got:?}"
        );
        assert!(
            has(Severity::Error, "job bad: failed after 0.0ns: disk full"),
            "{got:?}"
        );
        assert!(
            has(Severity::Error, "job stuck: timed out after 5s, cancelled"),
            "{got:?}"
        );
        let bad_runs = got.iter().filter(|(_, t)| t == "job bad: started").count();
        assert_eq!(bad_runs, 3, "at 30, 60 and 90 s: {got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_a_run_after_the_grace_period() {
        let (sink, mut queue) = Sink::channel(16);
        let mut s = Scheduler::new(sink);
        s.register(
            JobSpec::new("long", Schedule::every(Duration::from_secs(1)).unwrap()),
            job_fn(|| async {
                tokio::time::sleep(Duration::from_secs(1000)).await;
                Ok(None)
            }),
        )
        .unwrap();
        let t0 = Instant::now();
        s.run(
            tokio::time::sleep(Duration::from_secs(2)),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        let got = lines(&mut queue);
        assert_eq!(
            got.last().map(|(s, _)| *s),
            Some(Severity::Warning),
            "{got:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_bounds() {
        let (sink, mut queue) = Sink::channel(64);
        let mut s = Scheduler::new(sink);
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t0 = Instant::now();
        {
            let starts = starts.clone();
            s.register(
                JobSpec::new("j", Schedule::every(Duration::from_secs(10)).unwrap())
                    .jitter(Duration::from_secs(3)),
                job_fn(move || {
                    starts.lock().unwrap().push(t0.elapsed());
                    async { Ok(None) }
                }),
            )
            .unwrap();
        }
        s.run(
            tokio::time::sleep(Duration::from_secs(55)),
            Duration::from_secs(1),
        )
        .await;
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 5, "{starts:?}");
        for (i, at) in starts.iter().enumerate() {
            let slot = Duration::from_secs(10 * (i as u64 + 1));
            assert!(
                *at >= slot && *at <= slot + Duration::from_secs(3),
                "{starts:?}"
            );
        }
        assert_eq!(lines(&mut queue).len(), 10);
    }
}
