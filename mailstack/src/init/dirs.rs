//! The run directories of the seed's tmpfiles rule, and stale sockets.
//!
//! Each [`RunDir`] is created if missing, then given its owner and mode (`/var/run/opendkim
//! 3770 opendkim:postfix` and the like) every start, as `systemd-tmpfiles --create` did. A
//! socket file left by a dead daemon is removed only when nothing accepts on it.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::config::{RunDir, under};
use super::users::lookup_id;

/// A run directory or socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    /// Creating, chowning or chmodding failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The owner does not exist.
    #[error("{0}: owner {1} does not exist")]
    NoOwner(PathBuf, String),
    /// Something listens on the socket: another instance runs.
    #[error("{0}: something already accepts connections on this socket (another instance?)")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0}: exists and is not a socket; not removing it")]
    NotSocket(PathBuf),
}

/// Creates `d` (and its parents) and sets its owner and mode; ids from the passwd and group
/// files under `passwd_root`.
pub fn ensure(d: &RunDir, passwd_root: &Path) -> Result<(), DirError> {
    let io = |e| DirError::Io(d.path.clone(), e);
    let uid = lookup_id(&under(passwd_root, Path::new("/etc/passwd")), &d.user)
        .ok_or_else(|| DirError::NoOwner(d.path.clone(), d.user.clone()))?;
    let gid = lookup_id(&under(passwd_root, Path::new("/etc/group")), &d.group)
        .ok_or_else(|| DirError::NoOwner(d.path.clone(), d.group.clone()))?;
    std::fs::create_dir_all(&d.path).map_err(io)?;
    std::os::unix::fs::chown(&d.path, Some(uid), Some(gid)).map_err(io)?;
    std::fs::set_permissions(&d.path, std::fs::Permissions::from_mode(d.mode)).map_err(io)?;
    Ok(())
}

/// What [`remove_stale`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stale {
    /// Nothing was there.
    Absent,
    /// A socket nobody listened on was removed.
    Removed,
}

/// Removes the socket at `path` if nothing accepts on it; refuses when something does, or
/// when the path is not a socket.
pub fn remove_stale(path: &Path) -> Result<Stale, DirError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stale::Absent),
        Err(e) => return Err(DirError::Io(path.to_owned(), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(DirError::NotSocket(path.to_owned()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(DirError::InUse(path.to_owned())),
        Err(_) => {
            std::fs::remove_file(path).map_err(|e| DirError::Io(path.to_owned(), e))?;
            Ok(Stale::Removed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_removed_live_one_kept() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.sock");
        assert_eq!(remove_stale(&p).unwrap(), Stale::Absent);
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(matches!(remove_stale(&p), Err(DirError::InUse(_))));
        drop(l);
        assert_eq!(remove_stale(&p).unwrap(), Stale::Removed);
        assert!(!p.exists());
        std::fs::write(&p, "x").unwrap();
        assert!(matches!(remove_stale(&p), Err(DirError::NotSocket(_))));
    }

    #[test]
    fn ensure_sets_mode_and_owner() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        std::fs::write(
            t.path().join("etc/passwd"),
            format!("me:x:{uid}:{gid}::/:/bin/sh\n"),
        )
        .unwrap();
        std::fs::write(t.path().join("etc/group"), format!("mine:x:{gid}:\n")).unwrap();
        let d = RunDir {
            path: t.path().join("var/run/opendkim"),
            mode: 0o3770,
            user: "me".into(),
            group: "mine".into(),
        };
        ensure(&d, t.path()).unwrap();
        let m = std::fs::metadata(&d.path).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o3770);
        let bad = RunDir {
            user: "nobody-here".into(),
            ..d
        };
        assert!(
            matches!(ensure(&bad, t.path()), Err(DirError::NoOwner(_, n)) if n == "nobody-here")
        );
    }
}
