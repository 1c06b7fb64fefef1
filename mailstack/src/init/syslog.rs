//! The syslog path of the container: parsing what local senders write to `/dev/log`
//! (RFC 3164 and RFC 5424), the [`Sink`] every line goes through (Postfix's, saslauthd's and
//! our own daemons'), and the [`Receiver`] on the unix datagram socket.
//!
//! A [`Sink`] is a cheap handle over one bounded queue. [`Sink::submit`] never waits: when
//! the queue is full the line is dropped and counted ([`Sink::dropped`]), and the backend
//! that drains the queue ([`super::logfile`] for `/var/log/mail.log`, [`super::forward`] for
//! `MAIL_LOG_HOST`) writes a line with the count as soon as it can. So a slow disk or a dead
//! log host never blocks an async worker or a daemon writing to `/dev/log`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mailstack::init::logfile::{FileConfig, FileLog};
//! use mailstack::init::syslog::{Facility, Receiver, Severity, Sink};
//!
//! let (sink, queue) = Sink::channel(mailstack::init::syslog::DEFAULT_QUEUE);
//! let writer = FileLog::spawn(FileConfig::new("/var/log/mail.log"), queue)?;
//! let receiver = Receiver::bind("/dev/log", sink.clone())?;
//! sink.log(Facility::Daemon, Severity::Informational, "mailstack-init", "starting");
//! receiver.run(tokio::signal::ctrl_c()).await?;
//! drop(sink);
//! writer.finish(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixDatagram;
use tokio::sync::{mpsc, oneshot};

/// The largest datagram we read from `/dev/log`; longer ones are truncated by the kernel to
/// this size. 8 KiB is rsyslog's default `$MaxMessageSize`, so we keep what rsyslog kept.
pub const MAX_DATAGRAM: usize = 8192;

/// The longest APP-NAME (and PROCID) we keep in a tag: RFC 3164 §4.1.3 limits the TAG to 32
/// characters, and rsyslog's forwarding template cuts `%syslogtag:1:32%`. Longer ones are cut.
pub const MAX_TAG: usize = 32;

/// The default depth of a [`Sink`]'s queue, in lines: at ~200 bytes a line, about 2 MiB, a
/// few minutes of a busy Postfix while the log host is away. rsyslog's default main queue
/// holds 100,000 messages; ours is smaller because it lives in the init's memory.
pub const DEFAULT_QUEUE: usize = 10_000;

/// The tag of the lines the log path writes about itself (drops, write errors).
pub const SELF_TAG: &str = "mailstack-log";

/// A syslog facility (RFC 5424 §6.2.1, table 1; the codes are the wire numbers).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // the names are the RFC's table
pub enum Facility {
    Kern = 0,
    User = 1,
    Mail = 2,
    Daemon = 3,
    Auth = 4,
    Syslog = 5,
    Lpr = 6,
    News = 7,
    Uucp = 8,
    Cron = 9,
    Authpriv = 10,
    Ftp = 11,
    Ntp = 12,
    Audit = 13,
    Alert = 14,
    Clock = 15,
    Local0 = 16,
    Local1 = 17,
    Local2 = 18,
    Local3 = 19,
    Local4 = 20,
    Local5 = 21,
    Local6 = 22,
    Local7 = 23,
}

impl Facility {
    const ALL: [Self; 24] = [
        Self::Kern,
        Self::User,
        Self::Mail,
        Self::Daemon,
        Self::Auth,
        Self::Syslog,
        Self::Lpr,
        Self::News,
        Self::Uucp,
        Self::Cron,
        Self::Authpriv,
        Self::Ftp,
        Self::Ntp,
        Self::Audit,
        Self::Alert,
        Self::Clock,
        Self::Local0,
        Self::Local1,
        Self::Local2,
        Self::Local3,
        Self::Local4,
        Self::Local5,
        Self::Local6,
        Self::Local7,
    ];

    /// The facility with wire code `code` (0..=23).
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A syslog severity (RFC 5424 §6.2.1, table 2; the codes are the wire numbers).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)] // the names are the RFC's table
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

impl Severity {
    const ALL: [Self; 8] = [
        Self::Emergency,
        Self::Alert,
        Self::Critical,
        Self::Error,
        Self::Warning,
        Self::Notice,
        Self::Informational,
        Self::Debug,
    ];

    /// The severity with wire code `code` (0..=7).
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A PRI value: facility and severity (`<PRI>` is `facility * 8 + severity`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Priority {
    /// The facility.
    pub facility: Facility,
    /// The severity.
    pub severity: Severity,
}

impl Priority {
    /// What a line without a valid `<PRI>` gets: `user.notice` (RFC 3164 §4.3.3, and
    /// rsyslog's default).
    pub const DEFAULT: Self = Self {
        facility: Facility::User,
        severity: Severity::Notice,
    };

    /// The priority with PRI value `code` (0..=191).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(Self {
            facility: Facility::from_code(code / 8)?,
            severity: Severity::from_code(code % 8)?,
        })
    }

    /// The PRI value.
    pub fn code(self) -> u8 {
        self.facility.code() * 8 + self.severity.code()
    }
}

/// One log line, as the sinks write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Facility and severity.
    pub priority: Priority,
    /// When we received (or were given) it. Local senders' own timestamps are ignored, as
    /// rsyslog's imuxsock does by default: RFC 3164 stamps carry no year and no zone.
    pub timestamp: OffsetDateTime,
    /// The HOSTNAME the sender put in, if any; the sinks write the local host otherwise.
    pub hostname: Option<String>,
    /// The program name (RFC 3164 TAG up to `[`, RFC 5424 APP-NAME), at most [`MAX_TAG`]
    /// characters; empty when the line had none.
    pub app: String,
    /// The process id part of the tag (`[1234]`, RFC 5424 PROCID), at most [`MAX_TAG`].
    pub pid: Option<String>,
    /// The text, control characters escaped as rsyslog does (`#011` for a tab), without
    /// the trailing newline.
    pub text: String,
}

impl Message {
    /// A line from our own code: `app` becomes the tag, `text` is escaped and bounded the
    /// same way as received lines, stamped now.
    pub fn new(priority: Priority, app: &str, text: &str) -> Self {
        Self {
            priority,
            timestamp: OffsetDateTime::now_utc(),
            hostname: None,
            app: clean_tag(app),
            pid: None,
            text: escape_text(text.as_bytes()),
        }
    }

    /// The line in rsyslog's `RSYSLOG_TraditionalFileFormat`
    /// (`%TIMESTAMP% %HOSTNAME% %syslogtag%%msg%`), LF-terminated:
    /// `Dec  3 17:00:00 mx postfix/smtpd[42]: connect from ...`.
    pub fn file_line(&self, local_host: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + 64);
        self.write_traditional(&mut out, local_host);
        out
    }

    /// The line in rsyslog's `RSYSLOG_TraditionalForwardFormat` (what `@@host` sends):
    /// `<PRI>` then the file format, LF-terminated.
    pub fn forward_line(&self, local_host: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + 70);
        // Writing to a String cannot fail.
        let _ = write!(out, "<{}>", self.priority.code());
        self.write_traditional(&mut out, local_host);
        out
    }

    fn write_traditional(&self, out: &mut String, local_host: &str) {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let t = self.timestamp;
        let month = MONTHS[usize::from(u8::from(t.month())) - 1];
        let host = self.hostname.as_deref().unwrap_or(local_host);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{month} {:>2} {:02}:{:02}:{:02} {host} ",
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        if !self.app.is_empty() {
            out.push_str(&self.app);
            if let Some(pid) = &self.pid {
                let _ = write!(out, "[{pid}]");
            }
            out.push_str(": ");
        }
        out.push_str(&self.text);
        out.push('\n');
    }
}

fn tag_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !matches!(c, ':' | '[' | ']')
}

/// `s` restricted to tag characters (others become `_`) and cut to [`MAX_TAG`].
fn clean_tag(s: &str) -> String {
    s.chars()
        .take(MAX_TAG)
        .map(|c| if tag_char(c) { c } else { '_' })
        .collect()
}

/// The bytes as text: invalid UTF-8 replaced, control characters as `#ooo` (rsyslog's
/// `$EscapeControlCharactersOnReceive`, on by default), bounded by [`MAX_DATAGRAM`] input.
fn escape_text(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_DATAGRAM)];
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_control() {
            let _ = write!(out, "#{:03o}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses one datagram from a local sender, RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID
/// MSGID SD MSG`) or RFC 3164 (`<PRI>Mmm dd hh:mm:ss [HOST] TAG[PID]: MSG`, HOST optional
/// as glibc's `syslog()` leaves it out). Never fails: like rsyslog, a line that does not
/// parse keeps its text, with [`Priority::DEFAULT`] when `<PRI>` is missing or invalid,
/// and an empty tag when there is none. `now` becomes the timestamp.
pub fn parse(datagram: &[u8], now: OffsetDateTime) -> Message {
    let mut data = &datagram[..datagram.len().min(MAX_DATAGRAM)];
    // Trailing LF / NUL (some senders terminate their datagrams) are not part of the text.
    while let [rest @ .., b'\n' | b'\0' | b'\r'] = data {
        data = rest;
    }
    let (priority, rest) = match parse_pri(data) {
        Some((p, rest)) => (p, rest),
        None => (Priority::DEFAULT, data),
    };
    let mut msg = Message {
        priority,
        timestamp: now,
        hostname: None,
        app: String::new(),
        pid: None,
        text: String::new(),
    };
    if let Some(rest) = rest.strip_prefix(b"1 ") {
        parse_5424(rest, &mut msg);
    } else {
        parse_3164(rest, &mut msg);
    }
    msg
}

fn parse_pri(data: &[u8]) -> Option<(Priority, &[u8])> {
    let rest = data.strip_prefix(b"<")?;
    let end = rest.iter().take(4).position(|&b| b == b'>')?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let pri = Priority::from_code(u8::try_from(code).ok()?)?;
    Some((pri, &rest[end + 1..]))
}

/// Splits off the next space-delimited token (one space consumed).
fn token(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = data.iter().position(|&b| b == b' ')?;
    Some((&data[..end], &data[end + 1..]))
}

fn nil_or(field: &[u8]) -> Option<String> {
    (field != b"-" && !field.is_empty()).then(|| clean_tag(&String::from_utf8_lossy(field)))
}

fn parse_5424(data: &[u8], msg: &mut Message) {
    // TIMESTAMP HOSTNAME APP-NAME PROCID MSGID; a header that is cut short keeps the rest
    // as text, so nothing the sender wrote is lost.
    let fields = (|| {
        let (_ts, rest) = token(data)?;
        let (host, rest) = token(rest)?;
        let (app, rest) = token(rest)?;
        let (pid, rest) = token(rest)?;
        let (_msgid, rest) = token(rest).unwrap_or((rest, b""));
        Some((host, app, pid, rest))
    })();
    let Some((host, app, pid, rest)) = fields else {
        msg.text = escape_text(data);
        return;
    };
    msg.hostname = nil_or(host);
    msg.app = nil_or(app).unwrap_or_default();
    msg.pid = nil_or(pid);
    let text = skip_structured_data(rest);
    let text = text.strip_prefix(b" ").unwrap_or(text);
    let text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(text);
    msg.text = escape_text(text);
}

/// Skips RFC 5424 STRUCTURED-DATA: `-` or one or more `[id param="value"...]` elements
/// (`\]`, `\"` and `\\` escaped inside values). Unterminated data swallows the rest.
fn skip_structured_data(data: &[u8]) -> &[u8] {
    if let Some(rest) = data.strip_prefix(b"-") {
        return rest;
    }
    let mut i = 0;
    while data.get(i) == Some(&b'[') {
        let mut quoted = false;
        i += 1;
        loop {
            match data.get(i) {
                None => return &[],
                Some(b'\\') if quoted => i += 2,
                Some(b'"') => {
                    quoted = !quoted;
                    i += 1;
                }
                Some(b']') if !quoted => {
                    i += 1;
                    break;
                }
                Some(_) => i += 1,
            }
        }
    }
    data.get(i..).unwrap_or(&[])
}

/// An RFC 3164 timestamp, `Mmm dd hh:mm:ss` (day space-padded), or the RFC 3339 one rsyslog
/// and newer loggers put in 3164 lines; the rest after it and its space.
fn skip_3164_timestamp(data: &[u8]) -> Option<&[u8]> {
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    if data.len() >= 16 && MONTHS.contains(&&data[..3]) && data[3] == b' ' {
        let day = &data[4..6];
        let time = &data[7..15];
        let day_ok = (day[0] == b' ' || day[0].is_ascii_digit()) && day[1].is_ascii_digit();
        let time_ok = time.iter().enumerate().all(|(i, &b)| {
            if i == 2 || i == 5 {
                b == b':'
            } else {
                b.is_ascii_digit()
            }
        });
        if day_ok && data[6] == b' ' && time_ok && data[15] == b' ' {
            return Some(&data[16..]);
        }
    }
    let (ts, rest) = token(data)?;
    let ts = std::str::from_utf8(ts).ok()?;
    OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(rest)
}

/// `TAG[PID]:` at the start of `data`: the app, the pid and the text after `: `.
fn parse_tag(data: &[u8]) -> Option<(String, Option<String>, &[u8])> {
    // Room for APP and PID of MAX_TAG characters of up to 4 bytes each, brackets and colon.
    let text = std::str::from_utf8(&data[..data.len().min(8 * MAX_TAG + 3)])
        .or_else(|e| std::str::from_utf8(&data[..e.valid_up_to()]))
        .ok()?;
    let app_end = text.find(|c: char| !tag_char(c))?;
    if app_end == 0 {
        return None;
    }
    let app = &text[..app_end];
    let mut rest = &text[app_end..];
    let mut pid = None;
    if let Some(after) = rest.strip_prefix('[') {
        let close = after.find(']')?;
        let p = &after[..close];
        if p.is_empty() || !p.chars().all(tag_char) {
            return None;
        }
        pid = Some(p);
        rest = &after[close + 1..];
    }
    rest.strip_prefix(':')?;
    let consumed = text.len() - rest.len() + 1;
    let body = &data[consumed..];
    let body = body.strip_prefix(b" ").unwrap_or(body);
    Some((clean_tag(app), pid.map(clean_tag), body))
}

fn parse_3164(data: &[u8], msg: &mut Message) {
    let after_ts = skip_3164_timestamp(data);
    let content = after_ts.unwrap_or(data);
    // A HOSTNAME is there when the token after the timestamp is followed by a tag: glibc's
    // syslog() writes no hostname, `logger --rfc3164` and relays do.
    if after_ts.is_some()
        && let Some((host, rest)) = token(content)
        && !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && let Some((app, pid, body)) = parse_tag(rest)
    {
        msg.hostname = Some(String::from_utf8_lossy(host).into_owned());
        msg.app = app;
        msg.pid = pid;
        msg.text = escape_text(body);
        return;
    }
    match parse_tag(content) {
        Some((app, pid, body)) => {
            msg.app = app;
            msg.pid = pid;
            msg.text = escape_text(body);
        }
        None => msg.text = escape_text(content),
    }
}

/// The fuzz target `syslog_line` (`mailstack::fuzzing::syslog_line`): any datagram parses,
/// both renderings are one line without control characters, and the forward rendering
/// parses back to the same priority, tag and text (when it has a tag, a host name made of
/// host-name characters, and fits in one datagram).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_line(data: &[u8]) {
    let now = OffsetDateTime::UNIX_EPOCH;
    let msg = parse(data, now);
    assert!(msg.app.chars().count() <= MAX_TAG);
    assert!(
        msg.pid
            .as_ref()
            .is_none_or(|p| p.chars().count() <= MAX_TAG)
    );
    for line in [msg.file_line("fuzzhost"), msg.forward_line("fuzzhost")] {
        // A failed check is the finding this function exists for.
        let body = line.strip_suffix('\n').expect("rendered lines end in LF");
        assert!(!body.chars().any(|c| c.is_ascii_control()), "{line:?}");
    }
    let forward = msg.forward_line("fuzzhost");
    let host_ok = msg.hostname.as_ref().is_none_or(|h| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    });
    if !msg.app.is_empty() && host_ok && forward.len() <= MAX_DATAGRAM {
        let again = parse(forward.as_bytes(), now);
        assert_eq!(
            (again.priority, &again.app, &again.pid, &again.text),
            (msg.priority, &msg.app, &msg.pid, &msg.text),
            "{forward:?}"
        );
    }
}

/// This host's name as rsyslog writes it: the short name (up to the first dot).
pub fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates or
    // truncates within it, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let short = name.split('.').next().unwrap_or_default();
    if short.is_empty() {
        "localhost".to_owned()
    } else {
        short.to_owned()
    }
}

/// What travels in a sink's queue.
#[derive(Debug)]
pub(crate) enum Item {
    Line(Message),
    /// Flush, then stop (sent by [`LogTask::finish`]).
    Stop,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    dropped: AtomicU64,
    unreported: AtomicU64,
    /// Set by [`LogTask::finish`]: a backend that cannot deliver (log host down) gives up.
    stopping: std::sync::atomic::AtomicBool,
}

/// The sending side of the log path: clone it for every producer. Submitting never waits.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::Sender<Item>,
    counters: Arc<Counters>,
}

/// The draining side of a [`Sink`]'s queue, handed to one backend
/// ([`super::logfile::FileLog::spawn`], [`super::forward::Forwarder::spawn`]).
#[derive(Debug)]
pub struct Queue {
    pub(crate) rx: mpsc::Receiver<Item>,
    counters: Arc<Counters>,
    // A sender of the queue's own, so that `LogTask::finish` can queue the stop behind the
    // lines already submitted (the channel does not close while the backend runs).
    stop_tx: mpsc::Sender<Item>,
}

impl Sink {
    /// A sink and its queue holding at most `capacity` lines (at least 1).
    pub fn channel(capacity: usize) -> (Self, Queue) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let queue = Queue {
            rx,
            counters: counters.clone(),
            stop_tx: tx.clone(),
        };
        (Self { tx, counters }, queue)
    }

    /// Queues `msg`; `false` when the queue is full or its backend has stopped, and the
    /// line is then counted as dropped.
    pub fn submit(&self, msg: Message) -> bool {
        match self.tx.try_send(Item::Line(msg)) {
            Ok(()) => true,
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.counters.unreported.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues a line of our own ([`Message::new`]).
    pub fn log(&self, facility: Facility, severity: Severity, app: &str, text: &str) -> bool {
        self.submit(Message::new(Priority { facility, severity }, app, text))
    }

    /// Queues one line a program wrote to its stdout or stderr, as [`pipe_lines`] does:
    /// its `tracing` level (`ERROR`, `WARN`, ...) read as the severity (else `severity`),
    /// colour codes removed, control characters escaped.
    pub fn line(&self, facility: Facility, severity: Severity, app: &str, line: &[u8]) {
        submit_child_line(self, facility, severity, app, line);
    }

    /// How many lines were dropped since the sink was made (for metrics).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
}

impl Queue {
    /// Lines dropped since the last call (the backend reports them in a line of its own).
    pub(crate) fn take_unreported(&self) -> u64 {
        self.counters.unreported.swap(0, Ordering::Relaxed)
    }

    /// Counts a line the backend lost (write failed, gave up).
    pub(crate) fn count_drop(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        self.counters.unreported.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether [`LogTask::finish`] was called.
    pub(crate) fn stopping(&self) -> bool {
        self.counters.stopping.load(Ordering::Relaxed)
    }

    /// Total dropped lines, as [`Sink::dropped`].
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// The line a backend writes about `n` dropped lines.
    pub(crate) fn drop_report(n: u64, why: &str) -> Message {
        Message::new(
            Priority {
                facility: Facility::Syslog,
                severity: Severity::Warning,
            },
            SELF_TAG,
            &format!("{n} log lines dropped ({why})"),
        )
    }
}

/// A running backend: [`finish`](Self::finish) makes it write what is queued and stop.
#[must_use = "a log backend runs until finished; dropping this loses the final flush"]
#[derive(Debug)]
pub struct LogTask {
    stop: mpsc::Sender<Item>,
    done: oneshot::Receiver<()>,
    counters: Arc<Counters>,
}

impl Queue {
    /// The handle of the backend draining this queue; `done` fires when it has stopped.
    pub(crate) fn task(&self, done: oneshot::Receiver<()>) -> LogTask {
        LogTask {
            stop: self.stop_tx.clone(),
            done,
            counters: self.counters.clone(),
        }
    }
}

impl LogTask {
    /// Lines dropped so far (queue full, backend failing), for metrics.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Queues a stop behind every line already submitted and waits (at most `grace`) for
    /// the backend to write them and stop. Returns whether it stopped within `grace`.
    /// A forwarder whose log host is unreachable stops at its next attempt, leaving the
    /// queued lines unsent.
    pub async fn finish(self, grace: Duration) -> bool {
        let Self {
            stop,
            done,
            counters,
        } = self;
        counters.stopping.store(true, Ordering::Relaxed);
        tokio::time::timeout(grace, async move {
            if stop.send(Item::Stop).await.is_ok() {
                let _ = done.await;
            }
        })
        .await
        .is_ok()
    }
}

/// Why [`Receiver::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// Another process is receiving on that socket.
    #[error("{}: another process is receiving on this socket", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket could not be made.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// The syslog receiver on a unix datagram socket (`/dev/log`).
#[derive(Debug)]
pub struct Receiver {
    socket: UnixDatagram,
    path: PathBuf,
    sink: Sink,
}

impl Receiver {
    /// Binds `path` (mode 0666, so every local program can log, as `/dev/log` is). A stale
    /// socket file is removed only when nothing receives on it. Must be called within a
    /// tokio runtime.
    pub fn bind(path: impl AsRef<Path>, sink: Sink) -> Result<Self, BindError> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = path.as_ref().to_path_buf();
        let io_err = |source| BindError::Io {
            path: path.clone(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt as _;
            // Only a socket is ours to replace; anything else there is a configuration error.
            if !meta.file_type().is_socket() {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            let probe = std::os::unix::net::UnixDatagram::unbound().map_err(io_err)?;
            if probe.connect(&path).is_ok() {
                return Err(BindError::InUse { path });
            }
            std::fs::remove_file(&path).map_err(io_err)?;
        }
        let socket = UnixDatagram::bind(&path).map_err(io_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(io_err)?;
        Ok(Self { socket, path, sink })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives until `shutdown` completes (whatever its output), then removes the socket file. Each datagram
    /// becomes one [`Message`] ([`parse`]); a full queue drops it (counted by the sink).
    pub async fn run(self, shutdown: impl Future) -> io::Result<()> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                r = self.socket.recv(&mut buf) => match r {
                    Ok(n) => {
                        let data = buf.get(..n).unwrap_or(&buf);
                        self.sink.submit(parse(data, OffsetDateTime::now_utc()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                },
            }
        };
        let _ = std::fs::remove_file(&self.path);
        result
    }
}

/// Reads `reader` (a child's stderr) line by line until EOF and submits each line with
/// `app` as tag (lines longer than [`MAX_DATAGRAM`] are split). Returns the number of
/// lines read. Tracing's level words (`ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`) near the
/// start of a line set its severity; other lines get `severity`.
///
/// ```no_run
/// # async fn demo(sink: mailstack::init::syslog::Sink) -> std::io::Result<()> {
/// use mailstack::init::syslog::{Facility, Severity, pipe_lines};
/// let mut child = tokio::process::Command::new("mailstackd")
///     .stderr(std::process::Stdio::piped())
///     .spawn()?;
/// let stderr = child.stderr.take().expect("piped");
/// tokio::spawn(async move {
///     pipe_lines(stderr, &sink, Facility::Mail, Severity::Informational, "mailstackd").await
/// });
/// # Ok(()) }
/// ```
pub async fn pipe_lines<R: AsyncRead + Unpin>(
    reader: R,
    sink: &Sink,
    facility: Facility,
    severity: Severity,
    app: &str,
) -> io::Result<u64> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::with_capacity(256);
    let mut lines = 0u64;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if !line.is_empty() {
                submit_child_line(sink, facility, severity, app, &line);
                lines += 1;
            }
            return Ok(lines);
        }
        let room = MAX_DATAGRAM - line.len();
        let (take, complete) = match buf.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len().min(room), line.len() + buf.len() >= MAX_DATAGRAM),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if complete {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            submit_child_line(sink, facility, severity, app, &line);
            lines += 1;
            line.clear();
        }
    }
}

fn submit_child_line(sink: &Sink, facility: Facility, default: Severity, app: &str, line: &[u8]) {
    let line = match line.last() {
        Some(b'\r') => &line[..line.len() - 1],
        _ => line,
    };
    let severity = tracing_level(line).unwrap_or(default);
    let mut msg = Message::new(Priority { facility, severity }, app, "");
    msg.text = escape_text(strip_ansi(line).as_slice());
    sink.submit(msg);
}

/// Removes ANSI colour sequences (`ESC [ ... letter`), which tracing's formatter writes
/// when it believes stderr is a terminal.
fn strip_ansi(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while let Some(&b) = line.get(i) {
        if b == 0x1b && line.get(i + 1) == Some(&b'[') {
            i += 2;
            while line.get(i).is_some_and(|c| !c.is_ascii_alphabetic()) {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// The level of a line in tracing-subscriber's default format
/// (`2026-12-03T17:00:00.000000Z  WARN target: text`): the first level word among the
/// first three tokens.
fn tracing_level(line: &[u8]) -> Option<Severity> {
    let line = strip_ansi(&line[..line.len().min(128)]);
    line.split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .take(3)
        .find_map(|t| match t {
            b"ERROR" => Some(Severity::Error),
            b"WARN" => Some(Severity::Warning),
            b"INFO" => Some(Severity::Informational),
            b"DEBUG" | b"TRACE" => Some(Severity::Debug),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> OffsetDateTime {
        // 2026-12-03 07:04:05 UTC
        OffsetDateTime::from_unix_timestamp(1_796_281_445).unwrap()
    }

    #[test]
    fn pri_codes_round_trip() {
        for code in 0..=191u8 {
            assert_eq!(Priority::from_code(code).unwrap().code(), code);
        }
        assert_eq!(Priority::from_code(192), None);
        assert_eq!(
            Priority::from_code(22),
            Some(Priority {
                facility: Facility::Mail,
                severity: Severity::Informational
            })
        );
    }

    #[test]
    fn glibc_local_line_without_hostname() {
        let m = parse(
            b"<22>Dec  3 07:04:05 postfix/smtpd[4242]: connect from unknown[192.0.2.1]",
            at(),
        );
        assert_eq!(m.priority.code(), 22);
        assert_eq!(m.hostname, None);
        assert_eq!(m.app, "postfix/smtpd");
        assert_eq!(m.pid.as_deref(), Some("4242"));
        assert_eq!(m.text, "connect from unknown[192.0.2.1]");
        assert_eq!(
            m.file_line("mx"),
            "Dec  3 07:04:05 mx postfix/smtpd[4242]: connect from unknown[192.0.2.1]\n"
        );
        assert_eq!(
            m.forward_line("mx"),
            "<22>Dec  3 07:04:05 mx postfix/smtpd[4242]: connect from unknown[192.0.2.1]\n"
        );
    }

    #[test]
    fn rfc3164_with_hostname_and_no_pid() {
        let m = parse(b"<13>Dec 13 07:04:05 relay1 root: hello world\n", at());
        assert_eq!(m.hostname.as_deref(), Some("relay1"));
        assert_eq!(m.app, "root");
        assert_eq!(m.pid, None);
        assert_eq!(m.text, "hello world");
        assert_eq!(
            m.file_line("mx"),
            "Dec  3 07:04:05 relay1 root: hello world\n"
        );
    }

    #[test]
    fn rfc3339_timestamp_in_3164_line() {
        let m = parse(b"<30>2026-12-03T07:04:05.123+01:00 saslauthd[9]: ok", at());
        assert_eq!(m.app, "saslauthd");
        assert_eq!(m.pid.as_deref(), Some("9"));
        assert_eq!(m.text, "ok");
        assert_eq!(m.priority.facility, Facility::Daemon);
    }

    #[test]
    fn rfc5424_line_with_structured_data_and_bom() {
        let m = parse(
            b"<165>1 2026-12-03T07:04:05.003Z mymachine evntslog 77 ID47 [exampleSDID@32473 iut=\"3\" x=\"a\\]b\"][second@1 a=\"1\"] \xef\xbb\xbfAn application event",
            at(),
        );
        assert_eq!(m.priority.facility, Facility::Local4);
        assert_eq!(m.priority.severity, Severity::Notice);
        assert_eq!(m.hostname.as_deref(), Some("mymachine"));
        assert_eq!(m.app, "evntslog");
        assert_eq!(m.pid.as_deref(), Some("77"));
        assert_eq!(m.text, "An application event");
        let m = parse(b"<14>1 - - - - - - just text", at());
        assert_eq!((m.hostname, m.app.as_str(), m.pid), (None, "", None));
        assert_eq!(m.text, "just text");
        // `logger --rfc5424` on a unix socket.
        let m = parse(
            b"<13>1 2026-12-03T07:04:05.1+00:00 mx root - - [timeQuality tzKnown=\"1\" isSynced=\"0\"] hi",
            at(),
        );
        assert_eq!((m.app.as_str(), m.text.as_str()), ("root", "hi"));
    }

    #[test]
    fn malformed_input_keeps_its_text() {
        for (input, text) in [
            (&b""[..], ""),
            (b"no pri at all", "no pri at all"),
            (b"<999>too big", "<999>too big"),
            (b"<12", "<12"),
            (b"<>x", "<>x"),
            (b"<1>1 truncated", "truncated"),
            (b"<5>1 a b c d e [unterminated", ""),
        ] {
            let m = parse(input, at());
            assert_eq!(m.text, text, "{input:?}");
        }
        let m = parse(b"<192>x", at());
        assert_eq!(m.priority, Priority::DEFAULT);
    }

    #[test]
    fn control_characters_and_bad_utf8_are_escaped() {
        let m = parse(b"<13>app: a\tb\x1bc\xffd\x7f\0", at());
        assert_eq!(m.text, "a#011b#033c\u{fffd}d#177");
        assert!(!m.file_line("h").trim_end_matches('\n').contains('\n'));
        let m = parse(b"<13>app: two\nlines", at());
        assert_eq!(m.text, "two#012lines");
    }

    #[test]
    fn long_input_is_bounded() {
        let mut big = b"<13>app: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 3 * MAX_DATAGRAM));
        let m = parse(&big, at());
        assert!(m.text.len() <= MAX_DATAGRAM);
        let long_tag = format!("<13>{}: x", "t".repeat(100));
        let m = parse(long_tag.as_bytes(), at());
        assert!(m.app.len() <= MAX_TAG, "{}", m.app);
    }

    #[test]
    fn forward_line_reparses_to_the_same_message() {
        for input in [
            &b"<22>Dec  3 07:04:05 postfix/qmgr[1]: 4ABC: removed"[..],
            b"<11>1 - host app - - - text",
            b"<13>app:  leading space kept",
        ] {
            let m = parse(input, at());
            let again = parse(m.forward_line("mx").as_bytes(), at());
            assert_eq!(
                (again.priority, &again.app, &again.pid),
                (m.priority, &m.app, &m.pid)
            );
            assert_eq!(again.text, m.text);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_and_render_back(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            fuzz_line(&data);
        }

        #[test]
        fn shaped_lines_round_trip(
            pri in 0u8..=191,
            host in proptest::option::of("[a-z0-9.-]{1,20}"),
            app in "[^ :\\[\\]\\p{C}\\s]{1,40}",
            pid in proptest::option::of("[0-9]{1,8}"),
            text in "\\PC{0,200}",
            rfc5424 in proptest::bool::ANY,
        ) {
            let pid_part = pid.as_ref().map(|p| format!("[{p}]")).unwrap_or_default();
            let line = if rfc5424 {
                format!("<{pri}>1 2026-12-03T07:04:05Z {} {app} {} - - {text}",
                    host.as_deref().unwrap_or("-"), pid.as_deref().unwrap_or("-"))
            } else {
                let host = host.as_ref().map(|h| format!("{h} ")).unwrap_or_default();
                format!("<{pri}>Dec  3 07:04:05 {host}{app}{pid_part}: {text}")
            };
            let m = parse(line.as_bytes(), at());
            proptest::prop_assert_eq!(m.priority.code(), pri);
            proptest::prop_assert_eq!(&m.app, &app.chars().take(MAX_TAG).collect::<String>());
            proptest::prop_assert_eq!(&m.pid, &pid);
            fuzz_line(line.as_bytes());
        }
    }

    #[tokio::test]
    async fn sink_counts_drops_when_full() {
        let (sink, mut queue) = Sink::channel(2);
        assert!(sink.log(Facility::Mail, Severity::Notice, "a", "1"));
        assert!(sink.log(Facility::Mail, Severity::Notice, "a", "2"));
        assert!(!sink.log(Facility::Mail, Severity::Notice, "a", "3"));
        assert_eq!(sink.dropped(), 1);
        assert_eq!(queue.take_unreported(), 1);
        assert_eq!(queue.take_unreported(), 0);
        assert_eq!(queue.dropped(), 1);
        let Some(Item::Line(m)) = queue.rx.recv().await else {
            panic!("expected a line")
        };
        assert_eq!(m.text, "1");
    }

    #[tokio::test]
    async fn receiver_parses_datagrams_and_refuses_a_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (sink, mut queue) = Sink::channel(8);
        let receiver = Receiver::bind(&path, sink.clone()).unwrap();
        assert!(matches!(
            Receiver::bind(&path, sink.clone()),
            Err(BindError::InUse { .. })
        ));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let run = tokio::spawn(receiver.run(async move {
            let _ = stop_rx.await;
        }));
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"<19>app[7]: hi", &path).unwrap();
        client
            .send_to(&vec![b'y'; MAX_DATAGRAM * 2], &path)
            .unwrap();
        let Some(Item::Line(m)) = queue.rx.recv().await else {
            panic!()
        };
        assert_eq!((m.app.as_str(), m.text.as_str()), ("app", "hi"));
        let Some(Item::Line(m)) = queue.rx.recv().await else {
            panic!()
        };
        assert_eq!(m.text.len(), MAX_DATAGRAM);
        stop_tx.send(()).unwrap();
        run.await.unwrap().unwrap();
        assert!(!path.exists());
        // A stale socket file (nobody receiving) is replaced.
        let stale = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        drop(stale);
        Receiver::bind(&path, sink.clone()).unwrap();
        // A file that is not a socket is left alone.
        let file = dir.path().join("notasocket");
        std::fs::write(&file, "keep").unwrap();
        assert!(matches!(
            Receiver::bind(&file, sink),
            Err(BindError::Io { .. })
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }

    #[tokio::test]
    async fn pipe_lines_tags_levels_and_splits() {
        let (sink, mut queue) = Sink::channel(16);
        let long = "z".repeat(MAX_DATAGRAM + 10);
        let input = format!(
            "2026-12-03T07:04:05Z  WARN mailstackd: slow\r\n\x1b[31mERROR\x1b[0m boom\nplain\n{long}\nlast"
        );
        let n = pipe_lines(
            input.as_bytes(),
            &sink,
            Facility::Mail,
            Severity::Informational,
            "mailstackd",
        )
        .await
        .unwrap();
        assert_eq!(n, 6);
        let mut got = Vec::new();
        while let Ok(Item::Line(m)) = queue.rx.try_recv() {
            got.push(m);
        }
        assert_eq!(got.len(), 6);
        assert!(got.iter().all(|m| m.app == "mailstackd"));
        assert_eq!(got[0].priority.severity, Severity::Warning);
        assert_eq!(got[0].text, "2026-12-03T07:04:05Z  WARN mailstackd: slow");
        assert_eq!(got[1].priority.severity, Severity::Error);
        assert_eq!(got[1].text, "ERROR boom");
        assert_eq!(got[2].priority.severity, Severity::Informational);
        assert_eq!(got[3].text.len(), MAX_DATAGRAM);
        assert_eq!(got[4].text, "z".repeat(10));
        assert_eq!(got[5].text, "last");
    }
}
