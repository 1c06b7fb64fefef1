//! Notification mail for infected messages, sent with our own SMTP client (lettre over
//! rustls) instead of a `VirusAction` script calling msmtp.
//!
//! [`MsmtpConfig`] reads an msmtp-style file (`defaults` / first `account` section; keys
//! `host`, `port`, `from`, `auth`, `user`, `password`, `tls`, `tls_starttls`,
//! `tls_trust_file`, `timeout`) and refuses a file that group or others can read, as msmtp
//! does for files holding a password. [`Notifier::send`] returns at once: delivery runs in a
//! background task with a bounded number of attempts, so a verdict never waits for it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{ConfigError, ConfigFile, Syntax};

/// SMTP settings from an msmtp-style file.
#[derive(Clone, PartialEq, Eq)]
pub struct MsmtpConfig {
    /// `host` (mandatory).
    pub host: String,
    /// `port` (default 25, or 465 with `tls on` and `tls_starttls off`).
    pub port: u16,
    /// `from` (mandatory): the envelope and header sender.
    pub from: String,
    /// `auth` (`on`/`off`, or a mechanism name meaning on).
    pub auth: bool,
    /// `user`.
    pub user: Option<String>,
    /// `password`.
    pub password: Option<String>,
    /// `tls` (default off).
    pub tls: bool,
    /// `tls_starttls` (default on): STARTTLS when `tls on`, else TLS from the first byte.
    pub tls_starttls: bool,
    /// `tls_trust_file`: PEM CA certificates to trust in addition to the system ones.
    pub tls_trust_file: Option<PathBuf>,
    /// `timeout` in seconds (default 30).
    pub timeout: Duration,
}

impl std::fmt::Debug for MsmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("from", &self.from)
            .field("auth", &self.auth)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls)
            .field("tls_starttls", &self.tls_starttls)
            .finish_non_exhaustive()
    }
}

/// Ignored msmtp keys (logging and options that do not apply here).
const IGNORED: &[&str] = &[
    "logfile",
    "syslog",
    "domain",
    "tls_min_dh_prime_bits",
    "aliases",
];

impl MsmtpConfig {
    /// Reads `path`, refusing it when its mode lets group or others read or write it.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::at(
                path,
                0,
                format_args!("mode {mode:03o} lets others read the SMTP password; chmod 600 it"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as if read from `path` (no permission check).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let f = ConfigFile::parse(path, text, Syntax::Whitespace)?;
        let mut host = None;
        let mut port = None;
        let mut from = None;
        let mut c = Self {
            host: String::new(),
            port: 25,
            from: String::new(),
            auth: false,
            user: None,
            password: None,
            tls: false,
            tls_starttls: true,
            tls_trust_file: None,
            timeout: Duration::from_secs(30),
        };
        let mut accounts = 0;
        let mut auth_line = 0;
        for e in &f.entries {
            let on_off = || match e.value.as_str() {
                "on" | "" => Ok(true),
                "off" => Ok(false),
                _ => Err(f.error(
                    e,
                    format_args!("{}: expected on or off, found {:?}", e.key, e.value),
                )),
            };
            match e.key.as_str() {
                "defaults" => {}
                "account" => {
                    accounts += 1;
                    if accounts > 1 {
                        break; // only the first account is used
                    }
                }
                "host" => host = Some(e.value.clone()),
                "port" => port = Some(f.number::<u16>(e)?),
                "from" => from = Some(e.value.clone()),
                "auth" => {
                    auth_line = e.line;
                    c.auth = match e.value.as_str() {
                        "off" => false,
                        "on" | "" | "plain" | "login" => true,
                        _ => {
                            return Err(f.error(e, format_args!("auth: unsupported {:?}", e.value)));
                        }
                    }
                }
                "user" => c.user = Some(e.value.clone()),
                "password" => c.password = Some(e.value.clone()),
                "tls" => c.tls = on_off()?,
                "tls_starttls" => c.tls_starttls = on_off()?,
                "tls_trust_file" => c.tls_trust_file = Some(e.value.clone().into()),
                "timeout" => c.timeout = Duration::from_secs(f.number(e)?),
                k if IGNORED.contains(&k) => {}
                _ => return Err(f.unknown(e)),
            }
        }
        c.host = host.ok_or_else(|| ConfigError::at(path, 0, "host is mandatory"))?;
        c.from = from.ok_or_else(|| ConfigError::at(path, 0, "from is mandatory"))?;
        c.port = port.unwrap_or(if c.tls && !c.tls_starttls { 465 } else { 25 });
        if c.auth && (c.user.is_none() || c.password.is_none()) {
            return Err(ConfigError::at(path, 0, "auth on needs user and password"));
        }
        if c.auth && !c.tls {
            // msmtp itself refuses this unless told otherwise; lettre would send the
            // password in clear text (AUTH PLAIN/LOGIN is only base64) over plain SMTP.
            return Err(ConfigError::at(
                path,
                auth_line,
                "auth on with tls off would send the SMTP password in clear text; \
                 set tls on (with tls_starttls on for port 25/587)",
            ));
        }
        Ok(c)
    }
}

/// Errors building the SMTP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// TLS settings or the trust file are unusable.
    #[error("notification TLS setup: {0}")]
    Tls(String),
    /// An address or the message could not be built.
    #[error("notification message: {0}")]
    Message(String),
    /// Every attempt to deliver failed.
    #[error("notification not sent after {attempts} attempts: {last}")]
    Failed {
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

/// Why [`Notifier::send_raw`] did not deliver a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendRawError {
    /// The recipient address is unusable.
    #[error("recipient: {0}")]
    Address(String),
    /// The server refused the message permanently (5xx): retrying will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// Every attempt failed with a transient error.
    #[error("not sent after {attempts} attempts: {last}")]
    Failed {
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

/// Sends notification mail in the background.
#[derive(Clone)]
pub struct Notifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier for `cfg`, with 3 attempts 5 s apart.
    pub fn new(cfg: &MsmtpConfig) -> Result<Self, NotifyError> {
        let tls = if cfg.tls {
            let mut b = TlsParameters::builder(cfg.host.clone());
            if let Some(p) = &cfg.tls_trust_file {
                let pem = std::fs::read(p)
                    .map_err(|e| NotifyError::Tls(format!("{}: {e}", p.display())))?;
                let cert =
                    Certificate::from_pem(&pem).map_err(|e| NotifyError::Tls(e.to_string()))?;
                b = b.add_root_certificate(cert);
            }
            let params = b.build().map_err(|e| NotifyError::Tls(e.to_string()))?;
            if cfg.tls_starttls {
                Tls::Required(params)
            } else {
                Tls::Wrapper(params)
            }
        } else {
            Tls::None
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
            .port(cfg.port)
            .tls(tls)
            .timeout(Some(cfg.timeout));
        if let (true, Some(u), Some(p)) = (cfg.auth, &cfg.user, &cfg.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        let from = cfg
            .from
            .parse()
            .map_err(|e| NotifyError::Message(format!("from: {e}")))?;
        Ok(Self {
            transport: b.build(),
            from,
            attempts: 3,
            backoff: Duration::from_secs(5),
        })
    }

    /// Sets the number of attempts (at least 1) and the pause between them.
    pub fn retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// Queues a plain-text notification to `to` and returns at once; the task's result
    /// says whether it was delivered.
    pub fn send(
        &self,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<tokio::task::JoinHandle<Result<(), NotifyError>>, NotifyError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| NotifyError::Message(format!("to: {e}")))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .body(body.to_owned())
            .map_err(|e| NotifyError::Message(e.to_string()))?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            let mut last = String::new();
            for attempt in 1..=this.attempts {
                match this.transport.send(msg.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        last = e.to_string();
                        tracing::warn!(attempt, error = %e, "notification not sent");
                    }
                }
                if attempt < this.attempts {
                    tokio::time::sleep(this.backoff).await;
                }
            }
            Err(NotifyError::Failed {
                attempts: this.attempts,
                last,
            })
        }))
    }
}

impl Notifier {
    /// Submits a complete message (header and body as they are, for instance already
    /// DKIM-signed) to `to`, from the configured `from`, and waits for the outcome: the
    /// configured attempts for transient errors, none more after a permanent refusal.
    pub async fn send_raw(&self, to: &str, message: &[u8]) -> Result<(), SendRawError> {
        let to: lettre::Address = to
            .parse()
            .map_err(|e: lettre::address::AddressError| SendRawError::Address(e.to_string()))?;
        let envelope = lettre::address::Envelope::new(Some(self.from.email.clone()), vec![to])
            .map_err(|e| SendRawError::Address(e.to_string()))?;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match self.transport.send_raw(&envelope, message).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_permanent() => return Err(SendRawError::Refused(e.to_string())),
                Err(e) => {
                    last = e.to_string();
                    tracing::warn!(attempt, error = %e, "message not sent");
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(self.backoff).await;
            }
        }
        Err(SendRawError::Failed {
            attempts: self.attempts,
            last,
        })
    }
}

/// The notification text for an infected message (virus, queue id, sender, recipient,
/// subject, Message-ID), the fields clamav-milter passes to `VirusAction`.
pub fn infected_text(fields: [&str; 6]) -> (String, String) {
    let [virus, qid, sender, rcpt, subject, msgid] = fields;
    (
        format!("Virus found: {virus}"),
        format!(
            "A message was stopped by the virus scanner.\n\nVirus: {virus}\nQueue id: {qid}\n\
             Sender: {sender}\nRecipient: {rcpt}\nSubject: {subject}\nMessage-ID: {msgid}\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msmtp_file() {
        let c = MsmtpConfig::parse(
            Path::new("/etc/msmtprc"),
            "defaults\ntls on\nlogfile /var/log/msmtp\naccount mail\nhost smtp.example\n\
             from av@example.org\nauth on\nuser av\npassword s3cret\naccount other\nhost x\n",
        )
        .unwrap();
        assert_eq!(c.host, "smtp.example");
        assert_eq!(c.port, 25);
        assert!(c.tls && c.tls_starttls && c.auth);
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = MsmtpConfig::parse(
            Path::new("r"),
            "host h\nfrom a@b.example\ntls on\ntls_starttls off\n",
        )
        .unwrap();
        assert_eq!(c.port, 465);
        for (text, want) in [
            ("from a@b\n", "host is mandatory"),
            ("host h\nfrom a@b\nbogus 1\n", "r:3: unknown option"),
            ("host h\nfrom a@b\ntls maybe\n", "r:3: tls"),
            ("host h\nfrom a@b\nauth on\n", "needs user and password"),
            (
                "host h\nfrom a@b\nauth on\nuser u\npassword p\n",
                "r:3: auth on with tls off",
            ),
            (
                "host h\nfrom a@b\ntls off\nauth plain\nuser u\npassword p\n",
                "r:4: auth on with tls off",
            ),
        ] {
            let e = MsmtpConfig::parse(Path::new("r"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("msmtprc");
        std::fs::write(&p, "host h\nfrom a@b.example\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = MsmtpConfig::read(&p).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(MsmtpConfig::read(&p).unwrap().host, "h");
    }

    #[tokio::test]
    async fn retries_are_bounded_and_send_returns_at_once() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let cfg = MsmtpConfig::parse(
            Path::new("r"),
            &format!("host 127.0.0.1\nport {port}\nfrom av@example.org\ntimeout 2\n"),
        )
        .unwrap();
        let n = Notifier::new(&cfg)
            .unwrap()
            .retries(3, Duration::from_millis(50));
        let t = std::time::Instant::now();
        let h = n.send("admin@example.org", "s", "b").unwrap();
        assert!(t.elapsed() < Duration::from_millis(50), "send blocked");
        match h.await.unwrap() {
            Err(NotifyError::Failed { attempts: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
