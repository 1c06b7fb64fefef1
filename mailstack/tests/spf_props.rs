//! Properties of the SPF evaluator beyond the RFC 7208 suite: no panic on any record, the
//! limits hold on hostile records, and the time budget ends in `temperror`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mailstack::dns::{DnsError, MemoryRecord, MemoryResolver, Mx, Resolver};
use mailstack::spf::{Identity, LookupLimits, SpfEvaluator, SpfResult};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn zone_with(record: &[u8]) -> MemoryResolver {
    let mut z = MemoryResolver::new();
    z.add("example.com", MemoryRecord::Txt(record.to_vec()))
        .add("example.com", MemoryRecord::A(Ipv4Addr::new(192, 0, 2, 1)))
        .add(
            "example.com",
            MemoryRecord::Mx(Mx {
                preference: 10,
                exchange: "mx.example.com".into(),
            }),
        )
        .add(
            "mx.example.com",
            MemoryRecord::A(Ipv4Addr::new(192, 0, 2, 2)),
        )
        .add("inc.example.com", MemoryRecord::Txt(record.to_vec()));
    z
}

/// Terms drawn from the SPF alphabet so the parser gets deep, not just rejected at byte one.
fn term() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("all".to_owned()),
        Just("-all".to_owned()),
        Just("a".to_owned()),
        Just("mx/24".to_owned()),
        Just("ptr".to_owned()),
        Just("include:inc.example.com".to_owned()),
        Just("redirect=inc.example.com".to_owned()),
        Just("exp=%{d}".to_owned()),
        "[a-z0-9:/=%{}.+~?_-]{0,24}",
        "(ip4|ip6|a|mx|exists|include):[%{}a-zA-Z0-9.:/-]{0,30}",
        "%\\{[slodiphcrtvSLODIPHCRTV][0-9]{0,3}r?[.+,/_=-]{0,3}\\}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_record_gives_a_result(terms in proptest::collection::vec(term(), 0..12), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        let rt = runtime();
        for record in [format!("v=spf1 {}", terms.join(" ")).into_bytes(), [b"v=spf1 ".as_slice(), &raw].concat()] {
            let spf = SpfEvaluator::new(Arc::new(zone_with(&record)), LookupLimits::default());
            let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
            let out = rt.block_on(spf.check_mail_from(ip, "helo.example.com", "user@example.com"));
            prop_assert_eq!(out.identity, Identity::MailFrom);
            prop_assert_eq!(out.domain.as_str(), "example.com");
        }
    }
}

/// A resolver that counts queries and answers every name with a record that includes two
/// more names: a fan-out attack.
struct FanOut(AtomicUsize);

#[async_trait]
impl Resolver for FanOut {
    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(vec![
            format!("v=spf1 include:a.{name} include:b.{name} a:x.{name} -all").into_bytes(),
        ])
    }
    async fn a(&self, _: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Err(DnsError::NxDomain)
    }
    async fn aaaa(&self, _: &str) -> Result<Vec<std::net::Ipv6Addr>, DnsError> {
        Err(DnsError::NxDomain)
    }
    async fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
        Err(DnsError::NxDomain)
    }
    async fn ptr(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
        Err(DnsError::NxDomain)
    }
}

#[tokio::test]
async fn fan_out_is_bounded_by_the_lookup_limit() {
    let resolver = Arc::new(FanOut(AtomicUsize::new(0)));
    let spf = SpfEvaluator::new(resolver.clone(), LookupLimits::default());
    let out = spf
        .check_mail_from(
            "192.0.2.1".parse().unwrap(),
            "h.example.com",
            "u@example.com",
        )
        .await;
    assert_eq!(out.result, SpfResult::PermError);
    // 1 top-level TXT + at most 10 DNS-querying terms.
    assert!(
        resolver.0.load(Ordering::Relaxed) <= 11,
        "{} queries",
        resolver.0.load(Ordering::Relaxed)
    );
}

/// A resolver that never answers.
struct BlackHole;

#[async_trait]
impl Resolver for BlackHole {
    async fn txt(&self, _: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        std::future::pending().await
    }
    async fn a(&self, _: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        std::future::pending().await
    }
    async fn aaaa(&self, _: &str) -> Result<Vec<std::net::Ipv6Addr>, DnsError> {
        std::future::pending().await
    }
    async fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
        std::future::pending().await
    }
    async fn ptr(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn time_budget_overrun_is_temperror() {
    let limits = LookupLimits::default().with_time_budget(Duration::from_millis(300));
    let spf = SpfEvaluator::new(Arc::new(BlackHole), limits);
    let started = std::time::Instant::now();
    let out = spf
        .check_helo("192.0.2.1".parse().unwrap(), "mail.example.com")
        .await;
    assert_eq!(out.result, SpfResult::TempError);
    assert_eq!(out.identity, Identity::Helo);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn ipv4_mapped_clients_are_checked_as_ipv4() {
    let mut z = MemoryResolver::new();
    z.add(
        "example.com",
        MemoryRecord::Txt(b"v=spf1 ip4:192.0.2.0/24 -all".to_vec()),
    );
    let spf = SpfEvaluator::new(Arc::new(z), LookupLimits::default());
    let out = spf
        .check_mail_from(
            "::ffff:192.0.2.7".parse().unwrap(),
            "h.example.com",
            "u@example.com",
        )
        .await;
    assert_eq!(out.result, SpfResult::Pass);
    assert_eq!(out.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
}

#[tokio::test]
async fn headers_name_the_identity() {
    let mut z = MemoryResolver::new();
    z.add("example.com", MemoryRecord::Txt(b"v=spf1 -all".to_vec()))
        .add(
            "mail.example.com",
            MemoryRecord::Txt(b"v=spf1 +all".to_vec()),
        );
    let spf = SpfEvaluator::new(Arc::new(z), LookupLimits::default());
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let helo = spf.check_helo(ip, "mail.example.com").await;
    let from = spf
        .check_mail_from(ip, "mail.example.com", "u@example.com")
        .await;
    assert_eq!(
        helo.received_spf(
            "mx.example.net: HELO mail.example.com designates 192.0.2.7",
            "u@example.com",
            Some("mx.example.net")
        ),
        "pass (mx.example.net: HELO mail.example.com designates 192.0.2.7) identity=helo; client-ip=192.0.2.7; helo=mail.example.com; envelope-from=\"u@example.com\"; receiver=mx.example.net; mechanism=+all"
    );
    let mut ar = mailstack::auth_results::AuthResults::new("mx.example.net");
    ar.push(helo.auth_results(None))
        .push(from.auth_results(None));
    assert_eq!(
        ar.to_single_line(),
        "mx.example.net; spf=pass smtp.helo=mail.example.com; spf=fail smtp.mailfrom=example.com"
    );
}
