//! Address-in-network tests shared by the filters (SPF mechanisms, OpenDKIM peer lists,
//! OpenDMARC IgnoreHosts, clamav-milter LocalNet).
//!
//! An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`, how a dual-stack socket
//! reports an IPv4 client) are the same client: [`contains`] compares everything in the IPv6
//! space, with IPv4 networks widened by 96 bits, so an IPv4 entry matches a mapped client
//! and a mapped entry matches an IPv4 client. A prefix longer than its family allows is
//! clamped, never an overflow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is in `net/bits`, IPv4 and IPv4-mapped IPv6 being the same addresses.
pub(crate) fn contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    let bits = v6_prefix_len(net, bits);
    let net = match net {
        IpAddr::V4(n) => n.to_ipv6_mapped(),
        IpAddr::V6(n) => n,
    };
    let ip = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    v6_in(ip, net, bits)
}

/// The prefix length of `net/bits` in the IPv6 space [`contains`] compares in (an IPv4
/// prefix plus 96), so prefixes of both families can be ranked by specificity.
pub(crate) fn v6_prefix_len(net: IpAddr, bits: u8) -> u8 {
    match net {
        IpAddr::V4(_) => bits.min(32) + 96,
        IpAddr::V6(_) => bits.min(128),
    }
}

/// Whether `ip` is in `net/bits` (`bits` above 32 count as 32).
pub(crate) fn v4_in(ip: Ipv4Addr, net: Ipv4Addr, bits: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(bits.min(32)))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Whether `ip` is in `net/bits` (`bits` above 128 count as 128).
pub(crate) fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, bits: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(bits.min(128)))
        .unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_address() {
        assert!(contains(ip("192.0.2.0"), 24, ip("192.0.2.7")));
        assert!(contains(ip("192.0.2.0"), 24, ip("::ffff:192.0.2.7")));
        assert!(contains(ip("::ffff:192.0.2.1"), 128, ip("192.0.2.1")));
        assert!(contains(ip("::ffff:192.0.2.0"), 120, ip("192.0.2.9")));
        assert!(!contains(ip("::ffff:192.0.2.0"), 120, ip("192.0.3.9")));
        assert!(contains(ip("::"), 0, ip("10.0.0.1")));
        assert!(contains(ip("0.0.0.0"), 0, ip("10.0.0.1")));
        assert!(!contains(ip("0.0.0.0"), 0, ip("2001:db8::1")));
        assert!(contains(ip("2001:db8::"), 32, ip("2001:db8:1::1")));
        assert!(!contains(ip("2001:db8::"), 32, ip("2001:db9::1")));
    }

    #[test]
    fn overlong_prefixes_are_clamped() {
        assert!(contains(ip("192.0.2.1"), 200, ip("192.0.2.1")));
        assert!(!contains(ip("192.0.2.1"), 200, ip("192.0.2.2")));
        assert!(contains(ip("::ffff:192.0.2.1"), 255, ip("192.0.2.1")));
        assert!(v4_in(
            "10.1.2.3".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(v6_in("::1".parse().unwrap(), "::1".parse().unwrap(), 255));
    }
}
