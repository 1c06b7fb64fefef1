//! Serving [`SpfPolicy`] over a byte stream: stdin/stdout under spawn(8), or one accepted
//! unix/TCP connection.
//!
//! Protocol (Postfix `SMTPD_POLICY_README`, "Protocol description"): `name=value` lines ended
//! by an empty line; the answer is `action=...` and an empty line. A malformed or oversized
//! request gets **no** answer: we log and close, as the README asks, and Postfix retries.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{SpfPolicy, SpfRequest};

/// Longest request line we accept (Postfix's own `line_length_limit` is 2048; certificate
/// subjects can be longer, so allow more).
pub const MAX_LINE: usize = 64 * 1024;
/// Most attributes per request (Postfix's attribute hash limit is 1024).
pub const MAX_ATTRS: usize = 1024;
/// How long a connection may stay silent before we close it. Postfix closes idle policy
/// connections after `smtpd_policy_service_max_idle` (300 s); a little more than that, so we
/// never close first on a well-behaved client, but a stuck one cannot hold us forever.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(330);

/// Why a connection ended without an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A line was longer than [`MAX_LINE`].
    #[error("request line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// More than [`MAX_ATTRS`] attributes.
    #[error("more than {MAX_ATTRS} attributes")]
    TooManyAttributes,
    /// The peer closed in the middle of a request.
    #[error("connection closed in the middle of a request")]
    Truncated,
    /// Nothing arrived for [`IDLE_TIMEOUT`].
    #[error("idle for {} s", IDLE_TIMEOUT.as_secs())]
    Idle,
}

/// Logs like python-policyd-spf at `debugLevel = 1`: rejects, defers and prepends, with the
/// queue id; `dunno` only at debug level.
fn log_decision(req: &SpfRequest, action: &super::SpfAction) {
    let qid = if req.queue_id.is_empty() {
        String::new()
    } else {
        format!("{}: ", req.queue_id)
    };
    match action {
        super::SpfAction::Dunno | super::SpfAction::DunnoText(_) => {
            tracing::debug!("{qid}dunno (instance {})", req.instance);
        }
        other => tracing::info!("{qid}{}", other.to_action_value()),
    }
}

/// Answers requests from `reader` on `writer` until EOF; each answer is one write.
pub async fn serve_stream<R, W>(
    policy: Arc<SpfPolicy>,
    reader: R,
    mut writer: W,
) -> Result<(), ServeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(reader);
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = AsyncReadExt::take(&mut reader, MAX_LINE as u64 + 1);
        let n = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line))
            .await
            .map_err(|_| ServeError::Idle)??;
        if n == 0 {
            return if attrs.is_empty() {
                Ok(())
            } else {
                Err(ServeError::Truncated)
            };
        }
        if line.last() != Some(&b'\n') {
            return Err(if n > MAX_LINE {
                ServeError::LineTooLong
            } else {
                ServeError::Truncated
            });
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            let req = SpfRequest::from_attrs(attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let action = policy.decide(&req).await;
            let reply = format!(
                "action={}\n\n",
                action.to_action_value().replace(['\n', '\r'], " ")
            );
            writer.write_all(reply.as_bytes()).await?;
            writer.flush().await?;
            log_decision(&req, &action);
            attrs.clear();
            continue;
        }
        // python-policyd-spf skips lines without `=` (logging them); so do we.
        let Some((name, value)) = text.split_once('=') else {
            tracing::warn!("ignoring request line without '=': {:.80}", text);
            continue;
        };
        if attrs.len() >= MAX_ATTRS {
            return Err(ServeError::TooManyAttributes);
        }
        attrs.push((name.trim().to_owned(), value.to_owned()));
    }
}

/// Serves stdin/stdout, as under Postfix spawn(8).
///
/// spawn(8) hands us one connected UNIX socket as both stdin and stdout; tests and benchmarks
/// use pipes. Both are driven directly by tokio's reactor (tokio's own `stdin()`/`stdout()` go
/// through its blocking thread pool, which costs a thread hand-off per read and write). Any
/// other kind of file falls back to those.
pub async fn serve_stdio(policy: Arc<SpfPolicy>) -> Result<(), ServeError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;

    let kind = |fd: std::os::fd::BorrowedFd<'_>| {
        let owned = fd.try_clone_to_owned().ok()?;
        let file = std::fs::File::from(owned);
        let ty = file.metadata().ok()?.file_type();
        Some((
            std::os::fd::OwnedFd::from(file),
            ty.is_socket(),
            ty.is_fifo(),
        ))
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    match (kind(stdin.as_fd()), kind(stdout.as_fd())) {
        (Some((fd, true, _)), Some((_, true, _))) => {
            let std_stream = std::os::unix::net::UnixStream::from(fd);
            std_stream.set_nonblocking(true)?;
            let stream = tokio::net::UnixStream::from_std(std_stream)?;
            let (r, w) = stream.into_split();
            serve_stream(policy, r, w).await
        }
        (Some((rfd, _, true)), Some((wfd, _, true))) => {
            let r = tokio::net::unix::pipe::Receiver::from_owned_fd(rfd)?;
            let w = tokio::net::unix::pipe::Sender::from_owned_fd(wfd)?;
            serve_stream(policy, r, w).await
        }
        _ => serve_stream(policy, tokio::io::stdin(), tokio::io::stdout()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::MemoryResolver;
    use crate::spf::policyd::PolicydConfig;

    #[tokio::test]
    async fn answers_each_request_and_skips_localhost() {
        let policy = Arc::new(SpfPolicy::new(
            PolicydConfig::default(),
            Arc::new(MemoryResolver::new()),
        ));
        let input = b"request=smtpd_access_policy\nclient_address=127.0.0.1\nhelo_name=h.example\nsender=u@example.com\nrecipient=r@dest.example\ninstance=1\n\nclient_address=127.0.0.1\ninstance=1\nsender=u@example.com\n\n";
        let mut out = Vec::new();
        serve_stream(policy, &input[..], &mut out).await.unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "action=prepend X-Comment: SPF check N/A for local connections - client-ip=127.0.0.1; helo=h.example; envelope-from=u@example.com; receiver=dest.example \n\naction=dunno\n\n"
        );
    }

    #[tokio::test]
    async fn oversized_line_gets_no_answer() {
        let policy = Arc::new(SpfPolicy::new(
            PolicydConfig::default(),
            Arc::new(MemoryResolver::new()),
        ));
        let mut input = b"sender=".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        input.extend(b"\n\n");
        let mut out = Vec::new();
        assert!(matches!(
            serve_stream(policy, &input[..], &mut out).await,
            Err(ServeError::LineTooLong)
        ));
        assert!(out.is_empty());
    }
}
