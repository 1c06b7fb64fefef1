//! OpenDKIM "data sets" (opendkim(8), DATA SETS) and peer lists.
//!
//! Supported kinds: `file:` and a value starting with `/` (flat file, `key value` per line),
//! `refile:` (patterns with `*` wildcards, first match in file order wins), `csl:` and a bare
//! comma-separated list (`x=y` items are key/value pairs). The database kinds (`db:`, `dsn:`,
//! `ldap:`, `ldaps:`, `ldapi:`, `lua:`, `memcache:`, `mdb:`, `erlang:`, a `*.db` file) are
//! refused by name.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Largest data set file we read (4 MiB): key and signing tables of a large host are well
/// below; anything bigger is likely the wrong file.
pub(crate) const MAX_DATASET_FILE: u64 = 4 * 1024 * 1024;

/// A data set: ordered `(key, value)` entries (value empty for plain lists).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dataset {
    /// Entries in file order.
    pub entries: Vec<(String, String)>,
    /// `refile:`: keys are `*` wildcard patterns.
    pub wildcard: bool,
}

/// Why a data set (an OpenDKIM `dataset` option value) could not be used. The message is
/// the one for the option's line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A data set type we do not read (databases, LDAP, Lua, ...).
    #[error("data set type {0:?} is not supported (flat files, refile: and csl: are)")]
    Unsupported(&'static str),
    /// A Berkeley DB file.
    #[error("Berkeley DB data sets (*.db) are not supported")]
    BerkeleyDb,
    /// The flat file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The flat file is over the size accepted.
    #[error("{}: {size} bytes, larger than the {MAX_DATASET_FILE} accepted", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A peer list entry `addr/bits` with a bad length.
    #[error("bad network length in {0:?}")]
    NetworkLength(String),
    /// A peer list entry with `/bits` whose address does not parse.
    #[error("bad network {0:?}")]
    Network(String),
}

impl Dataset {
    /// Parses a data set specification; flat files are read now.
    pub fn parse(spec: &str) -> Result<Self, DatasetError> {
        let spec = spec.trim();
        for refused in [
            "db:",
            "dsn:",
            "ldap:",
            "ldaps:",
            "ldapi:",
            "lua:",
            "memcache:",
            "mdb:",
            "erlang:",
        ] {
            if spec
                .get(..refused.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(refused))
            {
                return Err(DatasetError::Unsupported(&refused[..refused.len() - 1]));
            }
        }
        if let Some(path) = spec.strip_prefix("file:") {
            return Self::read_file(path, false);
        }
        if let Some(path) = spec.strip_prefix("refile:") {
            return Self::read_file(path, true);
        }
        if spec.starts_with('/') {
            if spec.ends_with(".db") {
                return Err(DatasetError::BerkeleyDb);
            }
            return Self::read_file(spec, false);
        }
        let list = spec.strip_prefix("csl:").unwrap_or(spec);
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
                None => (item.to_owned(), String::new()),
            })
            .collect();
        Ok(Self {
            entries,
            wildcard: false,
        })
    }

    /// A list data set from literal items.
    pub fn list<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Self {
        Self {
            entries: items
                .into_iter()
                .map(|s| (s.into(), String::new()))
                .collect(),
            wildcard: false,
        }
    }

    fn read_file(path: &str, wildcard: bool) -> Result<Self, DatasetError> {
        let path = Path::new(path);
        let io = |source| DatasetError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_DATASET_FILE {
            return Err(DatasetError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
            });
        }
        let text = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8_lossy(&text);
        Ok(Self::parse_lines(&text, wildcard))
    }

    /// Parses the text of a flat file: `key [value]` per line, `#` comments.
    pub fn parse_lines(text: &str, wildcard: bool) -> Self {
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = match line.find(char::is_whitespace) {
                Some(at) => (&line[..at], line[at..].trim()),
                None => (line, ""),
            };
            entries.push((k.to_owned(), v.to_owned()));
        }
        Self { entries, wildcard }
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Whether `key` is present (case-insensitive; wildcards honoured for `refile:`).
    pub fn contains(&self, key: &str) -> bool {
        self.lookup(key).is_some()
    }

    /// The value of the first entry matching `key` (case-insensitive; wildcards for
    /// `refile:`).
    pub fn lookup(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| {
                if self.wildcard {
                    wildcard_match(k, key)
                } else {
                    k.eq_ignore_ascii_case(key)
                }
            })
            .map(|(_, v)| v.as_str())
    }

    /// Looks an e-mail address up the way OpenDKIM looks up `BodyLengthDB` and
    /// `DontSignMailTo` recipients (opendkim.conf(5) BodyLengthDB: "in various forms as
    /// described under the SigningTable setting"): a `refile:` set matches the address
    /// against its patterns; any other set is asked, in order and most specific first, for
    /// `user@domain`, `*@domain`, `domain`, then for each parent `*@.parent`, `user@.parent`
    /// and `.parent`, then `user@*` and `*`. Angle brackets are ignored; case-insensitive.
    pub fn lookup_address(&self, addr: &str) -> Option<&str> {
        let addr = addr.trim().trim_start_matches('<').trim_end_matches('>');
        if self.wildcard {
            return self.lookup(addr);
        }
        let (user, domain) = addr.rsplit_once('@').unwrap_or(("", addr));
        let mut keys = vec![
            format!("{user}@{domain}"),
            format!("*@{domain}"),
            domain.to_owned(),
        ];
        let mut rest = domain;
        while let Some(at) = rest.find('.') {
            let parent = &rest[at..];
            keys.push(format!("*@{parent}"));
            keys.push(format!("{user}@{parent}"));
            keys.push(parent.to_owned());
            rest = &rest[at + 1..];
        }
        // `.domain` itself, as the SigningTable's order lists it.
        keys.insert(3, format!(".{domain}"));
        keys.push(format!("{user}@*"));
        keys.push("*".to_owned());
        keys.iter().find_map(|k| self.lookup(k))
    }

    /// Every value whose key matches `key`, in order.
    pub fn lookup_all(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(k, _)| {
                if self.wildcard {
                    wildcard_match(k, key)
                } else {
                    k.eq_ignore_ascii_case(key)
                }
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// `*` matches any run of characters (case-insensitive), as OpenDKIM's `refile:`.
pub(crate) fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_ascii_lowercase(), text.to_ascii_lowercase());
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !t.starts_with(first) || t.len() < first.len() + last.len() || !t.ends_with(last) {
        return false;
    }
    let mut rest = &t[first.len()..t.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    true
}

/// One peer list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    Net(IpAddr, u8),
    /// Exact host name, or a `.domain` suffix.
    Host(String),
}

/// A peer list (`InternalHosts`, `ExternalIgnoreList`, `PeerList`): host names, `.domain`
/// suffixes, IPv4/IPv6 addresses and CIDR networks, each possibly negated with `!`. Among the
/// matching network entries the most specific (longest prefix) decides; a negated match means
/// "not in the list".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerList {
    entries: Vec<(bool, Peer)>,
}

impl PeerList {
    /// Builds the list from a data set's keys. `Err` names the bad entry.
    pub fn from_dataset(ds: &Dataset) -> Result<Self, DatasetError> {
        let mut entries = Vec::new();
        for item in ds.keys() {
            let (neg, item) = match item.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let bare = item.trim_start_matches('[').replace(']', "");
            let (addr, bits) = match bare.split_once('/') {
                Some((a, b)) => (a.to_owned(), Some(b)),
                None => (bare.clone(), None),
            };
            let peer = match addr.parse::<IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let bits = match bits {
                        None => max,
                        Some(b) => b
                            .parse::<u8>()
                            .ok()
                            .filter(|b| *b <= max)
                            .ok_or_else(|| DatasetError::NetworkLength(item.to_owned()))?,
                    };
                    Peer::Net(ip, bits)
                }
                Err(_) if bits.is_some() => return Err(DatasetError::Network(item.to_owned())),
                Err(_) => Peer::Host(item.to_ascii_lowercase()),
            };
            entries.push((neg, peer));
        }
        Ok(Self { entries })
    }

    /// OpenDKIM's compiled-in `InternalHosts` default: `127.0.0.1` and `::1`.
    pub fn loopback() -> Self {
        Self {
            entries: vec![
                (false, Peer::Net(IpAddr::from([127, 0, 0, 1]), 32)),
                (
                    false,
                    Peer::Net(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 128),
                ),
            ],
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a client with address `ip` (if known) and host name `host` is in the list.
    pub fn contains(&self, ip: Option<IpAddr>, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        let mut best: Option<(u8, bool)> = None;
        if let Some(ip) = ip {
            for (neg, p) in &self.entries {
                // The longest prefix wins, IPv4 and IPv4-mapped entries ranked alike.
                if let Peer::Net(net, bits) = p
                    && crate::ipnet::contains(*net, *bits, ip)
                {
                    let len = crate::ipnet::v6_prefix_len(*net, *bits);
                    if best.is_none_or(|(b, _)| len > b) {
                        best = Some((len, *neg));
                    }
                }
            }
        }
        if let Some((_, neg)) = best {
            return !neg;
        }
        self.host_match(&host).unwrap_or(false)
    }

    /// Host names: OpenDKIM's `dkimf_checkhost` order, most specific name first: the full
    /// name (`mx.child.example`), then each parent as a `.domain` suffix
    /// (`.child.example`, `.example`). At the first level with an entry, a negated entry
    /// wins over a positive one; so `!.example` with `.child.example` (or
    /// `mx.child.example`) lets the child in. `Some(in_list)` if any entry matched.
    fn host_match(&self, host: &str) -> Option<bool> {
        if host.is_empty() {
            return None;
        }
        let level = |name: &str, suffix: &str| -> Option<bool> {
            let mut hit = None;
            for (neg, p) in &self.entries {
                if let Peer::Host(h) = p
                    && (h == name || h == suffix)
                {
                    if *neg {
                        return Some(false);
                    }
                    hit = Some(true);
                }
            }
            hit
        };
        // The full name also matches a `.name` entry (as before: `.example.net` lists the
        // host `example.net` itself too).
        if let Some(r) = level(host, &format!(".{host}")) {
            return Some(r);
        }
        for (i, _) in host.match_indices('.') {
            let suffix = &host[i..];
            if suffix.len() > 1
                && let Some(r) = level(suffix, suffix)
            {
                return Some(r);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*@example.com", "Alice@Example.com"));
        assert!(wildcard_match("*", "x"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("*@example.com", "a@example.org"));
        assert!(!wildcard_match("a*a", "a"));
    }

    #[test]
    fn csl_and_refused_kinds() {
        let d = Dataset::parse("csl:a.example, b=c").unwrap();
        assert_eq!(
            d.entries,
            [
                ("a.example".to_owned(), String::new()),
                ("b".to_owned(), "c".to_owned())
            ]
        );
        let ldap = Dataset::parse("ldap://x").unwrap_err();
        assert!(
            matches!(ldap, DatasetError::Unsupported("ldap")),
            "{ldap:?}"
        );
        assert!(ldap.to_string().contains("\"ldap\" is not supported"));
        assert!(Dataset::parse("dsn:mysql://x").is_err());
        assert!(Dataset::parse("/etc/x.db").is_err());
    }

    #[test]
    fn peer_lists() {
        let ds = Dataset::list([
            "192.0.2.0/24",
            "!192.0.2.7",
            ".example.net",
            "::1",
            "host.a",
        ]);
        let p = PeerList::from_dataset(&ds).unwrap();
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(p.contains(ip("192.0.2.8"), ""));
        assert!(!p.contains(ip("192.0.2.7"), ""));
        assert!(p.contains(ip("::ffff:192.0.2.9"), ""));
        assert!(p.contains(ip("::1"), ""));
        assert!(!p.contains(ip("198.51.100.1"), "unknown"));
        assert!(p.contains(ip("198.51.100.1"), "mx.example.net"));
        assert!(p.contains(None, "HOST.a"));
        assert!(PeerList::loopback().contains(ip("127.0.0.1"), ""));
        assert!(!PeerList::loopback().contains(ip("127.0.0.2"), ""));
        assert!(PeerList::from_dataset(&Dataset::list(["1.2.3.4/40"])).is_err());
        // Found by fuzzing: an IPv4-mapped entry (prefix up to 128) against an IPv4 client
        // overflowed the IPv4 mask; it now matches as the IPv4 address it names, and the
        // longest prefix still wins across both spellings.
        let mapped = Dataset::list(["::ffff:192.0.2.0/120", "!192.0.2.7"]);
        let p = PeerList::from_dataset(&mapped).unwrap();
        assert!(p.contains(ip("192.0.2.8"), ""));
        assert!(!p.contains(ip("192.0.2.7"), ""));
        assert!(!p.contains(ip("::ffff:192.0.2.7"), ""));
        assert!(!p.contains(ip("192.0.3.1"), ""));
    }

    #[test]
    fn addresses_are_looked_up_in_opendkims_order() {
        let d = Dataset::parse(
            "csl:bob@example.com=exact, *@example.com=domain, .parent.example=parent, *=all",
        )
        .unwrap();
        assert_eq!(d.lookup_address("<Bob@Example.com>"), Some("exact"));
        assert_eq!(d.lookup_address("eve@example.com"), Some("domain"));
        assert_eq!(d.lookup_address("eve@a.b.parent.example"), Some("parent"));
        assert_eq!(d.lookup_address("eve@other.org"), Some("all"));
        let d = Dataset::parse("csl:lists.example,alice@*").unwrap();
        assert!(d.lookup_address("x@lists.example").is_some());
        assert!(d.lookup_address("alice@anywhere.example").is_some());
        assert!(d.lookup_address("x@sub.lists.example").is_none());
        let refile = Dataset::parse_lines("*@*.lists.example\n", true);
        assert!(refile.lookup_address("<a@x.lists.example>").is_some());
        assert!(refile.lookup_address("a@lists.example").is_none());
    }

    #[test]
    fn the_most_specific_host_name_decides() {
        let p = PeerList::from_dataset(&Dataset::list([
            "!.parent.example",
            ".child.parent.example",
            "!bad.child.parent.example",
            ".example",
        ]))
        .unwrap();
        // The positive, more specific `.child.parent.example` wins over `!.parent.example`
        // (it lost before: any negated match refused).
        assert!(p.contains(None, "mx.child.parent.example"));
        assert!(!p.contains(None, "bad.child.parent.example"));
        assert!(!p.contains(None, "mx.parent.example"));
        assert!(p.contains(None, "mx.other.example"));
        assert!(!p.contains(None, "mx.other.org"));
        assert!(!p.contains(None, ""));
    }

    #[test]
    fn multibyte_specs_are_not_cut_inside_a_character() {
        // Found by fuzzing: the refused-prefix check sliced at a byte count.
        assert!(Dataset::parse("é").is_ok());
        assert!(Dataset::parse("ldaé").is_ok());
        assert!(Dataset::parse("ßßßßßß").is_ok());
    }
}
