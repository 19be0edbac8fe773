//! The plexus wire protocol, shared by the client library and the server.
//!
//! It holds the frame codec (length-prefixed, versioned, size-limited), the
//! typed client messages, the shard map and the stable key → shard hash.
//! It is deliberately free of QUIC, TLS, Raft and any server state, so a
//! client application can depend on it without compiling the server.
//! `docs/PROTOCOL.md` describes the same bytes for implementers in other
//! languages; the two must change together.

pub mod bytes;
pub mod empi;
pub mod feed;
pub mod frame;
pub mod msg;
pub mod shard;

pub use empi::*;
pub use feed::*;
pub use frame::{FrameError, FrameKind, FRAME_BYTES_MAX, PROTOCOL_VERSION};
pub use msg::*;
pub use shard::{shard_for_key, ShardId, ShardKey};

/// ALPN protocol id for client ↔ node connections.
pub const ALPN_CLIENT: &[u8] = b"plexus-client/1";
/// ALPN protocol id for node ↔ node connections (mutual TLS required).
pub const ALPN_PEER: &[u8] = b"plexus-peer/1";
