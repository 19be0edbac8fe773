//! The client's error type.
//!
//! One enum covers configuration, connection, TLS, protocol and server
//! failures, so callers can match on what went wrong without parsing strings.
//! It is not a retry policy: which variants are worth retrying is decided in
//! `client.rs` through [`ClientError::is_transient`].

use plexus_proto::{ErrorReply, FrameError};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration file or a configuration value is invalid.
    #[error("client config: {0}")]
    Config(String),
    /// A node could not be reached, or the QUIC handshake failed for a reason other than TLS.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The node address that was dialled.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// TLS failed: the node's certificate does not chain to the cluster CA, or the handshake was refused.
    #[error("tls with {addr} failed: {reason}")]
    Tls {
        /// The node address that was dialled.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// An established connection or stream failed while a request was in flight.
    #[error("connection to {addr} failed: {reason}")]
    Connection {
        /// The node address of the connection.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// A frame could not be encoded (too large) or the node sent a malformed frame.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// The node answered with an error that retrying cannot fix (or the last of several retryable ones).
    #[error("server error: {0}")]
    Server(#[from] ErrorReply),
    /// The node answered with a reply of the wrong shape for the operation.
    #[error("unexpected reply to {op}: {reply}")]
    UnexpectedReply {
        /// The operation that was sent.
        op: &'static str,
        /// The reply received, in debug form.
        reply: String,
    },
    /// The node sent data that failed validation (a shard map, a bitmap, a list of the wrong length).
    #[error("invalid data from server: {0}")]
    InvalidData(String),
    /// One attempt at one node got no answer within `attempt_timeout` (the client retries it).
    #[error("no answer from {addr} within {after:?}")]
    AttemptTimeout {
        /// The node address that was asked.
        addr: String,
        /// The limit that passed.
        after: std::time::Duration,
    },
    /// The request did not complete within `request_timeout` (including retries and backoff).
    #[error("request timed out")]
    Timeout,
    /// Every attempt failed with a retryable error; `last` is the final one.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made, the first one included.
        attempts: u32,
        /// The error of the final attempt.
        last: Box<ClientError>,
    },
    /// The client would need more node connections than `NODE_CONNECTIONS_MAX`.
    #[error("too many node connections (limit {max})")]
    TooManyNodes {
        /// The limit in force.
        max: usize,
    },
    /// The client was closed with [`crate::Client::close`].
    #[error("client is closed")]
    Closed,
}

impl ClientError {
    /// Whether retrying the same request, possibly at another node, can succeed.
    ///
    /// Server errors are judged by [`ErrorReply::is_retryable`]; connection
    /// failures are transient because another attempt reconnects. TLS and
    /// configuration errors are permanent: every node presents the same CA.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Connection { .. } | ClientError::AttemptTimeout { .. } => true,
            ClientError::Server(e) => e.is_retryable(),
            _ => false,
        }
    }
}
