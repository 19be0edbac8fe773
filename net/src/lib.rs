//! plexus transport: one QUIC endpoint per node.
//!
//! What it is: the cluster CA and node certificates (`certs`), the TLS setup
//! with mutual authentication between nodes (`tls`), the node's quinn endpoint
//! that routes connections by ALPN (`endpoint`), peer links that batch
//! messages to each peer over one shared connection (`peer_links`,
//! `peer_conn`), and the serving of client connections (`client_conn`).
//!
//! What it is not: it does not know Raft, shards or what a request does. Peer
//! messages are opaque bytes handed to a `PeerHandler`; client requests are
//! decoded `plexus_proto::Request`s handed to a `ClientHandler`. It is not the
//! client library either (`plexus-client` dials nodes; this crate serves them).
//!
//! Wire format: frames are `plexus_proto::frame`'s. A peer batch is one
//! `PeerBatch` frame on its own bidirectional stream, answered by one
//! `PeerBatchReply` frame (see `wire`).

pub mod certs;
mod client_conn;
pub mod endpoint;
pub mod error;
mod peer_conn;
mod peer_health;
pub mod peer_links;
pub mod tls;
pub mod wire;

pub use certs::{make_ca, make_node_cert, read_pem_files, write_pem_files, CertKey, SERVER_NAME};
pub use client_conn::{HELLO_TIMEOUT_MS, STREAM_BAD_REQUEST, STREAM_FRAME_TOO_LARGE};
pub use endpoint::{
    ClientHandler, NetLimits, NodeEndpoint, PeerHandler, CLOSE_BAD_HELLO, CLOSE_CONN_DROPPED, CLOSE_PEER_CERT_REQUIRED,
    CLOSE_SHUTDOWN, CLOSE_TOO_MANY_CONNS, CLOSE_UNAUTHORIZED, CLOSE_UNKNOWN_ALPN, CLOSE_WRONG_PEER,
};
pub use error::NetError;
pub use futures::future::BoxFuture;
pub use peer_conn::{STREAM_BAD_BATCH, STREAM_REPLY_TOO_LARGE};
pub use peer_links::{Lane, PeerLinks, PeerStats};
pub use tls::TlsMaterial;
