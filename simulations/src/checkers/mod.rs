//! Checkers, one property per file. Each takes the run's history and/or the final state and
//! returns its violations as sentences (empty when the property holds).
//!
//! - `acked_writes`: no acknowledged write is lost (timeline appends, filter keys, edges).
//! - `exactly_once`: no write is applied twice (a timeline never holds one item twice).
//! - `read_your_writes`: a client's linearizable reads see its own acknowledged writes.
//! - `linearizable`: every key's history is linearizable — timelines (appends and reads) there,
//!   edges (follows, unfollows, `HasEdge`) in `linearizable_edges`, filter keys (adds and the
//!   absence side of `contains`) in `linearizable_filters`; each a bounded WGL search (`wgl`); a
//!   key whose search runs too long is reported unchecked.
//! - `timeline_order`: timeline ids strictly ordered in every page and at the end.
//! - `edges`: out-edges and in-edges agree after healing.
//! - `convergence`: all replicas of a shard reach the same state hash after healing.
//! - `feed`: acknowledged posts kept and deleted ones gone, paging sessions without repeats,
//!   and every home feed exactly what the follow graph and the posts imply after healing.
//! - `empi`: acknowledged records kept with the fields last written, every record in a live
//!   identity that lists it, the change stream gap-free and replaying to the final identities,
//!   and the last acknowledged steward link or unlink of each pair holding after healing.
//! - `raft_safety`: at most one leader per group and term.
//! - `committed_entries`: an index of a group is never applied as two different entries, and
//!   every snapshot a replica builds, installs or loads holds the state that applying the
//!   group's committed entries up to its index gives.
//!
//! `wgl` is not a property: it is the linearizability search the `linearizable*` checkers share.

pub mod acked_writes;
pub mod committed_entries;
pub mod convergence;
pub mod edges;
pub mod empi;
pub mod exactly_once;
pub mod feed;
pub mod linearizable;
pub mod linearizable_edges;
pub mod linearizable_filters;
pub mod raft_safety;
pub mod read_your_writes;
pub mod timeline_order;
pub mod wgl;

use std::collections::{BTreeMap, BTreeSet};

/// What the healed cluster holds, read from one replica of each shard after convergence.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    /// Timeline owner → entries `(id, item)`, oldest first.
    pub timelines: BTreeMap<u64, Vec<(u64, Vec<u8>)>>,
    /// Vertex → out-neighbours (from the vertex's shard).
    pub out_edges: BTreeMap<u64, BTreeSet<u64>>,
    /// Vertex → in-neighbours (from the vertex's shard).
    pub in_edges: BTreeMap<u64, BTreeSet<u64>>,
    /// `(filter, key)` → whether the filter says it may contain the key.
    pub filter_hits: BTreeMap<(String, Vec<u8>), bool>,
}

/// One replica's state at the end: `(node, last applied index, state hash)`.
pub type ReplicaEnd = (u64, u64, u64);

/// Helpers shared by the checkers' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use plexus_proto::Response;

    use crate::workload::{Action, Record};

    /// A record of `client` doing `action` from `at.0` to `at.1` (microseconds) with `result`.
    pub(crate) fn rec(client: u64, action: Action, at: (u64, u64), result: Response) -> Record {
        Record {
            client,
            action,
            invoked_us: at.0,
            completed_us: at.1,
            result,
        }
    }
}
