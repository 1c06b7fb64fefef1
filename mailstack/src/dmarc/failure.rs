//! DMARC failure reports (RFC 7489 §7.3, RFC 6591's AFRF, RFC 9991): off by default.
//!
//! [`FailureSink`] is what the DMARC filter offers each failure of a domain publishing
//! `ruf=` to (when [`super::DmarcFilter::with_failure_reports`] was called). The
//! [`FailureReporter`] builds one `multipart/report; report-type=feedback-report` message
//! per failure ([`failure_message`]: the human part, the `message/feedback-report` part with
//! `Feedback-Type: auth-failure`, and the original header block only, never the body, as
//! RFC 9991 §7's privacy advice asks), limits it per destination ([`RateLimiter`]), verifies
//! a destination outside the domain's organization as aggregate reports do, and sends it in
//! the background; mail flow never waits for it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::dns::Resolver;

use super::history::MessageRecord;
use super::report::{
    ReportMeta, ReportSigner, Rua, Verification, rfc5322_date, verify_destination,
};

/// Default limit: failure reports per destination per [`DEFAULT_RATE_WINDOW_SECS`] (RFC 7489
/// §7.3 leaves it to the receiver; ten an hour keeps a spoofing run from turning us into a
/// mail cannon).
pub const DEFAULT_RATE_MAX: u32 = 10;

/// Default rate-limit window: one hour.
pub const DEFAULT_RATE_WINDOW_SECS: u64 = 3600;

/// Most destinations the limiter remembers; a new one past it is refused until windows
/// expire.
pub const MAX_RATE_KEYS: usize = 10_000;

/// Header bytes copied into a report (RFC 5322 headers rarely pass 16 KiB; longer blocks
/// are cut at a field boundary).
pub const MAX_REPORTED_HEADER: usize = 64 * 1024;

/// Receives failures from the filter. Must not block.
pub trait FailureSink: Send + Sync + std::fmt::Debug {
    /// One DMARC failure: its record (with the policy and its `ruf`) and the header fields.
    fn offer(&self, record: &MessageRecord, headers: &[(String, String)]);
}

/// A fixed-window limiter per destination, bounded in memory.
#[derive(Debug)]
pub struct RateLimiter {
    max: u32,
    window: u64,
    keys: Mutex<HashMap<String, (u64, u32)>>,
}

impl RateLimiter {
    /// At most `max` per `window` seconds per destination.
    pub fn new(max: u32, window: u64) -> Self {
        Self {
            max,
            window: window.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Whether one more may go to `dest` at `now` (counts it when so).
    pub fn allow(&self, dest: &str, now: u64) -> bool {
        // A poisoned lock only means a panic elsewhere; the counts are still usable.
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let start = now - now % self.window;
        if keys.len() >= MAX_RATE_KEYS && !keys.contains_key(dest) {
            keys.retain(|_, (s, _)| *s == start);
            if keys.len() >= MAX_RATE_KEYS {
                return false;
            }
        }
        let e = keys.entry(dest.to_ascii_lowercase()).or_insert((start, 0));
        if e.0 != start {
            *e = (start, 0);
        }
        if e.1 >= self.max {
            return false;
        }
        e.1 += 1;
        true
    }
}

/// The AFRF message for `rec` to `to` (CRLF line ends), ready to be signed.
pub fn failure_message(
    rec: &MessageRecord,
    headers: &[(String, String)],
    meta: &ReportMeta,
    to: &str,
    now: u64,
) -> Vec<u8> {
    let boundary = format!(
        "=_mailstack_afrf_{}_{now}",
        rec.job_id.replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    let ip = rec
        .source_ip
        .map_or_else(|| "unknown".to_owned(), |i| i.to_string());
    let arrival = rfc5322_date(rec.received);
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let delivery = match rec.disposition {
        super::Policy::Reject => "reject",
        super::Policy::Quarantine => "spam",
        super::Policy::None => "delivered",
    };
    let alignment = match (rec.dkim_aligned, rec.spf_aligned) {
        (true, true) => "dkim,spf",
        (true, false) => "dkim",
        (false, true) => "spf",
        (false, false) => "none",
    };
    let mut m = String::new();
    let _ = write!(
        m,
        "From: {}\r\nTo: {to}\r\nSubject: DMARC failure report for {}\r\nDate: {}\r\n\
         Message-ID: <afrf.{now}.{}@{}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is an authentication failure report for a message received from {ip} on {arrival}.\r\n\r\n\
         --{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: auth-failure\r\nUser-Agent: mailstack/{}\r\nVersion: 1\r\n\
         Original-Mail-From: <{}>\r\nArrival-Date: {arrival}\r\nSource-IP: {ip}\r\n\
         Reported-Domain: {}\r\nAuthentication-Results: {}; dmarc=fail header.from={}\r\n\
         Auth-Failure: dmarc\r\nDelivery-Result: {delivery}\r\nIdentity-Alignment: {alignment}\r\n\r\n\
         --{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n",
        meta.email,
        clean(&rec.header_from),
        rfc5322_date(now),
        clean(&rec.job_id).replace(' ', ""),
        meta.receiver,
        env!("CARGO_PKG_VERSION"),
        clean(&rec.envelope_from),
        clean(&rec.header_from),
        clean(&rec.reporter),
        clean(&rec.header_from),
    );
    let mut copied = 0;
    for (n, v) in headers {
        let field = format!(
            "{n}: {}\r\n",
            v.replace("\r\n", "\n").replace('\n', "\r\n\t")
        );
        copied += field.len();
        if copied > MAX_REPORTED_HEADER {
            break;
        }
        m.push_str(&field);
    }
    let _ = write!(m, "\r\n--{boundary}--\r\n");
    m.into_bytes()
}

/// Why the failure reporter a configuration asks for could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailureSetupError {
    /// `MailstackFailureSMTP` could not be read (the error names the file and line).
    #[error("MailstackFailureSMTP: {0}")]
    Smtp(#[from] crate::config::ConfigError),
    /// Its TLS settings are unusable.
    #[error("MailstackFailureSMTP: {0}")]
    Notify(#[from] crate::notify::NotifyError),
}

/// The reporter `FailureReports yes` asks for (`None` when off): sending as
/// `FailureReportsSentBy` (From and envelope sender) through `MailstackFailureSMTP`, at most `MailstackFailureRate`,
/// with `org_name` the authserv-id. Call it inside a tokio runtime (reports are sent from
/// background tasks).
///
/// # Errors
/// When the submission file cannot be read or its TLS settings are unusable.
pub fn from_config(
    cfg: &super::DmarcConfig,
    resolver: Arc<dyn Resolver>,
    authserv_id: &str,
) -> Result<Option<FailureReporter>, FailureSetupError> {
    let Some(f) = &cfg.failure_reports else {
        return Ok(None);
    };
    let mut smtp = crate::notify::MsmtpConfig::read(&f.smtp)?;
    // The reports' envelope sender is the reporter's address, as their From.
    smtp.from.clone_from(&f.sent_by);
    let notifier = crate::notify::Notifier::new(&smtp)?;
    let receiver = f
        .sent_by
        .rsplit_once('@')
        .map_or(authserv_id, |(_, d)| d)
        .to_owned();
    let meta = ReportMeta {
        org_name: authserv_id.to_owned(),
        email: f.sent_by.clone(),
        extra_contact_info: None,
        receiver,
    };
    Ok(Some(FailureReporter::new(
        meta,
        notifier,
        None,
        resolver,
        RateLimiter::new(f.rate.0, f.rate.1),
    )))
}

/// Sends failure reports: rate-limited, verified, signed, in the background.
#[derive(Debug, Clone)]
pub struct FailureReporter {
    inner: Arc<Inner>,
}

struct Inner {
    meta: ReportMeta,
    notifier: crate::notify::Notifier,
    signer: Option<ReportSigner>,
    resolver: Arc<dyn Resolver>,
    limiter: RateLimiter,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureReporter")
            .field("meta", &self.meta)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl FailureReporter {
    /// A reporter sending as `meta.email` through `notifier`, at most `limiter` allows.
    pub fn new(
        meta: ReportMeta,
        notifier: crate::notify::Notifier,
        signer: Option<ReportSigner>,
        resolver: Arc<dyn Resolver>,
        limiter: RateLimiter,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                meta,
                notifier,
                signer,
                resolver,
                limiter,
            }),
        }
    }
}

impl FailureSink for FailureReporter {
    fn offer(&self, rec: &MessageRecord, headers: &[(String, String)]) {
        let Some((pdomain, policy)) = &rec.policy else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for uri in &policy.ruf {
            let Ok(ruf) = Rua::parse(uri) else { continue };
            if !self.inner.limiter.allow(&ruf.address, now) {
                tracing::info!("DMARC failure report to {ruf} rate-limited");
                continue;
            }
            let mut msg = failure_message(rec, headers, &self.inner.meta, &ruf.address, now);
            if let Some(s) = &self.inner.signer {
                match super::report::sign(&msg, s, now) {
                    Ok(m) => msg = m,
                    Err(e) => {
                        tracing::warn!("DMARC failure report: {e}");
                        continue;
                    }
                }
            }
            if ruf.max_size.is_some_and(|l| msg.len() as u64 > l) {
                continue;
            }
            let inner = self.inner.clone();
            let pdomain = pdomain.clone();
            tokio::spawn(async move {
                match verify_destination(inner.resolver.as_ref(), &pdomain, &ruf, None).await {
                    Verification::Internal | Verification::Verified => {}
                    v => {
                        tracing::info!("DMARC failure report to {ruf} not sent: {v:?}");
                        return;
                    }
                }
                if let Err(e) = inner.notifier.send_raw(&ruf.address, &msg).await {
                    tracing::warn!("DMARC failure report to {ruf}: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_destination_and_window() {
        let l = RateLimiter::new(2, 100);
        assert!(l.allow("a@x", 1000));
        assert!(l.allow("A@x", 1001));
        assert!(!l.allow("a@x", 1002));
        assert!(l.allow("b@x", 1002));
        assert!(l.allow("a@x", 1100), "a new window");
    }

    #[test]
    fn limiter_is_bounded() {
        let l = RateLimiter::new(1, 100);
        for i in 0..MAX_RATE_KEYS {
            assert!(l.allow(&format!("{i}@x"), 0));
        }
        assert!(!l.allow("new@x", 50), "full within the window");
        assert!(l.allow("new@x", 100), "old windows are dropped");
        assert!(l.keys.lock().unwrap().len() <= MAX_RATE_KEYS);
    }

    #[test]
    fn message_is_afrf_with_headers_only() {
        let mut rec = crate::dmarc::history::tests_support::sample();
        rec.result = crate::dmarc::DmarcResult::Fail;
        rec.dkim_aligned = false;
        rec.disposition = crate::dmarc::Policy::Reject;
        let headers = vec![
            ("From".to_owned(), "a@sender.example".to_owned()),
            ("Subject".to_owned(), "hello\n there".to_owned()),
        ];
        let meta = ReportMeta {
            org_name: "R".into(),
            email: "dmarc@receiver.example".into(),
            extra_contact_info: None,
            receiver: "receiver.example".into(),
        };
        let m = String::from_utf8(failure_message(
            &rec,
            &headers,
            &meta,
            "ruf@sender.example",
            1_764_000_000,
        ))
        .unwrap();
        assert!(m.contains("Content-Type: multipart/report; report-type=feedback-report;"));
        assert!(m.contains("\r\nFeedback-Type: auth-failure\r\n"));
        assert!(
            m.contains(
                "\r\nAuth-Failure: dmarc\r\nDelivery-Result: reject\r\nIdentity-Alignment: none\r\n"
            ),
            "{m}"
        );
        assert!(m.contains("\r\nSource-IP: 192.0.2.1\r\n"));
        assert!(m.contains("Content-Type: text/rfc822-headers\r\n\r\nFrom: a@sender.example\r\nSubject: hello\r\n\t there\r\n"), "{m}");
        assert!(m.contains("\r\nAuto-Submitted: auto-generated\r\n"));
        assert!(crate::dmarc::history::is_report(&[(
            "Content-Type".into(),
            "multipart/report; report-type=feedback-report".into()
        )]));
    }

    #[derive(Debug, Default)]
    struct Capture(Mutex<Vec<(MessageRecord, usize)>>);

    impl FailureSink for Capture {
        fn offer(&self, r: &MessageRecord, h: &[(String, String)]) {
            self.0.lock().unwrap().push((r.clone(), h.len()));
        }
    }

    struct Txt(Vec<(&'static str, &'static str)>);

    #[async_trait::async_trait]
    impl Resolver for Txt {
        async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, crate::dns::DnsError> {
            let v: Vec<Vec<u8>> = self
                .0
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, t)| t.as_bytes().to_vec())
                .collect();
            if v.is_empty() {
                Err(crate::dns::DnsError::NxDomain)
            } else {
                Ok(v)
            }
        }
        async fn a(&self, _: &str) -> Result<Vec<std::net::Ipv4Addr>, crate::dns::DnsError> {
            Err(crate::dns::DnsError::NxDomain)
        }
        async fn aaaa(&self, _: &str) -> Result<Vec<std::net::Ipv6Addr>, crate::dns::DnsError> {
            Err(crate::dns::DnsError::NxDomain)
        }
        async fn mx(&self, _: &str) -> Result<Vec<crate::dns::Mx>, crate::dns::DnsError> {
            Err(crate::dns::DnsError::NxDomain)
        }
        async fn ptr(&self, _: std::net::IpAddr) -> Result<Vec<String>, crate::dns::DnsError> {
            Err(crate::dns::DnsError::NxDomain)
        }
    }

    /// Off by default (no sink, nothing offered: nothing to observe), and with a sink only
    /// failures of domains publishing `ruf=` reach it, never mail that is itself a report.
    #[tokio::test]
    async fn the_filter_offers_failures_of_ruf_domains_only() {
        use crate::dmarc::{DmarcConfig, DmarcFilter, MessageFacts, SpfInput};
        use crate::spf::{Identity, SpfResult};
        let resolver = Arc::new(Txt(vec![
            (
                "_dmarc.sender.example",
                "v=DMARC1; p=reject; ruf=mailto:f@sender.example",
            ),
            ("_dmarc.noruf.example", "v=DMARC1; p=reject"),
        ]));
        let cfg = DmarcConfig::parse(std::path::Path::new("t.conf"), "").unwrap();
        let cap = Arc::new(Capture::default());
        let f = DmarcFilter::new(cfg, resolver).with_failure_reports(cap.clone());
        let cases = [
            ("sender.example", SpfResult::Fail, ""),
            ("sender.example", SpfResult::Pass, ""),
            ("noruf.example", SpfResult::Fail, ""),
            (
                "sender.example",
                SpfResult::Fail,
                "Report Domain: x Submitter: y Report-ID: <1>",
            ),
        ];
        for (from, result, subject) in cases {
            let facts = crate::filter::AuthFacts {
                spf: Some(SpfInput {
                    domain: from.into(),
                    identity: Identity::MailFrom,
                    result,
                }),
                dkim: Some(Vec::new()),
                ..Default::default()
            };
            let mut headers = vec![
                ("From".to_owned(), format!("a@{from}")),
                (
                    "Date".to_owned(),
                    "Tue, 25 Nov 2025 10:00:00 +0000".to_owned(),
                ),
            ];
            if !subject.is_empty() {
                headers.push(("Subject".to_owned(), subject.to_owned()));
            }
            let sender = format!("x@{from}");
            let m = MessageFacts {
                client_ip: Some("192.0.2.1".parse().unwrap()),
                envelope_from: &sender,
                helo: "h.example",
                rcpts: &[],
                headers: &headers,
                dkim_results: None,
                raw_message: None,
                job_id: Some("J1"),
                mta_name: None,
                prior: Some(&facts),
            };
            let out = f.check(&m).await;
            assert!(out.evaluation.is_some(), "{from} evaluated");
        }
        let got = cap.0.lock().unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0.header_from, "sender.example");
        assert_eq!(got[0].0.result, crate::dmarc::DmarcResult::Fail);
        assert_eq!(got[0].1, 2);
    }
}
