//! Running as an unprivileged user (issue 14).
//!
//! A daemon started as root binds its sockets and loads its keys, then calls
//! [`drop_privileges`]: supplementary groups (the user's own, from the group database through
//! `getgrouplist(3)`, or the ones given), then `setgid`, then `setuid`, in that order (once the
//! uid is gone the groups can no longer be changed), and finally a check that root cannot be
//! regained. A daemon started as root with no user to switch to calls
//! [`refuse_root_without_user`], which refuses unless the operator said `--allow-root`.
//!
//! glibc applies `setgroups`/`setgid`/`setuid` to every thread of the process, so this may run
//! inside a multi-threaded tokio runtime.

use std::ffi::{CStr, CString};
use std::io;

/// Why privileges could not be dropped, or why we refuse to run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivError {
    /// The user is not in the password database.
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    /// A group is not in the group database.
    #[error("group {0:?} does not exist")]
    UnknownGroup(String),
    /// A name holds a NUL byte.
    #[error("{0:?} is not a valid user or group name")]
    InvalidName(String),
    /// Reading the password or group database failed.
    #[error("looking up {what}: {source}")]
    Lookup {
        /// What was looked up.
        what: String,
        /// The error from the C library.
        #[source]
        source: io::Error,
    },
    /// A system call failed (`setgroups`, `setgid`, `setuid`).
    #[error("{call}: {source}")]
    Call {
        /// The call.
        call: &'static str,
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// Switching users needs root, and we are not root (nor already the user).
    #[error("cannot switch to user {user:?}: not running as root (euid {euid})")]
    NotRoot {
        /// The user asked for.
        user: String,
        /// Our effective uid.
        euid: u32,
    },
    /// After the switch, a uid or gid is still 0, or `setuid(0)` succeeded.
    #[error("privileges were not dropped: {0}")]
    StillPrivileged(&'static str),
    /// Started as root without a user to switch to, and not told to allow it.
    #[error(
        "refusing to run as root without a user to switch to: give --user USER, \
         or --allow-root to run as root anyway"
    )]
    RootWithoutUser,
}

/// Who a daemon runs as: `user` or `user:group` (OpenDKIM's and OpenDMARC's `UserID`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunAs {
    /// The user.
    pub user: String,
    /// The primary group instead of the user's own.
    pub group: Option<String>,
}

/// A `user[:group]` that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected user or user:group, found {0:?}")]
pub struct RunAsError(pub String);

impl RunAs {
    /// `user` with its own primary group.
    pub fn new(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            group: None,
        }
    }
}

impl std::str::FromStr for RunAs {
    type Err = RunAsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RunAsError(s.to_owned());
        let ok = |n: &str| !n.is_empty() && !n.contains(|c: char| c.is_whitespace() || c == '\0');
        match s.split_once(':') {
            None if ok(s) => Ok(Self {
                user: s.to_owned(),
                group: None,
            }),
            Some((u, g)) if ok(u) && ok(g) && !g.contains(':') => Ok(Self {
                user: u.to_owned(),
                group: Some(g.to_owned()),
            }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => f.write_str(&self.user),
        }
    }
}

/// A user's ids as found in the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct User {
    /// The user name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// What [`drop_privileges`] switched to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dropped {
    /// The uid (real, effective and saved).
    pub uid: u32,
    /// The gid (real, effective and saved).
    pub gid: u32,
    /// The supplementary groups set.
    pub groups: Vec<u32>,
}

fn c_name(name: &str) -> Result<CString, PrivError> {
    CString::new(name).map_err(|_| PrivError::InvalidName(name.to_owned()))
}

/// Start size of the buffer for the `_r` lookups; grown on `ERANGE` up to [`MAX_LOOKUP_BUF`].
const LOOKUP_BUF: usize = 1024;
/// Largest buffer for one password or group entry (a group with thousands of members).
const MAX_LOOKUP_BUF: usize = 1 << 20;

/// Looks `name` up in the password database (`getpwnam_r`).
pub fn lookup_user(name: &str) -> Result<User, PrivError> {
    let cname = c_name(name)?;
    let mut buf = vec![0 as libc::c_char; LOOKUP_BUF];
    loop {
        // SAFETY: an all-zero passwd is a valid value of this plain C struct.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf.len() is its real size.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        match rc {
            0 if out.is_null() => return Err(PrivError::UnknownUser(name.to_owned())),
            0 => {
                return Ok(User {
                    name: name.to_owned(),
                    uid: pw.pw_uid,
                    gid: pw.pw_gid,
                });
            }
            libc::ERANGE if buf.len() < MAX_LOOKUP_BUF => buf.resize(buf.len() * 2, 0),
            e => {
                return Err(PrivError::Lookup {
                    what: format!("user {name:?}"),
                    source: io::Error::from_raw_os_error(e),
                });
            }
        }
    }
}

/// The gid of group `name` (`getgrnam_r`), `None` when there is no such group.
pub fn lookup_group(name: &str) -> Result<Option<u32>, PrivError> {
    let cname = c_name(name)?;
    let mut buf = vec![0 as libc::c_char; LOOKUP_BUF];
    loop {
        // SAFETY: an all-zero group is a valid value of this plain C struct.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf.len() is its real size.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        match rc {
            0 if out.is_null() => return Ok(None),
            0 => return Ok(Some(gr.gr_gid)),
            libc::ERANGE if buf.len() < MAX_LOOKUP_BUF => buf.resize(buf.len() * 2, 0),
            e => {
                return Err(PrivError::Lookup {
                    what: format!("group {name:?}"),
                    source: io::Error::from_raw_os_error(e),
                });
            }
        }
    }
}

/// Most supplementary groups we ask `getgrouplist` for (Linux's `NGROUPS_MAX` is 65,536).
const MAX_GROUPS: usize = 65_536;

/// The groups `user` belongs to, its primary `gid` included (`getgrouplist(3)`, which reads
/// `/etc/group` and any other NSS source).
pub fn user_groups(user: &User) -> Result<Vec<u32>, PrivError> {
    let cname = c_name(&user.name)?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: groups holds n elements; the name is NUL-terminated.
        let rc =
            unsafe { libc::getgrouplist(cname.as_ptr(), user.gid, groups.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        // -1: too small; n now holds the size needed (glibc), or grow by doubling.
        let want = n.max(groups.len() * 2);
        if want > MAX_GROUPS {
            return Err(PrivError::Lookup {
                what: format!("groups of {:?}", user.name),
                source: io::Error::other("more than NGROUPS_MAX groups"),
            });
        }
        groups.resize(want, 0);
    }
}

fn check(call: &'static str, rc: libc::c_int) -> Result<(), PrivError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PrivError::Call {
            call,
            source: io::Error::last_os_error(),
        })
    }
}

/// Our real, effective and saved uids and gids.
fn res_ids() -> ([libc::uid_t; 3], [libc::gid_t; 3]) {
    let (mut u, mut g) = ([0; 3], [0; 3]);
    // SAFETY: plain out-parameters; these calls cannot fail with valid pointers.
    unsafe {
        libc::getresuid(&mut u[0], &mut u[1], &mut u[2]);
        libc::getresgid(&mut g[0], &mut g[1], &mut g[2]);
    }
    (u, g)
}

/// Switches the whole process to `user`: supplementary groups (`groups` by name when given,
/// else the user's own from the group database), its primary group, its uid; then verifies
/// that every uid and gid is the user's and that `setuid(0)` fails. Call it after binding
/// sockets and reading keys. Switching to `root` itself keeps root, as asked.
///
/// Not root but already running as `user`: nothing to do. Not root and another user:
/// [`PrivError::NotRoot`].
pub fn drop_privileges(user: &str, groups: Option<&[&str]>) -> Result<Dropped, PrivError> {
    drop_privileges_to(user, None, groups)
}

/// [`drop_privileges`] with the primary group `primary` instead of the user's own (OpenDKIM's
/// and OpenDMARC's `UserID user:group`): the process's gid becomes that group's, and it is
/// also the first supplementary group.
pub fn drop_privileges_to(
    user: &str,
    primary: Option<&str>,
    groups: Option<&[&str]>,
) -> Result<Dropped, PrivError> {
    let mut u = lookup_user(user)?;
    if let Some(g) = primary {
        u.gid = lookup_group(g)?.ok_or_else(|| PrivError::UnknownGroup(g.to_owned()))?;
    }
    let gids = match groups {
        Some(names) => {
            let mut gids = vec![u.gid];
            for name in names {
                let gid =
                    lookup_group(name)?.ok_or_else(|| PrivError::UnknownGroup(name.to_string()))?;
                gids.push(gid);
            }
            gids
        }
        None => {
            let mut gids = user_groups(&u)?;
            if primary.is_some() && !gids.contains(&u.gid) {
                gids.insert(0, u.gid);
            }
            gids
        }
    };
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        let (uids, gs) = res_ids();
        if uids.iter().all(|&x| x == u.uid) && gs.iter().all(|&x| x == u.gid) {
            return Ok(Dropped {
                uid: u.uid,
                gid: u.gid,
                groups: gids,
            });
        }
        return Err(PrivError::NotRoot {
            user: user.to_owned(),
            euid,
        });
    }
    // SAFETY: gids holds gids.len() valid gids.
    check("setgroups", unsafe {
        libc::setgroups(gids.len(), gids.as_ptr())
    })?;
    // SAFETY: plain system calls on integers.
    check("setgid", unsafe { libc::setgid(u.gid) })?;
    check("setuid", unsafe { libc::setuid(u.uid) })?;
    verify_dropped(u.uid, u.gid)?;
    Ok(Dropped {
        uid: u.uid,
        gid: u.gid,
        groups: gids,
    })
}

fn verify_dropped(uid: u32, gid: u32) -> Result<(), PrivError> {
    let (uids, gids) = res_ids();
    if uids.iter().any(|&x| x != uid) {
        return Err(PrivError::StillPrivileged("a uid differs from the user's"));
    }
    if gids.iter().any(|&x| x != gid) {
        return Err(PrivError::StillPrivileged("a gid differs from the user's"));
    }
    // SAFETY: plain system calls on integers; success here is the failure we test for.
    if uid != 0 && (unsafe { libc::setuid(0) } == 0 || unsafe { libc::seteuid(0) } == 0) {
        return Err(PrivError::StillPrivileged("setuid(0) succeeded"));
    }
    if gid != 0 && uid != 0 && unsafe { libc::setgid(0) } == 0 {
        return Err(PrivError::StillPrivileged("setgid(0) succeeded"));
    }
    Ok(())
}

/// Whether this process runs with effective uid 0.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a process with effective uid `euid` and no user to switch to must refuse to run.
pub fn root_refused(euid: u32, allow_root: bool) -> bool {
    euid == 0 && !allow_root
}

/// For a daemon with no user configured: [`PrivError::RootWithoutUser`] when running as
/// root and `allow_root` (the `--allow-root` flag) is not set.
pub fn refuse_root_without_user(allow_root: bool) -> Result<(), PrivError> {
    // SAFETY: geteuid cannot fail.
    if root_refused(unsafe { libc::geteuid() }, allow_root) {
        Err(PrivError::RootWithoutUser)
    } else {
        Ok(())
    }
}

/// The name of a user or group id, for messages; the number when it has none.
pub fn describe_gid(gid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; LOOKUP_BUF];
    // SAFETY: an all-zero group is a valid value of this plain C struct.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf.len() is its real size.
    let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc == 0 && !out.is_null() {
        // SAFETY: on success gr_name points to a NUL-terminated string inside buf.
        unsafe { CStr::from_ptr(gr.gr_name) }
            .to_string_lossy()
            .into_owned()
    } else {
        gid.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_parses_user_and_user_group() {
        let r: RunAs = "opendkim".parse().unwrap();
        assert_eq!((r.user.as_str(), r.group), ("opendkim", None));
        let r: RunAs = "opendkim:postfix".parse().unwrap();
        assert_eq!(
            (r.user.as_str(), r.group.as_deref()),
            ("opendkim", Some("postfix"))
        );
        assert_eq!(r.to_string(), "opendkim:postfix");
        for bad in ["", ":g", "u:", "u:g:h", "a b"] {
            assert_eq!(bad.parse::<RunAs>(), Err(RunAsError(bad.into())), "{bad:?}");
        }
    }

    #[test]
    fn looks_up_users_and_groups() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(matches!(
            lookup_user("no-such-user-mailstack"),
            Err(PrivError::UnknownUser(_))
        ));
        assert!(matches!(
            lookup_user("a\0b"),
            Err(PrivError::InvalidName(_))
        ));
        assert_eq!(lookup_group("root").unwrap(), Some(0));
        assert_eq!(lookup_group("no-such-group-mailstack").unwrap(), None);
        assert_eq!(describe_gid(0), "root");
        let groups = user_groups(&root).unwrap();
        assert!(groups.contains(&0), "{groups:?}");
    }

    #[test]
    fn supplementary_groups_come_from_the_group_database() {
        // Every member listed in /etc/group must come back from getgrouplist.
        let Ok(text) = std::fs::read_to_string("/etc/group") else {
            return;
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            let [_, _, gid, members] = f[..] else {
                continue;
            };
            for m in members.split(',').filter(|m| !m.is_empty()) {
                let Ok(u) = lookup_user(m) else { continue };
                let groups = user_groups(&u).unwrap();
                let gid: u32 = gid.parse().unwrap();
                assert!(groups.contains(&gid), "{m} in {gid}: {groups:?}");
                assert!(groups.contains(&u.gid));
            }
        }
    }

    #[test]
    fn root_needs_a_user_or_allow_root() {
        assert!(root_refused(0, false));
        assert!(!root_refused(0, true));
        assert!(!root_refused(1000, false));
        let e = PrivError::RootWithoutUser.to_string();
        assert!(e.contains("--user") && e.contains("--allow-root"), "{e}");
    }

    #[test]
    fn unknown_names_fail_before_anything_changes() {
        let before = res_ids();
        assert!(matches!(
            drop_privileges("no-such-user-mailstack", None),
            Err(PrivError::UnknownUser(_))
        ));
        assert!(matches!(
            drop_privileges("root", Some(&["no-such-group-mailstack"])),
            Err(PrivError::UnknownGroup(_))
        ));
        assert_eq!(res_ids(), before);
    }
}
