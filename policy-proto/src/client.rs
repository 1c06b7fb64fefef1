//! The tokio policy client (feature `tokio`): what Postfix's smtpd does, for tests,
//! benchmarks and tools. One request at a time on one connection, like smtpd.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Action, DecodeError, PolicyRequest, ReplyDecoder, SocketSpec};

/// The default time a request may take, connect, write and read: 100 s, Postfix's
/// `smtpd_policy_service_timeout`.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(100);

/// Why a request got no action.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing failed.
    #[error("I/O error")]
    Io(#[from] io::Error),
    /// The server closed the connection before a complete reply (Postfix: "premature
    /// end-of-input"); this is how a server reports a malformed request.
    #[error("server closed the connection without a complete reply")]
    Closed,
    /// The reply broke the protocol or held an action Postfix would misread.
    #[error("bad reply")]
    BadReply(#[from] DecodeError),
    /// The request took longer than the client's timeout.
    #[error("policy server did not answer in time")]
    Timeout,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// A connection to a policy server.
pub struct Client {
    stream: Pin<Box<dyn Stream>>,
    buf: BytesMut,
    out: BytesMut,
    decoder: ReplyDecoder,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("buffered", &self.buf.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `spec` (UNIX socket or TCP, with `TCP_NODELAY`) within [`CLIENT_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Io`] when connecting fails, [`ClientError::Timeout`] after
    /// [`CLIENT_TIMEOUT`].
    pub async fn connect(spec: &SocketSpec) -> Result<Self, ClientError> {
        let connect = async { mailstack_transport::connect(spec).await.map(Self::new) };
        Ok(tokio::time::timeout(CLIENT_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Timeout)??)
    }

    /// A client over any connected stream.
    pub fn new<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(stream: S) -> Self {
        Self {
            stream: Box::pin(stream),
            buf: BytesMut::with_capacity(512),
            out: BytesMut::with_capacity(2048),
            decoder: ReplyDecoder::new(),
            timeout: CLIENT_TIMEOUT,
        }
    }

    /// Sets the time one [`Client::request`] may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `req` (one write) and reads the reply's action.
    ///
    /// # Errors
    ///
    /// [`ClientError::Io`], [`ClientError::Closed`] (the server closed without a complete
    /// reply, its answer to a request it refuses), [`ClientError::BadReply`],
    /// [`ClientError::Timeout`] (see [`Client::set_timeout`]).
    pub async fn request(&mut self, req: &PolicyRequest) -> Result<Action, ClientError> {
        self.out.clear();
        req.encode(&mut self.out);
        let limit = self.timeout;
        tokio::time::timeout(limit, self.exchange())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Sends raw bytes as they are (to test how servers handle malformed input) and reads a
    /// reply.
    pub async fn request_raw(&mut self, bytes: &[u8]) -> Result<Action, ClientError> {
        self.out.clear();
        self.out.extend_from_slice(bytes);
        let limit = self.timeout;
        tokio::time::timeout(limit, self.exchange())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn exchange(&mut self) -> Result<Action, ClientError> {
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        loop {
            if let Some(action) = self.decoder.decode(&mut self.buf)? {
                return Ok(action);
            }
            self.buf.reserve(512);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Closes the connection (the server sees EOF between requests).
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.stream.shutdown().await?;
        Ok(())
    }
}
