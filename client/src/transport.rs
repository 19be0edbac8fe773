//! The client's transport seam: how one request reaches one node.
//!
//! What it is: the object-safe [`Transport`] trait — make sure a connection to a node address
//! exists (saying `Hello` when this call dials it), send one `Request` and read its `Response`,
//! close everything — and [`QuicTransport`], the implementation [`crate::Client::connect`] uses:
//! one quinn connection per node, verified against the cluster CA (`conn.rs`). Another transport
//! (the deterministic simulator's message-level network, an in-memory fake in a test) is given to
//! [`crate::Client::connect_with`].
//!
//! What it is not: a retry policy. A transport moves single requests and knows nothing of
//! shards, leaders, retries or sessions; `client.rs` decides where each attempt goes and whether
//! to try again. A transport reports connection trouble as [`ClientError::Connect`] or
//! [`ClientError::Connection`] (the client retries those, at another replica when it can); a
//! request that is never answered simply never completes, and the client's own per-attempt
//! limit (`attempt_timeout`) ends that attempt.

use std::future::Future;
use std::pin::Pin;

use plexus_proto::{HelloOk, Request, Response};

use crate::config::ClientConfig;
use crate::conn::Pool;
use crate::error::ClientError;

/// A boxed, sendable future, as the [`Transport`] methods return (the trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a [`crate::Client`] reaches nodes. Implementations must be cheap to call concurrently:
/// many requests share one transport.
pub trait Transport: Send + Sync + 'static {
    /// Makes sure there is a live connection to `addr`, dialling it and saying `Hello` when there
    /// is none. Returns the node's `HelloOk` only when this call dialled; `None` when a
    /// connection was already up.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Option<HelloOk>, ClientError>>;

    /// Sends `req` to the node at `addr` (connecting first if needed) and returns its answer.
    fn request<'a>(&'a self, addr: &'a str, req: Request) -> BoxFuture<'a, Result<Response, ClientError>>;

    /// Closes every connection, waiting a bounded time for them to drain.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// The default transport: QUIC with TLS against the cluster CA, one connection per node,
/// dialled lazily and redialled when it dies.
pub struct QuicTransport {
    pool: Pool,
}

impl QuicTransport {
    /// Builds the TLS and QUIC settings from `cfg` (`ca_pem`, `token`, `connect_timeout`);
    /// binds no socket until the first connection.
    pub fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
        Ok(Self { pool: Pool::new(cfg)? })
    }
}

impl Transport for QuicTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Option<HelloOk>, ClientError>> {
        Box::pin(async move { self.pool.connection(addr).await.map(|(_, ok)| ok) })
    }

    fn request<'a>(&'a self, addr: &'a str, req: Request) -> BoxFuture<'a, Result<Response, ClientError>> {
        Box::pin(async move { self.pool.request(addr, &req).await })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }
}
