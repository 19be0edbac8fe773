//! Tests of the log store: openraft's own storage suite, durability timing and recovery.

use std::io::Cursor;
use std::path::Path;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{BasicNode, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};
use plexus_proto::{Reply, Response};

use super::*;
use crate::types::Command;
use crate::wal::WalOptions;

const GROUP: u32 = 7;

/// A minimal in-memory state machine: openraft's suite needs one next to the log store.
#[derive(Clone, Default)]
struct TestSm(Arc<Mutex<SmState>>);

#[derive(Default)]
struct SmState {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

impl TestSm {
    fn lock(&self) -> MutexGuard<'_, SmState> {
        self.0.lock().unwrap()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for TestSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut state = self.lock();
        state.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: state.applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("snap-{}", state.snapshots_built),
        };
        let data = postcard::to_allocvec(&state.applied).unwrap();
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for TestSm {
    type SnapshotBuilder = TestSm;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let state = self.lock();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.lock();
        let mut replies = Vec::new();
        for entry in entries {
            state.applied = Some(entry.log_id);
            if let EntryPayload::Membership(membership) = &entry.payload {
                state.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
            }
            replies.push(Ok(Reply::Done));
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut state = self.lock();
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), snapshot.into_inner()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.lock().snapshot.clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Closes the WAL and removes its directory when a suite case ends.
struct Guard {
    wal: Wal,
    _dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.wal.close();
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, TestSm, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, LogStore, TestSm), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert!(recovered.groups.is_empty());
        let store = LogStore::new(GROUP, wal.clone(), GroupLog::default()).unwrap();
        Ok((Guard { wal, _dir: dir }, store, TestSm::default()))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Command::Noop),
    }
}

/// Appends through the same path as openraft's `append` and waits until the entries are durable.
async fn append_durable(store: &LogStore, entries: Vec<Entry<TypeConfig>>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store
        .append_entries(
            entries,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .await
        .unwrap();
    rx.await.unwrap().unwrap();
}

fn open(dir: &Path, group: u32) -> (Wal, LogStore) {
    let (wal, mut recovered) = Wal::open(dir, WalOptions::default()).unwrap();
    let store = LogStore::new(group, wal.clone(), recovered.groups.remove(&group).unwrap_or_default()).unwrap();
    (wal, store)
}

#[tokio::test]
async fn append_is_reported_durable_only_after_the_batch_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, mut store) = open(dir.path(), GROUP);
    let pause = wal.pause();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    store
        .append_entries(
            vec![entry(1, 1), entry(1, 2)],
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .await
        .unwrap();
    // Readable at once, not yet durable.
    assert_eq!(
        store.try_get_log_entries(1..=2).await.unwrap(),
        vec![entry(1, 1), entry(1, 2)]
    );
    assert!(rx.try_recv().is_err());
    assert_eq!((wal.stats().queued_requests, wal.stats().fsyncs), (1, 0));
    drop(pause);
    rx.await.unwrap().unwrap();
    assert_eq!(wal.stats().fsyncs, 1);
    wal.close();
}

#[tokio::test]
async fn state_survives_reopen_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, mut store) = open(dir.path(), GROUP);
    append_durable(&store, (1..=10).map(|i| entry(1, i)).collect()).await;
    store.save_vote(&Vote::new(2, 1)).await.unwrap();
    store.truncate(log_id(1, 1, 8)).await.unwrap();
    append_durable(&store, vec![entry(2, 8)]).await;
    store.purge(log_id(1, 1, 3)).await.unwrap();
    store.save_committed(Some(log_id(1, 1, 6))).await.unwrap();
    let before = store.get_log_state().await.unwrap();
    assert_eq!(
        before,
        LogState {
            last_purged_log_id: Some(log_id(1, 1, 3)),
            last_log_id: Some(log_id(2, 1, 8)),
        }
    );
    wal.close();

    let (wal, mut store) = open(dir.path(), GROUP);
    assert_eq!(store.get_log_state().await.unwrap(), before);
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 6)));
    let mut expected: Vec<_> = (4..=7).map(|i| entry(1, i)).collect();
    expected.push(entry(2, 8));
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), expected);
    // A reversed range reads nothing instead of panicking inside `BTreeMap::range`.
    let reversed = std::ops::Range { start: 9, end: 3 };
    assert_eq!(store.try_get_log_entries(reversed).await.unwrap(), Vec::new());
    assert_eq!(
        store
            .try_get_log_entries((Bound::Excluded(5), Bound::Excluded(5)))
            .await
            .unwrap(),
        Vec::new()
    );

    // Purging past the end (a snapshot install) leaves the purged id as the last log id.
    store.purge(log_id(3, 1, 20)).await.unwrap();
    wal.close();
    let (wal, mut store) = open(dir.path(), GROUP);
    assert_eq!(
        store.get_log_state().await.unwrap(),
        LogState {
            last_purged_log_id: Some(log_id(3, 1, 20)),
            last_log_id: Some(log_id(3, 1, 20)),
        }
    );
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), Vec::new());
    wal.close();
}

#[tokio::test]
async fn groups_share_one_wal_and_recover_separately() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut a = LogStore::new(1, wal.clone(), GroupLog::default()).unwrap();
    let mut b = LogStore::new(2, wal.clone(), GroupLog::default()).unwrap();
    append_durable(&a, vec![entry(1, 1)]).await;
    append_durable(&b, vec![entry(5, 1), entry(5, 2)]).await;
    a.save_vote(&Vote::new(1, 1)).await.unwrap();
    b.truncate(log_id(5, 1, 2)).await.unwrap();
    wal.close();
    let (wal, mut recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut a = LogStore::new(1, wal.clone(), recovered.groups.remove(&1).unwrap()).unwrap();
    let mut b = LogStore::new(2, wal.clone(), recovered.groups.remove(&2).unwrap()).unwrap();
    assert_eq!(a.try_get_log_entries(..).await.unwrap(), vec![entry(1, 1)]);
    assert_eq!(b.try_get_log_entries(..).await.unwrap(), vec![entry(5, 1)]);
    assert_eq!(a.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
    assert_eq!(b.read_vote().await.unwrap(), None);
    wal.close();
}

#[tokio::test]
async fn damaged_recovered_logs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let bytes = |i: u64| postcard::to_allocvec(&entry(1, i)).unwrap();

    let hole = GroupLog {
        entries: BTreeMap::from([(1, bytes(1)), (3, bytes(3))]),
        ..GroupLog::default()
    };
    assert!(matches!(
        LogStore::new(GROUP, wal.clone(), hole),
        Err(LogStoreError::Hole {
            group: GROUP,
            after: Some(1),
            next: 3
        })
    ));

    let after_purge = GroupLog {
        purged_upto: Some(4),
        purged_meta: postcard::to_allocvec(&log_id(1, 1, 4)).unwrap(),
        entries: BTreeMap::from([(6, bytes(6))]),
        ..GroupLog::default()
    };
    assert!(matches!(
        LogStore::new(GROUP, wal.clone(), after_purge),
        Err(LogStoreError::Hole {
            after: Some(4),
            next: 6,
            ..
        })
    ));

    let misplaced = GroupLog {
        entries: BTreeMap::from([(2, bytes(1))]),
        ..GroupLog::default()
    };
    assert!(matches!(
        LogStore::new(GROUP, wal.clone(), misplaced),
        Err(LogStoreError::IndexMismatch {
            stored: 2,
            found: 1,
            ..
        })
    ));

    let garbage = GroupLog {
        vote: Some(vec![0xff; 3]),
        ..GroupLog::default()
    };
    match LogStore::new(GROUP, wal.clone(), garbage) {
        Err(LogStoreError::Decode { what, .. }) => assert_eq!(what, "vote"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    wal.close();
}
