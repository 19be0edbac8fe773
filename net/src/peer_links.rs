//! Peer links: the sending side of node ↔ node traffic.
//!
//! `PeerLinks::call` queues a message on the peer's bounded queue; one flusher
//! task per peer drains the queue into batches (up to the batch limits), sends
//! each batch as one `PeerBatch` frame on its own bidirectional stream, and
//! hands every caller its own result from the in-order `PeerBatchReply`. At most
//! `peer_batches_in_flight_max` batches per peer are in flight; while they are,
//! new messages wait in the queue, which is what makes later batches larger
//! under load. The flusher dials when no live connection exists and backs off
//! after failures. What the messages mean is not this module's concern.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use plexus_proto::frame::{encode, read_msg};
use plexus_proto::FrameKind;
use quinn::{Connection, VarInt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::certs::SERVER_NAME;
use crate::endpoint::{CLOSE_SHUTDOWN, CLOSE_WRONG_PEER};
use crate::error::NetError;
use crate::peer_conn::{lock, look_until, serve_peer_conn, PeerShared};
use crate::tls::peer_node_id;
use crate::wire::{PeerBatch, PeerBatchReply, WireBytes};

/// First wait before redialing a peer after a failed dial, in milliseconds.
pub const REDIAL_BACKOFF_MS_MIN: u64 = 50;
/// Longest wait between dial attempts to one peer, in milliseconds: a dial is a few packets, and
/// a peer that restarts is found again within about this long (plus `dial_timeout_ms`).
pub const REDIAL_BACKOFF_MS_MAX: u64 = 1_000;
/// Bytes a batch frame spends besides its messages: frame header plus the `from` and count varints.
pub const BATCH_OVERHEAD_BYTES: usize = 32;
/// Bytes one message spends in a batch besides its own: its length varint.
pub const MSG_OVERHEAD_BYTES: usize = 5;

/// Makes the error each caller of a failed batch gets (`NetError` is not `Clone`: it can carry an `io::Error`).
type ErrMaker = Box<dyn Fn() -> NetError + Send>;

/// One queued call.
pub(crate) struct Pending {
    msg: Vec<u8>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
}

/// Counts of what the links sent, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Messages sent in batches (including those whose batch later failed).
    pub msgs_sent: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Batches that failed after being sent (connection lost, timeout, protocol violation).
    pub batches_failed: u64,
}

/// Handle for calling peers through this node's endpoint; cheap to clone.
#[derive(Clone)]
pub struct PeerLinks {
    pub(crate) shared: Arc<PeerShared>,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks")
            .field("node_id", &self.shared.node_id)
            .finish()
    }
}

impl PeerLinks {
    /// Records (or changes) the address `node` is dialed at. A live connection is kept until it fails.
    pub fn set_peer(&self, node: u64, addr: SocketAddr) {
        lock(&self.shared.addrs).insert(node, addr);
    }

    /// Queue `msg` for `to`; it travels in a batch with other messages to that peer (one frame = PeerBatch{from, msgs}),
    /// one bidi stream per batch, reply frame = Vec<Result<Vec<u8>, String>> in order. Errors: unknown peer,
    /// unreachable (connect failed), queue full (Busy), timeout, remote handler error.
    pub async fn call(&self, to: u64, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, NetError> {
        self.call_on(Lane::Bulk, to, msg, timeout).await
    }

    /// `call` on a chosen lane: each (peer, lane) has its own queue and flusher over the
    /// same connection, so consensus messages never wait behind slow requests.
    pub async fn call_on(&self, lane: Lane, to: u64, msg: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, NetError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(NetError::Shutdown);
        }
        let max = shared.limits.frame_bytes_max;
        if msg.len() + MSG_OVERHEAD_BYTES + BATCH_OVERHEAD_BYTES > max {
            return Err(NetError::TooLarge { len: msg.len(), max });
        }
        let queue = self.queue_for(to, lane)?;
        let deadline = Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        queue
            .try_send(Pending {
                msg,
                deadline,
                reply: tx,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => NetError::Busy(to, shared.limits.peer_queue_msgs_max),
                mpsc::error::TrySendError::Closed(_) => NetError::Shutdown,
            })?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            // The flusher dropped the call without answering: only happens when it stops at shutdown.
            Ok(Err(_)) => Err(NetError::Shutdown),
            Err(_) => Err(NetError::Timeout(to, timeout_ms)),
        }
    }

    /// Counts of messages and batches sent so far, over all peers.
    pub fn stats(&self) -> PeerStats {
        let c = &self.shared.counters;
        PeerStats {
            msgs_sent: c.msgs_sent.load(Ordering::Relaxed),
            batches_sent: c.batches_sent.load(Ordering::Relaxed),
            batches_failed: c.batches_failed.load(Ordering::Relaxed),
        }
    }

    /// The queue of `to`'s flusher, starting the flusher if `to` can be reached at all.
    fn queue_for(&self, to: u64, lane: Lane) -> Result<mpsc::Sender<Pending>, NetError> {
        let shared = &self.shared;
        let mut queues = lock(&shared.queues);
        if let Some(q) = queues.get(&(to, lane)) {
            return Ok(q.clone());
        }
        let reachable = lock(&shared.addrs).contains_key(&to) || shared.live_conn(to).is_some();
        if !reachable {
            return Err(NetError::UnknownPeer(to));
        }
        let (tx, rx) = mpsc::channel(shared.limits.peer_queue_msgs_max);
        queues.insert((to, lane), tx.clone());
        let span = tracing::info_span!("peer_link", node = shared.node_id, peer = to, ?lane);
        let in_flight_max = match lane {
            Lane::Consensus => shared.limits.peer_consensus_batches_in_flight_max,
            Lane::Bulk => shared.limits.peer_batches_in_flight_max,
        };
        tokio::spawn(flusher(shared.clone(), to, in_flight_max, rx).instrument(span));
        Ok(tx)
    }
}

/// Which queue to a peer a message joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Consensus traffic (appends, votes, heartbeats): small and quick to answer. Few
    /// batches in flight (`peer_consensus_batches_in_flight_max`), so under load the
    /// messages of many groups pile up behind the one on the wire and leave together.
    Consensus,
    /// Everything else (forwarded proposals, reads, snapshots): may take a while to
    /// answer, so many batches may be in flight (`peer_batches_in_flight_max`).
    Bulk,
}

/// Dial bookkeeping of one flusher.
struct Dialer {
    backoff_ms: u64,
    next_attempt: Instant,
    /// Why the last dial failed; `None` while dials succeed.
    last_error: Option<String>,
    /// A dial running in the background while the peer is known to be failing.
    probe: Option<tokio::task::JoinHandle<Result<Connection, NetError>>>,
}

impl Dialer {
    fn succeeded(&mut self) {
        self.backoff_ms = REDIAL_BACKOFF_MS_MIN;
        self.last_error = None;
    }

    /// Records a failed dial to `addr`; the error each caller of the batch gets.
    fn failed(&mut self, addr: SocketAddr, e: NetError, peer: u64) -> ErrMaker {
        let reason = match &e {
            NetError::Unreachable { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        // At debug: the callers' failures reach `peer_health`, which reports a failing peer
        // at warn once and then every `PEER_FAILING_REPORT_MS`, not once per dial.
        debug!(%addr, error = %reason, backoff_ms = self.backoff_ms, "dial failed");
        self.next_attempt = Instant::now() + Duration::from_millis(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(REDIAL_BACKOFF_MS_MAX);
        self.last_error = Some(reason.clone());
        match e {
            NetError::WrongPeer { expected, got } => Box::new(move || NetError::WrongPeer { expected, got }),
            _ => Box::new(move || NetError::Unreachable {
                peer,
                reason: reason.clone(),
            }),
        }
    }
}

/// Drains one peer's queue into batches until the queue's senders are gone (shutdown).
async fn flusher(shared: Arc<PeerShared>, peer: u64, in_flight_max: usize, mut rx: mpsc::Receiver<Pending>) {
    let limits = shared.limits.clone();
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let batch_bytes_max = limits
        .peer_batch_bytes_max
        .min(limits.frame_bytes_max - BATCH_OVERHEAD_BYTES);
    let mut dialer = Dialer {
        backoff_ms: REDIAL_BACKOFF_MS_MIN,
        next_attempt: Instant::now(),
        last_error: None,
        probe: None,
    };
    let mut carry: Option<Pending> = None;
    loop {
        // Take a batch slot before draining, so that messages keep queueing (and batch up) while the pipeline is full.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let mut bytes = first.msg.len() + MSG_OVERHEAD_BYTES;
        let mut batch = vec![first];
        while batch.len() < limits.peer_batch_msgs_max {
            let Ok(p) = rx.try_recv() else { break };
            let size = p.msg.len() + MSG_OVERHEAD_BYTES;
            if bytes + size > batch_bytes_max {
                carry = Some(p);
                break;
            }
            bytes += size;
            batch.push(p);
        }
        // Callers that already gave up need no network work.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let conn = match connection(&shared, peer, &mut dialer).await {
            Ok(c) => c,
            Err(make_err) => {
                shared.health.failed(peer, batch.len() as u64, &make_err(), false);
                for p in batch {
                    let _ = p.reply.send(Err(make_err()));
                }
                continue;
            }
        };
        shared.counters.batches_sent.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .msgs_sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tokio::spawn(send_batch(shared.clone(), peer, conn, batch, permit).in_current_span());
    }
    debug!("peer link stopped");
}

/// The live connection to `peer`, dialing one if needed; on failure a maker of the error each caller gets.
///
/// Callers wait for a dial only while the peer has not failed: the first dial, or the one after a
/// connection dropped. Once a dial has failed the peer is probably down, and waiting out
/// `dial_timeout_ms` per batch would hold every caller that has another replica to try (a read
/// sent to the nearest replica, a proposal forwarded along the placement) for the whole dial; so
/// until a dial succeeds, batches fail at once and the redials run in the background, one at a
/// time, spaced by the backoff.
async fn connection(shared: &Arc<PeerShared>, peer: u64, dialer: &mut Dialer) -> Result<Connection, ErrMaker> {
    let probe_done = dialer.probe.as_ref().is_some_and(tokio::task::JoinHandle::is_finished);
    if let Some(c) = shared.live_conn(peer) {
        if probe_done {
            dialer.probe = None;
        }
        dialer.succeeded();
        return Ok(c);
    }
    let Some(addr) = lock(&shared.addrs).get(&peer).copied() else {
        return Err(Box::new(move || NetError::UnknownPeer(peer)));
    };
    if probe_done {
        let handle = dialer.probe.take().expect("checked above");
        let outcome = handle.await.unwrap_or_else(|e| {
            Err(NetError::Unreachable {
                peer,
                reason: format!("dial task failed: {e}"),
            })
        });
        match outcome {
            // Closed since: dial again below, as after any dropped connection.
            Ok(conn) if conn.close_reason().is_some() => dialer.succeeded(),
            Ok(conn) => {
                dialer.succeeded();
                return Ok(conn);
            }
            Err(e) => return Err(dialer.failed(addr, e, peer)),
        }
    }
    if dialer.last_error.is_none() {
        return match dial_or_take_theirs(shared, peer, addr).await {
            Ok(conn) => {
                dialer.succeeded();
                Ok(conn)
            }
            Err(e) => Err(dialer.failed(addr, e, peer)),
        };
    }
    let now = Instant::now();
    if dialer.probe.is_none() && now >= dialer.next_attempt {
        let shared = shared.clone();
        let dial = async move { dial_or_take_theirs(&shared, peer, addr).await };
        dialer.probe = Some(tokio::spawn(dial.in_current_span()));
    }
    let last = dialer.last_error.clone().unwrap_or_default();
    let reason = if dialer.probe.is_some() {
        format!("{last} (redialing)")
    } else {
        let wait_ms = dialer.next_attempt.saturating_duration_since(now).as_millis();
        format!("{last} (next dial in {wait_ms} ms)")
    };
    Err(Box::new(move || NetError::Unreachable {
        peer,
        reason: reason.clone(),
    }))
}

/// Dials `peer` at `addr`, checks the certificate names that node, registers the connection and serves it.
/// Dials `peer`, unless the peer's own connection to this node arrives first: then that one is
/// used at once, and the dial goes on by itself. When nodes start together, a node's first dial
/// often reaches a peer whose endpoint is not bound yet; the lost handshake packet is only sent
/// again after quinn's probe timeout (about a second with its default initial RTT), while the
/// peer, once up, dials this node within milliseconds. Waiting out our own handshake held every
/// consensus message to that peer for that second, and `plexus up` was ready a second late.
/// The dial is not abandoned: two nodes dialling each other at once would each take the other's
/// connection and drop their own, which is the very connection the other had taken.
async fn dial_or_take_theirs(shared: &Arc<PeerShared>, peer: u64, addr: SocketAddr) -> Result<Connection, NetError> {
    let mut dialing = Box::pin(dial(shared.clone(), peer, addr));
    tokio::select! {
        biased;
        dialed = &mut dialing => dialed,
        conn = look_until(&shared.registered, || shared.live_conn(peer)) => {
            debug!("using the peer's own connection while our dial completes");
            // Bounded by `dial_timeout_ms`; on success it registers its connection itself.
            tokio::spawn(dialing.in_current_span());
            Ok(conn)
        }
    }
}

async fn dial(shared: Arc<PeerShared>, peer: u64, addr: SocketAddr) -> Result<Connection, NetError> {
    let unreachable = |reason: String| NetError::Unreachable { peer, reason };
    let connecting = shared
        .endpoint
        .connect_with(shared.dial_config.clone(), addr, SERVER_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    let dial_timeout = Duration::from_millis(shared.limits.dial_timeout_ms);
    let conn = match tokio::time::timeout(dial_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => {
            return Err(unreachable(format!(
                "handshake timed out after {} ms",
                shared.limits.dial_timeout_ms
            )))
        }
    };
    let got = peer_node_id(&conn);
    if got != Some(peer) {
        conn.close(VarInt::from_u32(CLOSE_WRONG_PEER), b"wrong peer");
        return Err(NetError::WrongPeer { expected: peer, got });
    }
    debug!(%addr, "dialed peer");
    shared.register(peer, conn.clone());
    let span = tracing::info_span!("peer_conn", node = shared.node_id, peer, conn = conn.stable_id());
    tokio::spawn(serve_peer_conn(shared.clone(), conn.clone(), peer).instrument(span));
    Ok(conn)
}

/// Sends one batch and answers its callers; holds a batch slot until done.
async fn send_batch(
    shared: Arc<PeerShared>,
    peer: u64,
    conn: Connection,
    batch: Vec<Pending>,
    _permit: OwnedSemaphorePermit,
) {
    // The batch may take as long as its most patient caller.
    let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
    let (msgs, callers): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (WireBytes(p.msg), p.reply)).unzip();
    let n = msgs.len();
    let frame = PeerBatch {
        from: shared.node_id,
        msgs,
    };
    let outcome: Result<PeerBatchReply, ErrMaker> =
        match tokio::time::timeout_at(deadline, exchange(&shared, &conn, &frame)).await {
            Ok(Ok(replies)) if replies.len() == n => Ok(replies),
            Ok(Ok(replies)) => {
                let reason = format!("reply carries {} results for {n} messages", replies.len());
                Err(Box::new(move || NetError::Protocol {
                    peer,
                    reason: reason.clone(),
                }))
            }
            Ok(Err(reason)) => {
                // Prefer the connection's own close reason: it says why (for example a refused certificate).
                let reason = conn.close_reason().map(|r| r.to_string()).unwrap_or(reason);
                Err(Box::new(move || NetError::ConnectionLost {
                    peer,
                    reason: reason.clone(),
                }))
            }
            Err(_) => Err(Box::new(move || NetError::ConnectionLost {
                peer,
                reason: "batch timed out".into(),
            })),
        };
    match outcome {
        Ok(replies) => {
            shared.health.succeeded(peer);
            for (reply, caller) in replies.into_iter().zip(callers) {
                let _ = caller.send(reply.map(|b| b.0).map_err(NetError::Remote));
            }
        }
        Err(make_err) => {
            shared.counters.batches_failed.fetch_add(1, Ordering::Relaxed);
            debug!(error = %make_err(), msgs = n, "peer batch failed");
            let stopping = matches!(
                conn.close_reason(),
                Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == VarInt::from_u32(CLOSE_SHUTDOWN)
            );
            shared.health.failed(peer, n as u64, &make_err(), stopping);
            for caller in callers {
                let _ = caller.send(Err(make_err()));
            }
        }
    }
}

/// One stream round trip: the batch frame out, the reply frame back.
async fn exchange(shared: &PeerShared, conn: &Connection, frame: &PeerBatch) -> Result<PeerBatchReply, String> {
    let max = shared.limits.frame_bytes_max;
    let bytes = encode(FrameKind::PeerBatch, frame, max).map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    // Handed over whole: quinn queues the buffer itself instead of copying it.
    send.write_chunk(bytes.into()).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    read_msg(&mut recv, FrameKind::PeerBatchReply, max)
        .await
        .map_err(|e| e.to_string())
}
