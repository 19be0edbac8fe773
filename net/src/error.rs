//! The crate's error type.
//!
//! It is what `plexus-net` returns to its callers (the node, the CLI); it is not
//! what travels on the wire to clients, which is `plexus_proto::ErrorReply`.

use plexus_proto::FrameError;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    CertGen(String),
    /// PEM or DER input (a certificate or key) could not be parsed.
    #[error("invalid pem: {0}")]
    Pem(String),
    /// The TLS configuration could not be built from the material given.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// A limit in `NetLimits` is zero or inconsistent.
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    /// A file or socket operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A certificate or key file could not be read or parsed; names the file and what it holds.
    #[error("{what} {}: {reason}", path.display())]
    File {
        /// What the file holds ("node key", ...).
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The IO or parse error.
        reason: String,
    },
    /// No address is known for the peer and no live connection to it exists.
    #[error("unknown peer {0}")]
    UnknownPeer(u64),
    /// Dialing the peer failed (or is backing off after a failure).
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable {
        /// The peer's node id.
        peer: u64,
        /// What the last dial attempt reported.
        reason: String,
    },
    /// The dialed address answered with a certificate for another node.
    #[error("dialed peer {expected} but the certificate names node {got:?}")]
    WrongPeer {
        /// The node id we meant to reach.
        expected: u64,
        /// The node id in the certificate, if it carried one.
        got: Option<u64>,
    },
    /// The send queue to peer `.0` is full; `.1` is its capacity in messages.
    #[error("busy: send queue to peer {0} is full ({1} messages)")]
    Busy(u64, usize),
    /// No answer from peer `.0` within `.1` milliseconds; the message may still be delivered.
    #[error("call to peer {0} timed out after {1} ms")]
    Timeout(u64, u64),
    /// The connection failed while a batch was in flight; the message may or may not have been handled.
    #[error("connection to peer {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer's node id.
        peer: u64,
        /// What the connection or stream reported.
        reason: String,
    },
    /// The remote handler answered with this error text.
    #[error("peer handler failed: {0}")]
    Remote(String),
    /// A message is larger than a peer frame may carry.
    #[error("message of {len} bytes exceeds the peer frame limit of {max} bytes")]
    TooLarge {
        /// The message's length, in bytes.
        len: usize,
        /// The frame limit, in bytes.
        max: usize,
    },
    /// The peer answered with a reply that breaks the protocol.
    #[error("protocol violation by peer {peer}: {reason}")]
    Protocol {
        /// The peer's node id.
        peer: u64,
        /// What was wrong.
        reason: String,
    },
    /// A frame could not be encoded or decoded.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The endpoint is shutting down.
    #[error("endpoint is shut down")]
    Shutdown,
}
