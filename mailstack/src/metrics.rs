//! Prometheus metrics shared by every daemon: one process-wide [`Metrics`], switched on by
//! [`install`] (a daemon's `--metrics`), read by the shared code paths (the milter adapter,
//! the resolver, the clamd client, DKIM signing) through [`get`].
//!
//! Off (nothing installed), each hook costs one atomic load of a `OnceLock` and a branch.
//! On, a counter is an atomic add and a labelled one a read-locked hash lookup
//! (`prometheus_client::metrics::family::Family`).
//!
//! Every label value is one of a fixed set of words (a stage, a result keyword, an action,
//! an error kind): no domain, address or free text ever becomes a label, so the number of
//! series is bounded.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of [`Metrics::encode_prometheus`] (text format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `Content-Type` of [`Metrics::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

type L1 = [(&'static str, &'static str); 1];
type L2 = [(&'static str, &'static str); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A milter stage, as the `stage` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// CONNECT.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// One header field.
    Header,
    /// End of headers.
    Eoh,
    /// One body chunk.
    Body,
    /// End of message.
    Eom,
    /// The MTA aborted the message.
    Abort,
    /// The connection closed.
    Close,
    /// One policy delegation request (spf-policyd).
    Policy,
}

impl Stage {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Helo => "helo",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Header => "header",
            Self::Eoh => "eoh",
            Self::Body => "body",
            Self::Eom => "eom",
            Self::Abort => "abort",
            Self::Close => "close",
            Self::Policy => "policy",
        }
    }
}

/// What went wrong, as the `kind` label of `mailstack_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A DNS query timed out or failed (not NXDOMAIN or no data: those are answers).
    Dns,
    /// Talking to clamd failed (connect, timeout, I/O, bad reply).
    Clamd,
    /// A peer broke the protocol (milter or policy delegation).
    Protocol,
    /// A limit was hit (clamd's stream size, header counts, ...).
    Limit,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Clamd => "clamd",
            Self::Protocol => "protocol",
            Self::Limit => "limit",
        }
    }
}

/// The methods that get their own `method` label value; any other is `other`.
const METHODS: [&str; 6] = ["spf", "dkim", "dmarc", "arc", "iprev", "auth"];

/// The result keywords (RFC 8601 §2.7 and RFC 7208's) that get their own `result` label
/// value; any other is `other`.
const RESULTS: [&str; 10] = [
    "pass",
    "fail",
    "softfail",
    "neutral",
    "none",
    "temperror",
    "permerror",
    "policy",
    "hardfail",
    "bestguesspass",
];

/// `word` when it is one of `set` (case-insensitively), else `other`: label values stay
/// within a fixed set whatever a filter writes.
fn bounded(word: &str, set: &[&'static str]) -> &'static str {
    set.iter()
        .find(|w| w.eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("other")
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    stages: Family<L1, Counter>,
    connections: Counter,
    messages: Counter,
    replies: Family<L1, Counter>,
    actions: Family<L1, Counter>,
    modifications: Family<L1, Counter>,
    auth_results: Family<L2, Counter>,
    av_results: Family<L1, Counter>,
    av_actions: Family<L1, Counter>,
    policy_actions: Family<L1, Counter>,
    errors: Family<L1, Counter>,
    dns_queries: Family<L2, Counter>,
    dmarc_buffered: Counter,
    dmarc_dropped: Counter,
    message_seconds: Histogram,
    latency: HistogramFamily<L1>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s: DNS, clamd and signing all fall in it.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Metrics {
    /// A fresh set of metrics (all zero), registered under `mailstack_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mailstack");
        let stages = Family::<L1, Counter>::default();
        let connections = Counter::default();
        let messages = Counter::default();
        let replies = Family::<L1, Counter>::default();
        let actions = Family::<L1, Counter>::default();
        let modifications = Family::<L1, Counter>::default();
        let auth_results = Family::<L2, Counter>::default();
        let av_results = Family::<L1, Counter>::default();
        let av_actions = Family::<L1, Counter>::default();
        let policy_actions = Family::<L1, Counter>::default();
        let errors = Family::<L1, Counter>::default();
        let dns_queries = Family::<L2, Counter>::default();
        let dmarc_buffered = Counter::default();
        let dmarc_dropped = Counter::default();
        let message_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let latency: HistogramFamily<L1> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "stage_events",
            "Milter events received, by stage",
            stages.clone(),
        );
        registry.register("connections", "MTA connections opened", connections.clone());
        registry.register(
            "messages",
            "Messages that reached end of message",
            messages.clone(),
        );
        registry.register("replies", "Milter replies sent, by reply", replies.clone());
        registry.register(
            "actions",
            "Actions taken on messages, by action",
            actions.clone(),
        );
        registry.register(
            "header_modifications",
            "Header modifications made, by kind",
            modifications.clone(),
        );
        registry.register(
            "auth_results",
            "Authentication results written, by method and result",
            auth_results.clone(),
        );
        registry.register(
            "av_results",
            "Antivirus scan outcomes, by result",
            av_results.clone(),
        );
        registry.register(
            "av_actions",
            "Antivirus actions taken, by action",
            av_actions.clone(),
        );
        registry.register(
            "policy_actions",
            "Policy delegation answers (spf-policyd), by action",
            policy_actions.clone(),
        );
        registry.register("errors", "Errors, by kind", errors.clone());
        registry.register(
            "dns_queries",
            "DNS queries, by record type and outcome",
            dns_queries.clone(),
        );
        registry.register(
            "dmarc_records_buffered",
            "DMARC aggregate-report records buffered",
            dmarc_buffered.clone(),
        );
        registry.register(
            "dmarc_records_dropped",
            "DMARC aggregate-report records dropped (buffer full or store failed)",
            dmarc_dropped.clone(),
        );
        registry.register_with_unit(
            "message_duration",
            "Time from MAIL FROM to the end-of-message reply",
            Unit::Seconds,
            message_seconds.clone(),
        );
        registry.register_with_unit(
            "operation_duration",
            "Latency of DNS queries, clamd scans and DKIM signing, by operation",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let start: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        start.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64(),
        );
        registry.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            start,
        );
        Self {
            registry,
            stages,
            connections,
            messages,
            replies,
            actions,
            modifications,
            auth_results,
            av_results,
            av_actions,
            policy_actions,
            errors,
            dns_queries,
            dmarc_buffered,
            dmarc_dropped,
            message_seconds,
            latency,
        }
    }

    /// The Prometheus text exposition (format 0.0.4, what `promtool check metrics` reads).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        // Writing to a String never fails.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing to a String never fails.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// One milter event (or policy request) at `stage`.
    pub fn stage(&self, stage: Stage) {
        self.stages
            .get_or_create(&[("stage", stage.as_str())])
            .inc();
        match stage {
            Stage::Connect => {
                self.connections.inc();
            }
            Stage::Eom => {
                self.messages.inc();
            }
            _ => {}
        }
    }

    /// One milter reply sent (`continue`, `accept`, `reject`, `tempfail`, `replycode`,
    /// `discard`, ...).
    pub fn reply(&self, reply: &'static str) {
        self.replies.get_or_create(&[("reply", reply)]).inc();
    }

    /// One action taken on a message (`accept`, `reject`, `tempfail`, `discard`,
    /// `quarantine`).
    pub fn action(&self, action: &'static str) {
        self.actions.get_or_create(&[("action", action)]).inc();
    }

    /// One header modification made (`insert`, `append`, `delete`, `auth_results`).
    pub fn modification(&self, kind: &'static str) {
        self.modifications.get_or_create(&[("kind", kind)]).inc();
    }

    /// One `method=result` clause written (method and result bounded to known words).
    pub fn auth_result(&self, method: &str, result: &str) {
        let m = bounded(method, &METHODS);
        let r = bounded(result, &RESULTS);
        self.auth_results
            .get_or_create(&[("method", m), ("result", r)])
            .inc();
    }

    /// One antivirus outcome (`clean`, `infected`, `error`, `skipped`).
    pub fn av_result(&self, result: &'static str) {
        self.av_results.get_or_create(&[("result", result)]).inc();
    }

    /// One antivirus action (`accept`, `reject`, `defer`, `blackhole`, `quarantine`).
    pub fn av_action(&self, action: &'static str) {
        self.av_actions.get_or_create(&[("action", action)]).inc();
    }

    /// One policy delegation answer (the action word, bounded; a bare SMTP code is a
    /// `reject` when 5xx and a `defer` when 4xx, as Postfix treats it).
    pub fn policy_action(&self, action: &str) {
        let action = match action.as_bytes() {
            [b'5', b'0'..=b'9', b'0'..=b'9'] => "reject",
            [b'4', b'0'..=b'9', b'0'..=b'9'] => "defer",
            _ => action,
        };
        const ACTIONS: [&str; 8] = [
            "dunno",
            "prepend",
            "reject",
            "defer_if_permit",
            "defer",
            "ok",
            "warn",
            "permit",
        ];
        let a = bounded(action, &ACTIONS);
        self.policy_actions.get_or_create(&[("action", a)]).inc();
    }

    /// One error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&[("kind", kind.as_str())]).inc();
    }

    /// One DNS query of record type `rtype` (`txt`, `a`, ...) that ended in `outcome`
    /// (`ok`, `nxdomain`, `nodata`, `timeout`, `servfail`, `error`), taking `took`.
    pub fn dns_query(&self, rtype: &'static str, outcome: &'static str, took: Duration) {
        self.dns_queries
            .get_or_create(&[("type", rtype), ("outcome", outcome)])
            .inc();
        self.observe("dns", took);
    }

    /// The latency of one operation (`dns`, `clamd`, `dkim_sign`).
    pub fn observe(&self, operation: &'static str, took: Duration) {
        self.latency
            .get_or_create(&[("operation", operation)])
            .observe(took.as_secs_f64());
    }

    /// A whole message took `took` (MAIL FROM to the end-of-message reply).
    pub fn message_duration(&self, took: Duration) {
        self.message_seconds.observe(took.as_secs_f64());
    }

    /// One DMARC aggregate-report record buffered.
    pub fn dmarc_record_buffered(&self) {
        self.dmarc_buffered.inc();
    }

    /// One DMARC aggregate-report record dropped.
    pub fn dmarc_record_dropped(&self) {
        self.dmarc_dropped.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// Switches metrics on for the process (idempotent) and returns them.
pub fn install() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::new)
}

/// The process's metrics when [`install`]ed; `None` (metrics off) costs one atomic load.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    GLOBAL.get()
}

/// Runs `f` on the metrics when they are on.
#[inline]
pub fn with(f: impl FnOnce(&Metrics)) {
    if let Some(m) = get() {
        f(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_rules_and_labels_stay_bounded() {
        let m = Metrics::new();
        m.stage(Stage::Connect);
        m.stage(Stage::Eom);
        m.auth_result("spf", "pass");
        m.auth_result("x-evil", "example.com");
        m.error(ErrorKind::Dns);
        m.dns_query("txt", "ok", Duration::from_millis(3));
        m.observe("clamd", Duration::from_millis(20));
        m.dmarc_record_buffered();
        m.policy_action("550");
        m.policy_action("PREPEND");
        m.policy_action("x-unknown");
        let text = m.encode_prometheus();
        assert!(text.contains("mailstack_connections_total 1\n"), "{text}");
        assert!(text.contains("mailstack_messages_total 1\n"), "{text}");
        assert!(
            text.contains("mailstack_auth_results_total{method=\"spf\",result=\"pass\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mailstack_auth_results_total{method=\"other\",result=\"other\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("example.com"), "{text}");
        assert!(
            text.contains("mailstack_errors_total{kind=\"dns\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mailstack_operation_duration_seconds_count{operation=\"dns\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mailstack_dmarc_records_buffered_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mailstack_dmarc_records_dropped_total 0\n"),
            "{text}"
        );
        assert!(text.contains("mailstack_build_info{version="), "{text}");
        assert!(
            text.contains("mailstack_process_start_time_seconds "),
            "{text}"
        );
        for a in ["reject", "prepend", "other"] {
            let want = format!("mailstack_policy_actions_total{{action=\"{a}\"}} 1\n");
            assert!(text.contains(&want), "{want}: {text}");
        }
        let om = m.encode_openmetrics();
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
