//! Serving [`SpfPolicy`] over a byte stream: stdin/stdout under spawn(8), or one accepted
//! unix/TCP connection.
//!
//! Protocol (Postfix `SMTPD_POLICY_README`, "Protocol description"): `name=value` lines ended
//! by an empty line; the answer is `action=...` and an empty line. A malformed or oversized
//! request gets **no** answer: we log and close, as the README asks, and Postfix retries.
//! Requests are decoded by [`policy_proto::RequestDecoder`] (bounded, incremental).

use std::sync::Arc;

use bytes::BytesMut;
use policy_proto::{DecodeError, RequestDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{SpfPolicy, SpfRequest};

pub use policy_proto::{MAX_ATTRS, MAX_LINE};

/// How long a connection may stay silent before we close it. Postfix closes idle policy
/// connections after `smtpd_policy_service_max_idle` (300 s); a little more than that, so we
/// never close first on a well-behaved client, but a stuck one cannot hold us forever.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(330);

/// How much we ask the socket for per read. The decoder checks its limits after each read, so
/// a connection never holds more than `policy_proto::MAX_REQUEST` plus this.
const READ_CHUNK: usize = 8 * 1024;

/// Why a connection ended without an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The request broke the protocol or a limit (policy-proto's decoder said why).
    #[error("malformed request: {0}")]
    Malformed(#[from] DecodeError),
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
    let mut reader = reader;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut decoder = RequestDecoder::new();
    loop {
        // A malformed request gets no answer: the error closes the connection
        // (SMTPD_POLICY_README), and Postfix retries.
        while let Some(attrs) = decoder.decode(&mut buf)? {
            let req = SpfRequest::from_attrs(
                attrs
                    .attributes()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let action = policy.decide(&req).await;
            let reply = format!(
                "action={}\n\n",
                action.to_action_value().replace(['\n', '\r'], " ")
            );
            writer.write_all(reply.as_bytes()).await?;
            writer.flush().await?;
            log_decision(&req, &action);
        }
        buf.reserve(READ_CHUNK);
        let n = tokio::time::timeout(IDLE_TIMEOUT, reader.read_buf(&mut buf))
            .await
            .map_err(|_| ServeError::Idle)??;
        if n == 0 {
            return if buf.is_empty() {
                Ok(())
            } else {
                Err(ServeError::Truncated)
            };
        }
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
            Err(ServeError::Malformed(DecodeError::LineTooLong { .. }))
        ));
        assert!(out.is_empty());
    }
}
