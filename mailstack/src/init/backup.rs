//! The Maildir backup (`MAILDIR_BACKUP=TRUE`): every user's `~/Maildir`
//! (`/home/mail_users/NAME/Maildir`) into one `tar.xz` under `/dest`, named with the date
//! and time (UTC) of the run: `/dest/maildir-backup-2026-12-03-033000.tar.xz`.
//!
//! The archive is made by Debian's GNU `tar -cJf` (`tar --create --xz`), not by the `tar`
//! and `xz2` crates, because:
//! - it is the seed's own tool, so the archives are what the seed's restore procedure
//!   expects (GNU format, owners, modes, long names), and `tar -xJf` restores them;
//! - `xz2` links liblzma through `lzma-sys` (C, built or found with pkg-config), a second
//!   compression library for one job, while `tar` and `xz-utils` are in every Debian image;
//! - a child process keeps a long, CPU-heavy compression off the async workers and off our
//!   memory, and it is killed when the run times out (see [`super::reaper`]).
//!
//! The archive is written under a hidden `.partial` name and renamed when `tar` succeeded,
//! so `/dest` never shows a half-written backup; a failed run removes its partial file.
//! Mail that arrives while `tar` reads (files renamed from `new/` to `cur/`) is a warning,
//! not a failure (`--ignore-failed-read`, exit status 1 accepted).
//!
//! ```no_run
//! # fn demo(scheduler: &mut mailstack::init::schedule::Scheduler) -> Result<(), Box<dyn std::error::Error>> {
//! use mailstack::init::backup::{BackupConfig, MaildirBackup, enabled};
//! use mailstack::init::schedule::{JobSpec, Schedule};
//! if enabled(std::env::var("MAILDIR_BACKUP").ok().as_deref()) {
//!     let job = MaildirBackup::new(BackupConfig::default());
//!     scheduler.register(JobSpec::new("maildir-backup", Schedule::daily(3, 0)?)
//!         .timeout(mailstack::init::backup::DEFAULT_TIMEOUT), job)?;
//! }
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::schedule::{Job, JobError};

/// The environment variable that turns the backup on.
pub const ENV_VAR: &str = "MAILDIR_BACKUP";

/// The home directory tree of the mail users (`users_add.sh`'s `/home/mail_users/NAME`).
pub const DEFAULT_HOMES: &str = "/home/mail_users";

/// Where the archives go (the seed's volume).
pub const DEFAULT_DEST: &str = "/dest";

/// The start of an archive's name.
pub const DEFAULT_PREFIX: &str = "maildir-backup";

/// A bound on one backup run (for the job's
/// [`JobSpec::timeout`](super::schedule::JobSpec::timeout)): six hours, time for xz over
/// tens of GiB.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The most user directories archived in one run.
pub const MAX_USERS: usize = 100_000;

/// How much of tar's stderr is kept for the error message.
const MAX_STDERR: usize = 4096;

/// Whether the value of [`ENV_VAR`] turns the backup on: `TRUE` as the seed writes it,
/// or `true`, `yes`, `1`, any case.
pub fn enabled(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        ["true", "yes", "1"]
            .iter()
            .any(|t| v.eq_ignore_ascii_case(t))
    })
}

/// Where from, where to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupConfig {
    /// The tree of home directories; every `HOMES/NAME/Maildir` that is a directory (not a
    /// symlink) is archived as `NAME/Maildir`.
    pub homes: PathBuf,
    /// The directory the archives go to (must exist).
    pub dest: PathBuf,
    /// The start of the archive names.
    pub prefix: String,
    /// The `tar` program (GNU tar with xz support).
    pub tar: PathBuf,
}

impl BackupConfig {
    /// Archives `homes/*/Maildir` into `dest`, the default prefix and `tar`.
    pub fn new(homes: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        Self {
            homes: homes.into(),
            dest: dest.into(),
            ..Self::default()
        }
    }
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            homes: DEFAULT_HOMES.into(),
            dest: DEFAULT_DEST.into(),
            prefix: DEFAULT_PREFIX.into(),
            tar: "tar".into(),
        }
    }
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The home tree could not be read.
    #[error("{}: {source}", path.display())]
    Homes {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// More user directories than [`MAX_USERS`].
    #[error("{}: more than {MAX_USERS} Maildirs", path.display())]
    TooManyUsers {
        /// The directory.
        path: PathBuf,
    },
    /// `tar` could not be started, or the archive not renamed into place.
    #[error("{}: {source}", path.display())]
    Io {
        /// The program or file concerned.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// `tar` failed.
    #[error("tar exited with {status}: {stderr}")]
    Tar {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of what it wrote on stderr.
        stderr: String,
    },
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupOutcome {
    /// The archive written; `None` when there was no Maildir to archive.
    pub archive: Option<PathBuf>,
    /// The users archived, sorted.
    pub users: Vec<OsString>,
    /// The archive's size in bytes.
    pub bytes: u64,
}

/// The backup job ([`Job`] for the [`Scheduler`](super::schedule::Scheduler)).
#[derive(Clone, Debug)]
pub struct MaildirBackup {
    config: BackupConfig,
}

impl MaildirBackup {
    /// A job over `config`.
    pub fn new(config: BackupConfig) -> Self {
        Self { config }
    }

    /// The users that have a Maildir directory, sorted.
    pub fn users(&self) -> Result<Vec<OsString>, BackupError> {
        let homes = &self.config.homes;
        let err = |source| BackupError::Homes {
            path: homes.clone(),
            source,
        };
        let mut users = Vec::new();
        for entry in std::fs::read_dir(homes).map_err(err)? {
            let entry = entry.map_err(err)?;
            let maildir = entry.path().join("Maildir");
            if std::fs::symlink_metadata(&maildir).is_ok_and(|m| m.is_dir()) {
                if users.len() >= MAX_USERS {
                    return Err(BackupError::TooManyUsers {
                        path: homes.clone(),
                    });
                }
                users.push(entry.file_name());
            }
        }
        users.sort();
        Ok(users)
    }

    /// The archive name for a run at `now`.
    pub fn archive_path(&self, now: OffsetDateTime) -> PathBuf {
        let name = format!(
            "{}-{:04}-{:02}-{:02}-{:02}{:02}{:02}.tar.xz",
            self.config.prefix,
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        self.config.dest.join(name)
    }

    /// Archives every user's Maildir now.
    pub async fn backup_now(&self, now: OffsetDateTime) -> Result<BackupOutcome, BackupError> {
        let users = self.users()?;
        if users.is_empty() {
            return Ok(BackupOutcome {
                archive: None,
                users,
                bytes: 0,
            });
        }
        let archive = self.archive_path(now);
        let mut partial_name = OsString::from(".");
        partial_name.push(archive.file_name().unwrap_or_default());
        partial_name.push(".partial");
        let partial = self.config.dest.join(partial_name);
        let result = self.run_tar(&users, &partial).await;
        let result = result.and_then(|()| {
            std::fs::rename(&partial, &archive).map_err(|source| BackupError::Io {
                path: archive.clone(),
                source,
            })
        });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        let bytes = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        Ok(BackupOutcome {
            archive: Some(archive),
            users,
            bytes,
        })
    }

    async fn run_tar(&self, users: &[OsString], partial: &Path) -> Result<(), BackupError> {
        let tar = &self.config.tar;
        let io_err = |source| BackupError::Io {
            path: tar.clone(),
            source,
        };
        let mut child = Command::new(tar);
        child
            .arg("--create")
            .arg("--xz")
            .arg("--file")
            .arg(partial)
            .arg("--directory")
            .arg(&self.config.homes)
            .args(["--ignore-failed-read", "--null", "--files-from", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("LC_ALL", "C");
        // Through the reaper: under mailstack-init, PID 1 collects every exit; a dropped
        // (timed-out) run kills tar.
        let mut child = super::reaper::spawn(&mut child).map_err(io_err)?;
        // The list on stdin (NUL-separated), so no name reaches a command line and any
        // number of users fits.
        let mut list = Vec::new();
        for user in users {
            list.extend_from_slice(user.as_bytes());
            list.extend_from_slice(b"/Maildir\0");
        }
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| io_err(io::Error::other("no stdin")))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| io_err(io::Error::other("no stderr")))?;
        let feed = async move {
            let r = stdin.write_all(&list).await;
            drop(stdin);
            r
        };
        let collect = async move {
            let mut buf = Vec::new();
            let _ = (&mut stderr)
                .take(MAX_STDERR as u64)
                .read_to_end(&mut buf)
                .await;
            // Drain the rest so tar never blocks on a full pipe.
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            buf
        };
        let (fed, err_text, status) = tokio::join!(feed, collect, child.wait());
        let status = status.map_err(io_err)?;
        // Exit status 1: "some files differ" (mail arriving during the run); the archive
        // is complete for what existed when tar read it.
        if status.code() == Some(0) || status.code() == Some(1) {
            fed.map_err(io_err)?;
            return Ok(());
        }
        Err(BackupError::Tar {
            status,
            stderr: String::from_utf8_lossy(&err_text).trim().to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl Job for MaildirBackup {
    async fn run(&self) -> Result<Option<String>, JobError> {
        let outcome = self.backup_now(OffsetDateTime::now_utc()).await?;
        Ok(Some(match outcome.archive {
            Some(path) => format!(
                "{} ({} users, {} bytes)",
                path.display(),
                outcome.users.len(),
                outcome.bytes
            ),
            None => format!("no Maildir under {}", self.config.homes.display()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        for on in ["TRUE", "true", " yes ", "1"] {
            assert!(enabled(Some(on)), "{on}");
        }
        for off in ["FALSE", "", "0", "no", "TRUEish"] {
            assert!(!enabled(Some(off)), "{off}");
        }
        assert!(!enabled(None));
    }

    #[test]
    fn users_are_real_maildir_directories_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let homes = dir.path().join("homes");
        for u in ["zoe", "adam"] {
            std::fs::create_dir_all(homes.join(u).join("Maildir/cur")).unwrap();
        }
        std::fs::create_dir_all(homes.join("nomail")).unwrap();
        std::fs::create_dir_all(homes.join("filemail")).unwrap();
        std::fs::write(homes.join("filemail/Maildir"), "not a dir").unwrap();
        std::fs::create_dir_all(homes.join("sneaky")).unwrap();
        std::os::unix::fs::symlink("/etc", homes.join("sneaky/Maildir")).unwrap();
        let job = MaildirBackup::new(BackupConfig {
            homes: homes.clone(),
            ..BackupConfig::default()
        });
        assert_eq!(job.users().unwrap(), ["adam", "zoe"]);
        let job = MaildirBackup::new(BackupConfig {
            homes: dir.path().join("missing"),
            ..BackupConfig::default()
        });
        assert!(matches!(job.users(), Err(BackupError::Homes { .. })));
    }

    #[test]
    fn archive_name_has_date_and_time() {
        let job = MaildirBackup::new(BackupConfig::default());
        let at = OffsetDateTime::from_unix_timestamp(1_796_281_445).unwrap();
        assert_eq!(
            job.archive_path(at),
            Path::new("/dest/maildir-backup-2026-12-03-070405.tar.xz")
        );
    }

    #[tokio::test]
    async fn failing_tar_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let homes = dir.path().join("homes");
        std::fs::create_dir_all(homes.join("u/Maildir/new")).unwrap();
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        // `false` ignores its arguments and exits 1... which tar uses for "files differ",
        // so use a program that exits 2 after writing to stderr.
        let fake = dir.path().join("tar");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'tar: boom' >&2\n: > \"$4\"\nexit 2\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let job = MaildirBackup::new(BackupConfig {
            homes,
            dest: dest.clone(),
            tar: fake,
            ..BackupConfig::default()
        });
        let err = job.backup_now(OffsetDateTime::now_utc()).await.unwrap_err();
        assert!(
            matches!(&err, BackupError::Tar { stderr, .. } if stderr == "tar: boom"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    }
}
