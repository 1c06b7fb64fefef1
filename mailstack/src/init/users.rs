//! Mail users from `users.txt`, made as the seed's `users_add.sh` made them.
//!
//! Each line is `name:password:uid`; `#` comments and blank lines are skipped. A missing user
//! is created with `useradd` (group `mail`, shell `/bin/sh`, home `/home/mail_users/NAME`,
//! the home not created) and its password set by `chpasswd`, which reads `name:password` on
//! its standard input: the password never reaches a command line, a log or the environment.
//! An existing user is left alone and reported; a malformed line is reported by number and
//! the others still go in; a uid another user already has is reported and skipped.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::config::under;

/// The seed's mail group.
pub const GROUP: &str = "mail";
/// The seed's shell.
pub const SHELL: &str = "/bin/sh";
/// The seed's home parent.
pub const HOME_BASE: &str = "/home/mail_users";

/// One line of `users.txt`. Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct UserLine {
    /// The line number (1-based).
    pub line: usize,
    /// The user name.
    pub name: String,
    /// The password, in clear.
    pub password: String,
    /// The uid.
    pub uid: u32,
}

impl fmt::Debug for UserLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserLine")
            .field("line", &self.line)
            .field("name", &self.name)
            .field("password", &"<hidden>")
            .field("uid", &self.uid)
            .finish()
    }
}

/// A problem with one user; the others are not stopped by it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// The line is not `name:password:uid`.
    #[error("{file}:{line}: {message} (expected name:password:uid)")]
    Malformed {
        /// users.txt.
        file: PathBuf,
        /// The line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The uid belongs to another user.
    #[error("{file}:{line}: uid {uid} of {name} is already {other}'s")]
    UidClash {
        /// users.txt (or `<command line>`).
        file: PathBuf,
        /// The line number.
        line: usize,
        /// The user asked for.
        name: String,
        /// The uid.
        uid: u32,
        /// Who has it.
        other: String,
    },
    /// useradd or chpasswd failed.
    #[error("{file}:{line}: {name}: {tool} failed: {detail}")]
    Tool {
        /// users.txt (or `<command line>`).
        file: PathBuf,
        /// The line number.
        line: usize,
        /// The user.
        name: String,
        /// useradd or chpasswd.
        tool: &'static str,
        /// Its status and error output (never the password).
        detail: String,
    },
    /// users.txt could not be read.
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
}

/// What happened to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserOutcome {
    /// Created.
    Created(String),
    /// Already there: left alone.
    Exists(String),
}

/// The report of one [`Users::apply_file`].
#[derive(Debug, Default)]
pub struct Report {
    /// Users created or found.
    pub done: Vec<UserOutcome>,
    /// Lines that failed.
    pub errors: Vec<UserError>,
}

/// The largest users.txt read (bytes).
pub const MAX_USERS_FILE: u64 = 4 << 20;

/// Parses `users.txt` text (from `file`): the good lines, and an error per bad line.
pub fn parse(file: &Path, text: &str) -> (Vec<UserLine>, Vec<UserError>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r');
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let err = |message: String| UserError::Malformed {
            file: file.to_owned(),
            line,
            message,
        };
        // name:password:uid, the password may hold ':' (split the name first, the uid last).
        let Some((name, rest)) = l.split_once(':') else {
            bad.push(err("no ':'".into()));
            continue;
        };
        let Some((password, uid)) = rest.rsplit_once(':') else {
            bad.push(err("two fields, three expected".into()));
            continue;
        };
        if let Err(m) = check_name(name) {
            bad.push(err(m.to_string()));
            continue;
        }
        if password.is_empty() || password.contains('\n') {
            bad.push(err(format!("empty password for {name}")));
            continue;
        }
        let Ok(uid) = uid.trim().parse::<u32>() else {
            bad.push(err(format!("uid {uid:?} is not a number")));
            continue;
        };
        if uid == 0 || uid == u32::MAX {
            bad.push(err(format!("uid {uid} is not allowed")));
            continue;
        }
        good.push(UserLine {
            line,
            name: name.to_owned(),
            password: password.to_owned(),
            uid,
        });
    }
    (good, bad)
}

/// A user name [`check_name`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user name {0:?}: expected [a-z_][a-z0-9_.-]*, at most 32 characters")]
pub struct BadName(pub String);

/// A user name useradd accepts (Debian's default rule, ASCII).
///
/// # Errors
/// [`BadName`] when `name` is empty, longer than 32 characters, or not of the form
/// `[a-z_][a-z0-9_.-]*`.
pub fn check_name(name: &str) -> Result<(), BadName> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if name.is_empty() || name.len() > 32 || !ok_first || !ok_rest {
        return Err(BadName(name.to_owned()));
    }
    Ok(())
}

/// The id (third field) of `name` in a passwd- or group-format file.
pub fn lookup_id(file: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The name holding `uid` in a passwd-format file.
pub fn lookup_uid(file: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_owned())
    })
}

/// Adds users to the system under `root` (`/` normally; otherwise `useradd --root`).
#[derive(Debug, Clone)]
pub struct Users {
    /// The system's root.
    pub root: PathBuf,
    /// useradd.
    pub useradd: PathBuf,
    /// chpasswd.
    pub chpasswd: PathBuf,
}

impl Users {
    /// Debian's tools, acting on the system under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            useradd: "/usr/sbin/useradd".into(),
            chpasswd: "/usr/sbin/chpasswd".into(),
        }
    }

    fn passwd(&self) -> PathBuf {
        under(&self.root, Path::new("/etc/passwd"))
    }

    fn root_args(&self) -> Vec<std::ffi::OsString> {
        if self.root == Path::new("/") {
            Vec::new()
        } else {
            vec!["--root".into(), self.root.clone().into_os_string()]
        }
    }

    /// Reads `file` and adds every missing user; one bad line stops no other.
    pub fn apply_file(&self, file: &Path) -> Report {
        let text = match read_limited(file) {
            Ok(t) => t,
            Err(e) => {
                return Report {
                    done: Vec::new(),
                    errors: vec![UserError::Read(file.to_owned(), e)],
                };
            }
        };
        let (good, bad) = parse(file, &text);
        let mut report = Report {
            done: Vec::new(),
            errors: bad,
        };
        for u in &good {
            match self.add(file, u) {
                Ok(o) => report.done.push(o),
                Err(e) => report.errors.push(e),
            }
        }
        report.errors.sort_by_key(|e| match e {
            UserError::Malformed { line, .. }
            | UserError::UidClash { line, .. }
            | UserError::Tool { line, .. } => *line,
            UserError::Read(..) => 0,
        });
        report
    }

    /// Adds one user unless it exists (`file` and `u.line` only name it in errors).
    pub fn add(&self, file: &Path, u: &UserLine) -> Result<UserOutcome, UserError> {
        let passwd = self.passwd();
        if lookup_id(&passwd, &u.name).is_some() {
            return Ok(UserOutcome::Exists(u.name.clone()));
        }
        if let Some(other) = lookup_uid(&passwd, u.uid) {
            return Err(UserError::UidClash {
                file: file.to_owned(),
                line: u.line,
                name: u.name.clone(),
                uid: u.uid,
                other,
            });
        }
        let tool_err = |tool: &'static str, detail: String| UserError::Tool {
            file: file.to_owned(),
            line: u.line,
            name: u.name.clone(),
            tool,
            detail,
        };
        let home = format!("{HOME_BASE}/{}", u.name);
        let out = Command::new(&self.useradd)
            .args(self.root_args())
            .args(["-M", "-N", "-g", GROUP, "-s", SHELL, "-d", &home, "-u"])
            .arg(u.uid.to_string())
            .arg(&u.name)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| tool_err("useradd", e.to_string()))?;
        if !out.status.success() {
            return Err(tool_err(
                "useradd",
                format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let mut chpasswd = Command::new(&self.chpasswd);
        chpasswd.args(self.root_args());
        if self.root != Path::new("/") {
            // No PAM inside another root: chpasswd hashes itself (Debian 12's default method).
            chpasswd.args(["--crypt-method", "YESCRYPT"]);
        }
        let mut child = chpasswd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tool_err("chpasswd", e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let line = format!("{}:{}\n", u.name, u.password);
            stdin
                .write_all(line.as_bytes())
                .map_err(|e| tool_err("chpasswd", e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| tool_err("chpasswd", e.to_string()))?;
        if !out.status.success() {
            return Err(tool_err(
                "chpasswd",
                format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(UserOutcome::Created(u.name.clone()))
    }
}

fn read_limited(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(file)?
        .take(MAX_USERS_FILE)
        .read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_reports_bad_ones_by_number() {
        let text = "# users\n\nalice:pa:ss:1001\nbad line\nbob:x:notanumber\n  \ncarol:pw:1003\nRoot:pw:5\n";
        let (good, bad) = parse(Path::new("/u/users.txt"), text);
        assert_eq!(
            good.iter()
                .map(|u| (u.line, u.name.as_str(), u.password.as_str(), u.uid))
                .collect::<Vec<_>>(),
            [(3, "alice", "pa:ss", 1001), (7, "carol", "pw", 1003)]
        );
        let msgs: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with("/u/users.txt:4: no ':'"), "{msgs:?}");
        assert!(
            msgs[1].starts_with("/u/users.txt:5: uid \"notanumber\" is not a number"),
            "{msgs:?}"
        );
        assert!(
            msgs[2].starts_with("/u/users.txt:8: user name \"Root\""),
            "{msgs:?}"
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let (good, _) = parse(Path::new("u"), "alice:s3cr3t:1001\n");
        assert!(!format!("{good:?}").contains("s3cr3t"));
    }

    #[test]
    fn lookups_read_passwd_format() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\nmail:x:8:8::/var/mail:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(lookup_id(&p, "mail"), Some(8));
        assert_eq!(lookup_id(&p, "nobody"), None);
        assert_eq!(lookup_uid(&p, 8).as_deref(), Some("mail"));
    }
}
