//! The workload: clients doing graph, timeline and filter operations, and the history they leave.
//!
//! What it is: each client owns some vertices, timeline owners and filters (it is their only
//! writer, so a key's writes are sequential and its expected final state is exact), and reads
//! anything. It picks operations by the seed's weights, with random think time, until told to
//! stop, and records every operation with its virtual invoke and complete times and its answer.
//!
//! What it is not: a checker. Checkers read the history afterwards (`checkers`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_proto::{Cursor, ReadOp, Reply, Response, WriteOp};
use rand::Rng;

use crate::client::SimClient;
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
/// One read in this many starts with no cached leader (a client that just reconnected), so it
/// lands on a random node: a correct node that does not lead redirects it, a node that served
/// it from its own, possibly stale, state would be caught by the read checkers.
pub const FRESH_READ_ONE_IN: u32 = 5;

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

/// One completed operation.
#[derive(Clone, Debug)]
pub struct Record {
    /// The client (1-based).
    pub client: u64,
    /// What it did.
    pub action: Action,
    /// Virtual microseconds at invocation.
    pub invoked_us: u64,
    /// Virtual microseconds at completion.
    pub completed_us: u64,
    /// The answer (an error after the retries ran out).
    pub result: Response,
}

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

/// Runs client number `client` until `stop` is set.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    client: u64,
    mut sc: SimClient,
    weights: [u32; 7],
    think_ms_max: u64,
    universe: Universe,
    history: History,
    stop: Arc<AtomicBool>,
    trace: Trace,
) {
    let vertices = own_vertices(client);
    let owners = own_owners(client);
    let filters = own_filters(client);
    let total: u32 = weights.iter().sum::<u32>().max(1);
    let mut appends: BTreeMap<u64, u64> = BTreeMap::new();
    let mut acked_keys: Vec<(String, Vec<u8>)> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let rng = sc.rng();
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
        if is_read && sc.rng().gen_range(0..FRESH_READ_ONE_IN) == 0 {
            sc.forget_leaders();
        }
        let invoked_us = trace.now_us();
        let result = match action.clone() {
            Action::Follow(src, dst) => sc.write(WriteOp::Follow { src, dst }).await,
            Action::Unfollow(src, dst) => sc.write(WriteOp::Unfollow { src, dst }).await,
            Action::HasEdge(src, dst) => sc.read(ReadOp::HasEdge { src, dst }).await,
            Action::Append(owner, item) => sc.write(WriteOp::TimelineAppend { owner, item }).await,
            Action::ReadTimeline(owner) => {
                sc.read(ReadOp::TimelineRead {
                    owner,
                    cursor: Cursor::Latest,
                    limit: READ_PAGE_ENTRIES,
                })
                .await
            }
            Action::FilterAdd(name, key) => sc.write(WriteOp::FilterAdd { name, keys: vec![key] }).await,
            Action::FilterContains(name, key) => sc.read(ReadOp::FilterContains { name, keys: vec![key] }).await,
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
        let think = sc.rng().gen_range(1..=think_ms_max.max(1));
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}
