//! plexus client library: typed async operations on a plexus cluster over QUIC.
//!
//! A [`Client`] is built from a [`ClientConfig`] (usually the `client.toml`
//! that `plexus up` writes) and keeps one QUIC connection per node, verified
//! against the cluster CA under the name `plexus-node`. It routes each request
//! to its shard's leader with the stable key hash from `plexus-proto`, follows
//! `NotLeader` redirects, retries transient failures with jittered backoff
//! inside one overall timeout, and gives every write an exactly-once session
//! sequence number that its retries reuse.
//!
//! How requests reach nodes is a seam: [`Client::connect`] uses QUIC
//! ([`QuicTransport`]); [`Client::connect_with`] takes any [`Transport`] and a
//! seed for the client's one RNG (the deterministic simulator runs this very
//! client over its simulated network that way).
//!
//! What it is not: it contains no server code and depends on no server crate
//! (net, raft, actors, kernels), so an application links only this crate, the
//! wire protocol, quinn and rustls. It does not fan out or merge across
//! shards, except [`Client::common_neighbors`], which intersects two sets,
//! and [`Client::features`], which reads shard by shard. The feed's home read
//! ([`Client::feed_home`]) is merged and ranked by the node, not here.
//!
//! ```no_run
//! # async fn demo() -> Result<(), plexus_client::ClientError> {
//! use plexus_client::{Client, ClientConfig, Direction};
//! let cfg = ClientConfig::load(std::path::Path::new("plexus-data/client.toml"))?;
//! let client = Client::connect(cfg).await?;
//! client.follow(1, 2).await?;
//! assert_eq!(client.degree(1, Direction::Out).await?, 1);
//! client.close().await;
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod config;
mod conn;
mod down;
mod empi;
mod error;
mod feed;
mod ops;
mod session;
mod transport;

pub use client::{Client, REDIRECTS_IMMEDIATE_MAX, REFRESH_EVERY_FAILURES};
pub use config::{
    ClientConfig, BACKOFF_BASE_MS_DEFAULT, BACKOFF_MAX_MS_DEFAULT, CA_FILE_BYTES_MAX, CONFIG_FILE_BYTES_MAX,
    CONNECT_TIMEOUT_MS_DEFAULT, IN_FLIGHT_MAX_DEFAULT, REQUEST_TIMEOUT_MS_DEFAULT, RETRIES_MAX_DEFAULT, SEEDS_MAX,
};
pub use conn::{NODE_CONNECTIONS_MAX, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, SERVER_NAME};
pub use empi::Upserted;
pub use error::ClientError;
pub use ops::FEATURES_READ_CHUNK;
pub use plexus_proto::{
    Consistency, Cursor, Direction, EmpiEvent, EmpiEventKind, EmpiExplanation, EmpiIngested, EmpiMaster, EmpiMatch,
    EmpiRecord, EntryId, ErrorReply, FeedCursor, FeedPage, FeedPost, FilterSpec, MasterId, NodeStatus, Op, OwnerId,
    Page, PersonRecord, PostRef, RankedPost, Reply, ScoreMode, ScoreRequest, ShardMap, TimelineEntry, UserId, VertexId,
    FEED_PAGE_ITEMS_MAX, FEED_SEEN_ITEMS_MAX,
};
pub use roaring::RoaringTreemap;
pub use transport::{BoxFuture, QuicTransport, Transport};
