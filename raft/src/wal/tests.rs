//! Tests of the WAL as a whole: group commit, replay, torn tails, corruption, segment space.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;

pub(super) fn opts(fsync: bool) -> WalOptions {
    WalOptions {
        fsync,
        ..WalOptions::default()
    }
}

/// Options without zeros written ahead, so a segment's length is exactly its data.
fn exact() -> WalOptions {
    WalOptions {
        zero_ahead_bytes: 0,
        ..opts(false)
    }
}

pub(super) fn append(group: u32, indexes: std::ops::RangeInclusive<u64>, tag: u8) -> WalOp {
    WalOp::Append {
        group,
        entries: indexes.map(|i| (i, entry_bytes(group, i, tag))).collect(),
    }
}

fn entry_bytes(group: u32, index: u64, tag: u8) -> Vec<u8> {
    let mut bytes = format!("g{group}-i{index}-").into_bytes();
    bytes.push(tag);
    bytes
}

pub(super) fn entries(group: u32, indexes: std::ops::RangeInclusive<u64>, tag: u8) -> BTreeMap<u64, Vec<u8>> {
    indexes.map(|i| (i, entry_bytes(group, i, tag))).collect()
}

pub(super) fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("wal-"))
        .collect();
    names.sort();
    names
}

/// Opens `dir` expecting the WAL to refuse it as corrupt; returns the segment, offset and reason.
/// `what` names the damage in the panic message when it is accepted or fails otherwise.
pub(super) fn open_corrupt(dir: &Path, options: WalOptions, what: &str) -> (std::path::PathBuf, u64, String) {
    match Wal::open(dir, options) {
        Err(WalError::Corrupt {
            segment,
            offset,
            reason,
        }) => (segment, offset, reason),
        Ok((wal, recovered)) => {
            wal.close();
            panic!("{what} was accepted: {recovered:?}");
        }
        Err(other) => panic!("{what}: unexpected {other}"),
    }
}

pub(super) fn reopen(dir: &Path, options: WalOptions) -> Recovered {
    let (wal, recovered) = Wal::open(dir, options).unwrap();
    wal.close();
    recovered
}

/// Waits (without the wall clock) until `n` requests sit in the queue, handed to the writer (a
/// request holds its queue slot a moment before it is in the writer's channel).
async fn until_queued(wal: &Wal, n: u64) {
    while wal.stats().queued_requests < n || wal.sent() < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_fsync_covers_every_queued_group() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, recovered) = Wal::open(dir.path(), opts(true)).unwrap();
    assert_eq!(recovered, Recovered::default());
    let pause = wal.pause();
    let mut tasks = Vec::new();
    for group in 0..50u32 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            wal.submit_wait(vec![append(group, 1..=3, 0)]).await
        }));
    }
    until_queued(&wal, 50).await;
    drop(pause);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(
        (
            stats.batches,
            stats.fsyncs,
            stats.requests,
            stats.ops,
            stats.queued_requests
        ),
        (1, 1, 50, 50, 0)
    );
    wal.close();
    let recovered = reopen(dir.path(), opts(true));
    let expected: BTreeMap<u32, GroupLog> = (0..50u32)
        .map(|group| {
            let log = GroupLog {
                entries: entries(group, 1..=3, 0),
                ..GroupLog::default()
            };
            (group, log)
        })
        .collect();
    assert_eq!(recovered.groups, expected);
    assert_eq!(recovered.torn_tail_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_of_50_groups_share_fsyncs_and_recover_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(true)).unwrap();
    append_concurrently(&wal).await;
    assert_group_commit(&wal.stats());
    wal.close();
    let recovered = reopen(dir.path(), opts(true));
    assert_eq!(recovered.groups, appended_concurrently());
}

/// Appends per group in `append_concurrently`.
pub(super) const APPENDS_PER_GROUP: u64 = 20;

/// Appends `APPENDS_PER_GROUP` single entries to each of 50 groups, one task per group, each
/// waiting for its append to be durable before the next.
pub(super) async fn append_concurrently(wal: &Wal) {
    let mut tasks = Vec::new();
    for group in 0..50u32 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            for index in 1..=APPENDS_PER_GROUP {
                wal.submit_wait(vec![append(group, index..=index, 1)]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// What the WAL's counters must show after `append_concurrently`.
pub(super) fn assert_group_commit(stats: &WalStats) {
    assert_eq!(stats.requests, 50 * APPENDS_PER_GROUP);
    assert_eq!(stats.fsyncs, stats.batches);
    // Every fsync lands in exactly one latency bucket, and took some time.
    assert_eq!(stats.fsync_buckets.iter().sum::<u64>(), stats.fsyncs);
    assert!(stats.fsync_us > 0);
    // Each task waits for its own fsync before appending again, so while one batch is being
    // synced the other groups' appends pile up and share the next fsync.
    assert!(
        stats.fsyncs * 4 < stats.requests,
        "expected group commit, got {} fsyncs for {} appends",
        stats.fsyncs,
        stats.requests
    );
}

/// What recovery finds after `append_concurrently`.
pub(super) fn appended_concurrently() -> BTreeMap<u32, GroupLog> {
    (0..50u32)
        .map(|group| {
            let log = GroupLog {
                entries: entries(group, 1..=APPENDS_PER_GROUP, 1),
                ..GroupLog::default()
            };
            (group, log)
        })
        .collect()
}

#[tokio::test]
async fn truncate_purge_vote_and_committed_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(false)).unwrap();
    wal.submit_wait(vec![append(1, 1..=10, 0), append(2, 1..=4, 0)])
        .await
        .unwrap();
    wal.submit_wait(vec![WalOp::Vote {
        group: 1,
        bytes: vec![1],
    }])
    .await
    .unwrap();
    // Overwrite 8..=10 after truncating from 6; 6 and 7 stay gone until re-appended.
    wal.submit_wait(vec![
        WalOp::Truncate {
            group: 1,
            from_index: 6,
        },
        append(1, 6..=9, 1),
        WalOp::Purge {
            group: 1,
            upto_index: 3,
            meta: b"p3".to_vec(),
        },
        WalOp::Committed {
            group: 1,
            bytes: vec![5],
        },
    ])
    .await
    .unwrap();
    // A lower purge is a no-op and an append at or below the purge point is ignored.
    wal.submit_wait(vec![
        WalOp::Purge {
            group: 1,
            upto_index: 2,
            meta: b"p2".to_vec(),
        },
        append(1, 3..=3, 9),
        WalOp::Vote {
            group: 1,
            bytes: vec![2],
        },
        WalOp::Truncate {
            group: 2,
            from_index: 1,
        },
    ])
    .await
    .unwrap();
    wal.close();

    let mut group1_entries = entries(1, 4..=5, 0);
    group1_entries.extend(entries(1, 6..=9, 1));
    let expected = BTreeMap::from([
        (
            1,
            GroupLog {
                vote: Some(vec![2]),
                committed: Some(vec![5]),
                purged_upto: Some(3),
                purged_meta: b"p3".to_vec(),
                entries: group1_entries,
            },
        ),
        // Group 2 was truncated to nothing: it holds no state and is absent.
    ]);
    let recovered = reopen(dir.path(), opts(false));
    assert_eq!(recovered.groups, expected);

    // A second life appends to the same segment and both lives replay.
    let (wal, again) = Wal::open(dir.path(), opts(false)).unwrap();
    assert_eq!(again.groups, expected);
    wal.submit_wait(vec![append(2, 1..=1, 3)]).await.unwrap();
    wal.close();
    let recovered = reopen(dir.path(), opts(false));
    assert_eq!(recovered.groups[&2].entries, entries(2, 1..=1, 3));
    assert_eq!(segment_files(dir.path()), vec!["wal-0000000000000000.log"]);
}

/// Writes two records, notes the size, then a third record; returns (size before the third
/// record, full size, the state without the third record). No zeros are written ahead, so the
/// segment's length is its data.
pub(super) async fn three_records(dir: &Path) -> (usize, usize, BTreeMap<u32, GroupLog>) {
    let (wal, _) = Wal::open(dir, exact()).unwrap();
    wal.submit_wait(vec![append(1, 1..=3, 0)]).await.unwrap();
    wal.submit_wait(vec![WalOp::Vote {
        group: 1,
        bytes: vec![7; 5],
    }])
    .await
    .unwrap();
    wal.close();
    let segment = dir.join("wal-0000000000000000.log");
    let before = std::fs::metadata(&segment).unwrap().len() as usize;
    let (wal, _) = Wal::open(dir, exact()).unwrap();
    wal.submit_wait(vec![append(2, 1..=2, 0), append(1, 4..=4, 0)])
        .await
        .unwrap();
    wal.close();
    let full = std::fs::metadata(&segment).unwrap().len() as usize;
    let expected = BTreeMap::from([(
        1,
        GroupLog {
            vote: Some(vec![7; 5]),
            entries: entries(1, 1..=3, 0),
            ..GroupLog::default()
        },
    )]);
    (before, full, expected)
}

#[tokio::test]
async fn torn_tail_at_every_offset_drops_only_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let (before, full, expected) = three_records(dir.path()).await;
    let segment = dir.path().join("wal-0000000000000000.log");
    let bytes = std::fs::read(&segment).unwrap();
    assert_eq!(bytes.len(), full);
    for cut in before + 1..full {
        std::fs::write(&segment, &bytes[..cut]).unwrap();
        let recovered = reopen(dir.path(), opts(false));
        assert_eq!(recovered.torn_tail_bytes, (cut - before) as u64, "cut at {cut}");
        assert_eq!(recovered.groups, expected, "cut at {cut}");
        assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, before);
    }
    // A damaged payload byte in the last record, ending at EOF, is also a torn write.
    for at in [
        full - 1,
        before,
        before + 5,
        before + 9,
        before + 12,
        (before + full) / 2,
    ] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        std::fs::write(&segment, &damaged).unwrap();
        let recovered = reopen(dir.path(), opts(false));
        assert_eq!(recovered.torn_tail_bytes, (full - before) as u64, "flip at {at}");
        assert_eq!(recovered.groups, expected, "flip at {at}");
    }
    // After a torn tail was cut, writing resumes cleanly at the cut.
    std::fs::write(&segment, &bytes[..full - 3]).unwrap();
    let (wal, recovered) = Wal::open(dir.path(), exact()).unwrap();
    assert_eq!(recovered.torn_tail_bytes, (full - before - 3) as u64);
    wal.submit_wait(vec![append(3, 1..=1, 0)]).await.unwrap();
    wal.close();
    let recovered = reopen(dir.path(), exact());
    assert_eq!(recovered.torn_tail_bytes, 0);
    let mut with_third = expected.clone();
    with_third.insert(
        3,
        GroupLog {
            entries: entries(3, 1..=1, 0),
            ..GroupLog::default()
        },
    );
    assert_eq!(recovered.groups, with_third);
}

#[tokio::test]
async fn damage_before_the_last_record_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _full, _) = three_records(dir.path()).await;
    let segment = dir.path().join("wal-0000000000000000.log");
    let bytes = std::fs::read(&segment).unwrap();
    // Every byte of the first two records: a flip is a header or payload checksum mismatch with
    // acknowledged records after it, never a torn tail and never a silent apply.
    for at in 0..before {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        std::fs::write(&segment, &damaged).unwrap();
        let (path, _, _) = open_corrupt(dir.path(), opts(false), &format!("flip at {at}"));
        assert_eq!(path, segment);
    }
    std::fs::write(&segment, &bytes).unwrap();
    let mut damaged = bytes.clone();
    damaged[12] ^= 0x01;
    std::fs::write(&segment, &damaged).unwrap();
    let (_, offset, reason) = open_corrupt(dir.path(), opts(false), "a flip in the first payload");
    assert_eq!((offset, reason.as_str()), (0, "record checksum mismatch"));
}

/// Options that roll a segment after a few small batches.
#[tokio::test]
async fn a_deferred_op_rides_on_the_next_fsync() {
    let dir = tempfile::tempdir().unwrap();
    // Held for as long as the test could take, so only the append can write them.
    let held = WalOptions {
        deferred_idle_ms: 600_000,
        ..opts(true)
    };
    let (wal, _) = Wal::open(dir.path(), held).unwrap();
    let committed = |tag: u8| WalOp::Committed {
        group: 1,
        bytes: vec![tag],
    };
    wal.submit_deferred(vec![committed(1)]).await.unwrap();
    wal.submit_deferred(vec![committed(2)]).await.unwrap();
    wal.submit_wait(vec![append(1, 1..=2, 0)]).await.unwrap();
    let stats = wal.stats();
    // Three requests, all written, and only the append paid for an fsync.
    assert_eq!((stats.requests, stats.ops, stats.fsyncs), (3, 3, 1));
    wal.close();
    let recovered = reopen(dir.path(), opts(true));
    assert_eq!(recovered.groups[&1].committed, Some(vec![2]));
    assert_eq!(recovered.groups[&1].entries, entries(1, 1..=2, 0));
}

#[tokio::test]
async fn a_lone_deferred_op_is_written_when_idle_and_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(true)).unwrap();
    let committed = |tag: u8| WalOp::Committed {
        group: 4,
        bytes: vec![tag],
    };
    wal.submit_deferred(vec![committed(1)]).await.unwrap();
    // With nothing else to write, the writer syncs it on its own after `deferred_idle_ms`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wal.stats().fsyncs == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "an idle deferred op was never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(wal.stats().ops, 1);
    // A second one is closed over at once: close writes it.
    wal.submit_deferred(vec![committed(2)]).await.unwrap();
    wal.close();
    let recovered = reopen(dir.path(), opts(true));
    assert_eq!(recovered.groups[&4].committed, Some(vec![2]));
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes_max: 200,
        fsync: false,
        ..WalOptions::default()
    }
}

#[tokio::test]
async fn segments_roll_and_are_deleted_after_purge() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    wal.submit_wait(vec![
        WalOp::Vote {
            group: 1,
            bytes: vec![1],
        },
        WalOp::Committed {
            group: 2,
            bytes: vec![2],
        },
    ])
    .await
    .unwrap();
    for index in 1..=30u64 {
        wal.submit_wait(vec![append(1, index..=index, 0), append(2, index..=index, 0)])
            .await
            .unwrap();
    }
    let rolled = segment_files(dir.path());
    assert!(rolled.len() > 5, "expected several segments, got {rolled:?}");
    assert_eq!(wal.stats().segments_created as usize, rolled.len() - 1);

    // Purging only group 1 frees nothing: every segment also holds group 2's live entries.
    wal.submit_wait(vec![WalOp::Purge {
        group: 1,
        upto_index: 30,
        meta: b"g1".to_vec(),
    }])
    .await
    .unwrap();
    assert_eq!(segment_files(dir.path()), rolled);

    // Purging group 2 up to 20 frees exactly the segments whose entries are all <= 20.
    wal.submit_wait(vec![WalOp::Purge {
        group: 2,
        upto_index: 20,
        meta: b"g2".to_vec(),
    }])
    .await
    .unwrap();
    let remaining = segment_files(dir.path());
    assert!(remaining.len() < rolled.len(), "nothing was deleted: {remaining:?}");
    assert_eq!(remaining[..], rolled[rolled.len() - remaining.len()..]);
    assert_eq!(wal.stats().segments_deleted as usize, rolled.len() - remaining.len());
    wal.close();

    // The first segment held the vote and the committed pointer; the checkpoints kept them.
    let expected = BTreeMap::from([
        (
            1,
            GroupLog {
                vote: Some(vec![1]),
                purged_upto: Some(30),
                purged_meta: b"g1".to_vec(),
                ..GroupLog::default()
            },
        ),
        (
            2,
            GroupLog {
                committed: Some(vec![2]),
                purged_upto: Some(20),
                purged_meta: b"g2".to_vec(),
                entries: entries(2, 21..=30, 0),
                ..GroupLog::default()
            },
        ),
    ]);
    let (wal, recovered) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(recovered.groups, expected);

    // Purging everything leaves only the active segment, and recovery is still exact.
    wal.submit_wait(vec![WalOp::Purge {
        group: 2,
        upto_index: 30,
        meta: b"g2-all".to_vec(),
    }])
    .await
    .unwrap();
    assert_eq!(segment_files(dir.path()), vec![remaining[remaining.len() - 1].clone()]);
    wal.close();
    let recovered = reopen(dir.path(), small_segments());
    let mut expected = expected;
    if let Some(log) = expected.get_mut(&2) {
        log.purged_upto = Some(30);
        log.purged_meta = b"g2-all".to_vec();
        log.entries.clear();
    }
    assert_eq!(recovered.groups, expected);
}

#[tokio::test]
async fn missing_or_damaged_older_segments_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    for index in 1..=20u64 {
        wal.submit_wait(vec![append(1, index..=index, 0)]).await.unwrap();
    }
    wal.close();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let first = dir.path().join(&files[0]);
    let first_bytes = std::fs::read(&first).unwrap();

    // The torn-tail exception applies to the last segment only.
    std::fs::write(&first, &first_bytes[..first_bytes.len() - 1]).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), small_segments()),
        Err(WalError::Corrupt { segment, .. }) if segment == first
    ));
    std::fs::write(&first, &first_bytes).unwrap();

    let middle = dir.path().join(&files[1]);
    let middle_bytes = std::fs::read(&middle).unwrap();
    std::fs::remove_file(&middle).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), small_segments()),
        Err(WalError::Corrupt { segment, offset: 0, .. }) if segment == dir.path().join(&files[2])
    ));
    std::fs::write(&middle, &middle_bytes).unwrap();

    let recovered = reopen(dir.path(), small_segments());
    assert_eq!(recovered.groups[&1].entries, entries(1, 1..=20, 0));
}

#[tokio::test]
async fn torn_checkpoint_of_a_new_segment_resumes_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    wal.submit_wait(vec![WalOp::Vote {
        group: 1,
        bytes: vec![1],
    }])
    .await
    .unwrap();
    for index in 1..=20u64 {
        wal.submit_wait(vec![append(1, index..=index, 0)]).await.unwrap();
    }
    wal.close();
    let files = segment_files(dir.path());
    let last = dir.path().join(&files[files.len() - 1]);
    // Keep only half of the new segment's checkpoint record, as if the roll crashed.
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..5]).unwrap();
    let (wal, recovered) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(recovered.torn_tail_bytes, 5);
    assert_eq!(segment_files(dir.path()), files[..files.len() - 1]);
    let expected_entries = recovered.groups[&1].entries.clone();
    wal.submit_wait(vec![append(1, 21..=21, 0)]).await.unwrap();
    wal.close();
    let recovered = reopen(dir.path(), small_segments());
    let mut expected = expected_entries;
    expected.extend(entries(1, 21..=21, 0));
    assert_eq!(recovered.groups[&1].entries, expected);
    assert_eq!(recovered.groups[&1].vote, Some(vec![1]));
}

#[tokio::test]
async fn busy_closed_and_locked() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        queue_requests_max: 2,
        fsync: false,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), options.clone()).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), options.clone()),
        Err(WalError::Locked(_))
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pause = wal.pause();
    for group in 0..2u32 {
        let tx = tx.clone();
        wal.submit(
            vec![append(group, 1..=1, 0)],
            Box::new(move |result| tx.send((group, result.is_ok())).unwrap()),
        )
        .unwrap();
    }
    let third = wal.submit(vec![append(2, 1..=1, 0)], Box::new(|_| panic!("must not run")));
    assert!(matches!(third, Err(WalError::Busy)));
    drop(pause);
    assert_eq!(rx.recv().await, Some((0, true)));
    assert_eq!(rx.recv().await, Some((1, true)));
    wal.close();
    let after = wal.submit(vec![append(2, 1..=1, 0)], Box::new(|_| panic!("must not run")));
    assert!(matches!(after, Err(WalError::Closed)));
    assert!(matches!(wal.submit_wait(Vec::new()).await, Err(WalError::Closed)));
    let (wal, recovered) = Wal::open(dir.path(), options).unwrap();
    assert_eq!(recovered.groups.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    wal.close();
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        WalOptions {
            queue_requests_max: 0,
            ..WalOptions::default()
        },
        WalOptions {
            batch_bytes_max: 0,
            ..WalOptions::default()
        },
        WalOptions {
            segment_bytes_max: 0,
            ..WalOptions::default()
        },
    ] {
        assert!(matches!(Wal::open(dir.path(), bad), Err(WalError::InvalidOptions(_))));
    }
}

#[test]
fn fsync_latencies_land_in_the_first_bucket_that_holds_them() {
    let c = Counters::default();
    for us in [0, 100, 101, 1_000_000, 1_000_001] {
        c.record_fsync(std::time::Duration::from_micros(us));
    }
    let buckets: Vec<u64> = c.fsync_buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    let mut want = vec![0u64; FSYNC_BUCKETS_US.len() + 1];
    want[0] = 2; // 0 and 100 µs: bounds are inclusive
    want[1] = 1; // 101 µs
    want[FSYNC_BUCKETS_US.len() - 1] = 1; // exactly 1 s
    want[FSYNC_BUCKETS_US.len()] = 1; // over 1 s: +Inf
    assert_eq!(buckets, want);
    assert_eq!(c.fsync_us.load(Ordering::Relaxed), 100 + 101 + 1_000_000 + 1_000_001);
}
