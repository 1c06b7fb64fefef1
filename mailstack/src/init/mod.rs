//! mailstack-init, PID 1 of the mail container: its log path (syslog receiver, `mail.log` with rotation, forwarding) and its scheduled jobs (Maildir backup).

pub mod backup;
pub mod forward;
pub mod logfile;
pub mod schedule;
pub mod syslog;
