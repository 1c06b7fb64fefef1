//! DNS access for the authentication filters, behind a small async trait.
//!
//! [`Resolver`] is the only way the SPF evaluator (and anything built on it) reaches DNS. It asks
//! for exactly the record types RFC 7208 needs (TXT, A, AAAA, MX, PTR) and reports failures as a
//! [`DnsError`] that keeps apart the cases SPF treats differently: a name that does not exist
//! (NXDOMAIN) and a name without records of the asked type (NOERROR, no data) are *void lookups*;
//! a timeout or a server failure is a *temporary error*.
//!
//! Two implementations ship here:
//!
//! - [`HickoryResolver`]: the real thing, hickory-resolver 0.26 (the same version mail-auth
//!   uses), configured from `/etc/resolv.conf` or pointed at one explicit `ip:port`.
//! - [`MemoryResolver`]: an in-memory zone for tests and for embedding (no sockets, no clock).
//!   It can also simulate timeouts, as the RFC 7208 test suite's `TIMEOUT` entries require.
//!
//! Names are passed without a trailing dot and compared case-insensitively; names in answers
//! (MX exchanges, PTR targets) come back without the trailing dot.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;

/// Why a DNS lookup produced no records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The name does not exist (RCODE 3, NXDOMAIN). A void lookup for SPF.
    #[error("domain does not exist")]
    NxDomain,
    /// The name exists but has no records of the asked type (NOERROR, empty answer). A void
    /// lookup for SPF.
    #[error("no records of the requested type")]
    NoData,
    /// No answer arrived in time.
    #[error("DNS timeout")]
    Timeout,
    /// The server answered with a failure (SERVFAIL, REFUSED, ...).
    #[error("DNS server failure")]
    ServFail,
    /// The name cannot be put on the wire (bad label length, bad characters).
    #[error("invalid domain name")]
    InvalidName,
    /// Any other resolver failure (network unreachable, malformed answer, ...).
    #[error("DNS error: {0}")]
    Other(String),
}

impl DnsError {
    /// NXDOMAIN or no data: the lookups RFC 7208 §4.6.4 calls "void".
    pub fn is_void(&self) -> bool {
        matches!(self, Self::NxDomain | Self::NoData | Self::InvalidName)
    }
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    /// The preference (lower is preferred).
    pub preference: u16,
    /// The exchange host name, without a trailing dot.
    pub exchange: String,
}

/// The DNS queries the authentication filters need.
///
/// Every method returns at least one record on `Ok`; an empty answer is [`DnsError::NoData`].
#[async_trait]
pub trait Resolver: Send + Sync {
    /// TXT records of `name`, each one the concatenation of its character-strings (RFC 7208 §3.3).
    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError>;
    /// A records of `name`.
    async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError>;
    /// AAAA records of `name`.
    async fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError>;
    /// MX records of `name`.
    async fn mx(&self, name: &str) -> Result<Vec<Mx>, DnsError>;
    /// PTR records of the reverse name of `ip` (see [`reverse_name`]).
    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError>;
}

/// The `in-addr.arpa` / `ip6.arpa` name of an address, without the trailing dot.
pub fn reverse_name(ip: IpAddr) -> String {
    let mut out = String::with_capacity(73);
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let _ = write!(out, "{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(out, "{:x}.{:x}.", byte & 0xf, byte >> 4);
            }
            out.push_str("ip6.arpa");
        }
    }
    out
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// One record of a [`MemoryResolver`] zone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryRecord {
    /// A TXT record (the concatenated character-strings).
    Txt(Vec<u8>),
    /// An A record.
    A(Ipv4Addr),
    /// An AAAA record.
    Aaaa(Ipv6Addr),
    /// An MX record.
    Mx(Mx),
    /// A PTR record (store it under the [`reverse_name`]).
    Ptr(String),
    /// A CNAME: queries of other types follow it (up to [`MemoryResolver::MAX_CNAME_CHAIN`]).
    Cname(String),
    /// Queries of any type not answered by a record listed *before* this one time out (the
    /// RFC 7208 test suite's `TIMEOUT` entry).
    Timeout,
    /// Queries of this one type time out.
    TimeoutFor(RecordType),
}

/// The record types of [`Resolver`], for [`MemoryRecord::TimeoutFor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordType {
    /// TXT.
    Txt,
    /// A.
    A,
    /// AAAA.
    Aaaa,
    /// MX.
    Mx,
    /// PTR.
    Ptr,
}

impl MemoryRecord {
    fn record_type(&self) -> Option<RecordType> {
        Some(match self {
            Self::Txt(_) => RecordType::Txt,
            Self::A(_) => RecordType::A,
            Self::Aaaa(_) => RecordType::Aaaa,
            Self::Mx(_) => RecordType::Mx,
            Self::Ptr(_) => RecordType::Ptr,
            Self::TimeoutFor(t) => *t,
            Self::Cname(_) | Self::Timeout => return None,
        })
    }
}

/// An in-memory DNS zone implementing [`Resolver`]; names absent from it are NXDOMAIN.
#[derive(Debug, Clone, Default)]
pub struct MemoryResolver {
    zone: HashMap<String, Vec<MemoryRecord>>,
}

impl MemoryResolver {
    /// How many CNAMEs a lookup follows before it gives up with [`DnsError::ServFail`].
    pub const MAX_CNAME_CHAIN: usize = 10;

    /// An empty zone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record to `name` (records keep their order).
    pub fn add(&mut self, name: &str, record: MemoryRecord) -> &mut Self {
        self.zone.entry(normalise(name)).or_default().push(record);
        self
    }

    /// Makes `name` exist with no records (so queries give [`DnsError::NoData`]).
    pub fn add_name(&mut self, name: &str) -> &mut Self {
        self.zone.entry(normalise(name)).or_default();
        self
    }

    fn lookup<T>(
        &self,
        name: &str,
        ty: RecordType,
        pick: impl Fn(&MemoryRecord) -> Option<T>,
    ) -> Result<Vec<T>, DnsError> {
        let mut name = normalise(name);
        if name.split('.').any(|label| label.len() > 63) || name.len() > 253 {
            return Err(DnsError::InvalidName);
        }
        for _ in 0..=Self::MAX_CNAME_CHAIN {
            let Some(records) = self.zone.get(&name) else {
                return Err(DnsError::NxDomain);
            };
            let mut out = Vec::new();
            let mut cname = None;
            for record in records {
                match record {
                    MemoryRecord::Timeout if out.is_empty() => return Err(DnsError::Timeout),
                    MemoryRecord::Timeout => break,
                    MemoryRecord::Cname(target) => cname = Some(normalise(target)),
                    MemoryRecord::TimeoutFor(t) if *t == ty => return Err(DnsError::Timeout),
                    other if other.record_type() == Some(ty) => out.extend(pick(other)),
                    _ => {}
                }
            }
            match (out.is_empty(), cname) {
                (false, _) => return Ok(out),
                (true, Some(target)) => name = target,
                (true, None) => return Err(DnsError::NoData),
            }
        }
        Err(DnsError::ServFail)
    }
}

#[async_trait]
impl Resolver for MemoryResolver {
    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        self.lookup(name, RecordType::Txt, |r| match r {
            MemoryRecord::Txt(t) => Some(t.clone()),
            _ => None,
        })
    }

    async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        self.lookup(name, RecordType::A, |r| match r {
            MemoryRecord::A(a) => Some(*a),
            _ => None,
        })
    }

    async fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
        self.lookup(name, RecordType::Aaaa, |r| match r {
            MemoryRecord::Aaaa(a) => Some(*a),
            _ => None,
        })
    }

    async fn mx(&self, name: &str) -> Result<Vec<Mx>, DnsError> {
        self.lookup(name, RecordType::Mx, |r| match r {
            MemoryRecord::Mx(m) => Some(m.clone()),
            _ => None,
        })
    }

    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        self.lookup(&reverse_name(ip), RecordType::Ptr, |r| match r {
            MemoryRecord::Ptr(p) => Some(normalise(p)),
            _ => None,
        })
    }
}

/// Per-query timeout of [`HickoryResolver`] (resolv.conf's default is also 5 s).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per query of [`HickoryResolver`] (resolv.conf's default is 2).
pub const DEFAULT_QUERY_ATTEMPTS: usize = 2;

/// [`Resolver`] over hickory-resolver.
#[derive(Clone)]
pub struct HickoryResolver {
    inner: hickory_resolver::TokioResolver,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryResolver").finish_non_exhaustive()
    }
}

impl HickoryResolver {
    /// A resolver configured from `/etc/resolv.conf` (its servers, timeout and attempts).
    pub fn system() -> Result<Self, DnsError> {
        Self::build(
            hickory_resolver::TokioResolver::builder_tokio().map_err(other)?,
            None,
        )
    }

    /// The resolver a daemon's configuration asks for: the `Nameservers` listed (every one
    /// of them, each `ip:port` over UDP with TCP for truncated answers), or those of
    /// `/etc/resolv.conf` when the list is empty; in both cases each query waits at most
    /// `timeout` per attempt (`DNSTimeout`), [`DEFAULT_QUERY_ATTEMPTS`] attempts.
    pub fn from_config(nameservers: &[SocketAddr], timeout: Duration) -> Result<Self, DnsError> {
        if nameservers.is_empty() {
            let builder = hickory_resolver::TokioResolver::builder_tokio().map_err(other)?;
            Self::build(builder, Some(timeout))
        } else {
            Self::with_nameservers(nameservers, timeout)
        }
    }

    /// A resolver that asks only `server` (UDP, falling back to TCP for truncated answers).
    pub fn with_nameserver(server: SocketAddr, timeout: Duration) -> Result<Self, DnsError> {
        Self::with_nameservers(&[server], timeout)
    }

    /// A resolver that asks `servers` (all of them: hickory spreads queries over the pool
    /// and moves on to the next server when one does not answer), each over UDP with TCP
    /// for truncated answers. An empty list is [`DnsError::Other`]; use
    /// [`Self::from_config`] to fall back to `/etc/resolv.conf`.
    pub fn with_nameservers(servers: &[SocketAddr], timeout: Duration) -> Result<Self, DnsError> {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        if servers.is_empty() {
            return Err(DnsError::Other("no name server given".into()));
        }
        let ns = servers
            .iter()
            .map(|server| {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for conn in &mut ns.connections {
                    conn.port = server.port();
                }
                ns
            })
            .collect();
        let config = ResolverConfig::from_parts(None, vec![], ns);
        let builder = hickory_resolver::TokioResolver::builder_with_config(
            config,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        );
        Self::build(builder, Some(timeout))
    }

    fn build(
        mut builder: hickory_resolver::ResolverBuilder<
            hickory_resolver::net::runtime::TokioRuntimeProvider,
        >,
        timeout: Option<Duration>,
    ) -> Result<Self, DnsError> {
        let opts = builder.options_mut();
        if let Some(t) = timeout {
            opts.timeout = t;
            opts.attempts = DEFAULT_QUERY_ATTEMPTS;
        }
        // Caching is left to the local resolver; answers must reflect the zone as it is.
        opts.cache_size = 0;
        opts.ndots = 0;
        let inner = builder.build().map_err(other)?;
        Ok(Self { inner })
    }

    /// The per-attempt query timeout in force.
    pub fn query_timeout(&self) -> Duration {
        self.inner.options().timeout
    }

    /// The NS records of `name` (host names, without the trailing dot): the authoritative
    /// servers `mailstack dkim rotate --check` asks (not part of [`Resolver`]: no filter
    /// needs it).
    pub async fn ns(&self, name: &str) -> Result<Vec<String>, DnsError> {
        use hickory_resolver::proto::rr::{RData, RecordType as T};
        let data = self.query(name, T::NS).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::NS(ns) => Some(strip_dot(&ns.0)),
                _ => None,
            })
            .collect())
    }

    async fn query(
        &self,
        name: &str,
        ty: hickory_resolver::proto::rr::RecordType,
    ) -> Result<Vec<hickory_resolver::proto::rr::RData>, DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let name = hickory_resolver::proto::rr::Name::from_ascii(&fqdn)
            .map_err(|_| DnsError::InvalidName)?;
        let started = crate::metrics::get().map(|m| (m, std::time::Instant::now()));
        let r = self.lookup(name, ty).await;
        if let Some((m, t)) = started {
            count_query(m, ty, &r, t.elapsed());
        }
        r
    }

    async fn lookup(
        &self,
        name: hickory_resolver::proto::rr::Name,
        ty: hickory_resolver::proto::rr::RecordType,
    ) -> Result<Vec<hickory_resolver::proto::rr::RData>, DnsError> {
        match self.inner.lookup(name, ty).await {
            Ok(lookup) => {
                let out: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == ty)
                    .map(|r| r.data.clone())
                    .collect();
                if out.is_empty() {
                    Err(DnsError::NoData)
                } else {
                    Ok(out)
                }
            }
            Err(e) => Err(map_error(&e)),
        }
    }
}

/// One query in the metrics: by type and outcome, its latency, and an error of kind `dns`
/// when the server did not answer (NXDOMAIN and no data are answers).
fn count_query(
    m: &crate::metrics::Metrics,
    ty: hickory_resolver::proto::rr::RecordType,
    r: &Result<Vec<hickory_resolver::proto::rr::RData>, DnsError>,
    took: Duration,
) {
    use hickory_resolver::proto::rr::RecordType as T;
    let rtype = match ty {
        T::TXT => "txt",
        T::A => "a",
        T::AAAA => "aaaa",
        T::MX => "mx",
        T::PTR => "ptr",
        _ => "other",
    };
    let outcome = match r {
        Ok(_) => "ok",
        Err(DnsError::NxDomain) => "nxdomain",
        Err(DnsError::NoData) => "nodata",
        Err(DnsError::Timeout) => "timeout",
        Err(DnsError::ServFail) => "servfail",
        Err(_) => "error",
    };
    if matches!(outcome, "timeout" | "servfail" | "error") {
        m.error(crate::metrics::ErrorKind::Dns);
    }
    m.dns_query(rtype, outcome, took);
}

fn other(e: impl std::fmt::Display) -> DnsError {
    DnsError::Other(e.to_string())
}

fn map_error(e: &hickory_resolver::net::NetError) -> DnsError {
    use hickory_resolver::net::NetError;
    if e.is_nx_domain() {
        return DnsError::NxDomain;
    }
    if e.is_no_records_found() {
        return DnsError::NoData;
    }
    match e {
        NetError::Timeout => DnsError::Timeout,
        NetError::Dns(_) => DnsError::ServFail,
        other => DnsError::Other(other.to_string()),
    }
}

fn strip_dot(name: &hickory_resolver::proto::rr::Name) -> String {
    normalise(&name.to_ascii())
}

#[async_trait]
impl Resolver for HickoryResolver {
    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        use hickory_resolver::proto::rr::{RData, RecordType as T};
        let data = self.query(name, T::TXT).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .flat_map(|s| s.iter().copied())
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        use hickory_resolver::proto::rr::{RData, RecordType as T};
        let data = self.query(name, T::A).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    async fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
        use hickory_resolver::proto::rr::{RData, RecordType as T};
        let data = self.query(name, T::AAAA).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    async fn mx(&self, name: &str) -> Result<Vec<Mx>, DnsError> {
        use hickory_resolver::proto::rr::{RData, RecordType as T};
        let data = self.query(name, T::MX).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(mx) => Some(Mx {
                    preference: mx.preference,
                    exchange: strip_dot(&mx.exchange),
                }),
                _ => None,
            })
            .collect())
    }

    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        use hickory_resolver::proto::rr::{RData, RecordType as T};
        let data = self.query(&reverse_name(ip), T::PTR).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::PTR(p) => Some(strip_dot(&p.0)),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.0.2.1".parse().unwrap()),
            "1.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[tokio::test]
    async fn memory_zone_semantics() {
        let mut z = MemoryResolver::new();
        z.add("a.example", MemoryRecord::A(Ipv4Addr::new(192, 0, 2, 1)))
            .add("a.example", MemoryRecord::Timeout)
            .add("alias.example", MemoryRecord::Cname("a.example.".into()));
        assert_eq!(
            z.a("A.Example.").await,
            Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
        );
        assert_eq!(
            z.a("alias.example").await,
            Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
        );
        assert_eq!(z.txt("a.example").await, Err(DnsError::Timeout));
        assert_eq!(z.txt("missing.example").await, Err(DnsError::NxDomain));
        z.add_name("empty.example");
        assert_eq!(z.mx("empty.example").await, Err(DnsError::NoData));
    }

    /// A DNS server on 127.0.0.1 answering every A query with 192.0.2.1, or, when `answer`
    /// is false, reading queries and never answering (a dead server).
    async fn stub(answer: bool) -> SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if !answer || n < 12 {
                    continue;
                }
                // Header: same id, QR + RD + RA, one question, one answer.
                let mut out = buf[..2].to_vec();
                out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
                let mut q = 12;
                while q < n && buf[q] != 0 {
                    q += 1 + usize::from(buf[q]);
                }
                out.extend_from_slice(&buf[12..(q + 5).min(n)]);
                out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
                let _ = sock.send_to(&out, from).await;
            }
        });
        addr
    }

    /// Every listed name server is used: with a dead one first or last, lookups still get
    /// the live one's answer, within the configured timeout.
    #[tokio::test]
    async fn every_nameserver_is_used() {
        let (dead, live) = (stub(false).await, stub(true).await);
        let t = Duration::from_millis(400);
        for servers in [[dead, live], [live, dead]] {
            let r = HickoryResolver::from_config(&servers, t).unwrap();
            assert_eq!(r.query_timeout(), t);
            for name in ["a.example", "b.example", "c.example"] {
                let got = tokio::time::timeout(Duration::from_secs(5), r.a(name)).await;
                assert_eq!(
                    got,
                    Ok(Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])),
                    "{servers:?}"
                );
            }
        }
        let only_dead = HickoryResolver::from_config(&[dead], t).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(only_dead.a("d.example").await, Err(DnsError::Timeout));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(HickoryResolver::with_nameservers(&[], t).is_err());
    }

    /// `DNSTimeout` applies to the resolv.conf servers too.
    #[tokio::test]
    async fn timeout_applies_to_the_system_resolver() {
        let t = Duration::from_millis(1500);
        let r = HickoryResolver::from_config(&[], t).unwrap();
        assert_eq!(r.query_timeout(), t);
    }
}
