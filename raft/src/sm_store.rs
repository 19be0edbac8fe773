//! The openraft state machine for one group: a `ShardState` in memory, made
//! durable by snapshot files.
//!
//! Applying never touches the disk: committed entries are already fsynced in
//! the WAL, so after a crash the state is rebuilt from the last snapshot plus
//! the log after it. Snapshots are written (tmp, fsync, rename) before openraft
//! is told about them, so it only purges log entries a snapshot covers.

// openraft's trait signatures fix `StorageError` as the error type; helpers
// return it too rather than converting at every call site.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use plexus_proto::{Reply, Response};
use serde::{Deserialize, Serialize};

use crate::sim_hooks::{ApplyObserver, Canary, SimHooks, SnapshotEvent, SnapshotObserver};
use crate::types::TypeConfig;
use crate::wal::SnapshotStore;
use plexus_core::state::{ShardState, StateLimits};

type NodeId = u64;
type Node = openraft::BasicNode;

/// Shared handle to a group's applied state; readers take the read lock.
pub type SharedState = Arc<RwLock<ShardState>>;

/// Snapshot metadata as stored next to the state bytes.
#[derive(Serialize, Deserialize)]
struct StoredMeta {
    last_log_id: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Node>,
    snapshot_id: String,
}

/// openraft's snapshot metadata for our node types.
type Meta = SnapshotMeta<NodeId, Node>;

/// Writes a snapshot file (meta + state bytes) for `group`.
fn save_snapshot(
    store: &SnapshotStore,
    group: u32,
    meta: &SnapshotMeta<NodeId, Node>,
    data: &[u8],
) -> Result<(), StorageError<NodeId>> {
    let stored = StoredMeta {
        last_log_id: meta.last_log_id,
        last_membership: meta.last_membership.clone(),
        snapshot_id: meta.snapshot_id.clone(),
    };
    let meta_bytes = postcard::to_stdvec(&stored).map_err(sm_err)?;
    store.save(group, &meta_bytes, data).map_err(sm_err)
}

/// Encodes `state` and saves it as `group`'s snapshot file; returns the encoded state.
fn encode_and_save(
    store: &SnapshotStore,
    group: u32,
    meta: &Meta,
    state: &ShardState,
) -> Result<Vec<u8>, StorageError<NodeId>> {
    let data = state.to_snapshot();
    save_snapshot(store, group, meta, &data)?;
    Ok(data)
}

/// Reads `group`'s snapshot file, if any: its metadata and state bytes.
fn load_snapshot(store: &SnapshotStore, group: u32) -> Result<Option<(Meta, Vec<u8>)>, StorageError<NodeId>> {
    let Some((meta, data)) = store.load(group).map_err(read_sm_err)? else {
        return Ok(None);
    };
    let m: StoredMeta = postcard::from_bytes(&meta).map_err(read_sm_err)?;
    let meta = SnapshotMeta {
        last_log_id: m.last_log_id,
        last_membership: m.last_membership,
        snapshot_id: m.snapshot_id,
    };
    Ok(Some((meta, data)))
}

/// The state machine store of one group.
pub struct StateMachineStore {
    group: u32,
    state: SharedState,
    limits: StateLimits,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Node>,
    snapshots: Arc<SnapshotStore>,
    snapshot_seq: u64,
    /// Simulation only: the canary every state built here runs with.
    canary: Option<Canary>,
    /// Simulation only: sees every applied entry.
    on_apply: Option<ApplyObserver>,
    /// Simulation only: sees every snapshot built, installed or loaded.
    on_snapshot: Option<SnapshotObserver>,
    /// Notified whenever an apply or an install leaves the cross-shard outbox non-empty, so the
    /// shard actor delivers it at once instead of polling for it.
    outbox_ready: Arc<tokio::sync::Notify>,
    /// Notified whenever an apply or an install leaves the feed or EMPI outbox non-empty (the
    /// node's workload pump); `None`: `outbox_ready` is.
    pump_ready: Option<Arc<tokio::sync::Notify>>,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn read_sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}

impl StateMachineStore {
    /// Opens the group's state from its last snapshot file, or empty.
    pub fn open(
        group: u32,
        shard_count: u32,
        limits: StateLimits,
        snapshots: Arc<SnapshotStore>,
    ) -> Result<Self, StorageError<NodeId>> {
        let mut store = Self {
            group,
            state: Arc::new(RwLock::new(ShardState::new(group, shard_count, limits.clone()))),
            limits,
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshots,
            snapshot_seq: 0,
            canary: None,
            on_apply: None,
            on_snapshot: None,
            outbox_ready: Arc::new(tokio::sync::Notify::new()),
            pump_ready: None,
        };
        if let Some((meta, data)) = load_snapshot(&store.snapshots, group)? {
            let state = ShardState::from_snapshot(&data, store.limits.clone()).map_err(read_sm_err)?;
            store.last_applied = meta.last_log_id;
            store.last_membership = meta.last_membership;
            *store.state.write().map_err(read_sm_err)? = state;
        }
        store.signal_outbox(&*store.state.read().map_err(read_sm_err)?);
        Ok(store)
    }

    /// The signal that the outbox holds something to deliver (a permit is kept if nobody waits).
    pub fn outbox_ready(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_ready.clone()
    }

    /// This store signalling `pump_ready` (the node's workload pump) for its feed and EMPI
    /// outboxes.
    pub fn with_pump_ready(mut self, pump_ready: Option<Arc<tokio::sync::Notify>>) -> Self {
        self.pump_ready = pump_ready;
        if let Ok(state) = self.state.read() {
            self.signal_outbox(&state);
        }
        self
    }

    fn signal_outbox(&self, state: &ShardState) {
        if state.outbox_len() > 0 {
            self.outbox_ready.notify_one();
        }
        if state.feed_outbox_len() > 0 || state.empi_outbox_len() > 0 {
            match &self.pump_ready {
                Some(ready) => ready.notify_one(),
                None => self.outbox_ready.notify_one(),
            }
        }
    }

    /// This store with the simulator's hooks: the canary goes into the state (now and after
    /// every snapshot install), the observers see every applied entry and every snapshot (the
    /// one `open` loaded, if any, is reported here).
    pub fn with_hooks(mut self, hooks: &SimHooks) -> Self {
        self.canary = hooks.canary;
        self.on_apply = hooks.on_apply.clone();
        self.on_snapshot = hooks.on_snapshot.clone();
        // Setting one field cannot leave the state half-updated, so a poisoned lock is still fine.
        let mut state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.set_canary(self.canary);
        // `open` sets `last_applied` only from a snapshot it loaded.
        if let (Some(observe), Some(_)) = (&self.on_snapshot, self.last_applied) {
            observe(self.group, SnapshotEvent::Loaded, self.last_applied, state.state_hash());
        }
        drop(state);
        self
    }

    /// The state readers use.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    fn install(&mut self, meta: &SnapshotMeta<NodeId, Node>, data: Vec<u8>) -> Result<(), StorageError<NodeId>> {
        let mut state = ShardState::from_snapshot(&data, self.limits.clone()).map_err(sm_err)?;
        state.set_canary(self.canary);
        if let Some(observe) = &self.on_snapshot {
            observe(
                self.group,
                SnapshotEvent::Installed,
                meta.last_log_id,
                state.state_hash(),
            );
        }
        save_snapshot(&self.snapshots, self.group, meta, &data)?;
        self.signal_outbox(&state);
        *self.state.write().map_err(sm_err)? = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }
}

/// Builds a snapshot from a copy of the state taken under the read lock.
///
/// The copy is taken when openraft asks for the builder, together with `last_applied`: openraft
/// runs `build_snapshot` as a separate task while the state machine goes on applying entries, so
/// reading the shared state there could store a state that is ahead of the snapshot's last log
/// id (the simulator's `committed_entries` checker caught exactly that).
pub struct SnapshotBuilder {
    group: u32,
    /// The state at `last_applied`, or why it could not be read (a poisoned lock).
    state: Result<ShardState, String>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Node>,
    snapshots: Arc<SnapshotStore>,
    seq: u64,
    on_snapshot: Option<SnapshotObserver>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        if let Some(observe) = &self.on_snapshot {
            let state = self.state.as_ref().map_err(read_sm_err)?;
            observe(self.group, SnapshotEvent::Built, self.last_applied, state.state_hash());
        }
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}-{}", self.group, l.leader_id.term, l.index, self.seq),
            None => format!("{}-0-0-{}", self.group, self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let data = if self.snapshots.offload_blocking() {
            // Encoding and writing a large state takes a while; on a node running on one thread
            // it would hold up every group, so it goes to a blocking thread. The builder is used
            // once, so its copy of the state moves there.
            let state = std::mem::replace(&mut self.state, Err("this builder has built already".into()))
                .map_err(read_sm_err)?;
            let (store, group, stored) = (self.snapshots.clone(), self.group, meta.clone());
            tokio::task::spawn_blocking(move || encode_and_save(&store, group, &stored, &state))
                .await
                .map_err(sm_err)??
        } else {
            let state = self.state.as_ref().map_err(read_sm_err)?;
            encode_and_save(&self.snapshots, self.group, &meta, state)?
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut state = self.state.write().map_err(sm_err)?;
        for entry in entries {
            if let Some(observe) = &self.on_apply {
                observe(self.group, &entry);
            }
            self.last_applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => Ok(Reply::Done),
                EntryPayload::Normal(cmd) => state.apply(entry.log_id.index, &cmd),
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(Reply::Done)
                }
            };
            out.push(resp);
        }
        self.signal_outbox(&state);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let state = self.state.read().map(|s| s.clone()).map_err(|e| e.to_string());
        SnapshotBuilder {
            group: self.group,
            state,
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshots: self.snapshots.clone(),
            seq: self.snapshot_seq,
            on_snapshot: self.on_snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.install(meta, snapshot.into_inner())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // Builders and installs both write the file before openraft hears of a
        // snapshot, so the file is the current snapshot; no copy is kept in memory.
        Ok(
            load_snapshot(&self.snapshots, self.group)?.map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry};
    use plexus_proto::WriteOp;

    use super::*;
    use crate::types::Command;

    fn append(index: u64, item: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Client {
                session: None,
                op: WriteOp::TimelineAppend {
                    owner: 7,
                    item: item.as_bytes().to_vec(),
                },
                now_millis: 1_700_000_000_000,
            }),
        }
    }

    /// The OS's disk, except that renaming (a snapshot save's last step) waits until the test
    /// lets it go, for at most `wait`: a save that blocks the runtime's only thread can never be
    /// let go by a task on that runtime, and fails.
    struct GatedDisk {
        gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
        wait: std::time::Duration,
        offload: bool,
    }

    impl crate::wal::Disk for GatedDisk {
        fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
            crate::wal::OsDisk.create_dir_all(dir)
        }
        fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
            crate::wal::OsDisk.list(dir)
        }
        fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
            crate::wal::OsDisk.read(path)
        }
        fn create(&self, path: &std::path::Path, exclusive: bool) -> std::io::Result<Box<dyn crate::wal::DiskFile>> {
            crate::wal::OsDisk.create(path, exclusive)
        }
        fn open_append(&self, path: &std::path::Path, at: u64) -> std::io::Result<Box<dyn crate::wal::DiskFile>> {
            crate::wal::OsDisk.open_append(path, at)
        }
        fn truncate(&self, path: &std::path::Path, len: u64, sync: bool) -> std::io::Result<()> {
            crate::wal::OsDisk.truncate(path, len, sync)
        }
        fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
            crate::wal::OsDisk.remove(path)
        }
        fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
            let gate = self.gate.lock().unwrap().recv_timeout(self.wait);
            gate.map_err(|_| std::io::Error::other("the save blocked the runtime"))?;
            crate::wal::OsDisk.rename(from, to)
        }
        fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
            crate::wal::OsDisk.sync_dir(dir)
        }
        fn lock_dir(&self, dir: &std::path::Path) -> Result<Option<std::fs::File>, crate::wal::WalError> {
            crate::wal::OsDisk.lock_dir(dir)
        }
        fn offload_blocking(&self) -> bool {
            self.offload
        }
    }

    /// Builds a snapshot on this (one-thread) runtime while another task lets the save's rename
    /// go; true if the build succeeded.
    async fn build_while_another_task_runs(offload: bool) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let (release, gate) = std::sync::mpsc::channel();
        let disk = Arc::new(GatedDisk {
            gate: std::sync::Mutex::new(gate),
            wait: std::time::Duration::from_millis(500),
            offload,
        });
        let snapshots = Arc::new(SnapshotStore::open_with(dir.path(), disk).unwrap());
        let mut sm = StateMachineStore::open(0, 1, StateLimits::default(), snapshots).unwrap();
        sm.apply([append(1, "a")]).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        let build = tokio::spawn(async move { builder.build_snapshot().await.is_ok() });
        // Runs only when the runtime's thread is free, which an in-place save does not leave it.
        // (After a failed build nobody is listening any more.)
        tokio::spawn(async move {
            let _ = release.send(());
        });
        build.await.unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_snapshot_on_an_os_disk_is_saved_off_the_runtime() {
        assert!(
            build_while_another_task_runs(true).await,
            "the save held up the runtime"
        );
        // Without the offload (the simulator's disks) the save runs in place and blocks it.
        assert!(!build_while_another_task_runs(false).await);
    }

    #[tokio::test]
    async fn a_snapshot_holds_the_state_at_its_last_log_id_while_applies_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Arc::new(SnapshotStore::open(dir.path()).unwrap());
        let mut sm = StateMachineStore::open(0, 1, StateLimits::default(), snapshots).unwrap();
        sm.apply([append(1, "a"), append(2, "b")]).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        // openraft builds in a task of its own while the state machine applies the next entries.
        sm.apply([append(3, "c")]).await.unwrap();
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(2));
        let state = ShardState::from_snapshot(snapshot.snapshot.get_ref(), StateLimits::default()).unwrap();
        assert_eq!(state.last_applied(), 2);
        assert_eq!(sm.shared().read().unwrap().last_applied(), 3);
    }
}
