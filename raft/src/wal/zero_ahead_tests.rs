//! Tests of zeros written ahead of the active segment's data (`WalOptions::zero_ahead_bytes`):
//! recovery reads them as free space, never as records and never as a torn tail to cut, and a
//! torn or damaged record in front of them is told apart exactly as at the end of a file.

use std::path::{Path, PathBuf};

use super::tests::{append, entries, open_corrupt, opts, reopen, segment_files, three_records};
use super::*;

const ZERO_AHEAD_BYTES: u64 = 64 << 10;

fn zero_ahead() -> WalOptions {
    WalOptions {
        zero_ahead_bytes: ZERO_AHEAD_BYTES,
        ..opts(false)
    }
}

fn segment0(dir: &Path) -> PathBuf {
    dir.join("wal-0000000000000000.log")
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn appends_overwrite_the_zeros_ahead_and_recover_after_each_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let segment = segment0(dir.path());
    let (wal, _) = Wal::open(dir.path(), zero_ahead()).unwrap();
    wal.submit_wait(vec![append(1, 1..=3, 0)]).await.unwrap();
    wal.close();
    let grown = len(&segment);
    assert!(grown > ZERO_AHEAD_BYTES, "zeros were written ahead: {grown} bytes");

    let (wal, recovered) = Wal::open(dir.path(), zero_ahead()).unwrap();
    assert_eq!(recovered.torn_tail_bytes, 0, "zeros ahead are not a torn tail");
    assert_eq!(recovered.groups[&1].entries, entries(1, 1..=3, 0));
    assert_eq!(len(&segment), grown, "recovery keeps the zeros");
    // Written where the data ends, into the zeros: the file does not grow.
    wal.submit_wait(vec![append(1, 4..=5, 0), append(2, 1..=1, 0)])
        .await
        .unwrap();
    wal.close();
    assert_eq!(len(&segment), grown);

    let recovered = reopen(dir.path(), zero_ahead());
    assert_eq!(recovered.groups[&1].entries, entries(1, 1..=5, 0));
    assert_eq!(recovered.groups[&2].entries, entries(2, 1..=1, 0));

    // Without zero-ahead the same segment is still read and extended at its data's end.
    let (wal, _) = Wal::open(
        dir.path(),
        WalOptions {
            zero_ahead_bytes: 0,
            ..opts(false)
        },
    )
    .unwrap();
    wal.submit_wait(vec![append(3, 1..=1, 0)]).await.unwrap();
    wal.close();
    let recovered = reopen(dir.path(), zero_ahead());
    assert_eq!(recovered.groups[&1].entries, entries(1, 1..=5, 0));
    assert_eq!(recovered.groups[&3].entries, entries(3, 1..=1, 0));
}

/// The three records of `three_records` followed by `zeros` zero bytes, as if written ahead.
async fn three_records_and_zeros(dir: &Path, zeros: usize) -> (usize, usize, Vec<u8>, BTreeMap<u32, GroupLog>) {
    let (before, full, expected) = three_records(dir).await;
    let mut bytes = std::fs::read(segment0(dir)).unwrap();
    assert_eq!(bytes.len(), full);
    bytes.resize(full + zeros, 0);
    (before, full, bytes, expected)
}

#[tokio::test]
async fn a_record_torn_in_front_of_the_zeros_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let segment = segment0(dir.path());
    let (before, full, bytes, expected) = three_records_and_zeros(dir.path(), 4096).await;

    // Clean: every record present, nothing cut.
    std::fs::write(&segment, &bytes).unwrap();
    let recovered = reopen(dir.path(), zero_ahead());
    assert_eq!(recovered.torn_tail_bytes, 0);
    assert_eq!(recovered.groups[&2].entries, entries(2, 1..=2, 0));

    // Part of the last record never landed (zeros from `lost` on, in front of the zeros ahead):
    // torn, whether the header or only the payload survived.
    for lost in before..full {
        let mut torn = bytes.clone();
        torn[lost..full].fill(0);
        if torn == bytes {
            continue; // the record's last bytes are zeros anyway: nothing was lost
        }
        std::fs::write(&segment, &torn).unwrap();
        let recovered = reopen(dir.path(), zero_ahead());
        if lost == before {
            // Nothing of it landed: the data simply ends where the second record does.
            assert_eq!(recovered.torn_tail_bytes, 0, "lost from {lost}");
        } else {
            assert_eq!(
                recovered.torn_tail_bytes,
                (bytes.len() - before) as u64,
                "lost from {lost}"
            );
            assert_eq!(len(&segment) as usize, before, "lost from {lost}");
        }
        assert_eq!(recovered.groups, expected, "lost from {lost}");
    }

    // Only the start of the last record is lost, its end landed: torn as well.
    let mut torn = bytes.clone();
    torn[before..before + 8].fill(0);
    std::fs::write(&segment, &torn).unwrap();
    let recovered = reopen(dir.path(), zero_ahead());
    assert_eq!(recovered.torn_tail_bytes, (bytes.len() - before) as u64);
    assert_eq!(recovered.groups, expected);

    // A flipped payload byte of the last record, with only zeros after it: torn.
    let mut flipped = bytes.clone();
    flipped[full - 1] ^= 0x40;
    std::fs::write(&segment, &flipped).unwrap();
    let recovered = reopen(dir.path(), zero_ahead());
    assert_eq!(recovered.torn_tail_bytes, (bytes.len() - before) as u64);
    assert_eq!(recovered.groups, expected);
}

#[tokio::test]
async fn damage_in_front_of_later_records_is_corrupt_despite_the_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let segment = segment0(dir.path());
    let (before, _full, bytes, _) = three_records_and_zeros(dir.path(), 4096).await;
    for at in [0, 5, 12, before - 1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        std::fs::write(&segment, &damaged).unwrap();
        let (path, _, _) = open_corrupt(dir.path(), zero_ahead(), &format!("flip at {at}"));
        assert_eq!(path, segment);
    }
}

#[tokio::test]
async fn rolled_segments_are_cut_to_their_data_and_zeros_ahead_only_end_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let small = WalOptions {
        segment_bytes_max: 200,
        ..zero_ahead()
    };
    let (wal, _) = Wal::open(dir.path(), small.clone()).unwrap();
    for index in 1..=20u64 {
        wal.submit_wait(vec![append(1, index..=index, 0)]).await.unwrap();
    }
    wal.close();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    for name in &files[..files.len() - 1] {
        let size = len(&dir.path().join(name));
        assert!(
            size <= 200 + 64,
            "{name} holds {size} bytes: it was not cut to its data"
        );
    }
    let last = dir.path().join(&files[files.len() - 1]);
    assert!(
        len(&last) > ZERO_AHEAD_BYTES,
        "the active segment keeps its zeros ahead"
    );
    assert_eq!(
        reopen(dir.path(), small.clone()).groups[&1].entries,
        entries(1, 1..=20, 0)
    );

    // Zeros at the end of an older segment were never written by the WAL: corruption.
    let first = dir.path().join(&files[0]);
    let mut first_bytes = std::fs::read(&first).unwrap();
    first_bytes.resize(first_bytes.len() + 100, 0);
    std::fs::write(&first, &first_bytes).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), small),
        Err(WalError::Corrupt { segment, .. }) if segment == first
    ));
}
