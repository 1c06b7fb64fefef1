//! What every milter daemon does the same way: the common flags (`--socket`,
//! `--nameserver`, `--user`, `--group`, `--allow-root`, `--check-config`), the resolver,
//! binding the socket (0660 by default, group settable), dropping privileges after binding,
//! serving until SIGTERM.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mailstack::dns::{HickoryResolver, Resolver};
use mailstack::filter::{Filter, LiveFilter, Milter};
use mailstack::stack::DaemonSettings;
use milter_proto::server::{Handler, ServerConfig, serve};
use milter_proto::{Listener, SocketSpec, UnixOptions, group_id};

/// Default mode of a daemon's unix socket: the daemon and its group (Postfix) only.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// The flags every milter daemon takes.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// Where to listen: unix:/path, local:/path, a bare path, inet:host:port, inet:port@host
    /// or inet6:port@host (overrides the configuration file).
    #[arg(long, value_name = "SPEC")]
    pub socket: Option<SocketSpec>,
    /// DNS server to ask (IP:PORT; repeat for several) instead of /etc/resolv.conf.
    #[arg(long, value_name = "IP:PORT")]
    pub nameserver: Vec<SocketAddr>,
    /// Run as this user after binding the socket and loading keys.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Group of the unix socket file (default: `postfix` when that group exists; the socket
    /// is 0660, owner the daemon's user).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Keep running as root when no user is configured (refused otherwise).
    #[arg(long)]
    pub allow_root: bool,
    /// Check the configuration, print what is in force, exit.
    #[arg(long)]
    pub check_config: bool,
    /// Serve Prometheus metrics (/metrics) and health (/healthz/live, /healthz/ready) over
    /// HTTP on HOST:PORT or inet:HOST:PORT (off by default).
    #[arg(long, value_name = "SPEC")]
    pub metrics: Option<mailstack::health::HttpSpec>,
}

/// What [`DaemonArgs`] and the file's settings resolve to.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    /// Where to listen.
    pub socket: SocketSpec,
    /// Unix socket mode and group.
    pub unix: UnixOptions,
    /// DNS servers (empty: the system's).
    pub nameservers: Vec<SocketAddr>,
    /// The user to run as.
    pub user: Option<String>,
    /// Its primary group instead of its own (`UserID user:group`); only with `user`.
    pub run_group: Option<String>,
    /// `--allow-root`.
    pub allow_root: bool,
    /// Where the configuration names the user, for the refusal message (e.g. `UserID in
    /// opendkim.conf`).
    pub user_option: &'static str,
    /// `--metrics`: where to serve metrics and health.
    pub metrics: Option<mailstack::health::HttpSpec>,
}

/// A daemon's start-up error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// No socket was given.
    #[error("no socket: pass --socket or set one in the configuration")]
    NoSocket,
    /// The socket spec in the file does not parse.
    #[error("socket {0:?}: {1}")]
    BadSocket(String, String),
    /// The group does not exist.
    #[error("socket group {0}: {1}")]
    Group(String, std::io::Error),
    /// DNS could not be set up.
    #[error("resolver: {0}")]
    Resolver(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The filters could not be built.
    #[error(transparent)]
    Build(#[from] mailstack::stack::BuildError),
    /// Started as root with no user to switch to, and no `--allow-root`.
    #[error(
        "refusing to run as root without a user to switch to: set {0}, or give --user USER, \
         or --allow-root to run as root anyway"
    )]
    RootWithoutUser(&'static str),
    /// The switch to the user failed.
    #[error(transparent)]
    Privileges(#[from] mailstack::privs::PrivError),
}

impl DaemonArgs {
    /// Merges the flags over `file` (flags win).
    pub fn resolve(&self, file: &DaemonSettings) -> Result<DaemonOpts, DaemonError> {
        let socket = match (&self.socket, &file.socket) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s.parse().map_err(|e: milter_proto::SpecError| {
                DaemonError::BadSocket(s.clone(), e.to_string())
            })?,
            (None, None) => return Err(DaemonError::NoSocket),
        };
        let group = match self.group.as_ref().or(file.socket_group.as_ref()) {
            Some(g) => Some(group_id(g).map_err(|e| DaemonError::Group(g.clone(), e))?),
            None => {
                let postfix = mailstack::privs::lookup_group("postfix").ok().flatten();
                if postfix.is_none() && matches!(socket, SocketSpec::Unix(_)) {
                    tracing::warn!(
                        "no group `postfix` here: the socket keeps the daemon's group, so \
                         Postfix's smtpd (user postfix) cannot connect to it; give --group"
                    );
                }
                postfix
            }
        };
        let nameservers = if self.nameserver.is_empty() {
            file.nameservers.clone()
        } else {
            self.nameserver.clone()
        };
        Ok(DaemonOpts {
            socket,
            unix: UnixOptions {
                mode: Some(file.socket_mode.unwrap_or(DEFAULT_SOCKET_MODE)),
                group,
            },
            nameservers,
            user: self.user.clone().or_else(|| file.user.clone()),
            run_group: None,
            allow_root: self.allow_root,
            user_option: "user in [mailstackd]",
            metrics: self.metrics.clone(),
        })
    }

    /// [`resolve`](Self::resolve) for a tool's own configuration file: its user option
    /// (`UserID user[:group]`, `User name`, named by `user_option` in the refusal message)
    /// fills `file.user` and the primary group, unless `--user` overrides both.
    pub fn resolve_tool(
        &self,
        mut file: DaemonSettings,
        run_as: Option<&mailstack::privs::RunAs>,
        user_option: &'static str,
    ) -> Result<DaemonOpts, DaemonError> {
        file.user = run_as.map(|r| r.user.clone());
        let mut opts = self.resolve(&file)?;
        if self.user.is_none() {
            opts.run_group = run_as.and_then(|r| r.group.clone());
        }
        opts.user_option = user_option;
        Ok(opts)
    }
}

/// Prints `name: e` and exits with status 2 (a configuration or start-up error).
pub fn fail(name: &str, e: impl Display) -> ! {
    eprintln!("{name}: {e}");
    std::process::exit(2);
}

/// The host's name (the authserv-id of last resort): [`mailstack::config::hostname`].
pub fn hostname() -> String {
    mailstack::config::hostname()
}

/// DNS through every server of `nameservers` (empty: /etc/resolv.conf's), `timeout` per
/// query either way.
pub fn resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
) -> Result<Arc<dyn Resolver>, DaemonError> {
    let r = HickoryResolver::from_config(nameservers, timeout)
        .map_err(|e| DaemonError::Resolver(e.to_string()))?;
    let r: Arc<dyn Resolver> = Arc::new(r);
    mailstack::health::register(Arc::new(mailstack::health::DnsCheck::new(r.clone())));
    Ok(r)
}

impl DaemonOpts {
    /// Before anything is bound: started as root with no user to switch to, refuse unless
    /// `--allow-root`.
    pub fn check_root(&self) -> Result<(), DaemonError> {
        if self.user.is_none() && !self.allow_root && mailstack::privs::running_as_root() {
            return Err(DaemonError::RootWithoutUser(self.user_option));
        }
        Ok(())
    }

    /// After binding and loading keys: give the socket file to the user, then switch the
    /// process to it. Not root: nothing to switch (already unprivileged), said in the log.
    pub fn drop_privileges(&self) -> Result<(), DaemonError> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        if !mailstack::privs::running_as_root() {
            tracing::warn!("not started as root: staying this user instead of switching to {user}");
            return Ok(());
        }
        let u = mailstack::privs::lookup_user(user)?;
        if let SocketSpec::Unix(path) = &self.socket {
            std::os::unix::fs::chown(path, Some(u.uid), None)?;
        }
        let d = mailstack::privs::drop_privileges_to(user, self.run_group.as_deref(), None)?;
        tracing::info!(
            "running as {user} (uid {}, gid {}, groups {:?})",
            d.uid,
            d.gid,
            d.groups
        );
        Ok(())
    }
}

/// What both serving paths do as root before dropping privileges: refuse root without a
/// user, bind the milter socket, start the `--metrics` / `/healthz` listener.
async fn bind(opts: &DaemonOpts) -> Result<Listener, DaemonError> {
    opts.check_root()?;
    let listener = Listener::bind(&opts.socket, &opts.unix).await?;
    if let Some(spec) = &opts.metrics {
        mailstack::health::start(spec).await?;
    }
    Ok(listener)
}

/// Refuses root without a user, binds `opts.socket`, drops privileges, then serves one
/// handler from `make` per MTA connection with `config` until SIGTERM or SIGINT (messages in
/// flight finish first). Load keys and configuration before calling it.
pub async fn serve_milter<H, F>(
    opts: &DaemonOpts,
    config: ServerConfig,
    make: F,
) -> Result<(), DaemonError>
where
    H: Handler,
    F: Fn() -> H + Send + Sync + 'static,
{
    let listener = bind(opts).await?;
    opts.drop_privileges()?;
    tracing::info!(socket = %opts.socket, "listening");
    serve(listener, make, config, crate::shutdown_signal()).await?;
    Ok(())
}

/// The flags for running a daemon under a supervisor or an init script: a pid file (for
/// `reload`) and a log file (reopened on SIGUSR1, after logrotate moved it).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ControlArgs {
    /// Write the daemon's process id to FILE once the socket is bound (`reload --pid-file
    /// FILE` signals it; the file is removed at exit when the daemon may still remove it).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Append the log to FILE instead of stderr; SIGUSR1 reopens it (after logrotate moved
    /// it; the daemon's user must be able to create FILE then).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

impl ControlArgs {
    /// Installs the log: to `--log-file` (reopenable), else stderr, at `level` unless
    /// `RUST_LOG` says otherwise.
    pub fn init_logging(&self, level: &str) -> std::io::Result<()> {
        match &self.log_file {
            Some(path) => crate::logging::reopenable_file(path, level),
            None => {
                crate::logging::stderr(level);
                Ok(())
            }
        }
    }
}

/// Why `reload` could not signal the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The pid file could not be read.
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The pid file holds no process id.
    #[error("{0}: not a process id: {1:?}")]
    NotAPid(PathBuf, String),
    /// kill(2) failed (no such process, not ours).
    #[error("process {0} (from {1}): {2}")]
    Kill(i32, PathBuf, std::io::Error),
}

/// Sends `signal` (SIGHUP: reload; SIGUSR1: reopen the log) to the process whose id is in
/// `pid_file`.
pub fn signal_pid_file(pid_file: &Path, signal: i32) -> Result<i32, SignalError> {
    let text =
        std::fs::read_to_string(pid_file).map_err(|e| SignalError::Read(pid_file.to_owned(), e))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| SignalError::NotAPid(pid_file.to_owned(), text.trim().to_owned()))?;
    // SAFETY: kill(2) has no memory preconditions; `pid` is positive, so this signals one
    // process, never a process group.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(SignalError::Kill(
            pid,
            pid_file.to_owned(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(pid)
}

/// The pid file while the daemon runs; removed on drop (best effort: after the switch to an
/// unprivileged user the directory may no longer let us).
#[derive(Debug)]
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &Path) -> std::io::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// [`serve_milter`] over a [`LiveFilter`] that `reload` rebuilds on SIGHUP: a new filter is put
/// in force for the connections that start after it loaded (connections and messages in
/// flight finish on the one they started with); one that does not load is refused, its error
/// logged (file and line), and the old one stays in force. SIGUSR1 reopens the log file. The
/// pid file, if any, is written once the socket is bound.
pub async fn serve_milter_live<F, B, E>(
    opts: &DaemonOpts,
    config: ServerConfig,
    live: Arc<LiveFilter<F>>,
    reload: B,
    control: &ControlArgs,
) -> Result<(), DaemonError>
where
    F: Filter,
    B: Fn() -> Result<F, E> + Send + Sync + 'static,
    E: Display + Send + 'static,
{
    let listener = bind(opts).await?;
    let _pid = control
        .pid_file
        .as_deref()
        .map(PidFile::write)
        .transpose()?;
    opts.drop_privileges()?;
    tracing::info!(socket = %opts.socket, "listening");
    let signals = tokio::spawn(reload_on_signals(live.clone(), Arc::new(reload)));
    let served = serve(
        listener,
        Milter::live_factory(live),
        config,
        crate::shutdown_signal(),
    )
    .await;
    signals.abort();
    served?;
    Ok(())
}

/// SIGHUP: rebuild and replace the filter (one reload at a time, off the async workers since
/// key loading reads files); SIGUSR1: reopen the log file.
async fn reload_on_signals<F, B, E>(live: Arc<LiveFilter<F>>, reload: Arc<B>)
where
    F: Filter,
    B: Fn() -> Result<F, E> + Send + Sync + 'static,
    E: Display + Send + 'static,
{
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut usr1)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) else {
        tracing::error!("cannot install the SIGHUP/SIGUSR1 handlers: no live reload");
        return;
    };
    loop {
        tokio::select! {
            Some(()) = hup.recv() => {
                let reload = reload.clone();
                match tokio::task::spawn_blocking(move || reload()).await {
                    Ok(Ok(filter)) => {
                        live.replace(Arc::new(filter));
                        tracing::info!("configuration reloaded: new connections use it");
                    }
                    Ok(Err(e)) => tracing::error!(
                        "reload refused, the previous configuration stays in force: {e}"
                    ),
                    Err(e) => tracing::error!(
                        "reload failed ({e}), the previous configuration stays in force"
                    ),
                }
            }
            Some(()) = usr1.recv() => match crate::logging::reopen() {
                Ok(true) => tracing::info!("log file reopened"),
                Ok(false) => tracing::info!("SIGUSR1: not logging to a file, nothing to reopen"),
                Err(e) => tracing::error!("log file not reopened: {e}"),
            },
            else => return,
        }
    }
}

/// How long buffered store records may take to be written at shutdown.
pub const STORE_FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

/// At exit (mailstackd, dmarc-milter): what the store writer still buffers gets
/// [`STORE_FLUSH_AT_EXIT`] to reach the store, then the totals are logged (a record still
/// pending then is lost, and the line says how many).
pub async fn flush_store_at_exit(w: &mailstack::store::BufferedWriter) {
    let all = w.flush(STORE_FLUSH_AT_EXIT).await;
    let st = w.stats();
    let line = format!(
        "store at exit: {} submitted, {} stored ({} already there), {} dropped, {} pending, {} failed attempts",
        st.submitted, st.stored, st.duplicates, st.dropped, st.pending, st.failures
    );
    if all {
        tracing::info!("{line}");
    } else {
        tracing::warn!("{line}: not everything reached the store within {STORE_FLUSH_AT_EXIT:?}");
    }
}
