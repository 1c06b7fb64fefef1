//! Readiness probes, also behind `mailstack-init health`: a socket accepts, a milter answers
//! OPTNEG, clamd answers PING, an SMTP server sends its 220 banner. Each probe is bounded by
//! [`PROBE_TIMEOUT`].

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::config::Probe;

/// The bound of one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Connecting or talking failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The milter did not negotiate.
    #[error("milter OPTNEG: {0}")]
    Milter(#[from] milter_proto::client::ClientError),
    /// clamd did not answer PING.
    #[error("clamd PING: {0}")]
    Clamd(#[from] crate::clamd::ClamdError),
    /// The SMTP server sent something else than 220.
    #[error("SMTP banner: {0:?}")]
    Banner(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Runs `probe` once, within [`PROBE_TIMEOUT`].
pub async fn probe(p: &Probe) -> Result<(), ProbeError> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_inner(p)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(PROBE_TIMEOUT)),
    }
}

async fn probe_inner(p: &Probe) -> Result<(), ProbeError> {
    match p {
        Probe::Accepts(path) => {
            tokio::net::UnixStream::connect(path).await?;
            Ok(())
        }
        Probe::AcceptsSpec(spec) => {
            milter_proto::connect(spec).await?;
            Ok(())
        }
        Probe::Milter(spec) => {
            let mut cfg = milter_proto::client::ClientConfig::default();
            cfg.connect_timeout = PROBE_TIMEOUT;
            cfg.command_timeout = PROBE_TIMEOUT;
            let c = milter_proto::client::Client::connect(spec, cfg).await?;
            c.quit().await?;
            Ok(())
        }
        Probe::ClamdPing(addr) => {
            crate::clamd::Client::new(addr.clone()).ping().await?;
            Ok(())
        }
        Probe::SmtpBanner(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r).take(4096);
            // The banner may span lines (220-...): read to the last one.
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await? == 0 {
                    return Err(ProbeError::Banner(line));
                }
                if !line.starts_with("220") {
                    return Err(ProbeError::Banner(line.trim_end().to_owned()));
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            w.write_all(b"QUIT\r\n").await?;
            Ok(())
        }
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[tokio::test]
    async fn smtp_banner_and_refusals() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220-mx hello\r\n220 mx ESMTP\r\n")
                .await
                .unwrap();
            let mut b = [0u8; 16];
            let _ = s.read(&mut b).await;
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"554 go away\r\n").await.unwrap();
        });
        probe(&Probe::SmtpBanner(addr)).await.unwrap();
        let e = probe(&Probe::SmtpBanner(addr)).await.unwrap_err();
        assert!(
            matches!(e, ProbeError::Banner(ref b) if b == "554 go away"),
            "{e}"
        );
        let e = probe(&Probe::Accepts(PathBuf::from("/nonexistent/x.sock"))).await;
        assert!(matches!(e, Err(ProbeError::Io(_))));
    }
}
