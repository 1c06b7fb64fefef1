//! Antivirus filtering with clamd, as a drop-in for clamav-milter.
//!
//! [`MessageScan`] streams a message to clamd while it arrives: the mbox `From ` line
//! clamav-milter sends, each header, the blank line, then the body as received, gathered into
//! INSTREAM chunks of [`SCAN_CHUNK`] bytes (fewer writes for us and fewer reads for clamd), so
//! memory stays bounded by that chunk size whatever the message size. Only the first `MaxFileSize` bytes are scanned
//! (clamav-milter truncates the same way). [`decide`] maps the outcome to the configured
//! action, SMTP reply and `X-Virus-*` header fields. [`AvFilter`] is the whole filter in the
//! common shape ([`crate::filter::Filter`]): the `av-milter` example binary serves it through
//! [`crate::filter::Milter`], `mailstackd` in a [`crate::filter::Chain`]. [`AvConfig`] reads
//! `clamav-milter.conf`.
//!
//! # Actions
//!
//! | `OnClean`/`OnInfected`/`OnFail` | [`crate::filter::Action`] |
//! |---|---|
//! | `Accept` | `Accept` |
//! | `Reject` | `Reject` (with `RejectMsg`, `%v` = the virus name, printable ASCII only) |
//! | `Defer` | `Tempfail(None)` |
//! | `Blackhole` | `Discard` |
//! | `Quarantine` | `Quarantine` with [`crate::filter::Fallback::Tempfail`]: when the MTA did not grant quarantine the message is deferred, never delivered |
//!
//! `AddHeader` fields (`X-Virus-Scanned`, `X-Virus-Status`) are written only for a scan that
//! was done: clamd down, a timeout or an error never yields `X-Virus-Status: Clean`.
//! `MaxFileSize 0` means no limit. `VirusAction` and notifications run in the background,
//! at most [`MAX_BACKGROUND`] at once (the others are logged and dropped), within
//! [`VIRUS_ACTION_TIMEOUT`] and [`NOTIFY_TIMEOUT`]. `LocalNet local` matches only local
//! submissions: an Inet client address the MTA sent but that does not parse is scanned.

mod config;
mod filter;

use std::time::Duration;

use std::path::PathBuf;

use crate::clamd::{ClamdAddr, ClamdError, Client, Instream, Phase, ScanReply, Socket, Timeouts};
use crate::filter::OnAction;
pub use config::{AddHeader, AvConfig, LocalNet, LogLevel, SkipAuth, Transfer};
pub use filter::{
    AvFilter, AvMessage, MAX_BACKGROUND, NOTIFY_TIMEOUT, PRODUCT, QUARANTINE_REASON,
    VIRUS_ACTION_TIMEOUT,
};

/// What scanning found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// clamd found nothing (or the message was empty and not scanned).
    Clean,
    /// clamd found the named signature.
    Infected(String),
    /// No verdict: clamd unreachable, timed out, answered an error or garbage.
    Failed(String),
}

/// How many bytes [`MessageScan`] gathers before it writes one INSTREAM chunk to clamd:
/// header fields and small body chunks go out together instead of one chunk (and one write
/// and one read in clamd) each. This is also the most a scan holds in memory.
pub const SCAN_CHUNK: usize = 64 * 1024;

/// What clamav-milter sends clamd before the message, so clamd sees an mbox.
const MBOX_LINE: &[u8] = b"From clamav-milter\n";

/// A message being streamed to clamd.
#[derive(Debug)]
pub struct MessageScan {
    clients: Vec<Client>,
    stream: Option<Instream<Socket>>,
    failed: Option<String>,
    /// Bytes accepted for scanning (at most `limit`).
    sent: u64,
    limit: u64,
    started: bool,
    /// Accepted bytes not yet written to clamd (less than [`SCAN_CHUNK`] between calls).
    pending: Vec<u8>,
    /// `ClamdTransfer Fildes`: the directory of the spool file, and the file once opened.
    spool: Option<(PathBuf, Option<std::fs::File>)>,
}

impl MessageScan {
    /// A scan for the clamd sockets of `cfg`; nothing is connected until the first byte.
    pub fn new(cfg: &AvConfig) -> Self {
        let timeouts = Timeouts {
            connect: Duration::from_secs(30),
            write: cfg.read_timeout,
            read: cfg.read_timeout,
        };
        let clients = cfg
            .clamd_sockets
            .iter()
            .map(|a| Client::new(a.clone()).timeouts(timeouts))
            .collect();
        Self {
            clients,
            stream: None,
            failed: None,
            sent: 0,
            // `MaxFileSize 0` is clamd's and clamav-milter's "no limit": scan everything.
            limit: match cfg.max_file_size {
                0 => u64::MAX,
                n => n,
            },
            started: false,
            pending: Vec::new(),
            spool: (cfg.clamd_transfer == Transfer::Fildes)
                .then(|| (cfg.temporary_directory.clone(), None)),
        }
    }

    /// Connects to the first clamd socket that answers (each is tried in turn) and opens an
    /// INSTREAM.
    async fn open(&mut self) {
        self.started = true;
        let mut errors = Vec::new();
        for c in &self.clients {
            match c.instream().await {
                Ok(s) => {
                    self.stream = Some(s);
                    return;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        self.failed = Some(errors.join("; "));
    }

    /// Accepts `data` (up to `MaxFileSize` in all) and writes a chunk to clamd whenever
    /// [`SCAN_CHUNK`] bytes are waiting.
    async fn send(&mut self, data: &[u8]) {
        if self.failed.is_some() || self.sent >= self.limit {
            return;
        }
        let room = usize::try_from(self.limit - self.sent).unwrap_or(usize::MAX);
        let mut data = &data[..data.len().min(room)];
        if self.sent == 0 && !data.is_empty() {
            // The mbox separator clamav-milter sends first (not counted against MaxFileSize).
            self.pending.extend_from_slice(MBOX_LINE);
        }
        self.sent += data.len() as u64;
        while !data.is_empty() && self.failed.is_none() {
            let take = data.len().min(SCAN_CHUNK - self.pending.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() >= SCAN_CHUNK {
                self.flush().await;
            }
        }
    }

    /// Writes what is waiting as one INSTREAM chunk, connecting first if needed (or, with
    /// FILDES, appends it to the spool file).
    async fn flush(&mut self) {
        if let Some((dir, file)) = self.spool.as_mut() {
            self.started = true;
            if self.failed.is_none()
                && let Err(e) = spool_write(dir, file, &self.pending)
            {
                self.failed = Some(format!("spool file in {}: {e}", dir.display()));
            }
            self.pending.clear();
            return;
        }
        if !self.started {
            self.open().await;
        }
        if self.failed.is_some() || self.pending.is_empty() {
            self.pending.clear();
            return;
        }
        if let Some(s) = self.stream.as_mut()
            && let Err(e) = s.feed(&self.pending).await
        {
            self.failed = Some(e.to_string());
            self.stream = None;
        }
        self.pending.clear();
    }

    /// Streams one header field as `Name: value\r\n`.
    pub async fn header(&mut self, name: &str, value: &str) {
        let mut line = Vec::with_capacity(name.len() + value.len() + 4);
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b": ");
        line.extend_from_slice(value.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.send(&line).await;
    }

    /// Streams the blank line ending the header block.
    pub async fn end_of_headers(&mut self) {
        self.send(b"\r\n").await;
    }

    /// Streams one body chunk.
    pub async fn body(&mut self, chunk: &[u8]) {
        if !chunk.is_empty() {
            self.send(chunk).await;
        }
    }

    /// Bytes streamed so far (the mbox line excluded).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Ends the stream and returns the outcome. An empty message is not scanned (Clean).
    pub async fn finish(mut self) -> ScanOutcome {
        if !self.pending.is_empty() {
            self.flush().await;
        }
        if let Some(f) = self.failed {
            return ScanOutcome::Failed(f);
        }
        if let Some((_, file)) = self.spool {
            return match file {
                Some(file) => scan_spool(&self.clients, &file).await,
                None => ScanOutcome::Clean,
            };
        }
        let Some(s) = self.stream else {
            return ScanOutcome::Clean;
        };
        match s.finish().await {
            Ok(ScanReply::Clean) => ScanOutcome::Clean,
            Ok(ScanReply::Infected(names)) => {
                ScanOutcome::Infected(names.into_iter().next().unwrap_or_default())
            }
            Ok(ScanReply::Error(e)) => ScanOutcome::Failed(e.to_string()),
            Err(e) => ScanOutcome::Failed(e.to_string()),
        }
    }
}

/// Appends `data` to the spool file, creating it (unlinked, in `dir`) first. The writes
/// are blocking: they go to the page cache, at most [`SCAN_CHUNK`] bytes each, which is
/// cheaper than a trip through tokio's blocking pool per chunk.
fn spool_write(
    dir: &std::path::Path,
    file: &mut Option<std::fs::File>,
    data: &[u8],
) -> std::io::Result<()> {
    use std::io::Write as _;
    let f = match file {
        Some(f) => f,
        None => file.insert(tempfile::tempfile_in(dir)?),
    };
    f.write_all(data)
}

/// Scans the spool file with the first clamd that answers: FILDES on a unix socket, the
/// file streamed with INSTREAM on TCP.
async fn scan_spool(clients: &[Client], file: &std::fs::File) -> ScanOutcome {
    let mut errors = Vec::new();
    for c in clients {
        let r = match c.addr() {
            ClamdAddr::Unix(_) => c.scan_file(file).await,
            ClamdAddr::Tcp(_) => instream_file(c, file).await,
        };
        match r {
            Err(e @ (ClamdError::Connect { .. } | ClamdError::Timeout(Phase::Connect, _))) => {
                errors.push(e.to_string());
            }
            r => return outcome_of(r),
        }
    }
    ScanOutcome::Failed(errors.join("; "))
}

/// Streams the spool file to a clamd on TCP.
async fn instream_file(c: &Client, file: &std::fs::File) -> Result<ScanReply, ClamdError> {
    use std::os::unix::fs::FileExt as _;
    let mut s = c.instream().await?;
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        s.feed(buf.get(..n).unwrap_or_default()).await?;
        offset += n as u64;
    }
    s.finish().await
}

/// Maps errors from [`ClamdError`] for callers that scan without streaming.
pub fn outcome_of(r: Result<ScanReply, ClamdError>) -> ScanOutcome {
    match r {
        Ok(ScanReply::Clean) => ScanOutcome::Clean,
        Ok(ScanReply::Infected(n)) => {
            ScanOutcome::Infected(n.into_iter().next().unwrap_or_default())
        }
        Ok(ScanReply::Error(e)) => ScanOutcome::Failed(e.to_string()),
        Err(e) => ScanOutcome::Failed(e.to_string()),
    }
}

/// What the AV does with a scanned message (the result of [`decide`]): its action, reply and
/// header fields. (Not a milter reply: the filter maps it to one.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Treatment {
    /// What to do.
    pub action: OnAction,
    /// A custom SMTP reply (`550 5.7.1 ...`) for Reject, from `RejectMsg`.
    pub reply: Option<String>,
    /// Header fields to write (name, value), per `AddHeader`.
    pub headers: Vec<(String, String)>,
}

/// The most bytes of an `X-Virus-Status` value: clamav-milter's buffer is 255 bytes, and
/// we keep the field bounded the same way.
pub const MAX_STATUS_LEN: usize = 255;

/// A virus name as clamd reported it, made safe for a header field, an SMTP reply, a log
/// line or a program argument: control characters (CR, LF, TAB, NUL, ...) become spaces.
pub fn sanitize_virus_name(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The `X-Virus-Status` value for an outcome (`None` when the scan failed: a message that
/// was not scanned never gets `Clean`). The virus name is sanitized
/// ([`sanitize_virus_name`]) and the value cut to [`MAX_STATUS_LEN`] bytes at a character
/// boundary.
pub fn status_value(o: &ScanOutcome) -> Option<String> {
    match o {
        ScanOutcome::Clean => Some("Clean".into()),
        ScanOutcome::Infected(v) => {
            let mut s = format!("Infected ({})", sanitize_virus_name(v));
            let mut end = s.len().min(MAX_STATUS_LEN);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            Some(s)
        }
        ScanOutcome::Failed(_) => None,
    }
}

/// The `X-Virus-Scanned` value: `<product> at <hostname>`.
pub fn scanned_value(product: &str, hostname: Option<&str>) -> String {
    match hostname {
        Some(h) if !h.is_empty() => format!("{product} at {h}"),
        _ => product.to_owned(),
    }
}

/// Decides what to do with a scanned message. `hostname` is `ReportHostname` or the host
/// name; `product` names the scanner in `X-Virus-Scanned`.
pub fn decide(
    cfg: &AvConfig,
    outcome: &ScanOutcome,
    product: &str,
    hostname: Option<&str>,
) -> Treatment {
    let action = match outcome {
        ScanOutcome::Clean => cfg.on_clean,
        ScanOutcome::Infected(_) => cfg.on_infected,
        ScanOutcome::Failed(_) => cfg.on_fail,
    };
    let reply = match (action, outcome, &cfg.reject_msg) {
        (OnAction::Reject, ScanOutcome::Infected(v), Some(msg)) => {
            let v: String = v.chars().filter(|c| c.is_ascii_graphic()).collect();
            Some(format!("550 5.7.1 {}", msg.replacen("%v", &v, 1)))
        }
        _ => None,
    };
    let mut headers = Vec::new();
    if cfg.add_header != AddHeader::No
        && let Some(status) = status_value(outcome)
    {
        let host = cfg.report_hostname.as_deref().or(hostname);
        headers.push(("X-Virus-Scanned".to_owned(), scanned_value(product, host)));
        headers.push(("X-Virus-Status".to_owned(), status));
    }
    Treatment {
        action,
        reply,
        headers,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> AvConfig {
        AvConfig::parse(Path::new("t.conf"), &format!("ClamdSocket /x\n{extra}")).unwrap()
    }

    #[test]
    fn defaults_quarantine_infected_and_defer_failures() {
        let c = cfg("");
        assert_eq!(
            decide(&c, &ScanOutcome::Clean, "p", None).action,
            OnAction::Accept
        );
        let d = decide(&c, &ScanOutcome::Infected("Eicar".into()), "p", None);
        assert_eq!(d.action, OnAction::Quarantine);
        assert!(d.headers.is_empty() && d.reply.is_none());
        assert_eq!(
            decide(&c, &ScanOutcome::Failed("x".into()), "p", None).action,
            OnAction::Tempfail
        );
    }

    #[test]
    fn reject_message_and_headers() {
        let c = cfg("OnInfected Reject\nRejectMsg Virus %v found\nAddHeader Replace\n");
        let d = decide(
            &c,
            &ScanOutcome::Infected("Eicar-Test".into()),
            "av 1",
            Some("mx"),
        );
        assert_eq!(d.action, OnAction::Reject);
        assert_eq!(d.reply.as_deref(), Some("550 5.7.1 Virus Eicar-Test found"));
        assert_eq!(
            d.headers,
            [
                ("X-Virus-Scanned".to_owned(), "av 1 at mx".to_owned()),
                (
                    "X-Virus-Status".to_owned(),
                    "Infected (Eicar-Test)".to_owned()
                )
            ]
        );
        let d = decide(&c, &ScanOutcome::Clean, "av 1", None);
        assert_eq!(d.headers[0].1, "av 1");
        assert_eq!(d.headers[1].1, "Clean");
        let c = cfg("AddHeader Yes\nReportHostname relay\n");
        assert_eq!(
            decide(&c, &ScanOutcome::Clean, "av", Some("mx")).headers[0].1,
            "av at relay"
        );
        assert!(
            decide(&c, &ScanOutcome::Failed("e".into()), "av", None)
                .headers
                .is_empty()
        );
    }

    #[test]
    fn a_long_multibyte_virus_name_is_cut_at_a_char_boundary() {
        // "Infected (" is 10 bytes: byte 255 falls inside the 123rd 'é'.
        let name = "é".repeat(200);
        let s = status_value(&ScanOutcome::Infected(name)).unwrap();
        assert!(
            s.len() <= MAX_STATUS_LEN && s.len() >= MAX_STATUS_LEN - 3,
            "{}",
            s.len()
        );
        assert!(s.starts_with("Infected (éé"));
    }

    #[test]
    fn control_characters_never_reach_the_status_or_the_reply() {
        let evil = "Eicar\r\nX-Injected: yes\0\t".to_owned();
        let s = status_value(&ScanOutcome::Infected(evil.clone())).unwrap();
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert_eq!(s, "Infected (Eicar  X-Injected: yes  )");
        let c = cfg("OnInfected Reject\nRejectMsg Virus %v found\n");
        let d = decide(&c, &ScanOutcome::Infected(evil), "p", None);
        let reply = d.reply.unwrap();
        assert!(!reply.chars().any(char::is_control), "{reply:?}");
        assert!(
            !d.headers
                .iter()
                .any(|(_, v)| v.chars().any(char::is_control))
        );
    }

    #[test]
    fn a_failed_scan_never_gets_clean() {
        let c = cfg("AddHeader Replace\nOnFail Accept\n");
        assert_eq!(status_value(&ScanOutcome::Failed("down".into())), None);
        let d = decide(&c, &ScanOutcome::Failed("down".into()), "p", Some("mx"));
        assert_eq!(d.action, OnAction::Accept);
        assert!(d.headers.is_empty(), "{:?}", d.headers);
    }

    /// A clamd stand-in on a unix socket: answers each INSTREAM with `reply` once the
    /// zero-length chunk arrived, and counts the bytes streamed to it.
    pub(crate) fn fake_clamd(
        reply: &'static [u8],
    ) -> (
        tempfile::TempDir,
        String,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let got = std::sync::Arc::new(AtomicU64::new(0));
        let counter = got.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    loop {
                        if s.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        if b[0] == 0 || b[0] == b'\n' {
                            break;
                        }
                    }
                    loop {
                        let Ok(n) = s.read_u32().await else { return };
                        if n == 0 {
                            break;
                        }
                        let mut data = vec![0u8; n as usize];
                        if s.read_exact(&mut data).await.is_err() {
                            return;
                        }
                        counter.fetch_add(u64::from(n), Ordering::Relaxed);
                    }
                    let _ = s.write_all(reply).await;
                });
            }
        });
        (dir, format!("unix:{}", path.display()), got)
    }

    #[tokio::test]
    async fn max_file_size_zero_means_no_limit() {
        use std::sync::atomic::Ordering;
        let (_dir, sock, got) = fake_clamd(b"stream: Eicar-Test-Signature FOUND\0");
        let c = AvConfig::parse(
            Path::new("t.conf"),
            &format!("ClamdSocket {sock}\nMaxFileSize 0\n"),
        )
        .unwrap();
        let mut scan = MessageScan::new(&c);
        scan.header("Subject", "x").await;
        scan.end_of_headers().await;
        scan.body(b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR\r\n").await;
        assert_eq!(
            scan.finish().await,
            ScanOutcome::Infected("Eicar-Test-Signature".into())
        );
        assert!(got.load(Ordering::Relaxed) > 40, "nothing reached clamd");
    }
}
