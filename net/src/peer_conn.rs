//! Peer connections: the registry of live connections (one per peer) and the
//! receiving side of peer batches.
//!
//! A connection is registered under the peer's node id from its certificate,
//! whichever side dialed it, and both sides accept batch streams on it, so one
//! connection serves both directions. The newest registration wins. When two
//! nodes dial each other at the same moment each may end up sending on a
//! different one of the two connections; both work, and a connection nobody
//! sends on closes at its idle timeout. This module does not dial or queue:
//! that is `peer_links.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use plexus_proto::frame::{encode, read_msg};
use plexus_proto::{FrameError, FrameKind};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::endpoint::{NetLimits, PeerHandler};
use crate::peer_links::Pending;
use crate::wire::{PeerBatch, PeerBatchReply, WireBytes};

/// Stream reset code: the batch frame was malformed or broke a limit.
pub const STREAM_BAD_BATCH: u32 = 2;
/// Stream reset code: the batch reply would exceed the peer frame limit.
pub const STREAM_REPLY_TOO_LARGE: u32 = 3;
/// How long a batch that arrives before the node serves peer traffic waits for it to begin, in
/// milliseconds. Nodes started together reach each other while each is still opening its groups;
/// answered at once with an error, the first votes failed and every first election waited out
/// an election timeout (a fresh `plexus up` was ready after 2.5 s instead of 0.3 s).
pub const PEER_SERVE_WAIT_MS: u64 = 2_000;

/// Counters behind `PeerStats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub msgs_sent: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_failed: AtomicU64,
}

/// State shared by the endpoint, the peer links and every peer connection task.
pub(crate) struct PeerShared {
    pub node_id: u64,
    pub endpoint: quinn::Endpoint,
    pub limits: NetLimits,
    pub dial_config: quinn::ClientConfig,
    pub handler: RwLock<Option<Arc<dyn PeerHandler>>>,
    conns: Mutex<HashMap<u64, Connection>>,
    pub addrs: Mutex<HashMap<u64, SocketAddr>>,
    pub queues: Mutex<HashMap<(u64, crate::peer_links::Lane), mpsc::Sender<Pending>>>,
    pub counters: Counters,
    pub closed: AtomicBool,
    /// Which peers calls are failing to, reported once per peer (`peer_health.rs`).
    pub health: crate::peer_health::PeerHealth,
    /// Woken when the peer handler is installed (`NodeEndpoint::serve`).
    pub serving: tokio::sync::Notify,
    /// Woken whenever a connection is registered, so that a link dialling a peer can take the
    /// connection that peer dialled meanwhile instead of waiting out its own handshake.
    pub registered: tokio::sync::Notify,
}

/// Waits on `notify` until `look` finds something. The waiter is armed before each look, so a
/// notification that comes between the look and the wait is not missed.
pub(crate) async fn look_until<T>(notify: &tokio::sync::Notify, mut look: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(found) = look() {
            return found;
        }
        notified.await;
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical section here
/// only inserts into or removes from a map, so the data stays consistent even then.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PeerShared {
    pub fn new(node_id: u64, endpoint: quinn::Endpoint, limits: NetLimits, dial_config: quinn::ClientConfig) -> Self {
        Self {
            node_id,
            endpoint,
            limits,
            dial_config,
            handler: RwLock::new(None),
            conns: Mutex::new(HashMap::new()),
            addrs: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            health: Default::default(),
            registered: tokio::sync::Notify::new(),
            serving: tokio::sync::Notify::new(),
        }
    }

    /// The live connection to `peer`, if there is one.
    pub fn live_conn(&self, peer: u64) -> Option<Connection> {
        let conns = lock(&self.conns);
        let conn = conns.get(&peer)?;
        conn.close_reason().is_none().then(|| conn.clone())
    }

    /// Registers a new connection to `peer`; it replaces any older one.
    ///
    /// Newest wins because a peer only dials when it has no usable connection: after a restart the
    /// old connection looks alive here until its idle timeout, and keeping it would black-hole calls.
    pub fn register(&self, peer: u64, conn: Connection) {
        lock(&self.conns).insert(peer, conn);
        self.registered.notify_waiters();
    }

    /// Forgets `conn` if it is still the registered connection for `peer`.
    fn unregister(&self, peer: u64, conn: &Connection) {
        let mut conns = lock(&self.conns);
        if conns.get(&peer).is_some_and(|c| c.stable_id() == conn.stable_id()) {
            conns.remove(&peer);
        }
    }

    /// Closes every registered connection (used at shutdown).
    pub fn close_all(&self, code: u32, reason: &[u8]) {
        for (_, conn) in lock(&self.conns).drain() {
            conn.close(VarInt::from_u32(code), reason);
        }
    }

    fn handler(&self) -> Option<Arc<dyn PeerHandler>> {
        self.handler.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The peer handler, waiting at most `PEER_SERVE_WAIT_MS` for the node to begin serving;
    /// `None` at once when the endpoint is shutting down.
    async fn handler_when_serving(&self) -> Option<Arc<dyn PeerHandler>> {
        let serving = look_until(&self.serving, || {
            if self.closed.load(Ordering::Acquire) {
                Some(None)
            } else {
                self.handler().map(Some)
            }
        });
        tokio::time::timeout(Duration::from_millis(PEER_SERVE_WAIT_MS), serving)
            .await
            .ok()
            .flatten()
    }
}

/// Accepts batch streams on a peer connection until it closes, then unregisters it.
pub(crate) async fn serve_peer_conn(shared: Arc<PeerShared>, conn: Connection, peer: u64) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let span = tracing::debug_span!("peer_batch", peer, stream = %send.id());
                tokio::spawn(serve_batch(shared.clone(), peer, send, recv).instrument(span));
            }
            Err(e) => {
                debug!(reason = %e, "peer connection closed");
                break;
            }
        }
    }
    shared.unregister(peer, &conn);
}

/// Answers one batch: runs its messages concurrently through the handler and replies in order.
async fn serve_batch(shared: Arc<PeerShared>, peer: u64, mut send: SendStream, mut recv: RecvStream) {
    let limits = &shared.limits;
    let batch: PeerBatch = match read_msg(&mut recv, FrameKind::PeerBatch, limits.frame_bytes_max).await {
        Ok(b) => b,
        Err(FrameError::Closed) => return,
        Err(e) => {
            warn!(error = %e, "refusing peer batch");
            refuse(&mut send, &mut recv, STREAM_BAD_BATCH);
            return;
        }
    };
    if batch.msgs.len() > limits.peer_batch_msgs_max {
        warn!(
            msgs = batch.msgs.len(),
            msgs_max = limits.peer_batch_msgs_max,
            "refusing oversized peer batch"
        );
        refuse(&mut send, &mut recv, STREAM_BAD_BATCH);
        return;
    }
    let reply: PeerBatchReply = if batch.from != peer {
        // The certificate is the identity; a batch naming another sender is refused message by message.
        let reason = format!(
            "batch claims to come from node {} but the certificate names node {peer}",
            batch.from
        );
        warn!(claimed = batch.from, "{reason}");
        batch.msgs.iter().map(|_| Err(reason.clone())).collect()
    } else if let Some(handler) = shared.handler_when_serving().await {
        let calls = batch.msgs.into_iter().map(|m| handler.handle(peer, m.0));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.map(WireBytes))
            .collect()
    } else {
        batch
            .msgs
            .iter()
            .map(|_| Err("node is not serving peer traffic yet".to_string()))
            .collect()
    };
    let bytes = match encode(FrameKind::PeerBatchReply, &reply, limits.frame_bytes_max) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "peer batch reply does not fit a frame");
            refuse(&mut send, &mut recv, STREAM_REPLY_TOO_LARGE);
            return;
        }
    };
    // Handed over whole: quinn queues the buffer itself instead of copying it.
    if let Err(e) = send.write_chunk(bytes.into()).await {
        debug!(error = %e, "peer batch reply not delivered");
        return;
    }
    // The sender reads exactly one frame; a failed finish only means the connection is going away.
    let _ = send.finish();
}

fn refuse(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    // Either half may already be closed by the sender; there is nothing more to do then.
    let _ = send.reset(VarInt::from_u32(code));
    let _ = recv.stop(VarInt::from_u32(code));
}
