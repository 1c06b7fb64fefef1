//! Antivirus filtering with clamd, as a drop-in for clamav-milter.
//!
//! [`MessageScan`] streams a message to clamd while it arrives: the mbox `From ` line
//! clamav-milter sends, each header, the blank line, then the body as received, gathered into
//! INSTREAM chunks of [`SCAN_CHUNK`] bytes (fewer writes for us and fewer reads for clamd), so
//! memory stays bounded by that chunk size whatever the message size. Only the first `MaxFileSize` bytes are scanned
//! (clamav-milter truncates the same way). [`decide`] maps the outcome to the configured
//! action, SMTP reply and `X-Virus-*` header fields. [`milter`] is the whole filter as a
//! milter handler (the `av-milter` example binary serves it). [`config`] reads
//! `clamav-milter.conf`.

pub mod config;
pub mod milter;

use std::time::Duration;

use std::path::PathBuf;

use crate::clamd::{ClamdAddr, ClamdError, Client, Instream, Phase, Socket, Timeouts, Verdict};
pub use config::{Action, AddHeader, AvConfig, LogLevel, Transfer};

/// What scanning found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
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
            limit: cfg.max_file_size,
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
    pub async fn finish(mut self) -> Outcome {
        if !self.pending.is_empty() {
            self.flush().await;
        }
        if let Some(f) = self.failed {
            return Outcome::Failed(f);
        }
        if let Some((_, file)) = self.spool {
            return match file {
                Some(file) => scan_spool(&self.clients, &file).await,
                None => Outcome::Clean,
            };
        }
        let Some(s) = self.stream else {
            return Outcome::Clean;
        };
        match s.finish().await {
            Ok(Verdict::Clean) => Outcome::Clean,
            Ok(Verdict::Infected(names)) => {
                Outcome::Infected(names.into_iter().next().unwrap_or_default())
            }
            Ok(Verdict::Error(e)) => Outcome::Failed(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
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
async fn scan_spool(clients: &[Client], file: &std::fs::File) -> Outcome {
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
    Outcome::Failed(errors.join("; "))
}

/// Streams the spool file to a clamd on TCP.
async fn instream_file(c: &Client, file: &std::fs::File) -> Result<Verdict, ClamdError> {
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
pub fn outcome_of(r: Result<Verdict, ClamdError>) -> Outcome {
    match r {
        Ok(Verdict::Clean) => Outcome::Clean,
        Ok(Verdict::Infected(n)) => Outcome::Infected(n.into_iter().next().unwrap_or_default()),
        Ok(Verdict::Error(e)) => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The result of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// A custom SMTP reply (`550 5.7.1 ...`) for Reject, from `RejectMsg`.
    pub reply: Option<String>,
    /// Header fields to write (name, value), per `AddHeader`.
    pub headers: Vec<(String, String)>,
}

/// The `X-Virus-Status` value for an outcome (`None` when the scan failed).
pub fn status_value(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Clean => Some("Clean".into()),
        // clamav-milter's buffer is 255 bytes; keep the field bounded the same way.
        Outcome::Infected(v) => {
            let mut s = format!("Infected ({v})");
            s.truncate(255);
            Some(s)
        }
        Outcome::Failed(_) => None,
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
    outcome: &Outcome,
    product: &str,
    hostname: Option<&str>,
) -> Decision {
    let action = match outcome {
        Outcome::Clean => cfg.on_clean,
        Outcome::Infected(_) => cfg.on_infected,
        Outcome::Failed(_) => cfg.on_fail,
    };
    let reply = match (action, outcome, &cfg.reject_msg) {
        (Action::Reject, Outcome::Infected(v), Some(msg)) => {
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
    Decision {
        action,
        reply,
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> AvConfig {
        AvConfig::parse(Path::new("t.conf"), &format!("ClamdSocket /x\n{extra}")).unwrap()
    }

    #[test]
    fn defaults_quarantine_infected_and_defer_failures() {
        let c = cfg("");
        assert_eq!(
            decide(&c, &Outcome::Clean, "p", None).action,
            Action::Accept
        );
        let d = decide(&c, &Outcome::Infected("Eicar".into()), "p", None);
        assert_eq!(d.action, Action::Quarantine);
        assert!(d.headers.is_empty() && d.reply.is_none());
        assert_eq!(
            decide(&c, &Outcome::Failed("x".into()), "p", None).action,
            Action::Defer
        );
    }

    #[test]
    fn reject_message_and_headers() {
        let c = cfg("OnInfected Reject\nRejectMsg Virus %v found\nAddHeader Replace\n");
        let d = decide(
            &c,
            &Outcome::Infected("Eicar-Test".into()),
            "av 1",
            Some("mx"),
        );
        assert_eq!(d.action, Action::Reject);
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
        let d = decide(&c, &Outcome::Clean, "av 1", None);
        assert_eq!(d.headers[0].1, "av 1");
        assert_eq!(d.headers[1].1, "Clean");
        let c = cfg("AddHeader Yes\nReportHostname relay\n");
        assert_eq!(
            decide(&c, &Outcome::Clean, "av", Some("mx")).headers[0].1,
            "av at relay"
        );
        assert!(
            decide(&c, &Outcome::Failed("e".into()), "av", None)
                .headers
                .is_empty()
        );
    }
}
