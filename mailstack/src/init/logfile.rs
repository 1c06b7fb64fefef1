//! `/var/log/mail.log` in rsyslog's traditional file format, rotated by size instead of by
//! logrotate: when the next line would take the file past [`FileConfig::max_bytes`],
//! `mail.log.(N-1)` becomes `mail.log.N` (the oldest, `mail.log.N`, is deleted) ... and
//! `mail.log` becomes `mail.log.1`, then a fresh `mail.log` is opened.
//!
//! The writing happens on a dedicated thread fed by the [`Sink`](super::syslog::Sink)'s
//! bounded queue, so a slow or full disk never stalls the async workers: the queue fills,
//! lines are dropped and counted, and the count is written once the disk keeps up again.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mailstack::init::logfile::{FileConfig, FileLog};
//! use mailstack::init::syslog::{Facility, Severity, Sink};
//! let (sink, queue) = Sink::channel(1000);
//! let mut config = FileConfig::new("/var/log/mail.log");
//! config.max_bytes = 50 << 20;
//! config.keep = 7;
//! let task = FileLog::spawn(config, queue)?;
//! sink.log(Facility::Mail, Severity::Notice, "mailstack-init", "hello");
//! task.finish(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;

use super::syslog::{Item, LogTask, Queue, local_hostname};

/// The default size at which `mail.log` is rotated: 10 MiB, a few days of a small mail
/// host (the seed's logrotate rotated weekly, which a busy host can turn into gigabytes).
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

/// How many rotated files are kept by default (`mail.log.1` .. `mail.log.4`), as Debian's
/// logrotate rule for rsyslog keeps four.
pub const DEFAULT_KEEP: usize = 4;

/// The most rotated files we keep, whatever the configuration says.
pub const MAX_KEEP: usize = 1000;

/// The mode of a new `mail.log` (rsyslog's `$FileCreateMode 0640` on Debian).
pub const FILE_MODE: u32 = 0o640;

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileConfig {
    /// The log file (`/var/log/mail.log`).
    pub path: PathBuf,
    /// Rotate when the next line would make the file larger than this (at least one line
    /// is always written to a fresh file, however long).
    pub max_bytes: u64,
    /// How many rotated files to keep (`path.1` .. `path.keep`); 0 truncates on rotation.
    /// Capped at [`MAX_KEEP`].
    pub keep: usize,
    /// The HOSTNAME written for local lines; [`local_hostname`] by default.
    pub hostname: String,
}

impl FileConfig {
    /// `path` with the default sizes.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
            hostname: local_hostname(),
        }
    }
}

/// An append-only file rotated by size (the sans-thread part of [`FileLog`]).
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl RotatingFile {
    /// Opens (or creates, mode [`FILE_MODE`]) `path` for appending.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let mut this = Self {
            path: path.into(),
            max_bytes: max_bytes.max(1),
            keep: keep.min(MAX_KEEP),
            file: None,
            size: 0,
        };
        this.reopen()?;
        Ok(this)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(BufWriter::with_capacity(64 << 10, file));
        Ok(())
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Appends `line` (which carries its own newline), rotating first if it would not fit.
    /// After an error the next call reopens the file.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        if self.size > 0 && self.size.saturating_add(line.len() as u64) > self.max_bytes {
            self.rotate()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("log file not open"));
        };
        if let Err(e) = file.write_all(line) {
            self.file = None;
            return Err(e);
        }
        self.size += line.len() as u64;
        Ok(())
    }

    /// Writes buffered lines out.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut().map(Write::flush) {
            Some(Err(e)) => {
                self.file = None;
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// Rotates now: `path.(keep-1)` -> `path.keep`, ..., `path` -> `path.1`, fresh `path`.
    pub fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush()?;
        }
        if self.keep == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&self.numbered(self.keep))?;
            for n in (1..self.keep).rev() {
                rename_if_exists(&self.numbered(n), &self.numbered(n + 1))?;
            }
            rename_if_exists(&self.path, &self.numbered(1))?;
        }
        self.reopen()
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The writer thread for `mail.log`.
#[derive(Debug)]
pub struct FileLog;

/// How many lines the writer takes from the queue before it flushes (it also flushes
/// whenever the queue is empty).
const BATCH: usize = 512;

impl FileLog {
    /// Opens the file (an error here is the caller's to report: nothing started) and
    /// starts the writer thread draining `queue`. Write errors later are reported on
    /// stderr once per failing streak, and the lines lost are counted as dropped.
    pub fn spawn(config: FileConfig, queue: Queue) -> io::Result<LogTask> {
        let mut file = RotatingFile::open(&config.path, config.max_bytes, config.keep)?;
        let (done_tx, done_rx) = oneshot::channel();
        let task = queue.task(done_rx);
        std::thread::Builder::new()
            .name("mail.log writer".into())
            .spawn(move || {
                write_loop(&mut file, queue, &config);
                let _ = done_tx.send(());
            })?;
        Ok(task)
    }
}

fn write_loop(file: &mut RotatingFile, mut queue: Queue, config: &FileConfig) {
    let mut failing = false;
    let mut write = |file: &mut RotatingFile, line: &str, queue: &Queue| match file
        .write_line(line.as_bytes())
    {
        Ok(()) => failing = false,
        Err(e) => {
            queue.count_drop();
            if !failing {
                eprintln!("mailstack-init: {}: {e}", config.path.display());
            }
            failing = true;
        }
    };
    while let Some(item) = queue.rx.blocking_recv() {
        let mut next = Some(item);
        let mut n = 0;
        let mut stop = false;
        while let Some(item) = next.take() {
            match item {
                Item::Line(msg) => write(file, &msg.file_line(&config.hostname), &queue),
                Item::Stop => {
                    stop = true;
                    break;
                }
            }
            n += 1;
            if n < BATCH {
                next = queue.rx.try_recv().ok();
            }
        }
        let dropped = queue.take_unreported();
        if dropped > 0 {
            let report = Queue::drop_report(dropped, "queue full or log file failing");
            write(file, &report.file_line(&config.hostname), &queue);
        }
        let _ = file.flush();
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::syslog::{Facility, Severity, Sink};

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn rotates_at_size_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        let mut f = RotatingFile::open(&path, 25, 2).unwrap();
        for i in 0..7 {
            f.write_line(format!("line {i} 0123456789\n").as_bytes())
                .unwrap(); // 18 bytes: one line per file
        }
        f.flush().unwrap();
        assert_eq!(read(&path), "line 6 0123456789\n");
        assert_eq!(read(&dir.path().join("mail.log.1")), "line 5 0123456789\n");
        assert_eq!(read(&dir.path().join("mail.log.2")), "line 4 0123456789\n");
        assert!(!dir.path().join("mail.log.3").exists());
    }

    #[test]
    fn fills_up_to_the_limit_and_appends_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut f = RotatingFile::open(&path, 12, 1).unwrap();
        f.write_line(b"abcd\n").unwrap(); // 4 + 5 = 9
        f.write_line(b"ef\n").unwrap(); // 12: still fits
        f.write_line(b"g\n").unwrap(); // 14 > 12: rotate first
        f.flush().unwrap();
        assert_eq!(read(&dir.path().join("mail.log.1")), "old\nabcd\nef\n");
        assert_eq!(read(&path), "g\n");
        // A line longer than the limit goes alone into a fresh file.
        f.write_line(&[b'x'; 40]).unwrap();
        f.flush().unwrap();
        assert_eq!(read(&path).len(), 40);
        assert_eq!(read(&dir.path().join("mail.log.1")), "g\n");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
    }

    #[test]
    fn keep_zero_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        let mut f = RotatingFile::open(&path, 10, 0).unwrap();
        f.write_line(b"12345678\n").unwrap();
        f.write_line(b"abc\n").unwrap();
        f.flush().unwrap();
        assert_eq!(read(&path), "abc\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn writer_thread_writes_lines_and_reports_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        let (sink, queue) = Sink::channel(2);
        let mut config = FileConfig::new(&path);
        config.hostname = "mx".into();
        // Fill the queue before the writer runs, so the third line is dropped.
        assert!(sink.log(Facility::Mail, Severity::Notice, "t", "one"));
        assert!(sink.log(Facility::Mail, Severity::Notice, "t", "two"));
        assert!(!sink.log(Facility::Mail, Severity::Notice, "t", "three"));
        let task = FileLog::spawn(config, queue).unwrap();
        assert!(task.finish(std::time::Duration::from_secs(10)).await);
        let text = read(&path);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with(" mx t: one"), "{text}");
        assert!(lines[1].ends_with(" mx t: two"), "{text}");
        assert!(
            lines[2].ends_with(
                " mx mailstack-log: 1 log lines dropped (queue full or log file failing)"
            ),
            "{text}"
        );
        assert_eq!(sink.dropped(), 1);
    }
}
