//! RFC 7208 rules the test suite does not cover: a failing explanation lookup leaves the
//! result `fail` (§6.2), domain-specs holding `:` are looked up as written (§7.1, §4.6.1) and
//! over-long macro expansions keep their right end (§7.3).
//!
//! Run: `cargo test -p mailstack --test spf_rfc7208`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailstack::dns::{DnsError, MemoryRecord, MemoryResolver, Mx, Resolver};
use mailstack::spf::{LookupLimits, SpfEvaluator, SpfResult};

/// A zone whose TXT lookups of `hang` never answer (a server that drops the query).
struct Hanging {
    zone: MemoryResolver,
    hang: &'static str,
}

#[async_trait]
impl Resolver for Hanging {
    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        if name.eq_ignore_ascii_case(self.hang) {
            std::future::pending::<()>().await;
        }
        self.zone.txt(name).await
    }
    async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        self.zone.a(name).await
    }
    async fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
        self.zone.aaaa(name).await
    }
    async fn mx(&self, name: &str) -> Result<Vec<Mx>, DnsError> {
        self.zone.mx(name).await
    }
    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        self.zone.ptr(ip).await
    }
}

fn txt(s: &str) -> MemoryRecord {
    MemoryRecord::Txt(s.as_bytes().to_vec())
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));

fn zone() -> MemoryResolver {
    let mut z = MemoryResolver::new();
    z.add("hang.example", txt("v=spf1 -all exp=why.hang.example"))
        .add(
            "servfail.example",
            txt("v=spf1 -all exp=why.servfail.example"),
        )
        .add("why.servfail.example", MemoryRecord::Timeout)
        .add("ok.example", txt("v=spf1 -all exp=why.ok.example"))
        .add("why.ok.example", txt("%{i} is not allowed"))
        .add("redir.example", txt("v=spf1 redirect=hang.example"));
    z
}

fn evaluator(budget: Duration) -> SpfEvaluator {
    let resolver = Hanging {
        zone: zone(),
        hang: "why.hang.example",
    };
    SpfEvaluator::new(
        Arc::new(resolver),
        LookupLimits::default().with_time_budget(budget),
    )
}

/// §6.2: "If there are any DNS processing errors (any RCODE other than 0), or if no records
/// are returned, or if more than one record is returned, or if there are syntax errors in
/// the explanation string, then proceed as if no exp modifier was given." A lookup that
/// never answers must not spend the budget and turn the `fail` into `temperror`.
#[tokio::test]
async fn explanation_lookup_failure_keeps_fail() {
    let ev = evaluator(Duration::from_millis(300));
    for domain in ["hang.example", "redir.example", "servfail.example"] {
        let out = ev
            .check_host(CLIENT, domain, "u@x.example", "h.example")
            .await;
        assert_eq!(out.result, SpfResult::Fail, "{domain}: {out:?}");
        assert_eq!(out.explanation, None, "{domain}");
        assert_eq!(out.problem, None, "{domain}");
    }
    let out = ev
        .check_host(CLIENT, "ok.example", "u@x.example", "h.example")
        .await;
    assert_eq!(out.result, SpfResult::Fail);
    assert_eq!(out.explanation.as_deref(), Some("192.0.2.9 is not allowed"));
}

/// The budget still bounds the verdict itself: a record lookup that never answers is
/// `temperror`.
#[tokio::test]
async fn budget_still_bounds_the_verdict() {
    let resolver = Hanging {
        zone: zone(),
        hang: "slow.example",
    };
    let ev = SpfEvaluator::new(
        Arc::new(resolver),
        LookupLimits::default().with_time_budget(Duration::from_millis(300)),
    );
    let out = ev
        .check_host(CLIENT, "slow.example", "u@x.example", "h.example")
        .await;
    assert_eq!(out.result, SpfResult::TempError);
}

/// §7.1: `macro-literal` holds `:`, so `a:foo:bar.example.com` names the host
/// `foo:bar.example.com` (DNS labels may hold any octet, RFC 2181 §11), and a domain-spec
/// whose end is not `"." toplabel` (`a:foo:bar`) is a syntax error.
#[tokio::test]
async fn colon_domain_specs() {
    let mut z = MemoryResolver::new();
    z.add("colon.example", txt("v=spf1 a:foo:bar.colon.example -all"))
        .add(
            "foo:bar.colon.example",
            MemoryRecord::A(Ipv4Addr::new(192, 0, 2, 9)),
        )
        .add("mxc.example", txt("v=spf1 mx:x:y.mxc.example/24 -all"))
        .add(
            "x:y.mxc.example",
            MemoryRecord::Mx(Mx {
                preference: 1,
                exchange: "m.mxc.example".into(),
            }),
        )
        .add(
            "m.mxc.example",
            MemoryRecord::A(Ipv4Addr::new(192, 0, 2, 77)),
        )
        .add("bad.example", txt("v=spf1 a:foo:bar ip4:192.0.2.9 -all"));
    let ev = SpfEvaluator::new(Arc::new(z), LookupLimits::default());
    for (domain, want) in [
        ("colon.example", SpfResult::Pass),
        ("mxc.example", SpfResult::Pass),
        ("bad.example", SpfResult::PermError),
    ] {
        let out = ev
            .check_host(CLIENT, domain, "u@x.example", "h.example")
            .await;
        assert_eq!(out.result, want, "{domain}: {out:?}");
    }
}

/// §7.3: an expansion longer than any buffer keeps its right end (left labels dropped
/// until ≤ 253 octets), so `exists:%{l}.x.example` looks up the tail of the local part
/// followed by `.x.example`, not the first 8 KiB of the expansion.
#[tokio::test]
async fn huge_macro_expansion_keeps_its_right_end() {
    let local = (0..3000)
        .map(|n| format!("l{n}"))
        .collect::<Vec<_>>()
        .join(".");
    let whole = format!("{local}.{local}.x.example");
    let mut want = whole.as_str();
    while want.len() > 253 {
        want = want.split_once('.').unwrap().1;
    }
    let mut z = MemoryResolver::new();
    z.add("m.example", txt("v=spf1 exists:%{l}.%{l}.x.example -all"))
        .add(want, MemoryRecord::A(Ipv4Addr::new(127, 0, 0, 2)));
    let ev = SpfEvaluator::new(Arc::new(z), LookupLimits::default());
    let out = ev
        .check_mail_from(CLIENT, "h.example", &format!("{local}@m.example"))
        .await;
    assert_eq!(out.result, SpfResult::Pass, "{out:?}");
}
