//! mailstack-init: PID 1 of the mail container, replacing the seed's systemd, shell scripts,
//! tmpfiles rule, rsyslog, logrotate and backup timer.
//!
//! # Layout
//! - [`config`]: the seed's layout (`/usr/local/etc/...`, `users.txt`, the environment) plus
//!   an optional `mailstack-init.toml`; everything validated before anything starts.
//! - [`users`]: mail users from `users.txt`, as `users_add.sh` made them.
//! - [`dirs`]: the run directories of the seed's tmpfiles rule, stale sockets.
//! - [`ready`]: readiness probes (socket accepts, milter OPTNEG, clamd PING, SMTP banner).
//! - [`supervise`]: starting services in order, restarting with backoff, reaping orphans,
//!   stopping in order on SIGTERM, forwarding SIGHUP.
//! - [`health`]: the probes behind `mailstack-init health`.
//! - [`syslog`], [`logfile`], [`forward`]: the log path: a `/dev/log` receiver, `mail.log`
//!   with size rotation, forwarding to `MAIL_LOG_HOST` as rsyslog's `@@` does.
//! - [`schedule`], [`backup`]: scheduled jobs without cron, the Maildir backup.

pub mod backup;
pub mod config;
pub mod dirs;
pub mod forward;
pub mod health;
pub mod logfile;
pub mod ready;
pub mod reaper;
pub mod schedule;
pub mod supervise;
pub mod syslog;
pub mod users;
