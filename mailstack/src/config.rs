//! Reading the configuration files of the tools mailstack replaces.
//!
//! OpenDKIM, OpenDMARC and clamav-milter use `Key value` lines (whitespace between key and
//! value); python-policyd-spf uses `Key = value`. Both forms allow `#` comments and blank lines.
//! This module only splits a file into [`Entry`] values that remember their line number; each
//! filter maps the keys it knows to typed options and reports everything else through
//! [`ConfigError`], which always names the file, the line and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

/// Largest configuration file we read (1 MiB). Real files are a few KiB; a larger one is far
/// more likely a wrong path (a log, a binary) than a configuration.
pub(crate) const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// How a line separates its key from its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Syntax {
    /// `Key value` (OpenDKIM, OpenDMARC, clamav-milter, msmtp).
    Whitespace,
    /// `Key = value` (python-policyd-spf).
    Equals,
}

/// One `key value` line of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key as written in the file.
    pub key: String,
    /// The value with surrounding whitespace removed (may be empty).
    pub value: String,
    /// 1-based line number.
    pub line: usize,
}

/// A configuration problem, located in its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line or value is not what the option needs.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 when the problem is not tied to one line).
        line: usize,
        /// What was found and what was expected.
        message: String,
    },
}

impl ConfigError {
    /// An error at `line` of `path`.
    pub fn at(path: &Path, line: usize, message: impl fmt::Display) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            line,
            message: message.to_string(),
        }
    }
}

/// A parsed configuration file: its path and its entries in file order.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where the file was read from (used in every error).
    pub path: PathBuf,
    /// The entries, in file order.
    pub entries: Vec<Entry>,
}

/// Reads a configuration file of at most [`MAX_CONFIG_FILE`] bytes as text (invalid UTF-8
/// replaced).
pub(crate) fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_CONFIG_FILE {
        return Err(ConfigError::at(
            path,
            0,
            format_args!("file is {len} bytes, larger than the {MAX_CONFIG_FILE} accepted"),
        ));
    }
    let text = std::fs::read(path).map_err(io)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

impl ConfigFile {
    /// Reads and splits `path`.
    pub fn read(path: &Path, syntax: Syntax) -> Result<Self, ConfigError> {
        Self::parse(path, &read_bounded(path)?, syntax)
    }

    /// Splits `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str, syntax: Syntax) -> Result<Self, ConfigError> {
        let mut entries = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let split = match syntax {
                Syntax::Whitespace => content
                    .find(char::is_whitespace)
                    .map(|at| (&content[..at], &content[at..])),
                Syntax::Equals => content
                    .find('=')
                    .map(|at| (&content[..at], &content[at + 1..])),
            };
            let (key, value) = match (split, syntax) {
                (Some((k, v)), _) => (k.trim(), v.trim()),
                (None, Syntax::Whitespace) => (content, ""),
                (None, Syntax::Equals) => {
                    return Err(ConfigError::at(
                        path,
                        line,
                        format_args!("expected `key = value`, found {content:?}"),
                    ));
                }
            };
            if key.is_empty() {
                return Err(ConfigError::at(
                    path,
                    line,
                    "expected a key before the value",
                ));
            }
            entries.push(Entry {
                key: key.to_owned(),
                value: value.to_owned(),
                line,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    /// An error at the line of `entry`.
    pub fn error(&self, entry: &Entry, message: impl fmt::Display) -> ConfigError {
        ConfigError::at(&self.path, entry.line, message)
    }

    /// Parses a boolean the way these tools do (`yes/no`, `true/false`, `1/0`, `on/off`).
    pub fn bool(&self, entry: &Entry) -> Result<bool, ConfigError> {
        match entry.value.to_ascii_lowercase().as_str() {
            "yes" | "true" | "1" | "on" | "y" | "t" => Ok(true),
            "no" | "false" | "0" | "off" | "n" | "f" => Ok(false),
            _ => Err(self.error(
                entry,
                format_args!("{}: expected yes or no, found {:?}", entry.key, entry.value),
            )),
        }
    }

    /// Parses an unsigned number.
    pub fn number<T: std::str::FromStr>(&self, entry: &Entry) -> Result<T, ConfigError> {
        entry.value.parse().map_err(|_| {
            self.error(
                entry,
                format_args!("{}: expected a number, found {:?}", entry.key, entry.value),
            )
        })
    }

    /// The error for a key this reader does not know.
    pub fn unknown(&self, entry: &Entry) -> ConfigError {
        self.error(entry, format_args!("unknown option {:?}", entry.key))
    }
}

/// This host's name as the kernel has it (`/proc/sys/kernel/hostname`, else `/etc/hostname`),
/// if either names one: what every daemon falls back to for its authserv-id, `Received-SPF`
/// receiver, `X-Virus-Scanned` host and report names.
pub fn known_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// [`known_hostname`], `localhost` when neither file names the host.
pub fn hostname() -> String {
    known_hostname().unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_both_syntaxes_and_keeps_line_numbers() {
        let p = Path::new("/etc/x.conf");
        let f = ConfigFile::parse(
            p,
            "# c\n\nMode  sv\nSocket inet:8891@localhost\n",
            Syntax::Whitespace,
        )
        .unwrap();
        assert_eq!(
            f.entries[0],
            Entry {
                key: "Mode".into(),
                value: "sv".into(),
                line: 3
            }
        );
        assert_eq!(f.entries[1].value, "inet:8891@localhost");
        let f = ConfigFile::parse(p, "HELO_reject = Fail\nx=a=b\n", Syntax::Equals).unwrap();
        assert_eq!(f.entries[0].value, "Fail");
        assert_eq!(f.entries[1].value, "a=b");
        let e = ConfigFile::parse(p, "\nnovalue\n", Syntax::Equals).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/x.conf:2: expected `key = value`, found \"novalue\""
        );
    }

    #[test]
    fn bad_bool_names_file_line_and_expectation() {
        let p = Path::new("a.conf");
        let f = ConfigFile::parse(p, "LogClean maybe\n", Syntax::Whitespace).unwrap();
        let e = f.bool(&f.entries[0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.conf:1: LogClean: expected yes or no, found \"maybe\""
        );
    }
}
