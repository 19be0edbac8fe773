//! The workload: clients doing graph, timeline and filter operations, and the history they leave.
//!
//! What it is: each simulated client is one real `plexus_client::Client` over the simulated
//! network (`client`), its RNG seeded from the seed. It owns some vertices, timeline owners and
//! filters (it is their only writer, so a key's writes are sequential and its expected final
//! state is exact), and reads anything. It picks operations by the seed's weights, with random
//! think time, until told to stop, and records every operation with its virtual invoke and
//! complete times and its answer. A call the client gave up on (its time limit, its retries)
//! is recorded as an error: the checkers treat every error as an unknown outcome.
//!
//! What it is not: a checker. Checkers read the history afterwards (`checkers`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_client::{Client, ClientError};
use plexus_proto::{Consistency, Cursor, ErrorReply, Op, ReadOp, Reply, Request, Response, WriteOp};
use rand::rngs::StdRng;
use rand::Rng;

use crate::net::SimNet;
use crate::trace::Trace;

/// Vertices each client owns (it alone follows and unfollows from them).
pub const VERTICES_PER_CLIENT: u64 = 6;
/// Timelines each client owns (it alone appends to them).
pub const TIMELINES_PER_CLIENT: u64 = 3;
/// Filters each client owns.
pub const FILTERS_PER_CLIENT: u64 = 2;
/// Appends per timeline, kept below the state machine's 800-entry cap so nothing is evicted.
pub const APPENDS_PER_TIMELINE_MAX: u64 = 600;
/// Entries asked for by one timeline read.
pub const READ_PAGE_ENTRIES: u32 = 50;
/// One read in this many is first sent, raw (`Client::call_at`), to a random node, as by a
/// client that just reconnected and knows no leader: a correct node that does not lead
/// redirects it (the client then routes the read itself), a node that served it from its own,
/// possibly stale, state would be caught by the read checkers.
pub const FRESH_READ_ONE_IN: u32 = 5;
/// Pause before a client that could not reach any seed tries again, in milliseconds.
pub const CONNECT_RETRY_MS: u64 = 500;

/// One operation as a client issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add `src → dst`.
    Follow(u64, u64),
    /// Remove `src → dst`.
    Unfollow(u64, u64),
    /// Whether `src → dst` exists.
    HasEdge(u64, u64),
    /// Append `item` to `owner`'s timeline.
    Append(u64, Vec<u8>),
    /// Read the newest page of `owner`'s timeline.
    ReadTimeline(u64),
    /// Add `key` to filter `name`.
    FilterAdd(String, Vec<u8>),
    /// Ask filter `name` about `key`.
    FilterContains(String, Vec<u8>),
}

/// One completed operation of any workload: `A` what it did, `O` what it came to.
#[derive(Clone, Debug)]
pub struct Completed<A, O> {
    /// The client (1-based).
    pub client: u64,
    /// What it did.
    pub action: A,
    /// Virtual microseconds at invocation.
    pub invoked_us: u64,
    /// Virtual microseconds at completion.
    pub completed_us: u64,
    /// The answer; an error when the call failed (see [`failure`]), an unknown outcome.
    pub result: Result<O, ErrorReply>,
}

/// One completed operation of this workload.
pub type Record = Completed<Action, Reply>;

/// Every key the workload may touch.
#[derive(Clone, Debug, Default)]
pub struct Universe {
    /// Vertex ids.
    pub vertices: Vec<u64>,
    /// Timeline owners.
    pub owners: Vec<u64>,
    /// Filter names.
    pub filters: Vec<String>,
}

fn own_vertices(client: u64) -> Vec<u64> {
    (0..VERTICES_PER_CLIENT).map(|i| client * 1_000 + i).collect()
}

fn own_owners(client: u64) -> Vec<u64> {
    (0..TIMELINES_PER_CLIENT).map(|i| client * 1_000 + 500 + i).collect()
}

fn own_filters(client: u64) -> Vec<String> {
    (0..FILTERS_PER_CLIENT).map(|i| format!("f{client}-{i}")).collect()
}

impl Universe {
    /// The keys of `clients` clients.
    pub fn new(clients: u64) -> Self {
        let mut u = Universe::default();
        for c in 1..=clients {
            u.vertices.extend(own_vertices(c));
            u.owners.extend(own_owners(c));
            u.filters.extend(own_filters(c));
        }
        u
    }
}

/// The shared history.
pub type History = Arc<Mutex<Vec<Record>>>;

/// A short, stable rendering of an answer for the trace.
pub fn summary(r: &Response) -> String {
    match r {
        Ok(Reply::Page(p)) => format!("page n={} first={:?}", p.entries.len(), p.entries.first().map(|e| e.id)),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("err {e}"),
    }
}

/// The error a history records for a failed call: the node's own answer when one ended the
/// call (the last one, when retries ran out), else a `Timeout` for the client's time limit or
/// connection trouble, else `Internal`. Every one of them is an unknown outcome.
pub fn failure(e: ClientError) -> ErrorReply {
    match e {
        ClientError::Server(e) => e,
        ClientError::RetriesExhausted { last, .. } => failure(*last),
        ClientError::Timeout => ErrorReply::Timeout("client: request timed out".into()),
        e if e.is_transient() => ErrorReply::Timeout(format!("client: {e}")),
        e => ErrorReply::Internal(format!("client: {e}")),
    }
}

/// What a client call came to, as the history records it.
fn outcome(r: Result<Reply, ClientError>) -> Response {
    r.map_err(failure)
}

/// A read sent raw to the node at `addr`; when that node does not serve it (a redirect, no
/// leader) or cannot be reached, the client routes it as usual, as a reconnected client would.
/// The raw call is bounded by the client's attempt limit; the routed one by its call limit.
async fn fresh_read(cl: &Client, addr: &str, op: Op) -> Response {
    let req = Request {
        shard: op.shard(cl.shard_map().shard_count).unwrap_or(0),
        consistency: Consistency::Linearizable,
        session: None,
        op: op.clone(),
    };
    match cl.call_at(addr, req).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) if e.is_retryable() => outcome(cl.call(op, Consistency::Linearizable).await),
        Ok(Err(e)) => Err(e),
        Err(e) if e.is_transient() => outcome(cl.call(op, Consistency::Linearizable).await),
        Err(e) => Err(failure(e)),
    }
}

/// Connects client number `client`, trying again until it reaches a seed or `stop` is set.
pub(crate) async fn connect(
    client: u64,
    net: &Arc<SimNet>,
    nodes: &BTreeMap<String, u64>,
    rng_seed: u64,
    stop: &AtomicBool,
    trace: &Trace,
) -> Option<Client> {
    loop {
        match crate::client::connect(net.clone(), nodes.clone(), rng_seed).await {
            Ok(cl) => {
                trace.event(format_args!("client {client} connected id={:016x}", cl.client_id()));
                return Some(cl);
            }
            Err(e) => trace.event(format_args!("client {client} connect failed: {e}")),
        }
        if stop.load(Ordering::Acquire) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(CONNECT_RETRY_MS)).await;
    }
}

/// Runs client number `client` until `stop` is set: a real client over `net` reaching `nodes`
/// (client address → node id). `rng` picks the operations, and its first draw seeds the client
/// library's own RNG (client id, backoff jitter), so the seed decides both.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    client: u64,
    net: Arc<SimNet>,
    nodes: BTreeMap<String, u64>,
    mut rng: StdRng,
    weights: [u32; 7],
    think_ms_max: u64,
    universe: Universe,
    history: History,
    stop: Arc<AtomicBool>,
    trace: Trace,
) {
    let Some(cl) = connect(client, &net, &nodes, rng.gen::<u64>(), &stop, &trace).await else {
        return;
    };
    let addrs: Vec<&String> = nodes.keys().collect();
    let vertices = own_vertices(client);
    let owners = own_owners(client);
    let filters = own_filters(client);
    let total: u32 = weights.iter().sum::<u32>().max(1);
    let mut appends: BTreeMap<u64, u64> = BTreeMap::new();
    let mut acked_keys: Vec<(String, Vec<u8>)> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let mut pick = rng.gen_range(0..total);
        let mut kind = 0;
        while pick >= weights[kind] {
            pick -= weights[kind];
            kind += 1;
        }
        let src = vertices[rng.gen_range(0..vertices.len())];
        let dst = universe.vertices[rng.gen_range(0..universe.vertices.len())];
        let owner = owners[rng.gen_range(0..owners.len())];
        let any_owner = universe.owners[rng.gen_range(0..universe.owners.len())];
        let filter = filters[rng.gen_range(0..filters.len())].clone();
        let known = (!acked_keys.is_empty()).then(|| acked_keys[rng.gen_range(0..acked_keys.len())].clone());
        let action = match kind {
            0 => Action::Follow(src, dst),
            1 => Action::Unfollow(src, dst),
            2 => Action::HasEdge(src, dst),
            3 if appends.get(&owner).copied().unwrap_or(0) < APPENDS_PER_TIMELINE_MAX => {
                *appends.entry(owner).or_default() += 1;
                Action::Append(owner, format!("c{client}-{n}").into_bytes())
            }
            3 | 4 => Action::ReadTimeline(any_owner),
            6 if known.is_some() => {
                let (name, key) = known.unwrap_or_default();
                Action::FilterContains(name, key)
            }
            _ => Action::FilterAdd(filter, format!("k{client}-{n}").into_bytes()),
        };
        let is_read = matches!(
            action,
            Action::HasEdge(..) | Action::ReadTimeline(_) | Action::FilterContains(..)
        );
        let fresh = (is_read && rng.gen_range(0..FRESH_READ_ONE_IN) == 0).then(|| addrs[rng.gen_range(0..addrs.len())]);
        let op = match action.clone() {
            Action::Follow(src, dst) => Op::Write(WriteOp::Follow { src, dst }),
            Action::Unfollow(src, dst) => Op::Write(WriteOp::Unfollow { src, dst }),
            Action::HasEdge(src, dst) => Op::Read(ReadOp::HasEdge { src, dst }),
            Action::Append(owner, item) => Op::Write(WriteOp::TimelineAppend { owner, item }),
            Action::ReadTimeline(owner) => Op::Read(ReadOp::TimelineRead {
                owner,
                cursor: Cursor::Latest,
                limit: READ_PAGE_ENTRIES,
            }),
            Action::FilterAdd(name, key) => Op::Write(WriteOp::FilterAdd { name, keys: vec![key] }),
            Action::FilterContains(name, key) => Op::Read(ReadOp::FilterContains { name, keys: vec![key] }),
        };
        let invoked_us = trace.now_us();
        let result = match fresh {
            Some(addr) => fresh_read(&cl, addr, op).await,
            None => outcome(cl.call(op, Consistency::Linearizable).await),
        };
        if let (Action::FilterAdd(name, key), Ok(_)) = (&action, &result) {
            acked_keys.push((name.clone(), key.clone()));
        }
        trace.event(format_args!("client {client} {action:?} -> {}", summary(&result)));
        let record = Record {
            client,
            action,
            invoked_us,
            completed_us: trace.now_us(),
            result,
        };
        history.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        let think = rng.gen_range(1..=think_ms_max.max(1));
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    cl.close().await;
}
