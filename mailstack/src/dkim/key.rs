//! Keys: private keys for signing (PEM or base64 DER, PKCS#1 or PKCS#8, RSA or Ed25519), the
//! `RequireSafeKeys` check, public key records (`v=DKIM1; k=...; p=...`) and key generation in
//! `opendkim-genkey`'s layout.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Largest private key file read (64 KiB; an 8192-bit PEM key is under 7 KiB).
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Length of each quoted string in the `.txt` record (opendkim-genkey splits `p=` at 250).
pub const TXT_CHUNK: usize = 250;

/// A key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyType {
    /// `k=rsa`, signing with `rsa-sha256`.
    Rsa,
    /// `k=ed25519`, signing with `ed25519-sha256` (RFC 8463).
    Ed25519,
}

impl KeyType {
    /// The `a=` value we sign with.
    pub fn algorithm(self) -> &'static str {
        match self {
            Self::Rsa => "rsa-sha256",
            Self::Ed25519 => "ed25519-sha256",
        }
    }
}

/// A private key ready to sign.
pub enum PrivateKey {
    /// RSA.
    Rsa(RsaKeyPair),
    /// Ed25519.
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({:?}, {} bits)", self.key_type(), self.bits())
    }
}

impl PrivateKey {
    /// The algorithm.
    pub fn key_type(&self) -> KeyType {
        match self {
            Self::Rsa(_) => KeyType::Rsa,
            Self::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// Key size in bits (256 for Ed25519).
    pub fn bits(&self) -> usize {
        match self {
            Self::Rsa(k) => k.public_modulus_len() * 8,
            Self::Ed25519(_) => 256,
        }
    }

    /// Parses PEM (`BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY`) or bare base64 DER.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let text = String::from_utf8_lossy(text);
        let (label, b64): (Option<&str>, String) = match text.find("-----BEGIN ") {
            Some(at) => {
                let rest = &text[at + 11..];
                let end = rest.find("-----").ok_or("unterminated PEM header")?;
                let label = &rest[..end];
                let body = &rest[end + 5..];
                let stop = body.find("-----END").ok_or("PEM without END line")?;
                (Some(label), body[..stop].split_whitespace().collect())
            }
            None => (None, text.split_whitespace().collect()),
        };
        let der = B64
            .decode(b64.as_bytes())
            .map_err(|e| format!("not PEM or base64: {e}"))?;
        Self::from_der(label, &der)
    }

    fn from_der(label: Option<&str>, der: &[u8]) -> Result<Self, String> {
        if label == Some("RSA PRIVATE KEY") {
            return RsaKeyPair::from_der(der)
                .map(Self::Rsa)
                .map_err(|e| format!("bad PKCS#1 RSA key: {e}"));
        }
        if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            return Ok(Self::Rsa(k));
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(Self::Ed25519(k));
        }
        RsaKeyPair::from_der(der)
            .map(Self::Rsa)
            .map_err(|_| "not an RSA or Ed25519 private key (PKCS#1 or PKCS#8)".into())
    }

    /// Reads a key file; with `require_safe`, refuses a file (or a directory above it) that
    /// others may read or write, naming the offending path.
    pub fn read(path: &Path, require_safe: bool) -> Result<Self, String> {
        if require_safe {
            check_safe(path)?;
        }
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > MAX_KEY_FILE {
            return Err(format!(
                "{}: larger than {MAX_KEY_FILE} bytes",
                path.display()
            ));
        }
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The `p=` value of the matching public key record.
    pub fn public_record_value(&self) -> String {
        match self {
            Self::Rsa(k) => {
                let der: Result<PublicKeyX509Der<'_>, _> = k.public_key().as_der();
                der.map(|d| B64.encode(d.as_ref())).unwrap_or_default()
            }
            Self::Ed25519(k) => B64.encode(k.public_key().as_ref()),
        }
    }
}

/// `RequireSafeKeys`: the key file must not be readable or writable by others, nor writable
/// by its group, and no directory above it may be writable by others unless it has the
/// sticky bit (like `/tmp`). OpenDKIM walks every directory the same way; the error names
/// the first offending path.
pub fn check_safe(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o007 != 0 || mode & 0o020 != 0 {
        return Err(format!(
            "{}: key file mode {:04o} lets others read or write it (or its group write it); \
             chmod 600 it, or set RequireSafeKeys no",
            path.display(),
            mode & 0o7777
        ));
    }
    let abs: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut dir = abs.parent();
    while let Some(d) = dir {
        if let Ok(m) = std::fs::metadata(d) {
            let mode = m.permissions().mode();
            let sticky = mode & 0o1000 != 0;
            if mode & 0o002 != 0 && !sticky {
                return Err(format!(
                    "{}: directory above key file {} is writable by others (mode {:04o}); \
                     fix it, or set RequireSafeKeys no",
                    d.display(),
                    path.display(),
                    mode & 0o7777
                ));
            }
        }
        dir = d.parent();
    }
    Ok(())
}

/// A parsed public key record (RFC 6376 §3.6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyRecord {
    /// `k=`.
    pub key_type: KeyType,
    /// `p=` decoded (empty: revoked).
    pub key: Vec<u8>,
    /// `h=` (empty: any).
    pub hashes: Vec<String>,
    /// `t=y`.
    pub testing: bool,
    /// `t=s`: `i=` must use exactly `d=`.
    pub strict_subdomains: bool,
}

/// Why a key record is unusable (the text is OpenDKIM's error string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecordError(pub &'static str);

impl PublicKeyRecord {
    /// Parses a TXT record value.
    pub fn parse(txt: &[u8]) -> Result<Self, KeyRecordError> {
        let txt = String::from_utf8_lossy(txt);
        let mut rec = Self {
            key_type: KeyType::Rsa,
            key: Vec::new(),
            hashes: Vec::new(),
            testing: false,
            strict_subdomains: false,
        };
        let mut have_p = false;
        for (i, (tag, value)) in super::sig::tag_list(&txt).into_iter().enumerate() {
            match tag.as_str() {
                "v" if i != 0 || value != "DKIM1" => {
                    return Err(KeyRecordError("key version invalid"));
                }
                "k" => {
                    rec.key_type = match value.as_str() {
                        "rsa" => KeyType::Rsa,
                        "ed25519" => KeyType::Ed25519,
                        _ => return Err(KeyRecordError("key type unknown")),
                    }
                }
                "p" => {
                    have_p = true;
                    let b64: String = value.split_whitespace().collect();
                    rec.key = B64
                        .decode(b64.as_bytes())
                        .map_err(|_| KeyRecordError("key data decode failed"))?;
                }
                "h" => rec.hashes = value.split(':').map(|h| h.trim().to_owned()).collect(),
                "s" if !value.split(':').any(|s| matches!(s.trim(), "*" | "email")) => {
                    return Err(KeyRecordError("not an e-mail key"));
                }
                "t" => {
                    for flag in value.split(':') {
                        match flag.trim() {
                            "y" => rec.testing = true,
                            "s" => rec.strict_subdomains = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !have_p {
            return Err(KeyRecordError("key data missing"));
        }
        if rec.key.is_empty() {
            return Err(KeyRecordError("key revoked"));
        }
        Ok(rec)
    }
}

/// The bit length of an RSA public key given as SubjectPublicKeyInfo or PKCS#1 DER.
pub fn rsa_key_bits(der: &[u8]) -> Option<usize> {
    let (inner, _) = der_take(der, 0x30)?;
    // SPKI: SEQUENCE { SEQUENCE {alg}, BIT STRING { RSAPublicKey } }
    if let Some((_alg, rest)) = der_take(inner, 0x30)
        && let Some((bits, _)) = der_take(rest, 0x03)
    {
        return rsa_key_bits(bits.get(1..)?);
    }
    // RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }
    let (n, _) = der_take(inner, 0x02)?;
    let first = n.iter().position(|b| *b != 0)?;
    let lead = n[first];
    Some((n.len() - first - 1) * 8 + (8 - lead.leading_zeros() as usize))
}

/// Splits one DER element of type `tag` off `input`: (contents, rest).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let body = input.get(hdr..hdr + len)?;
    Some((body, &input[hdr + len..]))
}

/// What `genkey` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// `<selector>.private`: PKCS#8 PEM (what OpenSSL 3's opendkim-genkey writes).
    pub private_pem: String,
    /// `<selector>.txt`: the zone-file stub in opendkim-genkey's layout.
    pub txt: String,
}

/// Options of [`generate`], named after opendkim-genkey's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenKeyOptions {
    /// Algorithm.
    pub key_type: KeyType,
    /// RSA bits: 2048 (Debian's default), 3072, 4096 or 8192.
    pub bits: usize,
    /// `-d`: used in the comment and with `append_domain`.
    pub domain: String,
    /// `-s`.
    pub selector: String,
    /// `-a`: owner name `<sel>._domainkey.<domain>.`.
    pub append_domain: bool,
    /// `-r`: `s=email`.
    pub restrict: bool,
    /// `-S`: `t=s`.
    pub no_subdomains: bool,
    /// `-t`: `t=y`.
    pub testing: bool,
    /// `-n`: `n="..."`.
    pub note: Option<String>,
}

impl Default for GenKeyOptions {
    fn default() -> Self {
        Self {
            key_type: KeyType::Rsa,
            bits: 2048,
            domain: "localhost".into(),
            selector: "default".into(),
            append_domain: false,
            restrict: false,
            no_subdomains: false,
            testing: false,
            note: None,
        }
    }
}

/// Generates a key pair and renders both files.
pub fn generate(opts: &GenKeyOptions) -> Result<GeneratedKey, String> {
    let (der, p) = match opts.key_type {
        KeyType::Rsa => {
            let size = match opts.bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                8192 => KeySize::Rsa8192,
                b => return Err(format!("RSA key size {b}: use 2048, 3072, 4096 or 8192")),
            };
            let k = RsaKeyPair::generate(size).map_err(|e| e.to_string())?;
            let der: Pkcs8V1Der<'_> = k.as_der().map_err(|e| e.to_string())?;
            let p = PrivateKey::Rsa(k).public_record_value();
            (der.as_ref().to_vec(), p)
        }
        KeyType::Ed25519 => {
            let k = Ed25519KeyPair::generate().map_err(|e| e.to_string())?;
            let der = k.to_pkcs8v1().map_err(|e| e.to_string())?;
            (der.as_ref().to_vec(), B64.encode(k.public_key().as_ref()))
        }
    };
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in B64.encode(&der).as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(GeneratedKey {
        private_pem: pem,
        txt: txt_record(opts, &p),
    })
}

/// The `.txt` stub: `<sel>._domainkey<TAB>IN<TAB>TXT<TAB>( "v=DKIM1; h=sha256; k=rsa; "`
/// then `p=` in quoted 250-character pieces, then `)  ; ----- DKIM key <sel> for <dom>`.
pub fn txt_record(opts: &GenKeyOptions, p: &str) -> String {
    // opendkim-genkey's order: v, n, h, k, t, s (the note's quotes escaped for the zone file).
    let mut head = String::from("v=DKIM1; ");
    if let Some(n) = &opts.note {
        let _ = write!(head, "n=\\\"{}\\\"; ", n.replace(['"', '\\'], ""));
    }
    match opts.key_type {
        KeyType::Rsa => head.push_str("h=sha256; k=rsa; "),
        KeyType::Ed25519 => head.push_str("k=ed25519; "),
    }
    match (opts.testing, opts.no_subdomains) {
        (true, true) => head.push_str("t=y:s; "),
        (true, false) => head.push_str("t=y; "),
        (false, true) => head.push_str("t=s; "),
        (false, false) => {}
    }
    if opts.restrict {
        head.push_str("s=email; ");
    }
    let owner = if opts.append_domain {
        format!("{}._domainkey.{}.", opts.selector, opts.domain)
    } else {
        format!("{}._domainkey", opts.selector)
    };
    let mut out = format!("{owner}\tIN\tTXT\t( \"{head}\"\n\t  \"p=");
    let chunks: Vec<&[u8]> = p.as_bytes().chunks(TXT_CHUNK).collect();
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\t  \"");
        }
        out.push_str(&String::from_utf8_lossy(c));
        out.push('"');
    }
    let _ = writeln!(
        out,
        " )  ; ----- DKIM key {} for {}",
        opts.selector, opts.domain
    );
    out
}

/// The record value of a `.txt` file (quoted pieces joined), for tests and `TestPublicKeys`.
pub fn txt_record_value(txt: &str) -> String {
    let mut out = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in txt.chars() {
        match (quoted, escaped, c) {
            (true, true, c) => {
                out.push(c);
                escaped = false;
            }
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (true, false, c) => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_match_their_records() {
        for kt in [KeyType::Rsa, KeyType::Ed25519] {
            let g = generate(&GenKeyOptions {
                key_type: kt,
                domain: "example.com".into(),
                selector: "sel".into(),
                ..GenKeyOptions::default()
            })
            .unwrap();
            let k = PrivateKey::parse(g.private_pem.as_bytes()).unwrap();
            assert_eq!(k.key_type(), kt);
            let rec = PublicKeyRecord::parse(txt_record_value(&g.txt).as_bytes()).unwrap();
            assert_eq!(rec.key_type, kt);
            assert_eq!(B64.encode(&rec.key), k.public_record_value());
            assert!(g.txt.starts_with("sel._domainkey\tIN\tTXT\t( \"v=DKIM1; "));
            assert!(g.txt.ends_with(")  ; ----- DKIM key sel for example.com\n"));
            if kt == KeyType::Rsa {
                assert_eq!(rsa_key_bits(&rec.key), Some(2048));
                assert!(
                    g.txt
                        .contains("\"v=DKIM1; h=sha256; k=rsa; \"\n\t  \"p=MII")
                );
            }
        }
    }

    #[test]
    fn opendkim_genkey_output_is_read() {
        // Layout written by Debian's opendkim-genkey 2.11 (key shortened to the record).
        let txt = "sel._domainkey\tIN\tTXT\t( \"v=DKIM1; h=sha256; k=rsa; \"\n\t  \"p=AAAA\"\n\t  \"BBBB\" )  ; ----- DKIM key sel for example.com\n";
        assert_eq!(
            txt_record_value(txt),
            "v=DKIM1; h=sha256; k=rsa; p=AAAABBBB"
        );
    }

    #[test]
    fn key_records() {
        assert_eq!(
            PublicKeyRecord::parse(b"v=DKIM1; p=").unwrap_err(),
            KeyRecordError("key revoked")
        );
        assert_eq!(
            PublicKeyRecord::parse(b"k=rsa; v=DKIM1; p=AAAA").unwrap_err(),
            KeyRecordError("key version invalid")
        );
        let r = PublicKeyRecord::parse(b"v=DKIM1; k=ed25519; t=y:s; p=AAAA").unwrap();
        assert!(r.testing && r.strict_subdomains);
        assert_eq!(r.key_type, KeyType::Ed25519);
    }

    #[test]
    fn unsafe_key_files_are_refused_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.private");
        let g = generate(&GenKeyOptions {
            key_type: KeyType::Ed25519,
            ..GenKeyOptions::default()
        })
        .unwrap();
        std::fs::write(&path, g.private_pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PrivateKey::read(&path, true).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: key file mode 0644", path.display())),
            "{e}"
        );
        assert!(PrivateKey::read(&path, false).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(PrivateKey::read(&path, true).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = PrivateKey::read(&path, true).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: directory above", dir.path().display())),
            "{e}"
        );
    }
}
