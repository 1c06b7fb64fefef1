//! The DKIM filter: signs mail from internal hosts (or authenticated clients) for our domains
//! and verifies everything else, as OpenDKIM does, in the common [`crate::filter::Filter`]
//! shape. `dkim-milter` serves it alone through [`crate::filter::Milter`]; `mailstackd` runs
//! it in a [`crate::filter::Chain`] with the other filters.
//!
//! Per message it keeps the header block (bounded by `MaximumHeaders`) and streams the body
//! through the hashers, so memory does not grow with the body. The decisions, in order:
//!
//! ```text
//!  connect/mail   PeerList client → skip (alone: ACCEPT at CONNECT, as OpenDKIM)
//!  end of headers too many header bytes            → On-Security at end of message
//!                 From: absent or without a domain → dkim=permerror (bad message/signature
//!                                                    format), nothing else (OpenDKIM)
//!                 ExemptDomains                    → nothing
//!                 internal (or AUTH) + our key     → sign
//!                 a DKIM-Signature that is not a tag-list or lacks v/a/b/d/h/s (verifying)
//!                                                  → On-BadSignature now, "DKIM signature
//!                                                    syntax error" (OpenDKIM)
//!                 otherwise (Mode v)               → verify
//!  end of message the verdict: the On-* action, the header changes, the AR clauses, the facts
//! ```
//!
//! Added fields are prepended (index 0, as OpenDKIM) and folded with `\n\t`; the adapter adds
//! the leading space when `SMFIP_HDR_LEADSPC` was negotiated (Postfix offers it), and the
//! headers we receive are then exact, which `simple` header canonicalization needs.

use std::sync::Arc;

use milter_proto::Actions;

use super::canon::{BodyHasher, Header};
use super::config::DkimConfig;
use super::key::KeyError;
use super::sig::Algorithm;
use super::sign::{
    BodyHash, HeaderCountProblem, KeyChoice, KeySet, SignOptions, sign_one, strict_headers_problem,
};
use super::verify::{
    DkimResult, FailureClass, MessageVerifier, SignatureResult, VerifyOptions,
    authentication_results, b_prefix,
};
use crate::auth_results::{MethodResult, claims_authserv_id};
use crate::dns::Resolver;
use crate::filter::{
    Action, Connection, EndOfMessage, Envelope, Fallback, Filter, Flow, Modification, Needs,
    OnAction, Start, Verdict,
};

/// Forged `Authentication-Results` fields remembered per message for removal. Each costs the
/// sender a whole header field; a message carrying more is not processed (`On-Security`),
/// since it could not be cleaned.
pub(crate) const MAX_FORGED_RESULTS: usize = 256;

/// The reply text OpenDKIM 2.11 gives a `DKIM-Signature` that does not parse (seen with the
/// differential test in `examples/tests/dkim_milter_vs_opendkim.rs`).
const SYNTAX_ERROR: &str = "DKIM signature syntax error";

/// The `Authentication-Results` comment OpenDKIM writes for a message without a usable `From`.
const BAD_FORMAT: &str = "bad message/signature format";

/// Why a [`DkimFilter`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DkimError {
    /// A signing key of the configuration could not be loaded: the error names the key (file
    /// or KeyTable entry) and what is wrong with it.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The DKIM filter: configuration, keys and DNS, shared by every connection.
pub struct DkimFilter {
    cfg: DkimConfig,
    keys: KeySet,
    sign_opts: SignOptions,
    verify_opts: VerifyOptions,
    resolver: Arc<dyn Resolver>,
    hostname: String,
}

impl std::fmt::Debug for DkimFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimFilter")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// One message's DKIM state ([`Filter::Message`] of [`DkimFilter`]).
pub struct DkimMessage {
    authserv_id: String,
    authenticated: bool,
    rcpts: Vec<String>,
    /// The MacroList macros the MTA sent up to MAIL.
    macros: Vec<(String, String)>,
    headers: Vec<Header>,
    header_bytes: usize,
    too_big: bool,
    /// Among the `Authentication-Results` fields so far: how many, and the 1-based indices
    /// of those claiming our authserv-id.
    ar_seen: u32,
    forged: Vec<u32>,
    forged_overflow: bool,
    mode: Mode,
}

impl std::fmt::Debug for DkimMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimMessage")
            .field("headers", &self.headers.len())
            .field("too_big", &self.too_big)
            .field("forged", &self.forged)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
enum Mode {
    #[default]
    Undecided,
    Sign(Vec<KeyChoice>, BodyHasher, bool),
    Verify(MessageVerifier),
    /// No usable From: OpenDKIM's `dkim=permerror (bad message/signature format)`.
    BadFormat,
    /// A signature did not parse; On-BadSignature (quarantine or accept) at end of message.
    SyntaxError(OnAction),
    Nothing,
}

/// Pulls `local@domain` out of a From value (the last `<...>`, else the whole value).
pub(crate) fn from_address(value: &str) -> Option<String> {
    let v = value.trim();
    let addr = match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => v.get(a + 1..b).unwrap_or(""),
        _ => v.split_whitespace().next().unwrap_or(""),
    };
    let addr = addr.trim();
    let (local, domain) = addr.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then(|| addr.to_owned())
}

/// Whether a `DKIM-Signature` value is a syntax error for OpenDKIM 2.11 (libopendkim's
/// `DKIM_STAT_SYNTAX`): an item that is not `tag=value`, or one of the tags `v a b d h s`
/// missing. Other defects (duplicate tags, a bad algorithm, no `bh=`) are `permerror` results
/// at end of message, for OpenDKIM and for us.
fn syntax_error(value: &[u8]) -> bool {
    let text = String::from_utf8_lossy(value);
    let mut tags = Vec::new();
    for item in text.split(';') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once('=') {
            Some((tag, _)) if !tag.trim().is_empty() => tags.push(tag.trim().to_owned()),
            _ => return true,
        }
    }
    ["v", "a", "b", "d", "h", "s"]
        .iter()
        .any(|t| !tags.iter().any(|have| have == t))
}

/// OpenDKIM 2.11's `RequiredHeaders` rejection text for `problem` (seen with the
/// differential test in `examples/tests/dkim_milter_vs_opendkim.rs`): From and Date must
/// appear exactly once, the other once-only fields at most once.
fn required_headers_reply(problem: HeaderCountProblem) -> String {
    let (HeaderCountProblem::Missing(name) | HeaderCountProblem::Repeated(name)) = problem;
    // `reply-to` → `Reply-To`, as OpenDKIM names the field.
    let title: Vec<String> = name
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let title = title.join("-");
    if matches!(name, "from" | "date") {
        format!("550 5.0.0 message does not have exactly one {title} field")
    } else {
        format!("550 5.0.0 message has multiple {title} fields")
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn local_hostname() -> String {
    crate::config::hostname()
}

fn is(h: &Header, name: &str) -> bool {
    h.name.trim().eq_ignore_ascii_case(name)
}

impl DkimFilter {
    /// Loads the keys of `cfg`; key lookups go through `resolver`.
    pub fn new(cfg: DkimConfig, resolver: Arc<dyn Resolver>) -> Result<Self, DkimError> {
        let keys = KeySet::from_config(&cfg).map_err(DkimError::Key)?;
        if cfg.sign {
            // Readiness: signing needs its keys (a failed load already refused to start).
            let state = if keys.is_empty() {
                Err(crate::health::CheckError("no signing key loaded".into()))
            } else {
                Ok(())
            };
            crate::health::register(Arc::new(crate::health::StaticCheck::new(
                "dkim-keys",
                state,
            )));
        }
        Ok(Self {
            sign_opts: SignOptions::from_config(&cfg),
            verify_opts: VerifyOptions::from_config(&cfg),
            keys,
            resolver,
            hostname: local_hostname(),
            cfg,
        })
    }

    fn authserv_id(&self, conn: &Connection) -> String {
        match self.cfg.authserv_id.as_deref() {
            Some("HOSTNAME") => self.hostname.clone(),
            Some(id) => id.to_owned(),
            None => conn
                .mta_name
                .clone()
                .unwrap_or_else(|| self.hostname.clone()),
        }
    }

    /// BodyLengthDB and DontSignMailTo read the recipients.
    fn wants_rcpts(&self) -> bool {
        self.cfg.body_length_db.is_some() || self.cfg.dont_sign_mail_to.is_some()
    }

    /// MacroList's names, asked for at MAIL (Postfix keeps connection macros until then).
    fn macro_list_names(&self) -> Vec<(milter_proto::MacroStage, String)> {
        if self.cfg.macro_list.is_empty() {
            return Vec::new();
        }
        let names: Vec<String> = self
            .cfg
            .macro_list
            .iter()
            .map(|(n, _)| {
                if n.len() == 1 {
                    n.clone()
                } else {
                    format!("{{{n}}}")
                }
            })
            .collect();
        vec![(milter_proto::MacroStage::EnvFrom, names.join(" "))]
    }

    fn skips(&self, conn: &Connection) -> bool {
        self.cfg.peer_list.contains(conn.ip(), &conn.hostname)
    }

    /// Chooses sign, verify or nothing once the headers are known.
    fn decide(&self, msg: &DkimMessage, conn: &Connection) -> Mode {
        let cfg = &self.cfg;
        let mut froms = msg.headers.iter().filter(|h| is(h, "from"));
        // OpenDKIM reads the first From field; without a domain there is nothing to sign
        // for and nothing to align with.
        let Some(first) = froms
            .next()
            .and_then(|h| from_address(&String::from_utf8_lossy(&h.value)))
        else {
            return if cfg.verify {
                Mode::BadFormat
            } else {
                Mode::Nothing
            };
        };
        // Several From fields: verified, never signed.
        let from = froms.next().is_none().then_some(first);
        let domain = from
            .as_deref()
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d);
        if domain.is_some_and(|d| cfg.exempt_domains.contains(d)) {
            return Mode::Nothing;
        }
        let (ip, host) = (conn.ip(), conn.hostname.as_str());
        let internal = msg.authenticated
            || cfg.internal_hosts.contains(ip, host)
            || cfg.macro_list_allows(|n| {
                crate::filter::find_macro(&msg.macros, n).map(str::to_owned)
            });
        if cfg.sign
            && let Some(from) = &from
        {
            let keys = self.keys.keys_for(from);
            if internal && !keys.is_empty() && !cfg.dont_sign_to(&msg.rcpts) {
                let length = cfg.body_length_for(&msg.rcpts);
                let hasher =
                    BodyHasher::new(self.sign_opts.canon.1, &aws_lc_rs::digest::SHA256, None);
                return Mode::Sign(keys, hasher, length);
            }
            if !internal && !keys.is_empty() && !cfg.external_ignore.contains(ip, host) {
                // OpenDKIM's log line; ExternalIgnoreList only silences it.
                tracing::info!(
                    "external host {host} [{}] tried to send mail as {from}; verifying, not signing",
                    ip.map(|i| i.to_string()).unwrap_or_default()
                );
            }
        }
        if !cfg.verify {
            return Mode::Nothing;
        }
        if msg
            .headers
            .iter()
            .any(|h| is(h, "DKIM-Signature") && syntax_error(&h.value))
        {
            return Mode::SyntaxError(cfg.actions.bad_signature);
        }
        Mode::Verify(
            MessageVerifier::new(&msg.headers, self.verify_opts.clone())
                .with_key_timeout(cfg.dns_timeout),
        )
    }

    /// An `On-*` action as a verdict action, with OpenDKIM's reply texts. Quarantine falls
    /// back to delivery when the MTA did not grant it, as OpenDKIM (which only logs).
    fn action(&self, action: OnAction, dns: bool, text: &str) -> Action {
        match action {
            OnAction::Accept => Action::Accept,
            OnAction::Discard => Action::Discard,
            OnAction::Quarantine => Action::Quarantine {
                reason: text.to_owned(),
                fallback: Fallback::Accept,
            },
            OnAction::Reject => Action::Reject(Some(format!("550 5.7.0 {text}"))),
            OnAction::Tempfail => {
                let code = if dns { "451 4.7.5" } else { "451 4.7.0" };
                Action::Tempfail(Some(format!("{code} {text}")))
            }
        }
    }

    /// `SoftwareHeader yes`: `DKIM-Filter: mailstack dkim-milter <version> <host> <queue id>`.
    fn software_header(&self, env: &Envelope, mods: &mut Vec<Modification>) {
        if self.cfg.software_header {
            mods.push(Modification::Insert {
                index: 0,
                name: "DKIM-Filter".into(),
                value: format!(
                    "mailstack dkim-milter v{} {} {}",
                    env!("CARGO_PKG_VERSION"),
                    self.hostname,
                    env.queue_id()
                ),
            });
        }
    }

    fn sign(&self, mode: Mode, headers: &[Header], eom: &EndOfMessage<'_>, v: &mut Verdict) {
        let Mode::Sign(keys, hasher, length) = mode else {
            return;
        };
        let (bh, len) = hasher.finish();
        let body = BodyHash {
            digest: &bh,
            len,
            length_tag: length,
        };
        let now = unix_now();
        let mut values = Vec::new();
        for KeyChoice {
            index,
            domain,
            identity,
        } in &keys
        {
            let key = self.keys.key(*index);
            let opts = &self.sign_opts;
            match sign_one(key, domain, identity.as_deref(), opts, headers, &body, now) {
                Ok(value) => values.push(value),
                Err(e) => {
                    tracing::warn!("DKIM signing failed for d={domain}: {e}");
                    let sig_error = self.cfg.actions.signature_error;
                    v.action = self.action(sig_error, false, "DKIM signing error");
                    return;
                }
            }
        }
        if self.cfg.remove_old_signatures {
            let old = headers.iter().filter(|h| is(h, "DKIM-Signature")).count();
            for i in (1..=old).rev() {
                v.modifications.push(Modification::Delete {
                    name: "DKIM-Signature".into(),
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                });
            }
        }
        self.software_header(eom.env, &mut v.modifications);
        // Inserted at the top in reverse, so the first key's signature ends up first.
        for value in values.into_iter().rev() {
            v.modifications.push(Modification::Insert {
                index: 0,
                name: "DKIM-Signature".into(),
                value,
            });
        }
    }

    async fn verify(&self, mode: Mode, msg: &DkimMessage, eom: &EndOfMessage<'_>, v: &mut Verdict) {
        let Mode::Verify(verifier) = mode else {
            return;
        };
        let signed = verifier.has_signatures();
        let results = verifier
            .finish(&msg.headers, self.resolver.as_ref(), unix_now())
            .await;
        self.software_header(eom.env, &mut v.modifications);
        if signed || self.cfg.always_add_ar {
            let ar = authentication_results(&msg.authserv_id, &results);
            v.modifications.push(Modification::AuthResults(ar));
        }
        let (action, dns) = self.on_action(&results);
        let text = match (action, dns) {
            (OnAction::Tempfail, true) => "DKIM key retrieval failed",
            (OnAction::Tempfail, false) => "DKIM signature processing failed",
            _ if results.is_empty() => "no DKIM signature data",
            _ => "bad DKIM signature data",
        };
        v.action = self.action(action, dns, text);
        v.auth_results = clauses(&results);
        v.facts.dkim = Some(results.into_iter().map(crate::dmarc::dkim::input).collect());
    }

    /// The `On-*` action for a set of results: any pass accepts; otherwise the first
    /// signature decides (a `t=y` key is never acted on).
    fn on_action(&self, results: &[SignatureResult]) -> (OnAction, bool) {
        let a = &self.cfg.actions;
        let Some(first) = results.first() else {
            return (a.no_signature, false);
        };
        if first.testing || results.iter().any(|r| r.result == DkimResult::Pass) {
            return (OnAction::Accept, false);
        }
        match first.class {
            Some(FailureClass::KeyNotFound) => (a.key_not_found, true),
            Some(FailureClass::DnsError) => (a.dns_error, true),
            _ => (a.bad_signature, false),
        }
    }
}

/// The `Authentication-Results` clauses of a set of results (for one combined field): one
/// `dkim=` clause per signature with the properties OpenDKIM writes, `dkim=none` without one.
fn clauses(results: &[SignatureResult]) -> Vec<MethodResult> {
    if results.is_empty() {
        return vec![MethodResult::new("dkim", "none")];
    }
    let all: Vec<&str> = results.iter().map(|r| r.b.as_str()).collect();
    results
        .iter()
        .map(|r| {
            let mut c = MethodResult::new("dkim", r.result.as_str());
            if let Some(reason) = r.reason {
                c = c.reason(reason);
            }
            // As OpenDKIM's text: the size of RSA keys only.
            if let Some(bits) = r.key_bits
                && r.algorithm != Some(Algorithm::Ed25519Sha256)
            {
                c = c.comment(format!("{bits}-bit key"));
            }
            if r.domain.is_empty() {
                return c;
            }
            c = c.property("header.d", &r.domain);
            c = c.property("header.i", &r.identity);
            if let Some(a) = r.algorithm {
                c = c.property("header.a", a.as_str());
            }
            c.property("header.s", &r.selector)
                .property("header.b", b_prefix(&r.b, &all))
        })
        .collect()
}

#[async_trait::async_trait]
impl Filter for DkimFilter {
    type Message = DkimMessage;

    fn needs(&self) -> Needs {
        // A syntax error answers at end of headers only when On-BadSignature stops mail.
        let early = self.cfg.required_headers
            || (self.cfg.verify
                && matches!(
                    self.cfg.actions.bad_signature,
                    OnAction::Reject | OnAction::Tempfail | OnAction::Discard
                ));
        Needs {
            actions: Actions::ADDHDRS | Actions::CHGHDRS | Actions::QUARANTINE,
            required_actions: Actions::ADDHDRS,
            headers: true,
            body: true,
            rcpts: self.wants_rcpts(),
            macros: self.macro_list_names(),
            early_reply: early,
            ..Needs::default()
        }
    }

    fn connect(&self, conn: &Connection) -> Flow {
        if self.skips(conn) {
            Flow::Skip
        } else {
            Flow::Continue
        }
    }

    async fn mail(&self, conn: &Connection, env: &Envelope) -> Start<DkimMessage> {
        // Again here: in a Chain, connect is only advisory.
        if self.skips(conn) {
            return Start::Skip;
        }
        Start::Message(DkimMessage {
            authserv_id: self.authserv_id(conn),
            authenticated: env.authenticated(),
            rcpts: Vec::new(),
            macros: env.macros.clone(),
            headers: Vec::new(),
            header_bytes: 0,
            too_big: false,
            ar_seen: 0,
            forged: Vec::new(),
            forged_overflow: false,
            mode: Mode::Undecided,
        })
    }

    fn rcpt(&self, msg: &mut DkimMessage, rcpt: &str) -> Flow {
        // Only BodyLengthDB reads recipients; they are bounded by the envelope's limit.
        if self.wants_rcpts() && msg.rcpts.len() < crate::filter::MAX_RECIPIENTS {
            msg.rcpts.push(rcpt.to_owned());
        }
        Flow::Continue
    }

    async fn header(&self, msg: &mut DkimMessage, h: &Header) {
        if is(h, "Authentication-Results") {
            msg.ar_seen = msg.ar_seen.saturating_add(1);
            if !self.cfg.keep_auth_results && claims_authserv_id(&h.value, &msg.authserv_id) {
                if msg.forged.len() < MAX_FORGED_RESULTS {
                    msg.forged.push(msg.ar_seen);
                } else {
                    msg.forged_overflow = true;
                }
            }
        }
        msg.header_bytes = msg
            .header_bytes
            .saturating_add(h.name.len() + h.value.len() + 3);
        if msg.header_bytes > self.cfg.max_headers {
            msg.too_big = true;
            msg.headers = Vec::new();
        } else if !msg.too_big {
            msg.headers.push(h.clone());
        }
    }

    async fn end_of_headers(&self, msg: &mut DkimMessage, conn: &Connection, _: &Envelope) -> Flow {
        if msg.too_big || msg.forged_overflow {
            msg.mode = Mode::Nothing;
            return Flow::Continue;
        }
        if (self.cfg.strict_headers || self.cfg.required_headers)
            && let Some(problem) = strict_headers_problem(&msg.headers)
        {
            tracing::info!("RFC 5322 header field counts: {problem}");
            if self.cfg.required_headers {
                msg.mode = Mode::Nothing;
                return Flow::Stop(Action::Reject(Some(required_headers_reply(problem))));
            }
            // StrictHeaders: the library refuses to process the message.
            msg.mode = if self.cfg.verify {
                Mode::BadFormat
            } else {
                Mode::Nothing
            };
            return Flow::Continue;
        }
        msg.mode = self.decide(msg, conn);
        match msg.mode {
            Mode::SyntaxError(a @ (OnAction::Reject | OnAction::Tempfail | OnAction::Discard)) => {
                Flow::Stop(self.action(a, false, SYNTAX_ERROR))
            }
            _ => Flow::Continue,
        }
    }

    async fn body(&self, msg: &mut DkimMessage, chunk: &[u8]) {
        match &mut msg.mode {
            Mode::Sign(_, h, _) => h.update(chunk),
            Mode::Verify(v) => v.body(chunk),
            _ => {}
        }
    }

    async fn end_of_message(&self, mut msg: DkimMessage, eom: &EndOfMessage<'_>) -> Verdict {
        if msg.forged_overflow {
            tracing::warn!("more than {MAX_FORGED_RESULTS} forged Authentication-Results");
            let security = self.cfg.actions.security;
            return Verdict::action(self.action(security, false, "resource unavailable"));
        }
        let mut v = Verdict::accept();
        // Forged results go in every mode, from the bottom up so earlier indices stay valid.
        for &index in msg.forged.iter().rev() {
            v.modifications.push(Modification::Delete {
                name: "Authentication-Results".into(),
                index,
            });
        }
        if msg.too_big {
            tracing::warn!(
                "header block larger than MaximumHeaders ({} bytes)",
                self.cfg.max_headers
            );
            let security = self.cfg.actions.security;
            v.action = self.action(security, false, "resource unavailable");
            return v;
        }
        match std::mem::take(&mut msg.mode) {
            mode @ Mode::Sign(..) => self.sign(mode, &msg.headers, eom, &mut v),
            mode @ Mode::Verify(_) => self.verify(mode, &msg, eom, &mut v).await,
            Mode::BadFormat => {
                let value = format!("{}; dkim=permerror ({BAD_FORMAT})", msg.authserv_id);
                v.modifications.push(Modification::AuthResults(value));
                v.auth_results = vec![MethodResult::new("dkim", "permerror").comment(BAD_FORMAT)];
            }
            Mode::SyntaxError(a) => v.action = self.action(a, false, SYNTAX_ERROR),
            Mode::Undecided | Mode::Nothing => {}
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::key::{self, GenKeyOptions};
    use crate::dmarc::{DkimInput, DkimStatus};
    use crate::dns::{MemoryRecord, MemoryResolver};
    use crate::filter::{AuthFacts, ClientAddr};

    const MSG: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\n\
Subject: test\r\n\r\nHello\r\n";

    struct Keys {
        dir: tempfile::TempDir,
        zone: MemoryResolver,
    }

    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let g = key::generate(&GenKeyOptions {
            selector: "sel".into(),
            ..GenKeyOptions::default()
        })
        .unwrap();
        let path = dir.path().join("sel.private");
        std::fs::write(&path, &g.private_pem).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let mut zone = MemoryResolver::new();
        zone.add(
            "sel._domainkey.example.com",
            MemoryRecord::Txt(key::txt_record_value(&g.txt).into_bytes()),
        );
        Keys { dir, zone }
    }

    fn filter(k: &Keys, extra: &str) -> DkimFilter {
        let conf = format!(
            "Domain example.com\nSelector sel\nKeyFile {}\n{extra}",
            k.dir.path().join("sel.private").display()
        );
        let cfg = DkimConfig::parse(std::path::Path::new("t.conf"), &conf).unwrap();
        DkimFilter::new(cfg, Arc::new(k.zone.clone())).unwrap()
    }

    fn conn(ip: &str) -> Connection {
        let mut c = Connection::new("client.example", ClientAddr::Ip(ip.parse().unwrap()));
        c.mta_name = Some("mx.test".into());
        c
    }

    /// One message through the filter's stages, as the adapter calls them.
    async fn run(f: &DkimFilter, ip: &str, raw: &[u8]) -> Verdict {
        let (c, env) = (conn(ip), Envelope::new("<alice@example.com>"));
        assert_eq!(f.connect(&c), Flow::Continue);
        let Start::Message(mut m) = f.mail(&c, &env).await else {
            panic!("no message state");
        };
        let (headers, at) = Header::split_message(raw);
        for h in &headers {
            f.header(&mut m, h).await;
        }
        assert_eq!(f.end_of_headers(&mut m, &c, &env).await, Flow::Continue);
        f.body(&mut m, &raw[at..]).await;
        let facts = AuthFacts::default();
        let eom = EndOfMessage {
            conn: &c,
            env: &env,
            facts: &facts,
            leadspc: true,
        };
        f.end_of_message(m, &eom).await
    }

    /// Signs `MSG` with the filter (from an internal host) and returns the signed message.
    async fn signed(f: &DkimFilter) -> Vec<u8> {
        let v = run(f, "127.0.0.1", MSG).await;
        assert_eq!(v.facts, AuthFacts::default(), "signing gives no facts");
        assert!(v.auth_results.is_empty());
        let [
            Modification::Insert {
                index: 0,
                name,
                value,
            },
        ] = v.modifications.as_slice()
        else {
            panic!("{v:?}");
        };
        assert_eq!(name, "DKIM-Signature");
        let mut out = format!("DKIM-Signature: {}\r\n", value.replace('\n', "\r\n")).into_bytes();
        out.extend_from_slice(MSG);
        out
    }

    #[tokio::test]
    async fn verdicts_carry_clauses_facts_and_the_drop_in_text() {
        let k = keys();
        let f = filter(&k, "");
        let msg = signed(&f).await;
        let v = run(&f, "192.0.2.1", &msg).await;
        assert_eq!(v.action, Action::Accept);
        assert_eq!(
            v.facts.dkim,
            Some(vec![DkimInput {
                domain: "example.com".into(),
                selector: "sel".into(),
                status: DkimStatus::Pass,
            }])
        );
        let [c] = v.auth_results.as_slice() else {
            panic!("{v:?}");
        };
        assert_eq!((c.method.as_str(), c.result.as_str()), ("dkim", "pass"));
        assert_eq!(c.comment.as_deref(), Some("2048-bit key"));
        let props: Vec<&str> = c.properties.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            props,
            ["header.d", "header.i", "header.a", "header.s", "header.b"]
        );
        assert_eq!(c.properties[0].1, "example.com");
        assert_eq!(c.properties[3].1, "sel");
        assert_eq!(c.properties[4].1.len(), 8, "OpenDKIM's shortest b= prefix");
        let [Modification::AuthResults(ar)] = v.modifications.as_slice() else {
            panic!("{v:?}");
        };
        assert!(
            ar.starts_with("mx.test;\n\tdkim=pass (2048-bit key) header.d=example.com "),
            "{ar}"
        );
        assert!(
            ar.ends_with(&format!("header.b={}", c.properties[4].1)),
            "{ar}"
        );

        // Tampered: fail with its reason, in the clause and the facts.
        let bad = String::from_utf8_lossy(&msg).replace("Hello", "Tampered");
        let v = run(&f, "192.0.2.1", bad.as_bytes()).await;
        assert_eq!(v.auth_results[0].result, "fail");
        assert_eq!(
            v.auth_results[0].reason.as_deref(),
            Some("body hash did not verify")
        );
        assert_eq!(v.facts.dkim.unwrap()[0].status, DkimStatus::Fail);

        // Unsigned: verified, no signature; no field without AlwaysAddARHeader.
        let v = run(&f, "192.0.2.1", MSG).await;
        assert_eq!(v.facts.dkim, Some(vec![]));
        assert_eq!(v.auth_results, [MethodResult::new("dkim", "none")]);
        assert!(v.modifications.is_empty(), "{v:?}");

        // Exempt: nothing done, no facts.
        let v = run(
            &filter(&k, "ExemptDomains example.com\n"),
            "192.0.2.1",
            &msg,
        )
        .await;
        assert_eq!(v, Verdict::accept());
    }

    #[tokio::test]
    async fn on_actions_become_verdict_actions() {
        let k = keys();
        let f = filter(&k, "On-BadSignature quarantine\nOn-NoSignature discard\n");
        let msg = signed(&f).await;
        let bad = String::from_utf8_lossy(&msg).replace("Hello", "Tampered");
        let v = run(&f, "192.0.2.1", bad.as_bytes()).await;
        assert_eq!(
            v.action,
            Action::Quarantine {
                reason: "bad DKIM signature data".into(),
                fallback: Fallback::Accept,
            }
        );
        assert!(matches!(
            v.modifications.as_slice(),
            [Modification::AuthResults(_)]
        ));
        assert_eq!(run(&f, "192.0.2.1", MSG).await.action, Action::Discard);
        let f = filter(&k, "On-NoSignature tempfail\n");
        assert_eq!(
            run(&f, "192.0.2.1", MSG).await.action,
            Action::Tempfail(Some("451 4.7.0 DKIM signature processing failed".into()))
        );
    }

    #[tokio::test]
    async fn peer_list_clients_are_skipped_at_connect_and_at_mail() {
        let k = keys();
        let f = filter(&k, "PeerList 198.51.100.0/24\n");
        let c = conn("198.51.100.7");
        assert_eq!(f.connect(&c), Flow::Skip);
        // In a Chain, connect is advisory: mail must skip too.
        let start = f.mail(&c, &Envelope::new("<a@example.com>")).await;
        assert!(matches!(start, Start::Skip), "{start:?}");
    }

    #[test]
    fn a_key_that_does_not_load_is_a_typed_error() {
        let cfg = DkimConfig::parse(
            std::path::Path::new("t.conf"),
            "Domain example.com\nSelector sel\nKeyFile /nonexistent/sel.private\n",
        )
        .unwrap();
        let err = DkimFilter::new(cfg, Arc::new(MemoryResolver::new())).unwrap_err();
        let DkimError::Key(KeyError::Io { path, source }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, std::path::Path::new("/nonexistent/sel.private"));
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("/nonexistent/sel.private"),
            "{err}"
        );
    }

    #[test]
    fn from_addresses() {
        assert_eq!(
            from_address(" \"A, B\" <a@example.com>").as_deref(),
            Some("a@example.com")
        );
        assert_eq!(
            from_address(" a@example.com").as_deref(),
            Some("a@example.com")
        );
        assert_eq!(from_address(" undisclosed"), None);
        assert_eq!(from_address(" <a@>"), None);
        assert_eq!(from_address(" @example.com"), None);
    }

    #[test]
    fn syntax_errors_are_what_opendkim_refuses_at_end_of_headers() {
        assert!(syntax_error(b" v=1; a=rsa-sha256; garbage"));
        assert!(syntax_error(
            b" v=1; a=rsa-sha256; d=example.com; h=from; bh=xx; b=yy"
        ));
        // Duplicate tags and bad algorithms are permerror results at end of message.
        assert!(!syntax_error(
            b" v=1; a=foo; d=example.com; d=example.com; s=s; h=from; b=yy;"
        ));
        assert!(!syntax_error(b" v=1; a=rsa-sha256; d=x; s=s; h=from; b="));
    }
}
