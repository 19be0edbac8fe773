//! The on-disk encoding of the WAL: segment file names, batch record framing and the op payload.
//!
//! This module only turns values into bytes and back; it does no IO and keeps no state. Scanning a
//! whole segment (and deciding what is a torn tail) is `recovery`'s job.
//!
//! A batch record is `[u32 LE payload_len][u32 LE crc32c(payload)][u32 LE crc32c(first 8 bytes)]
//! [payload]`. The third word (a header checksum, added to the first design) lets recovery trust a
//! length before reading the payload: without it a flipped length bit in an old record would look
//! like a torn tail and silently cut off every later record. The payload is the
//! postcard encoding of `Vec<DiskOp>`: a varint op count followed by the ops. Callers encode their
//! own ops (`WalOp`, whose postcard encoding is identical to the first five `DiskOp` variants) on
//! their own threads, so the writer thread only concatenates bytes.

use serde::{Deserialize, Serialize};

use super::WalOp;

/// Bytes of the record header: payload length, payload CRC and header CRC.
pub(crate) const RECORD_HEADER_BYTES: usize = 12;

/// Largest payload a record may carry, in bytes. A length field above it cannot have been
/// written by this code, so recovery treats it as corruption rather than as a torn tail.
pub(crate) const RECORD_PAYLOAD_BYTES_MAX: usize = 1 << 30;

/// Most bytes a varint op count occupies (a `u64` in LEB128).
pub(crate) const VARINT_BYTES_MAX: usize = 10;

/// File name prefix of a segment.
const SEGMENT_PREFIX: &str = "wal-";
/// File name suffix of a segment.
const SEGMENT_SUFFIX: &str = ".log";

/// One op as stored in a batch record.
///
/// The first five variants must stay in the same order and with the same fields as `WalOp`:
/// callers serialise `WalOp` directly and recovery reads it back as `DiskOp` (a unit test holds
/// the two together). `Checkpoint` is written only by the writer thread, first in every segment
/// after the first one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DiskOp {
    /// Same as `WalOp::Append`.
    Append {
        /// Raft group.
        group: u32,
        /// `(index, entry bytes)` pairs.
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// Same as `WalOp::Truncate`.
    Truncate {
        /// Raft group.
        group: u32,
        /// First index removed.
        from_index: u64,
    },
    /// Same as `WalOp::Purge`.
    Purge {
        /// Raft group.
        group: u32,
        /// Last index removed.
        upto_index: u64,
        /// Opaque bytes kept with the purge point (the purged log id).
        meta: Vec<u8>,
    },
    /// Same as `WalOp::Vote`.
    Vote {
        /// Raft group.
        group: u32,
        /// Opaque vote bytes.
        bytes: Vec<u8>,
    },
    /// Same as `WalOp::Committed`.
    Committed {
        /// Raft group.
        group: u32,
        /// Opaque committed-pointer bytes.
        bytes: Vec<u8>,
    },
    /// One group's small state at the moment a segment was started, so that older segments can
    /// be deleted without losing it.
    Checkpoint(Checkpoint),
}

/// The per-group state that a checkpoint carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Raft group.
    pub group: u32,
    /// Latest vote bytes.
    pub vote: Option<Vec<u8>>,
    /// Latest committed bytes.
    pub committed: Option<Vec<u8>>,
    /// Highest purged index.
    pub purged_upto: Option<u64>,
    /// Meta bytes of that purge.
    pub purged_meta: Vec<u8>,
}

impl From<WalOp> for DiskOp {
    fn from(op: WalOp) -> Self {
        match op {
            WalOp::Append { group, entries } => DiskOp::Append { group, entries },
            WalOp::Truncate { group, from_index } => DiskOp::Truncate { group, from_index },
            WalOp::Purge {
                group,
                upto_index,
                meta,
            } => DiskOp::Purge {
                group,
                upto_index,
                meta,
            },
            WalOp::Vote { group, bytes } => DiskOp::Vote { group, bytes },
            WalOp::Committed { group, bytes } => DiskOp::Committed { group, bytes },
        }
    }
}

/// The segment file name for a segment whose first record has sequence number `first_seq`.
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:016x}{SEGMENT_SUFFIX}")
}

/// What a directory entry name is to the WAL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SegmentName {
    /// A well-formed segment name with its first sequence number.
    Segment(u64),
    /// Looks like a segment (`wal-*.log`) but the number is malformed.
    Malformed,
    /// Not a segment file at all.
    Other,
}

/// Parses a directory entry name.
pub(crate) fn parse_segment_name(name: &str) -> SegmentName {
    let Some(hex) = name
        .strip_prefix(SEGMENT_PREFIX)
        .and_then(|s| s.strip_suffix(SEGMENT_SUFFIX))
    else {
        return SegmentName::Other;
    };
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return SegmentName::Malformed;
    }
    match u64::from_str_radix(hex, 16) {
        Ok(seq) => SegmentName::Segment(seq),
        Err(_) => SegmentName::Malformed,
    }
}

/// Appends `value` as a LEB128 varint, the encoding postcard uses for sequence lengths.
pub(crate) fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends one complete batch record built from pre-encoded ops to `out`.
///
/// `op_count` ops are encoded back to back in `op_bytes`; the chunks are concatenated in order.
/// The caller guarantees the payload stays under `RECORD_PAYLOAD_BYTES_MAX` (submit checks each
/// request and the options bound a batch), so the length fits a `u32`.
pub(crate) fn push_record<'a>(out: &mut Vec<u8>, op_count: u64, op_bytes: impl Iterator<Item = &'a [u8]> + Clone) {
    let header_at = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    let payload_at = out.len();
    push_varint(out, op_count);
    for chunk in op_bytes {
        out.extend_from_slice(chunk);
    }
    let payload = &out[payload_at..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[header_at..header_at + 4].copy_from_slice(&len.to_le_bytes());
    out[header_at + 4..header_at + 8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[header_at..header_at + 8]);
    out[header_at + 8..header_at + 12].copy_from_slice(&header_crc.to_le_bytes());
}

/// Decodes a payload whose CRC already matched.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<Vec<DiskOp>, postcard::Error> {
    postcard::from_bytes(payload)
}

/// What the bytes at a record boundary hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// Fewer than `RECORD_HEADER_BYTES` bytes remain.
    Short,
    /// A complete header whose own checksum does not match.
    Damaged,
    /// A checksummed header: the payload length and the payload's CRC.
    Valid {
        /// Payload bytes.
        len: usize,
        /// crc32c of the payload.
        crc: u32,
    },
}

/// Reads the record header at the start of `bytes`.
pub(crate) fn read_header(bytes: &[u8]) -> Header {
    let Some(header) = bytes.get(..RECORD_HEADER_BYTES) else {
        return Header::Short;
    };
    let word = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    if crc32c::crc32c(&header[..8]) != word(8) {
        return Header::Damaged;
    }
    Header::Valid {
        len: word(0) as usize,
        crc: word(4),
    }
}

/// The offset of the first complete, fully checksummed record starting in `data[from..until]`, if
/// any. Recovery uses it to tell a damaged header at the tail (nothing valid follows: torn) from a
/// damaged header with acknowledged records after it (corruption).
pub(crate) fn find_valid_record(data: &[u8], from: usize, until: usize) -> Option<usize> {
    (from..until.min(data.len())).find(|&at| match read_header(&data[at..]) {
        Header::Valid { len, crc } => {
            (1..=RECORD_PAYLOAD_BYTES_MAX).contains(&len)
                && data
                    .get(at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len)
                    .is_some_and(|payload| crc32c::crc32c(payload) == crc)
        }
        Header::Short | Header::Damaged => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walop_encoding_reads_back_as_diskop() {
        let ops = vec![
            WalOp::Append {
                group: 7,
                entries: vec![(1, vec![1, 2]), (2, vec![])],
            },
            WalOp::Truncate {
                group: 7,
                from_index: 300,
            },
            WalOp::Purge {
                group: u32::MAX,
                upto_index: u64::MAX,
                meta: vec![9],
            },
            WalOp::Vote {
                group: 0,
                bytes: vec![4; 3],
            },
            WalOp::Committed {
                group: 1,
                bytes: vec![5],
            },
        ];
        let mut chunks = Vec::new();
        for op in &ops {
            chunks.push(postcard::to_allocvec(op).unwrap());
        }
        let mut record = Vec::new();
        push_record(&mut record, ops.len() as u64, chunks.iter().map(|c| c.as_slice()));
        assert_eq!(
            read_header(&record),
            Header::Valid {
                len: record.len() - RECORD_HEADER_BYTES,
                crc: crc32c::crc32c(&record[RECORD_HEADER_BYTES..]),
            }
        );
        assert_eq!(read_header(&record[..RECORD_HEADER_BYTES - 1]), Header::Short);
        let mut damaged = record.clone();
        damaged[1] ^= 0x80;
        assert_eq!(read_header(&damaged), Header::Damaged);
        assert_eq!(find_valid_record(&damaged, 0, damaged.len()), None);
        let mut two = vec![0u8; 5];
        two.extend_from_slice(&record);
        assert_eq!(find_valid_record(&two, 0, two.len()), Some(5));
        assert_eq!(find_valid_record(&two, 6, two.len()), None);
        assert_eq!(
            find_valid_record(&two, 0, 5),
            None,
            "no record may start at or after `until`"
        );
        let decoded = decode_payload(&record[RECORD_HEADER_BYTES..]).unwrap();
        let expected: Vec<DiskOp> = ops.into_iter().map(DiskOp::from).collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn varint_matches_postcard() {
        for value in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut ours = Vec::new();
            push_varint(&mut ours, value);
            assert_eq!(ours, postcard::to_allocvec(&value).unwrap(), "value {value}");
            assert!(ours.len() <= VARINT_BYTES_MAX);
        }
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(0x2a), "wal-000000000000002a.log");
        assert_eq!(
            parse_segment_name("wal-000000000000002a.log"),
            SegmentName::Segment(0x2a)
        );
        assert_eq!(
            parse_segment_name("wal-ffffffffffffffff.log"),
            SegmentName::Segment(u64::MAX)
        );
        assert_eq!(parse_segment_name("wal-2a.log"), SegmentName::Malformed);
        assert_eq!(parse_segment_name("wal-00000000000000zz.log"), SegmentName::Malformed);
        assert_eq!(parse_segment_name("LOCK"), SegmentName::Other);
        assert_eq!(parse_segment_name("wal-0000000000000000.log.tmp"), SegmentName::Other);
    }
}
