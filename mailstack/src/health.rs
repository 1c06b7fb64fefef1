//! Liveness and readiness, and the HTTP listener that serves them beside the metrics
//! (`--metrics SPEC`):
//!
//! - `GET /metrics`: [`crate::metrics`] in the Prometheus text format (OpenMetrics when the
//!   scraper's `Accept` asks for `application/openmetrics-text`).
//! - `GET /healthz/live`: 200 while the process serves.
//! - `GET /healthz/ready`: 200 when every registered [`Check`] passes, 503 naming those that
//!   do not. Text by default; JSON with `Accept: application/json` or `?format=json`.
//!
//! The checks are registered process-wide by the code that builds what they check (the AV
//! filter registers a clamd `PING`, the daemons' resolver a DNS query, the DKIM filter its
//! keys; a store registers its own through [`register`]). A readiness answer is at most
//! [`READY_CACHE`] old and each check gets [`CHECK_TIMEOUT`], so readiness turns within a
//! second of a dependency going away, and a scraper polling fast costs at most one round of
//! checks per [`READY_CACHE`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use tokio::net::TcpListener;

use crate::clamd::Client;
use crate::dns::{DnsError, Resolver};

/// How long one readiness check may take before it counts as down (well under a second,
/// so that a dead dependency shows within a second).
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a readiness answer is reused: a scraper polling every few milliseconds costs at
/// most one round of checks per this interval.
pub const READY_CACHE: Duration = Duration::from_millis(250);

/// HTTP connections served at once; more wait in the kernel's backlog.
pub const MAX_HTTP_CONNECTIONS: usize = 32;

/// How long one HTTP connection may stay open (a scrape takes milliseconds).
pub const HTTP_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a dependency is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckError(pub String);

/// One dependency of readiness.
#[async_trait]
pub trait Check: Send + Sync {
    /// A short name (`clamd`, `dns`, `dkim-keys`, `store`), shown when it is down.
    fn name(&self) -> &str;
    /// Asks the dependency for real; `Err` says why it is down.
    async fn check(&self) -> Result<(), CheckError>;
}

/// clamd answers `PING` (any one of its sockets, as the AV filter fails over between them).
#[derive(Debug)]
pub struct ClamdCheck {
    clients: Vec<Client>,
}

impl ClamdCheck {
    /// A check over `clients`.
    pub fn new(clients: Vec<Client>) -> Self {
        Self { clients }
    }
}

#[async_trait]
impl Check for ClamdCheck {
    fn name(&self) -> &str {
        "clamd"
    }

    async fn check(&self) -> Result<(), CheckError> {
        let mut last = CheckError("no clamd socket configured".into());
        for c in &self.clients {
            match c.ping().await {
                Ok(()) => return Ok(()),
                Err(e) => last = CheckError(format!("{}: {e}", c.addr())),
            }
        }
        Err(last)
    }
}

/// The resolver answers a query (`TXT` of the root: any answer, NXDOMAIN or an empty one
/// included, shows the server is there; a timeout or SERVFAIL does not).
pub struct DnsCheck {
    resolver: Arc<dyn Resolver>,
}

impl fmt::Debug for DnsCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsCheck").finish_non_exhaustive()
    }
}

impl DnsCheck {
    /// A check of `resolver`.
    pub fn new(resolver: Arc<dyn Resolver>) -> Self {
        Self { resolver }
    }
}

#[async_trait]
impl Check for DnsCheck {
    fn name(&self) -> &str {
        "dns"
    }

    async fn check(&self) -> Result<(), CheckError> {
        match self.resolver.txt(".").await {
            Ok(_) | Err(DnsError::NxDomain | DnsError::NoData) => Ok(()),
            Err(e) => Err(CheckError(e.to_string())),
        }
    }
}

/// A fixed state found at start-up (e.g. `dkim-keys`: how many signing keys loaded).
#[derive(Debug)]
pub struct StaticCheck {
    name: String,
    state: Result<(), CheckError>,
}

impl StaticCheck {
    /// `name` is ready when `state` is `Ok`.
    pub fn new(name: impl Into<String>, state: Result<(), CheckError>) -> Self {
        Self {
            name: name.into(),
            state,
        }
    }
}

#[async_trait]
impl Check for StaticCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> Result<(), CheckError> {
        self.state.clone()
    }
}

/// The state of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    /// The check's name.
    pub name: String,
    /// `None`: up; `Some(why)`: down.
    pub down: Option<String>,
}

/// A readiness answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Every check, by name.
    pub checks: Vec<CheckState>,
}

impl Readiness {
    /// Every check passed.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.down.is_none())
    }

    /// `ready` or `not ready: clamd (why); dns (why)`, one line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.ready() {
            out.push_str("ready");
            for c in &self.checks {
                let _ = write!(out, " {}=up", c.name);
            }
        } else {
            out.push_str("not ready:");
            for c in &self.checks {
                if let Some(why) = &c.down {
                    let _ = write!(out, " {} down ({why});", c.name);
                }
            }
            out.pop();
        }
        out.push('\n');
        out
    }

    /// `{"ready":false,"checks":{"clamd":{"up":false,"error":"..."}}}`.
    pub fn json(&self) -> String {
        let mut out = format!("{{\"ready\":{},\"checks\":{{", self.ready());
        for (i, c) in self.checks.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(&mut out, &c.name);
            match &c.down {
                None => out.push_str(":{\"up\":true}"),
                Some(why) => {
                    out.push_str(":{\"up\":false,\"error\":");
                    json_string(&mut out, why);
                    out.push('}');
                }
            }
        }
        out.push_str("}}\n");
        out
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The readiness checks and the last answer.
pub struct Health {
    checks: Mutex<BTreeMap<String, Arc<dyn Check>>>,
    cache: tokio::sync::Mutex<Option<(Instant, Readiness)>>,
    timeout: Duration,
    max_age: Duration,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("timeout", &self.timeout)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new(CHECK_TIMEOUT, READY_CACHE)
    }
}

impl Health {
    /// No checks yet; each check gets `timeout`, an answer is reused for `max_age`.
    pub fn new(timeout: Duration, max_age: Duration) -> Self {
        Self {
            checks: Mutex::new(BTreeMap::new()),
            cache: tokio::sync::Mutex::new(None),
            timeout,
            max_age,
        }
    }

    /// Adds `check`, replacing one of the same name.
    pub fn register(&self, check: Arc<dyn Check>) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks.insert(check.name().to_owned(), check);
    }

    /// Runs every check (concurrently, each within the timeout), or returns the answer of at
    /// most `max_age` ago.
    pub async fn readiness(&self) -> Readiness {
        let mut cache = self.cache.lock().await;
        if let Some((at, r)) = cache.as_ref()
            && at.elapsed() < self.max_age
        {
            return r.clone();
        }
        let checks: Vec<Arc<dyn Check>> = {
            let c = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            c.values().cloned().collect()
        };
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in checks.iter().enumerate() {
            let c = c.clone();
            let t = self.timeout;
            set.spawn(async move {
                let down = match tokio::time::timeout(t, c.check()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.0),
                    Err(_) => Some(format!("no answer within {t:?}")),
                };
                (i, down)
            });
        }
        let mut states: Vec<CheckState> = checks
            .iter()
            .map(|c| CheckState {
                name: c.name().to_owned(),
                down: Some("check did not finish".into()),
            })
            .collect();
        while let Some(r) = set.join_next().await {
            if let Ok((i, down)) = r
                && let Some(s) = states.get_mut(i)
            {
                s.down = down;
            }
        }
        let r = Readiness { checks: states };
        *cache = Some((Instant::now(), r.clone()));
        r
    }
}

static GLOBAL: std::sync::OnceLock<Health> = std::sync::OnceLock::new();

/// The process's readiness checks.
pub fn global() -> &'static Health {
    GLOBAL.get_or_init(Health::default)
}

/// Registers `check` for the process's readiness (replacing one of the same name).
pub fn register(check: Arc<dyn Check>) {
    global().register(check);
}

/// The address of the metrics and health listener: `HOST:PORT`, `inet:HOST:PORT` or
/// `inet:PORT@HOST` (`HOST` an address or a name resolved at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSpec(pub SocketAddr);

/// An [`HttpSpec`] that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics listener {spec:?}: {why} (want HOST:PORT or inet:HOST:PORT)")]
pub struct HttpSpecError {
    spec: String,
    why: String,
}

impl std::str::FromStr for HttpSpec {
    type Err = HttpSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| HttpSpecError {
            spec: s.to_owned(),
            why: why.to_owned(),
        };
        let rest = s.strip_prefix("inet:").unwrap_or(s);
        let hostport = match rest.split_once('@') {
            Some((port, host)) => format!("{host}:{port}"),
            None => rest.to_owned(),
        };
        let mut addrs = hostport
            .to_socket_addrs()
            .map_err(|e| err(&e.to_string()))?;
        addrs.next().map(Self).ok_or_else(|| err("no address"))
    }
}

impl fmt::Display for HttpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inet:{}", self.0)
    }
}

fn wants(req: &Request<Incoming>, media: &str) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(media))
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn route(req: Request<Incoming>, health: &Health) -> Response<Full<Bytes>> {
    let json = wants(&req, "application/json")
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "format=json"));
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => match crate::metrics::get() {
            Some(m) if wants(&req, "application/openmetrics-text") => respond(
                StatusCode::OK,
                crate::metrics::OPENMETRICS_CONTENT_TYPE,
                m.encode_openmetrics(),
            ),
            Some(m) => respond(
                StatusCode::OK,
                crate::metrics::PROMETHEUS_CONTENT_TYPE,
                m.encode_prometheus(),
            ),
            None => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "metrics are off\n".into(),
            ),
        },
        "/healthz/live" if json => respond(
            StatusCode::OK,
            "application/json",
            "{\"live\":true}\n".into(),
        ),
        "/healthz/live" => respond(StatusCode::OK, "text/plain", "live\n".into()),
        "/healthz/ready" => {
            let r = health.readiness().await;
            let status = if r.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            if json {
                respond(status, "application/json", r.json())
            } else {
                respond(status, "text/plain", r.text())
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz/live or /healthz/ready\n".into(),
        ),
    }
}

/// Serves `/metrics` and `/healthz/*` on `listener` with `health`'s checks, until the task is
/// dropped. At most [`MAX_HTTP_CONNECTIONS`] at once, each for at most
/// [`HTTP_CONNECTION_TIMEOUT`].
pub async fn serve_http(listener: TcpListener, health: &'static Health) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics listener: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(route(req, health).await)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(io, service);
            match tokio::time::timeout(HTTP_CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
                Err(_) => tracing::debug!("metrics connection: closed after the time limit"),
            }
        });
    }
}

/// Switches metrics on, binds `spec` and serves it in a background task with the process's
/// checks ([`global`]). Call it before dropping privileges (a low port).
///
/// # Errors
///
/// Binding fails.
pub async fn start(spec: &HttpSpec) -> std::io::Result<SocketAddr> {
    crate::metrics::install();
    let listener = TcpListener::bind(spec.0).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_http(listener, global()));
    tracing::info!("metrics and health on http://{addr}/metrics, /healthz/live, /healthz/ready");
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(Arc<AtomicBool>);

    #[async_trait]
    impl Check for Flag {
        fn name(&self) -> &str {
            "flag"
        }
        async fn check(&self) -> Result<(), CheckError> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(CheckError("flag is off".into()))
            }
        }
    }

    struct Hang;

    #[async_trait]
    impl Check for Hang {
        fn name(&self) -> &str {
            "store"
        }
        async fn check(&self) -> Result<(), CheckError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn readiness_is_cached_and_names_what_is_down() {
        let h = Health::new(Duration::from_millis(50), Duration::from_millis(100));
        let up = Arc::new(AtomicBool::new(true));
        h.register(Arc::new(Flag(up.clone())));
        assert!(h.readiness().await.ready());
        up.store(false, Ordering::SeqCst);
        // Cached for max_age.
        assert!(h.readiness().await.ready());
        tokio::time::sleep(Duration::from_millis(120)).await;
        let r = h.readiness().await;
        assert!(!r.ready());
        assert_eq!(r.text(), "not ready: flag down (flag is off)\n");
        assert_eq!(
            r.json(),
            "{\"ready\":false,\"checks\":{\"flag\":{\"up\":false,\"error\":\"flag is off\"}}}\n"
        );
        h.register(Arc::new(Hang));
        tokio::time::sleep(Duration::from_millis(120)).await;
        let t = Instant::now();
        let r = h.readiness().await;
        assert!(t.elapsed() < Duration::from_secs(1));
        let store = r.checks.iter().find(|c| c.name == "store").unwrap();
        assert!(store.down.as_deref().unwrap().contains("no answer within"));
    }

    #[test]
    fn specs_parse() {
        let a: HttpSpec = "127.0.0.1:9187".parse().unwrap();
        assert_eq!(a.0, "127.0.0.1:9187".parse().unwrap());
        let b: HttpSpec = "inet:127.0.0.1:9187".parse().unwrap();
        assert_eq!(a, b);
        let c: HttpSpec = "inet:9187@127.0.0.1".parse().unwrap();
        assert_eq!(a, c);
        assert!("nonsense".parse::<HttpSpec>().is_err());
    }
}
