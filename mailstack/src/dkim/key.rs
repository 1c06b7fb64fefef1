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
pub(crate) const MAX_KEY_FILE: u64 = 64 * 1024;

/// Length of each quoted string in the `.txt` record (opendkim-genkey splits `p=` at 250).
pub(crate) const TXT_CHUNK: usize = 250;

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

/// Smallest RSA signing key accepted: RFC 8301 §3.2, signers MUST use at least 1024 bits.
pub const MIN_RSA_SIGNING_BITS: usize = 1024;
/// Smallest RSA key aws-lc-rs's [`RsaKeyPair`] loads; smaller ones (down to
/// [`MIN_RSA_SIGNING_BITS`]) sign through [`LegacyRsaKey`]. RFC 8301 says signers SHOULD use
/// at least 2048 bits, so a smaller key is logged as a warning at startup.
pub const RECOMMENDED_RSA_BITS: usize = 2048;

/// A private key ready to sign. More algorithms may come (a match needs a `_` arm, which
/// must refuse the key rather than sign with it).
#[non_exhaustive]
pub enum PrivateKey {
    /// RSA, 2048 bits or more.
    Rsa(RsaKeyPair),
    /// RSA of 1024 to 2047 bits (RFC 8301 still allows them for signing; aws-lc-rs's
    /// `KeyPair` refuses them as "TooSmall").
    RsaLegacy(LegacyRsaKey),
    /// Ed25519.
    Ed25519(Ed25519KeyPair),
}

/// An RSA private key of [`MIN_RSA_SIGNING_BITS`]..[`RECOMMENDED_RSA_BITS`] bits held by
/// aws-lc itself (`aws-lc-sys`), below aws-lc-rs's 2048-bit floor. Signing is aws-lc's
/// `RSA_sign` (PKCS#1 v1.5, blinded and constant-time like aws-lc-rs's own RSA signing,
/// which calls the same code).
pub struct LegacyRsaKey {
    /// Owned `RSA` object; freed in `Drop`. Never null (checked in [`LegacyRsaKey::adopt`]).
    rsa: std::ptr::NonNull<aws_lc_sys::RSA>,
    bits: usize,
}

// SAFETY: an aws-lc `RSA` object is safe to use from several threads once built: `RSA_sign`
// takes its own lock around the blinding cache (aws-lc `crypto/fipsmodule/rsa/rsa.c`), and
// aws-lc-rs marks its `EVP_PKEY`-wrapped RSA keys `Send + Sync` for the same reason. We never
// mutate the key after construction.
unsafe impl Send for LegacyRsaKey {}
// SAFETY: see `Send` above.
unsafe impl Sync for LegacyRsaKey {}

impl Drop for LegacyRsaKey {
    fn drop(&mut self) {
        // SAFETY: `rsa` is an owned, non-null `RSA` from `RSA_private_key_from_bytes` or
        // `EVP_PKEY_get1_RSA` (which took a reference), freed exactly once here.
        unsafe { aws_lc_sys::RSA_free(self.rsa.as_ptr()) }
    }
}

/// Why a private key could not be read, parsed or generated. The messages are the ones
/// `--check-config` and start-up print.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A PEM text without its END line or with an unterminated header.
    #[error("{0}")]
    Pem(&'static str),
    /// Neither PEM nor base64.
    #[error("not PEM or base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// A `BEGIN RSA PRIVATE KEY` text that is not a PKCS#1 RSA key.
    #[error("bad PKCS#1 RSA key: {0}")]
    Pkcs1(LegacyRsaError),
    /// An RSA key under 1024 bits (RFC 8301).
    #[error("{0}")]
    Rsa(LegacyRsaError),
    /// Not an RSA or Ed25519 private key.
    #[error("not an RSA (1024 bits or more, RFC 8301) or Ed25519 private key (PKCS#1 or PKCS#8)")]
    Unsupported,
    /// The key file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The path is not a regular file (a directory, FIFO, device).
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Over 64 KiB.
    #[error("{}: larger than {MAX_KEY_FILE} bytes", path.display())]
    TooLarge {
        /// The key file.
        path: PathBuf,
    },
    /// `RequireSafeKeys`: the file or a directory above it is open to others.
    #[error("{}: {problem}; fix it, or set RequireSafeKeys no", path.display())]
    Unsafe {
        /// The offending file or directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The key in a file did not parse.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: Box<Self>,
    },
    /// A KeyTable entry that is not `domain:selector:key`.
    #[error(
        "KeyTable entry {name:?}: expected domain:selector:key, found {value:?} (refused at \
         startup; OpenDKIM would start and tempfail the mail this key should sign)"
    )]
    KeyTableSyntax {
        /// The entry's name.
        name: String,
        /// Its value.
        value: String,
    },
    /// A KeyTable entry whose inline key does not parse.
    #[error(
        "KeyTable entry {name:?}: {source} (refused at startup; OpenDKIM would start and \
         tempfail the mail this key should sign)"
    )]
    KeyTableKey {
        /// The entry's name.
        name: String,
        /// Why.
        source: Box<Self>,
    },
    /// [`generate`] was asked for an RSA size opendkim-genkey does not offer.
    #[error("RSA key size {0}: use 2048, 3072, 4096 or 8192")]
    BadSize(usize),
    /// The crypto library could not generate or encode a key.
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// Why a small RSA key was not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyRsaError {
    /// Not an RSA private key in the given encoding, or aws-lc's consistency check failed.
    #[error("not a valid RSA private key")]
    Invalid,
    /// Under RFC 8301's 1024-bit floor.
    #[error("RSA key of {0} bits is under the 1024 bits RFC 8301 requires of signers")]
    TooSmall(usize),
    /// aws-lc refused to sign (should not happen with a checked key).
    #[error("RSA signing failed")]
    Sign,
}

impl LegacyRsaKey {
    /// Takes ownership of `rsa` (may be null: parse failure) after checking it.
    fn adopt(rsa: *mut aws_lc_sys::RSA) -> Result<Self, LegacyRsaError> {
        let rsa = std::ptr::NonNull::new(rsa).ok_or(LegacyRsaError::Invalid)?;
        // SAFETY: `rsa` is a valid owned RSA object; `RSA_bits` and `RSA_check_key` only read it.
        let (bits, ok) = unsafe {
            (
                aws_lc_sys::RSA_bits(rsa.as_ptr()) as usize,
                aws_lc_sys::RSA_check_key(rsa.as_ptr()) == 1,
            )
        };
        let key = Self { rsa, bits };
        if !ok {
            return Err(LegacyRsaError::Invalid);
        }
        if bits < MIN_RSA_SIGNING_BITS {
            return Err(LegacyRsaError::TooSmall(bits));
        }
        Ok(key)
    }

    /// Parses a PKCS#1 `RSAPrivateKey` (DER).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, LegacyRsaError> {
        // SAFETY: `der` is a live slice for the call; aws-lc copies what it keeps.
        Self::adopt(unsafe { aws_lc_sys::RSA_private_key_from_bytes(der.as_ptr(), der.len()) })
    }

    /// Parses a PKCS#8 `PrivateKeyInfo` holding an RSA key (DER).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, LegacyRsaError> {
        let mut cbs = aws_lc_sys::CBS {
            data: der.as_ptr(),
            len: der.len(),
        };
        // SAFETY: `cbs` points into `der`, alive for the call; aws-lc copies what it keeps.
        let pkey = unsafe { aws_lc_sys::EVP_parse_private_key(&raw mut cbs) };
        if pkey.is_null() {
            return Err(LegacyRsaError::Invalid);
        }
        // SAFETY: `pkey` is an owned, non-null EVP_PKEY; `EVP_PKEY_get1_RSA` returns a new
        // reference to its RSA (or null if not RSA), so freeing `pkey` right after is sound.
        let rsa = unsafe {
            let rsa = aws_lc_sys::EVP_PKEY_get1_RSA(pkey);
            aws_lc_sys::EVP_PKEY_free(pkey);
            rsa
        };
        if cbs.len != 0 {
            // Trailing bytes after the key: not a DER document. Drop the parsed key.
            drop(Self::adopt(rsa));
            return Err(LegacyRsaError::Invalid);
        }
        Self::adopt(rsa)
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The modulus size in bytes (the signature length).
    pub fn modulus_len(&self) -> usize {
        self.bits.div_ceil(8)
    }

    /// RSASSA-PKCS1-v1_5 over a SHA-256 `digest` (RFC 8017 §8.2.1 with the DigestInfo of
    /// SHA-256), as `rsa-sha256` needs.
    pub fn sign_sha256_digest(&self, digest: &[u8]) -> Result<Vec<u8>, LegacyRsaError> {
        if digest.len() != 32 {
            return Err(LegacyRsaError::Sign);
        }
        let mut out = vec![0u8; self.modulus_len()];
        let mut len: std::os::raw::c_uint = 0;
        // SAFETY: `out` has room for `RSA_size` bytes (the modulus length), `digest` is 32
        // live bytes, `len` is a valid out-pointer, `rsa` a valid key.
        let ok = unsafe {
            aws_lc_sys::RSA_sign(
                aws_lc_sys::NID_sha256,
                digest.as_ptr(),
                digest.len(),
                out.as_mut_ptr(),
                &raw mut len,
                self.rsa.as_ptr(),
            )
        };
        if ok != 1 {
            return Err(LegacyRsaError::Sign);
        }
        out.truncate(len as usize);
        Ok(out)
    }

    /// The public key as a PKCS#1 `RSAPublicKey` (DER).
    pub fn public_pkcs1_der(&self) -> Vec<u8> {
        let mut ptr: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: out-pointers are valid; on success aws-lc allocates `len` bytes at `ptr`,
        // which we copy and release with `OPENSSL_free`.
        unsafe {
            if aws_lc_sys::RSA_public_key_to_bytes(&raw mut ptr, &raw mut len, self.rsa.as_ptr())
                != 1
                || ptr.is_null()
            {
                return Vec::new();
            }
            let v = std::slice::from_raw_parts(ptr, len).to_vec();
            aws_lc_sys::OPENSSL_free(ptr.cast());
            v
        }
    }

    /// The public key as SubjectPublicKeyInfo (DER), the form of a DKIM `p=` value.
    pub fn public_spki_der(&self) -> Vec<u8> {
        // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
        const ALG: &[u8] = &[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        let mut bits = vec![0u8];
        bits.extend(self.public_pkcs1_der());
        let mut body = ALG.to_vec();
        body.extend(der_wrap(0x03, &bits));
        der_wrap(0x30, &body)
    }
}

/// One DER element: `tag`, definite length, `body`.
fn der_wrap(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
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
            Self::Rsa(_) | Self::RsaLegacy(_) => KeyType::Rsa,
            Self::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// Key size in bits (256 for Ed25519).
    pub fn bits(&self) -> usize {
        match self {
            Self::Rsa(k) => k.public_modulus_len() * 8,
            Self::RsaLegacy(k) => k.bits(),
            Self::Ed25519(_) => 256,
        }
    }

    /// Parses PEM (`BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY`) or bare base64 DER.
    pub fn parse(text: &[u8]) -> Result<Self, KeyError> {
        let text = String::from_utf8_lossy(text);
        let (label, b64): (Option<&str>, String) = match text.find("-----BEGIN ") {
            Some(at) => {
                let rest = &text[at + 11..];
                let end = rest
                    .find("-----")
                    .ok_or(KeyError::Pem("unterminated PEM header"))?;
                let label = &rest[..end];
                let body = &rest[end + 5..];
                let stop = body
                    .find("-----END")
                    .ok_or(KeyError::Pem("PEM without END line"))?;
                (Some(label), body[..stop].split_whitespace().collect())
            }
            None => (None, text.split_whitespace().collect()),
        };
        let der = B64.decode(b64.as_bytes())?;
        Self::from_der(label, &der)
    }

    fn from_der(label: Option<&str>, der: &[u8]) -> Result<Self, KeyError> {
        // aws-lc-rs first (2048 bits and up); a key it refuses may still be a 1024..2047-bit
        // RSA key, which RFC 8301 allows for signing and OpenDKIM signs with.
        if label == Some("RSA PRIVATE KEY") {
            return match RsaKeyPair::from_der(der) {
                Ok(k) => Ok(Self::Rsa(k)),
                Err(_) => LegacyRsaKey::from_pkcs1_der(der)
                    .map(Self::RsaLegacy)
                    .map_err(KeyError::Pkcs1),
            };
        }
        if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            return Ok(Self::Rsa(k));
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(Self::Ed25519(k));
        }
        if let Ok(k) = RsaKeyPair::from_der(der) {
            return Ok(Self::Rsa(k));
        }
        match LegacyRsaKey::from_pkcs8_der(der).or_else(|_| LegacyRsaKey::from_pkcs1_der(der)) {
            Ok(k) => Ok(Self::RsaLegacy(k)),
            Err(e @ LegacyRsaError::TooSmall(_)) => Err(KeyError::Rsa(e)),
            // aws-lc itself refuses to parse some RSA keys under 1024 bits (and odd sizes).
            Err(_) => Err(KeyError::Unsupported),
        }
    }

    /// Reads a key file, opened once: the checks look at the open file (`fstat`) and the key
    /// is read from the same descriptor, so the file cannot be swapped between check and use.
    /// The file must be a regular file; OpenDKIM's `RequireSafeKeys` rules on the file
    /// (owner root or us, no access for others, group access only for a group we are in)
    /// and on the directories above it refuse it with `require_safe`, and are logged as a
    /// warning without it (as OpenDKIM logs them).
    pub fn read(path: &Path, require_safe: bool) -> Result<Self, KeyError> {
        use std::io::Read as _;
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
        let shown = path.display();
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        // O_NONBLOCK: opening a FIFO planted at the path must not hang startup.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile {
                path: path.to_owned(),
            });
        }
        let me = ProcessIds::current();
        if let Some(problem) = key_file_problem(meta.mode(), meta.uid(), meta.gid(), &me) {
            if require_safe {
                return Err(KeyError::Unsafe {
                    path: path.to_owned(),
                    problem,
                });
            }
            tracing::warn!("{shown}: {problem} (RequireSafeKeys is off: using it anyway)");
        }
        if let Err(e) = check_safe_dirs(path) {
            if require_safe {
                return Err(e);
            }
            tracing::warn!("{e} (RequireSafeKeys is off: using it anyway)");
        }
        let too_large = || KeyError::TooLarge {
            path: path.to_owned(),
        };
        if meta.len() > MAX_KEY_FILE {
            return Err(too_large());
        }
        let mut text = Vec::new();
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(too_large());
        }
        Self::parse(&text).map_err(|e| KeyError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// The public key record to publish for this key (`<selector>._domainkey` TXT): its
    /// [`Display`](std::fmt::Display) is the record's text.
    pub fn public_record(&self) -> PublicKeyRecord {
        let (key_type, key) = match self {
            Self::Rsa(k) => {
                let der: Result<PublicKeyX509Der<'_>, _> = k.public_key().as_der();
                (
                    KeyType::Rsa,
                    der.map(|d| d.as_ref().to_vec()).unwrap_or_default(),
                )
            }
            Self::RsaLegacy(k) => (KeyType::Rsa, k.public_spki_der()),
            Self::Ed25519(k) => (KeyType::Ed25519, k.public_key().as_ref().to_vec()),
        };
        PublicKeyRecord {
            key_type,
            key,
            hashes: Vec::new(),
            testing: false,
            strict_subdomains: false,
        }
    }

    /// The `p=` value of the matching public key record.
    pub fn public_record_value(&self) -> String {
        match self {
            Self::Rsa(k) => {
                let der: Result<PublicKeyX509Der<'_>, _> = k.public_key().as_der();
                der.map(|d| B64.encode(d.as_ref())).unwrap_or_default()
            }
            Self::RsaLegacy(k) => B64.encode(k.public_spki_der()),
            Self::Ed25519(k) => B64.encode(k.public_key().as_ref()),
        }
    }
}

/// The identity [`key_file_problem`] compares a key file with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessIds {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id and supplementary groups.
    pub groups: Vec<u32>,
}

impl ProcessIds {
    /// This process's effective uid, effective gid and supplementary groups.
    pub(crate) fn current() -> Self {
        // SAFETY: geteuid/getegid cannot fail and touch no memory of ours.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut groups = vec![gid];
        // SAFETY: a first call with size 0 only returns the count; the second writes at most
        // `n` entries into a buffer of `n`.
        unsafe {
            let n = libc::getgroups(0, std::ptr::null_mut());
            if let Ok(len) = usize::try_from(n)
                && len > 0
            {
                let mut buf = vec![0 as libc::gid_t; len];
                let got = libc::getgroups(n, buf.as_mut_ptr());
                if let Ok(got) = usize::try_from(got) {
                    buf.truncate(got);
                    groups.extend(buf);
                }
            }
        }
        Self { uid, groups }
    }
}

/// `RequireSafeKeys` for the key file itself, OpenDKIM's rule (opendkim.conf(5)): the file
/// must not have "the read or write bit set other than for the owner or for a group that the
/// executing process is in", so no other-read/write bit, and group read/write only when the
/// file's group is one of ours (Debian's `root:opendkim 0640` keys pass). Its owner must be
/// root or the user we run as (OpenDKIM's `dkimf_securefile` checks the owner too): a key
/// owned by another user could be replaced by that user. `None` if the file is safe.
pub(crate) fn key_file_problem(mode: u32, uid: u32, gid: u32, me: &ProcessIds) -> Option<String> {
    if mode & 0o006 != 0 {
        return Some(format!(
            "key file mode {:04o} lets others read or write it; chmod o-rw it",
            mode & 0o7777
        ));
    }
    if mode & 0o060 != 0 && !me.groups.contains(&gid) {
        return Some(format!(
            "key file mode {:04o} lets group {gid} read or write it, a group this process \
             (uid {}) is not in",
            mode & 0o7777,
            me.uid
        ));
    }
    if uid != 0 && uid != me.uid {
        return Some(format!(
            "key file is owned by uid {uid}, neither root nor the user this process runs as \
             (uid {})",
            me.uid
        ));
    }
    None
}

/// `RequireSafeKeys` for the directories above a key file: none may be writable by others
/// unless it has the sticky bit (like `/tmp`). The error names the first offending path.
pub(crate) fn check_safe_dirs(path: &Path) -> Result<(), KeyError> {
    let abs: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut dir = abs.parent();
    while let Some(d) = dir {
        if let Ok(m) = std::fs::metadata(d) {
            let mode = m.permissions().mode();
            let sticky = mode & 0o1000 != 0;
            if mode & 0o002 != 0 && !sticky {
                return Err(KeyError::Unsafe {
                    path: d.to_owned(),
                    problem: format!(
                        "directory above key file {} is writable by others (mode {:04o})",
                        path.display(),
                        mode & 0o7777
                    ),
                });
            }
        }
        dir = d.parent();
    }
    Ok(())
}

/// Both `RequireSafeKeys` checks on a path (for tools such as `--check-config`);
/// [`PrivateKey::read`] runs the same checks on the file it opened.
pub fn check_safe(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    if let Some(problem) =
        key_file_problem(meta.mode(), meta.uid(), meta.gid(), &ProcessIds::current())
    {
        return Err(KeyError::Unsafe {
            path: path.to_owned(),
            problem,
        });
    }
    check_safe_dirs(path)
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

/// Writes the record as it is published: `v=DKIM1; h=...; k=...; t=...; p=...` (the tags
/// `opendkim-genkey` writes, in its order; `h=` and `t=` only when set), which
/// [`PublicKeyRecord::parse`] reads back to the same record.
impl std::fmt::Display for PublicKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("v=DKIM1; ")?;
        if !self.hashes.is_empty() {
            write!(f, "h={}; ", self.hashes.join(":"))?;
        }
        match self.key_type {
            KeyType::Rsa => f.write_str("k=rsa; ")?,
            KeyType::Ed25519 => f.write_str("k=ed25519; ")?,
        }
        match (self.testing, self.strict_subdomains) {
            (true, true) => f.write_str("t=y:s; ")?,
            (true, false) => f.write_str("t=y; ")?,
            (false, true) => f.write_str("t=s; ")?,
            (false, false) => {}
        }
        write!(f, "p={}", B64.encode(&self.key))
    }
}

/// Why a key record is unusable (the text is OpenDKIM's error string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecordError(pub &'static str);

impl KeyRecordError {
    /// An empty `p=`: the key was revoked (RFC 6376 §3.6.1).
    pub const REVOKED: Self = Self("key revoked");
}

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
            return Err(KeyRecordError::REVOKED);
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
pub fn generate(opts: &GenKeyOptions) -> Result<GeneratedKey, KeyError> {
    let (der, p) = match opts.key_type {
        KeyType::Rsa => {
            let size = match opts.bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                8192 => KeySize::Rsa8192,
                b => return Err(KeyError::BadSize(b)),
            };
            let k = RsaKeyPair::generate(size).map_err(|e| KeyError::Generate(e.to_string()))?;
            let der: Pkcs8V1Der<'_> = k.as_der().map_err(|e| KeyError::Generate(e.to_string()))?;
            let p = PrivateKey::Rsa(k).public_record_value();
            (der.as_ref().to_vec(), p)
        }
        KeyType::Ed25519 => {
            let k = Ed25519KeyPair::generate().map_err(|e| KeyError::Generate(e.to_string()))?;
            let der = k
                .to_pkcs8v1()
                .map_err(|e| KeyError::Generate(e.to_string()))?;
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
pub(crate) fn txt_record(opts: &GenKeyOptions, p: &str) -> String {
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
    use std::process::Command;

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
            // The record this key publishes is the generated one minus genkey's `h=`.
            let published = k.public_record();
            assert_eq!(
                PublicKeyRecord::parse(published.to_string().as_bytes()),
                Ok(PublicKeyRecord {
                    hashes: Vec::new(),
                    ..rec.clone()
                })
            );
            let k_tag = if kt == KeyType::Rsa { "rsa" } else { "ed25519" };
            assert_eq!(
                published.to_string(),
                format!("v=DKIM1; k={k_tag}; p={}", k.public_record_value())
            );
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
            e.to_string()
                .starts_with(&format!("{}: key file mode 0644", path.display())),
            "{e}"
        );
        assert!(PrivateKey::read(&path, false).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(PrivateKey::read(&path, true).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = PrivateKey::read(&path, true).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}: directory above", dir.path().display())),
            "{e}"
        );
    }

    #[test]
    fn require_safe_keys_follows_opendkims_rule() {
        let me = ProcessIds {
            uid: 110,
            groups: vec![120, 4],
        };
        assert_eq!(key_file_problem(0o100600, 110, 120, &me), None);
        assert_eq!(key_file_problem(0o100400, 0, 0, &me), None);
        // Group-readable by a group we are in (Debian's root:opendkim 0640): allowed.
        assert_eq!(key_file_problem(0o100640, 0, 120, &me), None);
        // Group-readable by a group we are not in: refused (accepted before).
        let e = key_file_problem(0o100640, 0, 0, &me).unwrap();
        assert!(
            e.to_string().contains("lets group 0 read or write it"),
            "{e}"
        );
        assert!(key_file_problem(0o100604, 110, 120, &me).is_some());
        assert!(key_file_problem(0o100602, 110, 120, &me).is_some());
        // Owned by another user: refused (not checked before).
        let e = key_file_problem(0o100600, 999, 120, &me).unwrap();
        assert!(e.to_string().contains("owned by uid 999"), "{e}");
    }

    #[test]
    fn key_files_are_checked_on_the_open_file_and_not_followed_to_fifos() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.private");
        let g = generate(&GenKeyOptions {
            key_type: KeyType::Ed25519,
            ..GenKeyOptions::default()
        })
        .unwrap();
        std::fs::write(&path, &g.private_pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let gid = std::fs::metadata(&path).unwrap().gid();
        let ours = ProcessIds::current().groups.contains(&gid);
        assert_eq!(PrivateKey::read(&path, true).is_ok(), ours);
        // Owned by another user: refused, naming the owner.
        std::os::unix::fs::chown(&path, Some(12345), None).ok();
        if std::fs::metadata(&path).unwrap().uid() == 12345 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = PrivateKey::read(&path, true).unwrap_err();
            assert!(e.to_string().contains("owned by uid 12345"), "{e}");
            assert!(PrivateKey::read(&path, false).is_ok());
        }
        let fifo = dir.path().join("fifo");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success())
        );
        let e = PrivateKey::read(&fifo, false).unwrap_err();
        assert!(e.to_string().ends_with("not a regular file"), "{e}");
    }
}
