//! Recovery at `Wal::open`: read every segment in order, check every record, replay the ops into
//! per-group state, and cut a torn tail off the last segment.
//!
//! It is not the writer: it runs once, before the writer thread starts, and hands the writer the
//! space bookkeeping and the open active segment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::disk::{Disk, DiskFile};

use super::format::{self, DiskOp, Header, SegmentName, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX};
use super::space::{OpNote, SegmentInfo, Space};
use super::{sync_dir, GroupLog, Recovered, WalError};

/// The segment the writer appends to after recovery.
pub(crate) struct Active {
    /// Open for appending.
    pub file: Box<dyn DiskFile>,
    /// Its length in bytes.
    pub size: u64,
}

/// How scanning one segment ended.
#[derive(Debug, PartialEq, Eq)]
enum ScanEnd {
    /// Every byte before this offset belongs to a valid record; the bytes from it to EOF (none,
    /// except in the last segment) are zeros written ahead of the data.
    Clean(usize),
    /// The bytes from this offset to EOF are a torn, never-acknowledged record (possibly followed
    /// by zeros written ahead of it).
    Torn(usize),
}

impl ScanEnd {
    /// Where the segment's data ends: appends resume here.
    fn data_end(&self) -> u64 {
        match *self {
            ScanEnd::Clean(offset) | ScanEnd::Torn(offset) => offset as u64,
        }
    }
}

/// Recovers the WAL in `dir` (which exists and is locked by the caller).
pub(crate) fn recover(disk: &dyn Disk, dir: &Path, fsync: bool) -> Result<(Space, Active, Recovered), WalError> {
    let segments = list_segments(disk, dir)?;
    let mut space = Space::default();
    let mut recovered = Recovered::default();
    // Where the data of the last and the one-before-last segments scanned end.
    let (mut active_size, mut previous_size) = (0, 0);
    let last = segments.len().saturating_sub(1);
    for (i, (first_seq, path)) in segments.into_iter().enumerate() {
        if let Some(prev) = space.segments.back() {
            let expected = prev.first_seq + prev.records;
            if first_seq != expected {
                return Err(corrupt(
                    &path,
                    0,
                    format!("segment starts at sequence {first_seq} but {expected} was expected: a segment is missing"),
                ));
            }
        }
        let data = disk.read(&path).map_err(|e| WalError::io("read segment", &path, e))?;
        space.segments.push_back(SegmentInfo::new(first_seq, path.clone()));
        let end = scan(&path, &data, i == last, |ops| {
            for op in ops {
                replay(&mut recovered.groups, &mut space, op);
            }
            if let Some(segment) = space.segments.back_mut() {
                segment.records += 1;
            }
        })?;
        previous_size = active_size;
        active_size = end.data_end();
        if let ScanEnd::Torn(offset) = end {
            let torn = data.len() - offset;
            tracing::warn!(
                segment = %path.display(),
                offset,
                torn_bytes = torn,
                "wal: dropping a torn record at the tail of the last segment (it was never acknowledged)"
            );
            disk.truncate(&path, offset as u64, fsync)
                .map_err(|e| WalError::io("truncate segment", &path, e))?;
            recovered.torn_tail_bytes = torn as u64;
        }
    }
    // A last segment left empty (its first record was torn while rolling) holds no checkpoint;
    // the previous segment is intact, so continue that one instead.
    if space.segments.len() > 1 && space.segments.back().is_some_and(|s| s.records == 0) {
        if let Some(empty) = space.segments.pop_back() {
            active_size = previous_size;
            disk.remove(&empty.path)
                .map_err(|e| WalError::io("remove empty segment", &empty.path, e))?;
            if fsync {
                sync_dir(disk, dir)?;
            }
        }
    }
    if space.segments.is_empty() {
        let path = dir.join(format::segment_file_name(0));
        disk.create(&path, true)
            .map_err(|e| WalError::io("create segment", &path, e))?;
        if fsync {
            sync_dir(disk, dir)?;
        }
        space.segments.push_back(SegmentInfo::new(0, path));
        active_size = 0;
    }
    let active = open_active(disk, &space, active_size)?;
    // A group with no vote, no commit point, no purge point and no entries
    // holds no state; whether its emptied records survive depends on segment
    // deletion, so recovery reports such a group as absent, always.
    recovered.groups.retain(|_, g| !g.is_empty());
    Ok((space, active, recovered))
}

/// Opens the last segment for appending at `size`, the end of its data.
fn open_active(disk: &dyn Disk, space: &Space, size: u64) -> Result<Active, WalError> {
    let Some(segment) = space.segments.back() else {
        return Err(WalError::InvalidOptions("no active segment".into()));
    };
    let path = &segment.path;
    let file = disk
        .open_append(path, size)
        .map_err(|e| WalError::io("open segment", path, e))?;
    Ok(Active { file, size })
}

/// The segment files in `dir`, ordered by first sequence number.
fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    let names = disk.list(dir).map_err(|e| WalError::io("list dir", dir, e))?;
    for name in names {
        match format::parse_segment_name(&name) {
            SegmentName::Segment(seq) => segments.push((seq, dir.join(&name))),
            SegmentName::Malformed => {
                return Err(corrupt(&dir.join(&name), 0, "malformed segment file name".into()));
            }
            SegmentName::Other => {}
        }
    }
    segments.sort();
    Ok(segments)
}

/// Checks every record of one segment and hands each decoded record to `apply`, in order.
/// Only in the last segment may a damaged record at the very end be reported as torn, and only
/// the last segment may end in zeros written ahead of its data (the writer cuts a segment to its
/// data before it starts the next one).
fn scan(path: &Path, data: &[u8], last_segment: bool, mut apply: impl FnMut(Vec<DiskOp>)) -> Result<ScanEnd, WalError> {
    // Every record starts with a nonzero length, so none starts at or after `zeros_from`.
    let zeros_from = if last_segment {
        data.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1)
    } else {
        data.len()
    };
    let mut offset = 0usize;
    while offset < data.len() {
        if offset >= zeros_from {
            return Ok(ScanEnd::Clean(offset));
        }
        let (len, crc) = match format::read_header(&data[offset..]) {
            Header::Valid { len, crc } => (len, crc),
            Header::Short if last_segment => return Ok(ScanEnd::Torn(offset)),
            Header::Short => return Err(corrupt(path, offset, "record header runs past end of segment".into())),
            // The length cannot be trusted, so the record's end is unknown. It can only be a torn
            // write if nothing valid was written after it.
            Header::Damaged if last_segment && format::find_valid_record(data, offset + 1, zeros_from).is_none() => {
                return Ok(ScanEnd::Torn(offset));
            }
            Header::Damaged => return Err(corrupt(path, offset, "record header checksum mismatch".into())),
        };
        if len == 0 || len > RECORD_PAYLOAD_BYTES_MAX {
            return Err(corrupt(path, offset, format!("impossible record length {len}")));
        }
        let end = offset + RECORD_HEADER_BYTES + len;
        if end > data.len() {
            if last_segment {
                return Ok(ScanEnd::Torn(offset));
            }
            return Err(corrupt(
                path,
                offset,
                format!("record of {len} bytes runs past end of segment"),
            ));
        }
        let payload = &data[offset + RECORD_HEADER_BYTES..end];
        if crc32c::crc32c(payload) != crc {
            // Torn: the record was the last thing written (only zeros, if anything, follow it).
            if last_segment && end >= zeros_from {
                return Ok(ScanEnd::Torn(offset));
            }
            return Err(corrupt(path, offset, "record checksum mismatch".into()));
        }
        // A record with a valid checksum that does not decode was written wrong, not torn.
        let ops = format::decode_payload(payload)
            .map_err(|e| corrupt(path, offset, format!("record does not decode: {e}")))?;
        apply(ops);
        offset = end;
    }
    Ok(ScanEnd::Clean(offset))
}

/// Applies one replayed op to the group state and the space bookkeeping.
fn replay(groups: &mut BTreeMap<u32, GroupLog>, space: &mut Space, op: DiskOp) {
    match op {
        DiskOp::Append { group, entries } => {
            let min = entries.iter().map(|(index, _)| *index).min();
            let max = entries.iter().map(|(index, _)| *index).max();
            if let (Some(min), Some(max)) = (min, max) {
                space.note(OpNote::Append { group, min, max });
            }
            let log = groups.entry(group).or_default();
            for (index, bytes) in entries {
                if log.purged_upto.is_none_or(|purged| index > purged) {
                    log.entries.insert(index, bytes);
                }
            }
        }
        DiskOp::Truncate { group, from_index } => {
            groups.entry(group).or_default().entries.split_off(&from_index);
            space.note(OpNote::Truncate {
                group,
                from: from_index,
            });
        }
        DiskOp::Purge {
            group,
            upto_index,
            meta,
        } => {
            purge(groups.entry(group).or_default(), upto_index, &meta);
            space.note(OpNote::Purge {
                group,
                upto: upto_index,
                meta,
            });
        }
        DiskOp::Vote { group, bytes } => {
            groups.entry(group).or_default().vote = Some(bytes.clone());
            space.note(OpNote::Vote { group, bytes });
        }
        DiskOp::Committed { group, bytes } => {
            groups.entry(group).or_default().committed = Some(bytes.clone());
            space.note(OpNote::Committed { group, bytes });
        }
        DiskOp::Checkpoint(checkpoint) => {
            let log = groups.entry(checkpoint.group).or_default();
            if let Some(vote) = &checkpoint.vote {
                log.vote = Some(vote.clone());
            }
            if let Some(committed) = &checkpoint.committed {
                log.committed = Some(committed.clone());
            }
            if let Some(upto) = checkpoint.purged_upto {
                purge(log, upto, &checkpoint.purged_meta);
            }
            space.note(OpNote::Checkpoint(checkpoint));
        }
    }
}

/// Moves the purge point up to `upto` (never down) and drops the entries it covers.
fn purge(log: &mut GroupLog, upto: u64, meta: &[u8]) {
    if log.purged_upto.is_some_and(|purged| upto <= purged) {
        return;
    }
    log.purged_upto = Some(upto);
    log.purged_meta = meta.to_vec();
    log.entries = match upto.checked_add(1) {
        Some(first_kept) => log.entries.split_off(&first_kept),
        None => BTreeMap::new(),
    };
}

fn corrupt(path: &Path, offset: usize, reason: String) -> WalError {
    WalError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        reason,
    }
}
