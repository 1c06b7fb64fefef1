//! The check_host() engine (RFC 7208 §4, §5, §6, §4.6.4 limits).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use super::macros::{self, MacroValues};
use super::record::{self, Directive, MacroString, Mechanism, Qualifier, Record};
use super::{SpfEvaluator, SpfResult};
use crate::dns::DnsError;

/// Why evaluation stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Abort {
    Temp(String),
    Perm(String),
}

impl From<record::SyntaxError> for Abort {
    fn from(e: record::SyntaxError) -> Self {
        Self::Perm(e.0)
    }
}

/// What one check_host() level produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) result: SpfResult,
    /// On `fail` from a record with `exp=`: the explanation to fetch, and the domain of that
    /// record. It is fetched after the verdict, on its own deadline, so that a DNS failure or
    /// a slow answer there can never change the result (§6.2).
    pub(crate) explain: Option<(MacroString, String)>,
    pub(crate) mechanism: Option<String>,
    pub(crate) problem: Option<String>,
}

impl Outcome {
    fn plain(result: SpfResult) -> Self {
        Self {
            result,
            explain: None,
            mechanism: None,
            problem: None,
        }
    }

    fn abort(a: Abort) -> Self {
        match a {
            Abort::Temp(p) => Self {
                problem: Some(p),
                ..Self::plain(SpfResult::TempError)
            },
            Abort::Perm(p) => Self {
                problem: Some(p),
                ..Self::plain(SpfResult::PermError)
            },
        }
    }
}

/// Whether `domain` can be an SPF domain (§4.3): at least two labels, none empty or longer than
/// 63, at most 253 characters, and a valid top label.
pub(crate) fn valid_domain(domain: &str) -> bool {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    if d.is_empty() || d.len() > macros::MAX_DOMAIN_LEN || !d.is_ascii() {
        return false;
    }
    let labels: Vec<&str> = d.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty() && l.len() <= 63)
        && labels.last().is_some_and(|top| record::is_toplabel(top))
}

/// The temperror text for a DNS failure, worded as pyspf words it (`DNS Timeout`).
fn dns_problem(e: &DnsError) -> String {
    match e {
        DnsError::Timeout => "DNS Timeout".into(),
        other => format!("DNS {other}"),
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// State of one check_host() evaluation, shared by its includes and redirects.
pub(crate) struct Session<'a> {
    pub(crate) ev: &'a SpfEvaluator,
    pub(crate) ip: IpAddr,
    pub(crate) local: String,
    pub(crate) sender_domain: String,
    pub(crate) helo: String,
    pub(crate) dns_terms: u32,
    pub(crate) void_lookups: u32,
    pub(crate) now: u64,
    /// Set when a macro used `%{s}`, `%{l}` or `%{h}`: the result then depends on more than
    /// the client address and the domain (callers caching by domain must not reuse it).
    pub(crate) sender_dependent: bool,
    /// The text of the first record fetched (the top-level one).
    pub(crate) top_record: Option<String>,
}

impl Session<'_> {
    fn count_term(&mut self) -> Result<(), Abort> {
        self.dns_terms += 1;
        if self.dns_terms > self.ev.limits.dns_mechanisms {
            return Err(Abort::Perm("Too many DNS lookups".into()));
        }
        Ok(())
    }

    fn count_void(&mut self) -> Result<(), Abort> {
        self.void_lookups += 1;
        if self.void_lookups > self.ev.limits.void_lookups {
            return Err(Abort::Perm("Void lookup limit exceeded".into()));
        }
        Ok(())
    }

    /// Maps a mechanism lookup's error: void lookups count and do not match, others abort.
    fn lookup_error(&mut self, e: &DnsError) -> Result<(), Abort> {
        if e.is_void() {
            self.count_void()
        } else {
            Err(Abort::Temp(dns_problem(e)))
        }
    }

    fn values<'v>(&'v self, domain: &'v str, ptr: Option<&'v str>) -> MacroValues<'v> {
        MacroValues {
            local: &self.local,
            sender_domain: &self.sender_domain,
            domain,
            ip: self.ip,
            helo: &self.helo,
            receiver: &self.ev.receiver,
            ptr,
            now: self.now,
        }
    }

    async fn expand_domain(&mut self, m: &MacroString, domain: &str) -> String {
        self.sender_dependent |= macros::uses_sender(m);
        let ptr = if macros::needs_ptr(m) {
            Some(self.validated_name(domain).await)
        } else {
            None
        };
        macros::expand_domain(m, &self.values(domain, ptr.as_deref()))
    }

    /// `%{p}` (§7.3): a validated name equal to `domain`, else a subdomain of it, else any.
    async fn validated_name(&mut self, domain: &str) -> String {
        let names = self.validated_names().await;
        let d = domain.to_ascii_lowercase();
        let sub = format!(".{d}");
        names
            .iter()
            .find(|n| **n == d)
            .or_else(|| names.iter().find(|n| n.ends_with(&sub)))
            .or_else(|| names.first())
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    }

    /// PTR names of the client whose A/AAAA records contain it (§5.5), at most
    /// `limits.ptr_names` names looked up; errors just leave names out.
    async fn validated_names(&mut self) -> Vec<String> {
        let resolver = &self.ev.resolver;
        let names = match resolver.ptr(self.ip).await {
            Ok(names) => names,
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        for name in names.into_iter().take(self.ev.limits.ptr_names) {
            if self
                .addresses_contain(&name, 32, 128)
                .await
                .unwrap_or(false)
            {
                out.push(name.to_ascii_lowercase());
            }
        }
        out
    }

    /// Whether `name`'s A (IPv4 client) or AAAA (IPv6 client) records cover the client.
    async fn addresses_contain(&self, name: &str, cidr4: u8, cidr6: u8) -> Result<bool, DnsError> {
        let resolver = &self.ev.resolver;
        Ok(match self.ip {
            IpAddr::V4(ip) => resolver
                .a(name)
                .await?
                .iter()
                .any(|n| in_net4(ip, *n, cidr4)),
            IpAddr::V6(ip) => resolver
                .aaaa(name)
                .await?
                .iter()
                .any(|n| in_net6(ip, *n, cidr6)),
        })
    }

    /// check_host() for `domain` (§4): record lookup, selection, evaluation.
    pub(crate) fn check_host(&mut self, domain: String) -> BoxFut<'_, Outcome> {
        Box::pin(async move {
            if !valid_domain(&domain) {
                return Outcome {
                    problem: Some(format!("Invalid domain: {domain}")),
                    ..Outcome::plain(SpfResult::None)
                };
            }
            let domain = domain.strip_suffix('.').unwrap_or(&domain).to_owned();
            let record = match self.fetch_record(&domain).await {
                Ok(Some(r)) => r,
                Ok(None) => return Outcome::plain(SpfResult::None),
                Err(a) => return Outcome::abort(a),
            };
            match self.evaluate(&record, &domain).await {
                Ok(o) => o,
                Err(a) => Outcome::abort(a),
            }
        })
    }

    /// §4.4, §4.5: the single `v=spf1` record of `domain`, `None` when there is none.
    async fn fetch_record(&mut self, domain: &str) -> Result<Option<Record>, Abort> {
        let txts = match self.ev.resolver.txt(domain).await {
            Ok(t) => t,
            Err(e) if e.is_void() => return Ok(None),
            Err(e) => return Err(Abort::Temp(dns_problem(&e))),
        };
        let mut spf = txts.iter().filter(|t| record::is_spf_record(t));
        match (spf.next(), spf.next()) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(Abort::Perm(
                "Two or more type TXT spf records found.".into(),
            )),
            (Some(one), None) => {
                if self.top_record.is_none() {
                    self.top_record = Some(String::from_utf8_lossy(one).into_owned());
                }
                Ok(Some(Record::parse(one)?))
            }
        }
    }

    async fn evaluate(&mut self, record: &Record, domain: &str) -> Result<Outcome, Abort> {
        for directive in &record.directives {
            if self.matches(directive, domain).await? {
                let result = match directive.qualifier {
                    Qualifier::Pass => SpfResult::Pass,
                    Qualifier::Fail => SpfResult::Fail,
                    Qualifier::SoftFail => SpfResult::SoftFail,
                    Qualifier::Neutral => SpfResult::Neutral,
                };
                let explain = match (&record.exp, result) {
                    (Some(exp), SpfResult::Fail) => Some((exp.clone(), domain.to_owned())),
                    _ => None,
                };
                return Ok(Outcome {
                    mechanism: Some(directive.text.clone()),
                    explain,
                    ..Outcome::plain(result)
                });
            }
        }
        let Some(redirect) = &record.redirect else {
            return Ok(Outcome {
                mechanism: Some("default".into()),
                ..Outcome::plain(SpfResult::Neutral)
            });
        };
        self.count_term()?;
        let target = self.expand_domain(redirect, domain).await;
        let outcome = self.check_host(target.clone()).await;
        if outcome.result == SpfResult::None {
            return Err(Abort::Perm(format!(
                "Redirect domain has no SPF record: {target}"
            )));
        }
        Ok(outcome)
    }

    /// §6.2: the explanation text, `None` on any problem (the caller uses its default).
    pub(crate) async fn explain(&mut self, exp: &MacroString, domain: &str) -> Option<String> {
        let target = self.expand_domain(exp, domain).await;
        if !valid_domain(&target) {
            return None;
        }
        let txts = self.ev.resolver.txt(&target).await.ok()?;
        let [txt] = txts.as_slice() else { return None };
        let text = std::str::from_utf8(txt).ok().filter(|t| t.is_ascii())?;
        let m = MacroString::parse(text, true).ok()?;
        self.sender_dependent |= macros::uses_sender(&m);
        let ptr = if macros::needs_ptr(&m) {
            Some(self.validated_name(domain).await)
        } else {
            None
        };
        Some(macros::expand(&m, &self.values(domain, ptr.as_deref())))
    }

    async fn target(&mut self, spec: Option<&MacroString>, domain: &str) -> String {
        match spec {
            Some(m) => self.expand_domain(m, domain).await,
            None => domain.to_owned(),
        }
    }

    async fn matches(&mut self, directive: &Directive, domain: &str) -> Result<bool, Abort> {
        match &directive.mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4 { addr, cidr } => {
                Ok(matches!(self.ip, IpAddr::V4(ip) if in_net4(ip, *addr, *cidr)))
            }
            Mechanism::Ip6 { addr, cidr } => {
                Ok(matches!(self.ip, IpAddr::V6(ip) if in_net6(ip, *addr, *cidr)))
            }
            Mechanism::Include(spec) => {
                self.count_term()?;
                let target = self.expand_domain(spec, domain).await;
                let inner = self.check_host(target.clone()).await;
                match inner.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(Abort::Temp(inner.problem.unwrap_or_default())),
                    SpfResult::PermError => Err(Abort::Perm(inner.problem.unwrap_or_default())),
                    SpfResult::None => Err(Abort::Perm(format!(
                        "No valid SPF record for included domain: {target}"
                    ))),
                }
            }
            Mechanism::A {
                domain: spec,
                cidr4,
                cidr6,
            } => {
                self.count_term()?;
                let target = self.target(spec.as_ref(), domain).await;
                if !valid_domain(&target) {
                    return Ok(false);
                }
                match self.addresses_contain(&target, *cidr4, *cidr6).await {
                    Ok(hit) => Ok(hit),
                    Err(e) => self.lookup_error(&e).map(|()| false),
                }
            }
            Mechanism::Mx {
                domain: spec,
                cidr4,
                cidr6,
            } => {
                self.count_term()?;
                let target = self.target(spec.as_ref(), domain).await;
                self.match_mx(&target, *cidr4, *cidr6).await
            }
            Mechanism::Ptr(spec) => {
                self.count_term()?;
                let target = self
                    .target(spec.as_ref(), domain)
                    .await
                    .to_ascii_lowercase();
                let sub = format!(".{target}");
                let names = self.validated_names().await;
                Ok(names.iter().any(|n| *n == target || n.ends_with(&sub)))
            }
            Mechanism::Exists(spec) => {
                self.count_term()?;
                let target = self.expand_domain(spec, domain).await;
                if !valid_domain(&target) {
                    return Ok(false);
                }
                // Always an A query, whatever the client's family (§5.7).
                match self.ev.resolver.a(&target).await {
                    Ok(_) => Ok(true),
                    Err(e) => self.lookup_error(&e).map(|()| false),
                }
            }
        }
    }

    async fn match_mx(&mut self, target: &str, cidr4: u8, cidr6: u8) -> Result<bool, Abort> {
        if !valid_domain(target) {
            return Ok(false);
        }
        let mut mxs = match self.ev.resolver.mx(target).await {
            Ok(m) => m,
            Err(e) => return self.lookup_error(&e).map(|()| false),
        };
        if mxs.len() > self.ev.limits.mx_names {
            return Err(Abort::Perm(format!("Too many MX lookups for {target}")));
        }
        mxs.sort_by_key(|m| m.preference);
        for mx in mxs {
            if mx.exchange.is_empty() {
                continue; // null MX (RFC 7505)
            }
            match self.addresses_contain(&mx.exchange, cidr4, cidr6).await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) if e.is_void() => {}
                Err(e) => return Err(Abort::Temp(dns_problem(&e))),
            }
        }
        Ok(false)
    }
}

use crate::ipnet::{v4_in as in_net4, v6_in as in_net6};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let ip: Ipv4Addr = "192.0.2.77".parse().unwrap();
        assert!(in_net4(ip, "192.0.2.0".parse().unwrap(), 24));
        assert!(in_net4(ip, "10.0.0.0".parse().unwrap(), 0));
        assert!(!in_net4(ip, "192.0.3.0".parse().unwrap(), 24));
        let ip6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert!(in_net6(ip6, "2001:db8::".parse().unwrap(), 32));
        assert!(in_net6(ip6, "::".parse().unwrap(), 0));
        assert!(!in_net6(ip6, "2001:db9::".parse().unwrap(), 32));
    }

    #[test]
    fn domain_validity() {
        assert!(valid_domain("example.com"));
        assert!(valid_domain("example.com."));
        assert!(!valid_domain("com"));
        assert!(!valid_domain("a..example.com"));
        assert!(!valid_domain("[192.0.2.1]"));
        assert!(!valid_domain(&format!("{}.com", "a".repeat(64))));
    }
}
