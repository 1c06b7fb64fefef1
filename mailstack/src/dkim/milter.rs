//! The DKIM milter: a [`milter_proto::server::Handler`] that signs mail from internal hosts
//! (or authenticated clients) for our domains and verifies everything else, as OpenDKIM does.
//!
//! Per message it keeps the header block (bounded by `MaximumHeaders`) and streams the body
//! through the hashers, so memory does not grow with the body. Added fields are prepended
//! (`SMFIR_INSHEADER` at index 0, as OpenDKIM) and folded with `\n\t`; with
//! `SMFIP_HDR_LEADSPC` negotiated (Postfix offers it) values carry their own leading space and
//! the headers we receive are exact, which `simple` header canonicalization needs.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use milter_proto::command::ConnAddr;
use milter_proto::flags::{Actions, Protocol};
use milter_proto::negotiate::Needs;
use milter_proto::server::{Context, Decision, Handler};

use super::canon::{BodyHasher, Header};
use super::config::{Action, DkimConfig};
use super::sign::{BodyHash, KeyChoice, KeySet, SignOptions, sign_one};
use super::verify::{
    DkimResult, FailureClass, MessageVerifier, SignatureResult, VerifyOptions,
    authentication_results,
};
use crate::dns::Resolver;

/// What every connection shares: configuration, keys, DNS.
#[derive(Clone)]
pub struct DkimFilter {
    inner: Arc<Shared>,
}

struct Shared {
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
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

impl DkimFilter {
    /// Loads the keys of `cfg` (`Err` names the key and what is wrong).
    pub fn new(cfg: DkimConfig, resolver: Arc<dyn Resolver>) -> Result<Self, String> {
        let keys = KeySet::from_config(&cfg)?;
        Ok(Self {
            inner: Arc::new(Shared {
                sign_opts: SignOptions::from_config(&cfg),
                verify_opts: VerifyOptions::from_config(&cfg),
                keys,
                resolver,
                hostname: local_hostname(),
                cfg,
            }),
        })
    }

    /// A handler for one MTA connection.
    pub fn handler(&self) -> DkimMilter {
        DkimMilter {
            shared: self.inner.clone(),
            ip: None,
            host: String::new(),
            skip_connection: false,
            msg: None,
        }
    }
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// The per-connection handler.
pub struct DkimMilter {
    shared: Arc<Shared>,
    ip: Option<IpAddr>,
    host: String,
    skip_connection: bool,
    msg: Option<Message>,
}

impl std::fmt::Debug for DkimMilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimMilter")
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Message {
    headers: Vec<Header>,
    header_bytes: usize,
    too_big: bool,
    authenticated: bool,
    rcpts: Vec<String>,
    mode: Mode,
}

#[derive(Default)]
enum Mode {
    #[default]
    Undecided,
    Sign(Vec<KeyChoice>, BodyHasher, bool),
    Verify(MessageVerifier),
    Nothing,
}

/// Pulls `local@domain` out of a From value (the last `<...>`, else the whole value).
pub fn from_address(value: &str) -> Option<String> {
    let v = value.trim();
    let addr = match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split_whitespace().next().unwrap_or(""),
    };
    let addr = addr.trim();
    addr.contains('@').then(|| addr.to_owned())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DkimMilter {
    fn cfg(&self) -> &DkimConfig {
        &self.shared.cfg
    }

    fn leadspc(ctx: &Context) -> bool {
        ctx.negotiated().protocol.contains(Protocol::HDR_LEADSPC)
    }

    fn authserv_id(&self, ctx: &Context) -> String {
        match self.cfg().authserv_id.as_deref() {
            Some("HOSTNAME") => self.shared.hostname.clone(),
            Some(id) => id.to_owned(),
            None => ctx
                .macro_value("j")
                .map(|j| String::from_utf8_lossy(j).into_owned())
                .filter(|j| !j.is_empty())
                .unwrap_or_else(|| self.shared.hostname.clone()),
        }
    }

    /// Chooses sign, verify or nothing once the headers are known.
    fn decide(&self, msg: &Message) -> Mode {
        let cfg = self.cfg();
        let froms: Vec<&Header> = msg
            .headers
            .iter()
            .filter(|h| h.name.trim().eq_ignore_ascii_case("from"))
            .collect();
        let from = match froms.as_slice() {
            [one] => from_address(&String::from_utf8_lossy(&one.value)),
            _ => None,
        };
        let domain = from
            .as_deref()
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d);
        if domain.is_some_and(|d| cfg.exempt_domains.contains(d)) {
            return Mode::Nothing;
        }
        let internal = msg.authenticated || cfg.internal_hosts.contains(self.ip, &self.host);
        if cfg.sign
            && !internal
            && let Some(from) = &from
            && !self.shared.keys.keys_for(from).is_empty()
            && !cfg.external_ignore.contains(self.ip, &self.host)
        {
            // OpenDKIM's log line; ExternalIgnoreList only silences it.
            tracing::info!(
                "external host {} [{}] tried to send mail as {from}; verifying, not signing",
                self.host,
                self.ip.map(|i| i.to_string()).unwrap_or_default()
            );
        }
        if cfg.sign
            && internal
            && let Some(from) = &from
        {
            let keys = self.shared.keys.keys_for(from);
            if !keys.is_empty() {
                let length = cfg.body_length_db.as_ref().is_some_and(|db| {
                    msg.rcpts
                        .iter()
                        .any(|r| db.contains(r.trim_matches(['<', '>'])))
                });
                let hasher = BodyHasher::new(
                    self.shared.sign_opts.canon.1,
                    &aws_lc_rs::digest::SHA256,
                    None,
                );
                return Mode::Sign(keys, hasher, length);
            }
        }
        if cfg.verify {
            return Mode::Verify(MessageVerifier::new(
                &msg.headers,
                self.shared.verify_opts.clone(),
            ));
        }
        Mode::Nothing
    }

    fn sign(&self, ctx: &mut Context, msg: Message) -> Decision {
        let Mode::Sign(keys, hasher, length) = msg.mode else {
            return Decision::Continue;
        };
        let (bh, len) = hasher.finish();
        let body = BodyHash {
            digest: &bh,
            len,
            length_tag: length,
        };
        let now = unix_now();
        let lead = if Self::leadspc(ctx) { " " } else { "" };
        let mut values = Vec::new();
        for KeyChoice {
            index,
            domain,
            identity,
        } in &keys
        {
            let key = self.shared.keys.key(*index);
            match sign_one(
                key,
                domain,
                identity.as_deref(),
                &self.shared.sign_opts,
                &msg.headers,
                &body,
                now,
            ) {
                Ok(v) => values.push(v),
                Err(e) => {
                    tracing::warn!("DKIM signing failed for d={domain}: {e}");
                    return self.act(
                        ctx,
                        self.cfg().actions.signature_error,
                        false,
                        "DKIM signing error",
                    );
                }
            }
        }
        if self.cfg().remove_old_signatures {
            let old = msg
                .headers
                .iter()
                .filter(|h| h.name.trim().eq_ignore_ascii_case("DKIM-Signature"))
                .count();
            for i in (1..=old).rev() {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                if let Err(e) = ctx.delete_header("DKIM-Signature", i) {
                    tracing::warn!("cannot remove an old DKIM-Signature: {e}");
                }
            }
        }
        self.software_header(ctx);
        // Insert in reverse so the first key's signature ends up on top.
        for v in values.iter().rev() {
            if let Err(e) = ctx.insert_header(0, "DKIM-Signature", &format!("{lead}{v}")) {
                tracing::warn!("cannot add DKIM-Signature: {e}");
                return self.act(
                    ctx,
                    self.cfg().actions.internal_error,
                    false,
                    "internal DKIM error",
                );
            }
        }
        Decision::Continue
    }

    async fn verify(&self, ctx: &mut Context, msg: Message) -> Decision {
        let Mode::Verify(v) = msg.mode else {
            return Decision::Continue;
        };
        let id = self.authserv_id(ctx);
        if !self.cfg().keep_auth_results {
            remove_forged(ctx, &msg.headers, &id);
        }
        let signed = v.has_signatures();
        let results = v
            .finish(&msg.headers, self.shared.resolver.as_ref(), unix_now())
            .await;
        let lead = if Self::leadspc(ctx) { " " } else { "" };
        self.software_header(ctx);
        if signed || self.cfg().always_add_ar {
            let ar = authentication_results(&id, &results);
            if let Err(e) = ctx.insert_header(0, "Authentication-Results", &format!("{lead}{ar}")) {
                tracing::warn!("cannot add Authentication-Results: {e}");
            }
        }
        let (action, dns) = self.verdict(&results);
        let text = match (action, dns) {
            (Action::Tempfail, true) => "DKIM key retrieval failed",
            (Action::Tempfail, false) => "DKIM signature processing failed",
            _ if results.is_empty() => "no DKIM signature data",
            _ => "bad DKIM signature data",
        };
        self.act(ctx, action, dns, text)
    }

    /// `SoftwareHeader yes`: `DKIM-Filter: mailstack dkim-milter <version> <host> <queue id>`.
    fn software_header(&self, ctx: &mut Context) {
        if !self.cfg().software_header {
            return;
        }
        let lead = if Self::leadspc(ctx) { " " } else { "" };
        let job = ctx
            .macro_value("i")
            .map(|i| String::from_utf8_lossy(i).into_owned())
            .unwrap_or_else(|| "NOQUEUE".into());
        let v = format!(
            "{lead}mailstack dkim-milter v{} {} {job}",
            env!("CARGO_PKG_VERSION"),
            self.shared.hostname
        );
        if let Err(e) = ctx.insert_header(0, "DKIM-Filter", &v) {
            tracing::warn!("cannot add DKIM-Filter: {e}");
        }
    }

    /// The `On-*` action for a set of results: any pass accepts; otherwise the first
    /// signature decides (a `t=y` key is never acted on).
    fn verdict(&self, results: &[SignatureResult]) -> (Action, bool) {
        let a = &self.cfg().actions;
        if results.is_empty() {
            return (a.no_signature, false);
        }
        if results.iter().any(|r| r.result == DkimResult::Pass) {
            return (Action::Accept, false);
        }
        let first = &results[0];
        if first.testing {
            return (Action::Accept, false);
        }
        match first.class {
            Some(FailureClass::KeyNotFound) => (a.key_not_found, true),
            Some(FailureClass::DnsError) => (a.dns_error, true),
            _ => (a.bad_signature, false),
        }
    }

    /// Turns an action into the milter decision with OpenDKIM's reply codes.
    fn act(&self, ctx: &mut Context, action: Action, dns: bool, text: &str) -> Decision {
        match action {
            Action::Accept => Decision::Continue,
            Action::Discard => Decision::Discard,
            Action::Quarantine => {
                if let Err(e) = ctx.quarantine(text) {
                    tracing::warn!("cannot quarantine: {e}");
                }
                Decision::Continue
            }
            Action::Reject => Decision::ReplyCode(Bytes::from(format!("550 5.7.0 {text}"))),
            Action::Tempfail => {
                let code = if dns { "451 4.7.5" } else { "451 4.7.0" };
                Decision::ReplyCode(Bytes::from(format!("{code} {text}")))
            }
        }
    }
}

/// Deletes `Authentication-Results` fields that claim our authserv-id and carry a `dkim`
/// result (OpenDKIM's rule), so a sender cannot forge our verdict.
fn remove_forged(ctx: &mut Context, headers: &[Header], id: &str) {
    let mut index = 0u32;
    let mut doomed = Vec::new();
    for h in headers {
        if !h.name.trim().eq_ignore_ascii_case("Authentication-Results") {
            continue;
        }
        index += 1;
        let v = String::from_utf8_lossy(&h.value);
        let their = v.split(';').next().unwrap_or("").trim();
        let their = their.split_whitespace().next().unwrap_or("");
        if their.eq_ignore_ascii_case(id) && v.to_ascii_lowercase().contains("dkim=") {
            doomed.push(index);
        }
    }
    // From the bottom up, so earlier indices stay valid.
    for i in doomed.into_iter().rev() {
        if let Err(e) = ctx.delete_header("Authentication-Results", i) {
            tracing::warn!("cannot remove forged Authentication-Results: {e}");
        }
    }
}

#[async_trait::async_trait]
impl Handler for DkimMilter {
    fn needs(&self) -> Needs {
        Needs {
            actions: Actions::ADDHDRS | Actions::CHGHDRS | Actions::QUARANTINE,
            protocol: Protocol::HDR_LEADSPC
                | Protocol::NOHELO
                | Protocol::NOUNKNOWN
                | Protocol::NODATA
                | Protocol::NR_HDR
                | Protocol::NR_BODY,
            macros: vec![
                (0, Bytes::from_static(b"j {daemon_name}")),
                (2, Bytes::from_static(b"i {auth_type}")),
            ],
            required_actions: Actions::ADDHDRS,
            ..Needs::default()
        }
    }

    async fn connect(&mut self, _ctx: &mut Context, hostname: &[u8], addr: &ConnAddr) -> Decision {
        self.host = String::from_utf8_lossy(hostname).into_owned();
        self.ip = match addr {
            ConnAddr::Inet { address, .. } | ConnAddr::Inet6 { address, .. } => {
                String::from_utf8_lossy(address).parse().ok()
            }
            _ => None,
        };
        self.skip_connection = self.cfg().peer_list.contains(self.ip, &self.host);
        if self.skip_connection {
            return Decision::Accept;
        }
        Decision::Continue
    }

    async fn mail(&mut self, ctx: &mut Context, _sender: &[u8], _args: &[Bytes]) -> Decision {
        let authenticated = ctx
            .macro_value("{auth_type}")
            .is_some_and(|v| !v.is_empty());
        self.msg = Some(Message {
            authenticated,
            ..Message::default()
        });
        Decision::Continue
    }

    async fn rcpt(&mut self, _ctx: &mut Context, rcpt: &[u8], _args: &[Bytes]) -> Decision {
        let want = self.shared.cfg.body_length_db.is_some();
        if want && let Some(m) = &mut self.msg {
            m.rcpts.push(String::from_utf8_lossy(rcpt).into_owned());
        }
        Decision::Continue
    }

    async fn header(&mut self, ctx: &mut Context, name: &[u8], value: &[u8]) -> Decision {
        let lead = Self::leadspc(ctx);
        let max = self.cfg().max_headers;
        if let Some(m) = &mut self.msg {
            m.header_bytes += name.len() + value.len() + 3;
            if m.header_bytes > max {
                m.too_big = true;
                m.headers.clear();
            } else if !m.too_big {
                m.headers.push(Header::from_milter(name, value, lead));
            }
        }
        Decision::Continue
    }

    async fn eoh(&mut self, _ctx: &mut Context) -> Decision {
        if let Some(mut m) = self.msg.take() {
            m.mode = if m.too_big {
                Mode::Nothing
            } else {
                self.decide(&m)
            };
            self.msg = Some(m);
        }
        Decision::Continue
    }

    async fn body(&mut self, _ctx: &mut Context, chunk: &Bytes) -> Decision {
        match self.msg.as_mut().map(|m| &mut m.mode) {
            Some(Mode::Sign(_, h, _)) => h.update(chunk),
            Some(Mode::Verify(v)) => v.body(chunk),
            _ => {}
        }
        Decision::Continue
    }

    async fn eom(&mut self, ctx: &mut Context) -> Decision {
        let Some(msg) = self.msg.take() else {
            return Decision::Continue;
        };
        if msg.too_big {
            tracing::warn!(
                "header block larger than MaximumHeaders ({} bytes)",
                self.cfg().max_headers
            );
            return self.act(
                ctx,
                self.cfg().actions.security,
                false,
                "resource unavailable",
            );
        }
        match msg.mode {
            Mode::Sign(..) => self.sign(ctx, msg),
            Mode::Verify(_) => self.verify(ctx, msg).await,
            Mode::Undecided | Mode::Nothing => Decision::Continue,
        }
    }

    async fn abort(&mut self, _ctx: &mut Context) {
        self.msg = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
