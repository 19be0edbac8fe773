//! openraft's `RaftLogStorage` for one Raft group, over the node's shared `Wal`.
//!
//! What it is: the group's unpurged log entries, vote, committed pointer and last purged log id,
//! kept in memory (snapshots bound how many entries there are) and made durable through the WAL,
//! where entries are postcard-encoded `Entry<TypeConfig>`. Writes of all groups go through the
//! WAL's single queue, so one group's appends, truncates, purges and votes reach disk in the
//! order they were issued, and one fsync covers many groups.
//!
//! Durability contract (openraft 0.9 storage v2):
//! - `append` returns once the entries are readable and queued; `LogFlushed` is completed from
//!   the WAL writer thread only after the batch holding them has been fdatasynced.
//! - `save_vote` returns only once the vote is durable.
//! - `truncate`, `purge` and `save_committed` return once queued. Any later append or vote is
//!   behind them in the queue, so it cannot become durable before them; losing one of them in a
//!   crash is safe (entries come back that openraft truncates or purges again; the committed
//!   pointer is only a hint that may lag). The committed pointer is also deferred
//!   (`Wal::submit_deferred`): it costs no fsync of its own and is written with the next durable
//!   batch, or alone after the WAL has been idle a moment.
//!
//! What it is not: it does not keep the state machine or snapshots (`sm_store` does) and never
//! reads the WAL back; recovery happens once, in `Wal::open`, and arrives here as a `GroupLog`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};

use crate::sim_hooks::Canary;
use crate::types::TypeConfig;
use crate::wal::{Done, GroupLog, Wal, WalError, WalOp};

type NodeId = u64;

/// Why a recovered group log cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// A recovered value does not decode.
    #[error("group {group}: recovered {what} does not decode: {source}")]
    Decode {
        /// Raft group.
        group: u32,
        /// Which value (`vote`, `committed`, `purged log id` or `entry <index>`).
        what: String,
        /// The decoding error.
        #[source]
        source: postcard::Error,
    },
    /// An entry's log id disagrees with the index it was stored under.
    #[error("group {group}: entry stored at index {stored} has log id index {found}")]
    IndexMismatch {
        /// Raft group.
        group: u32,
        /// Index in the WAL.
        stored: u64,
        /// Index in the decoded log id.
        found: u64,
    },
    /// The recovered entries are not consecutive after the purge point.
    #[error("group {group}: log hole: index {next} follows {after:?}")]
    Hole {
        /// Raft group.
        group: u32,
        /// The previous index (or the purge point), if any.
        after: Option<u64>,
        /// The index that does not follow it.
        next: u64,
    },
}

/// One group's log as held in memory; always equal to what replaying the WAL would give, once
/// everything queued is durable.
#[derive(Debug, Default)]
struct GroupState {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

/// The log storage of one Raft group. Clones share the same state (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    group: u32,
    wal: Wal,
    state: Arc<Mutex<GroupState>>,
    /// Only the simulator sets this (see `sim_hooks`); `AckBeforeFsync` breaks `append`.
    canary: Option<Canary>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Builds group `group`'s store from what `Wal::open` recovered for it (`GroupLog::default()`
    /// for a new group), checking that every entry decodes and that the log has no hole.
    pub fn new(group: u32, wal: Wal, recovered: GroupLog) -> Result<Self, LogStoreError> {
        let decode_err = |what: String| move |source| LogStoreError::Decode { group, what, source };
        let vote = match &recovered.vote {
            Some(bytes) => Some(postcard::from_bytes::<Vote<NodeId>>(bytes).map_err(decode_err("vote".into()))?),
            None => None,
        };
        let committed = match &recovered.committed {
            Some(bytes) => {
                postcard::from_bytes::<Option<LogId<NodeId>>>(bytes).map_err(decode_err("committed".into()))?
            }
            None => None,
        };
        let last_purged = match recovered.purged_upto {
            Some(upto) => {
                let log_id = postcard::from_bytes::<LogId<NodeId>>(&recovered.purged_meta)
                    .map_err(decode_err("purged log id".into()))?;
                if log_id.index != upto {
                    return Err(LogStoreError::IndexMismatch {
                        group,
                        stored: upto,
                        found: log_id.index,
                    });
                }
                Some(log_id)
            }
            None => None,
        };
        let mut entries = BTreeMap::new();
        let mut prev = recovered.purged_upto;
        for (index, bytes) in recovered.entries {
            let entry: Entry<TypeConfig> =
                postcard::from_bytes(&bytes).map_err(decode_err(format!("entry {index}")))?;
            if entry.log_id.index != index {
                return Err(LogStoreError::IndexMismatch {
                    group,
                    stored: index,
                    found: entry.log_id.index,
                });
            }
            // The first entry of a never-purged log may have any index; after that, no holes.
            if prev.is_some_and(|p| p.checked_add(1) != Some(index)) {
                return Err(LogStoreError::Hole {
                    group,
                    after: prev,
                    next: index,
                });
            }
            prev = Some(index);
            entries.insert(index, entry);
        }
        let state = GroupState {
            entries,
            vote,
            committed,
            last_purged,
        };
        Ok(Self {
            group,
            wal,
            state: Arc::new(Mutex::new(state)),
            canary: None,
        })
    }

    /// This store with `canary` switched on (simulation only, see `sim_hooks`).
    pub fn with_canary(mut self, canary: Option<Canary>) -> Self {
        self.canary = canary;
        self
    }

    /// The Raft group this store belongs to.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// Appends `entries` (readable when this returns) and calls `on_durable` once they are
    /// fsynced. The trait's `append` is this with openraft's `LogFlushed`, which only openraft
    /// can construct.
    pub(crate) async fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        on_durable: Done,
    ) -> Result<(), StorageError<NodeId>> {
        let mut encoded = Vec::new();
        let mut decoded = Vec::new();
        for entry in entries {
            let bytes = postcard::to_allocvec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
            encoded.push((entry.log_id.index, bytes));
            decoded.push(entry);
        }
        {
            let mut state = self.lock();
            for entry in decoded {
                state.entries.insert(entry.log_id.index, entry);
            }
        }
        let op = WalOp::Append {
            group: self.group,
            entries: encoded,
        };
        self.wal.submit_async(vec![op], on_durable).await.map_err(write_err)
    }

    /// Queues `op` behind everything this group wrote before, without waiting for durability.
    async fn queue(&self, op: WalOp) -> Result<(), StorageError<NodeId>> {
        let group = self.group;
        let on_done: Done = Box::new(move |result| {
            if let Err(e) = result {
                // Later appends and votes fail the same way, which is what stops openraft.
                tracing::error!(group, error = %e, "log store: queued WAL write failed");
            }
        });
        self.wal.submit_async(vec![op], on_done).await.map_err(write_err)
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Holders never panic midway through an update, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn write_err(e: WalError) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// Whether `range` holds no index, including ranges `BTreeMap::range` would panic on.
fn is_empty_range(range: &impl RangeBounds<u64>) -> bool {
    let start = match range.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e),
        Bound::Excluded(&e) => e.checked_sub(1),
        Bound::Unbounded => Some(u64::MAX),
    };
    match (start, end) {
        (Some(start), Some(end)) => start > end,
        _ => true,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        if is_empty_range(&range) {
            return Ok(Vec::new());
        }
        let state = self.lock();
        Ok(state.entries.range(range).map(|(_, entry)| entry.clone()).collect())
    }
}

impl LogStore {
    /// The index of the last entry appended (flushed or not), if any: openraft's metrics report
    /// it a loop later, which a leader picking a caught-up successor cannot afford.
    pub fn last_index(&self) -> Option<u64> {
        let state = self.lock();
        let last = state.entries.last_key_value().map(|(_, entry)| entry.log_id);
        last.or(state.last_purged).map(|l| l.index)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let state = self.lock();
        let last = state.entries.last_key_value().map(|(_, entry)| entry.log_id);
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id: last.or(state.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = postcard::to_allocvec(vote).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        let op = WalOp::Vote {
            group: self.group,
            bytes,
        };
        self.wal
            .submit_wait(vec![op])
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let bytes = postcard::to_allocvec(&committed).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        self.lock().committed = committed;
        // A hint that may lag (see the module doc), so it rides on the next fsync instead of
        // paying for one: about half of all fsyncs were this pointer alone.
        self.wal
            .submit_deferred(vec![WalOp::Committed {
                group: self.group,
                bytes,
            }])
            .await
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if self.canary == Some(Canary::AckBeforeFsync) {
            // The canary bug: tell openraft the entries are durable once they are only queued,
            // so a crash before the fsync loses entries that already counted towards a commit.
            let group = self.group;
            let on_durable: Done = Box::new(move |result| {
                if let Err(e) = result {
                    tracing::error!(group, error = %e, "log store: WAL append failed after it was acknowledged");
                }
            });
            self.append_entries(entries, on_durable).await?;
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let on_durable: Done = Box::new(move |result| callback.log_io_completed(result.map_err(std::io::Error::other)));
        self.append_entries(entries, on_durable).await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().entries.split_off(&log_id.index);
        self.queue(WalOp::Truncate {
            group: self.group,
            from_index: log_id.index,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut state = self.lock();
            // The WAL ignores a purge that does not move the purge point; so does memory.
            if state.last_purged.is_some_and(|p| log_id.index <= p.index) {
                return Ok(());
            }
            state.entries = match log_id.index.checked_add(1) {
                Some(first_kept) => state.entries.split_off(&first_kept),
                None => BTreeMap::new(),
            };
            state.last_purged = Some(log_id);
        }
        let meta = postcard::to_allocvec(&log_id).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.queue(WalOp::Purge {
            group: self.group,
            upto_index: log_id.index,
            meta,
        })
        .await
    }
}

#[cfg(test)]
mod tests;
