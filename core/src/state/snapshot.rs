//! Snapshot encoding of a `ShardState` and the state digest.
//!
//! Layout: the magic `PLXSTATE`, a little-endian `u32` format version, the
//! little-endian `u64` body length, the postcard body, and the CRC-32C of
//! everything before it. Bitmaps inside the body are in roaring's portable
//! format. A snapshot arrives from disk or from another node, so decoding
//! checks everything and answers an error, never a panic. This is not the
//! snapshot file: `wal` stores these bytes with openraft's metadata.
//!
//! Versions: 2 appended the feature vectors to the body, 3 the feed state, 4
//! identity matching's state, 5 the identities' member unlinks (the EMPI
//! form's last field); an older body is still read, as a state without them.

use std::collections::BTreeMap;

use plexus_proto::{ShardId, ShardMap, VertexId};
use serde::{Deserialize, Serialize};

use super::empi::{EmpiForm, EmpiStore};
use super::features::{FeatureForm, FeatureStore};
use super::feed::{FeedForm, FeedState};
use super::filter::{FilterForm, NamedFilter, FILTER_NAME_BYTES_MAX};
use super::graph::{Graph, GraphForm, Placement};
use super::hash::digest64;
use super::outbox::Outbox;
use super::session::Sessions;
use super::timeline::Timelines;
use super::{ShardState, StateLimits};
use crate::command::EdgeUpdate;

/// First bytes of every state snapshot.
const MAGIC: &[u8; 8] = b"PLXSTATE";
/// The body format this code writes (and the newest it reads).
const VERSION: u32 = 5;
/// The oldest body format this code reads: version 1 lacks `features`.
const VERSION_OLDEST: u32 = 1;
/// postcard's encoding of an empty list (a zero length varint): appended to a version-4 body
/// it makes the equivalent version-5 body (the EMPI form's member unlinks, its last field).
const EMPTY_APART: [u8; 1] = [0];
/// postcard's encoding of an empty `FeatureForm` (a zero length varint):
/// appended to a version-1 body it makes the equivalent version-2 body.
const EMPTY_FEATURES: [u8; 1] = [0];
/// postcard's encoding of an empty `FeedForm`: appended to a version-2 body it makes the
/// equivalent version-3 body.
pub(crate) fn empty_feed() -> Vec<u8> {
    postcard::to_stdvec(&FeedState::default().to_form()).expect("postcard encodes an empty feed into a Vec")
}
/// postcard's encoding of an empty `EmpiForm`: appended to a version-3 body it makes the
/// equivalent version-4 body.
pub(crate) fn empty_empi() -> Vec<u8> {
    postcard::to_stdvec(&EmpiStore::default().to_form()).expect("postcard encodes an empty empi state into a Vec")
}

/// Bytes before the body: magic, version, body length.
const HEADER_BYTES: usize = 8 + 4 + 8;
/// Bytes after the body: the checksum.
const TRAILER_BYTES: usize = 4;

/// Why snapshot bytes could not be turned back into a state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The bytes are shorter than the fixed header and trailer.
    #[error("snapshot of {0} bytes is too short")]
    TooShort(usize),
    /// The bytes do not start with the snapshot magic.
    #[error("not a state snapshot (bad magic)")]
    BadMagic,
    /// The snapshot was written by an unknown format version.
    #[error("unsupported snapshot version {0}")]
    UnsupportedVersion(u32),
    /// The body length field disagrees with the byte count.
    #[error("snapshot body length {declared} does not match the {actual} bytes present")]
    BadLength {
        /// Length the header declares.
        declared: u64,
        /// Length actually present.
        actual: u64,
    },
    /// The checksum does not match: the bytes were damaged.
    #[error("snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Checksum in the trailer.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// The body is not a valid postcard encoding of the state.
    #[error("snapshot body does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// The body decoded but violates an invariant of the state.
    #[error("snapshot state is invalid: {0}")]
    Invalid(String),
}

/// The replicated part of a `ShardState`, in field order of the encoding.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct Body {
    shard: ShardId,
    shard_count: u32,
    last_applied: u64,
    shard_map: Option<ShardMap>,
    filters: Vec<(String, FilterForm)>,
    timelines: Timelines,
    graph: GraphForm,
    outbox: Outbox<EdgeUpdate>,
    sessions: Sessions,
    features: FeatureForm,
    feed: FeedForm,
    empi: EmpiForm,
}

/// `Body` borrowed for encoding, so a snapshot does not copy the timelines,
/// outbox and sessions first; serde encodes `&T` exactly as `T`.
#[derive(Serialize)]
struct BodyRef<'a> {
    shard: ShardId,
    shard_count: u32,
    last_applied: u64,
    shard_map: &'a Option<ShardMap>,
    filters: Vec<(&'a str, FilterForm)>,
    timelines: &'a Timelines,
    graph: GraphForm,
    outbox: &'a Outbox<EdgeUpdate>,
    sessions: &'a Sessions,
    features: Vec<(VertexId, &'a [f32])>,
    feed: FeedForm,
    empi: EmpiForm,
}

impl ShardState {
    fn body_bytes(&self) -> Vec<u8> {
        // Invariant: encoding into memory cannot fail. Roaring writes into a
        // Vec, which never errors, and postcard fails only on maps or
        // sequences of unknown length, which none of these types produce.
        let graph = self
            .graph
            .to_form()
            .expect("serialising a bitmap into a Vec cannot fail");
        let body = BodyRef {
            shard: self.here.shard,
            shard_count: self.here.shard_count,
            last_applied: self.last_applied,
            shard_map: &self.shard_map,
            filters: self.filters.iter().map(|(n, f)| (n.as_str(), f.to_form())).collect(),
            timelines: &self.timelines,
            graph,
            outbox: &self.outbox,
            sessions: &self.sessions,
            features: self.features.to_form(),
            feed: self.feed.to_form(),
            empi: self.empi.to_form(),
        };
        postcard::to_stdvec(&body).expect("postcard encodes every state type into a Vec")
    }

    /// The state as versioned, checksummed bytes.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let body = self.body_bytes();
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len() + TRAILER_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Rebuilds a state from `to_snapshot` bytes; corrupt or foreign bytes
    /// are an error.
    pub fn from_snapshot(bytes: &[u8], limits: StateLimits) -> Result<Self, StateError> {
        if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
            return Err(StateError::TooShort(bytes.len()));
        }
        let (head, rest) = bytes.split_at(HEADER_BYTES);
        if &head[..8] != MAGIC {
            return Err(StateError::BadMagic);
        }
        let mut word4 = [0u8; 4];
        word4.copy_from_slice(&head[8..12]);
        let version = u32::from_le_bytes(word4);
        if !(VERSION_OLDEST..=VERSION).contains(&version) {
            return Err(StateError::UnsupportedVersion(version));
        }
        let mut word8 = [0u8; 8];
        word8.copy_from_slice(&head[12..20]);
        let declared = u64::from_le_bytes(word8);
        let actual = (rest.len() - TRAILER_BYTES) as u64;
        if declared != actual {
            return Err(StateError::BadLength { declared, actual });
        }
        let (body, trailer) = rest.split_at(rest.len() - TRAILER_BYTES);
        word4.copy_from_slice(trailer);
        let stored = u32::from_le_bytes(word4);
        let computed = crc32c::crc32c(&bytes[..bytes.len() - TRAILER_BYTES]);
        if stored != computed {
            return Err(StateError::Checksum { stored, computed });
        }
        // An older body is the newer one with its missing trailing parts empty.
        let upgraded;
        let body = match version {
            1 => {
                upgraded = [body, &EMPTY_FEATURES[..], &empty_feed(), &empty_empi()].concat();
                &upgraded[..]
            }
            2 => {
                upgraded = [body, &empty_feed(), &empty_empi()].concat();
                &upgraded[..]
            }
            3 => {
                upgraded = [body, &empty_empi()].concat();
                &upgraded[..]
            }
            4 => {
                upgraded = [body, &EMPTY_APART[..]].concat();
                &upgraded[..]
            }
            _ => body,
        };
        let (body, left): (Body, &[u8]) = postcard::take_from_bytes(body)?;
        if !left.is_empty() {
            return Err(StateError::Invalid(format!("{} bytes after the body", left.len())));
        }
        Self::from_body(body, limits).map_err(StateError::Invalid)
    }

    fn from_body(body: Body, limits: StateLimits) -> Result<Self, String> {
        let mut filters = BTreeMap::new();
        for (name, form) in body.filters {
            if name.len() > FILTER_NAME_BYTES_MAX {
                return Err(format!("filter name of {} bytes", name.len()));
            }
            if filters
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= name)
            {
                return Err(format!("filters are not in ascending name order at {name:?}"));
            }
            let filter = NamedFilter::from_form(form).map_err(|e| format!("filter {name:?}: {e}"))?;
            filters.insert(name, filter);
        }
        body.timelines.validate()?;
        let mut outbox = body.outbox;
        outbox.restore()?;
        let mut sessions = body.sessions;
        sessions.restore();
        let features = FeatureStore::from_form(body.features)?;
        let feed = FeedState::from_form(body.feed, &limits.feed)?;
        let here = Placement {
            shard: body.shard,
            shard_count: body.shard_count,
        };
        let empi = EmpiStore::from_form(body.empi, &limits.empi, here)?;
        Ok(Self {
            here,
            limits,
            last_applied: body.last_applied,
            shard_map: body.shard_map,
            filters,
            timelines: body.timelines,
            graph: Graph::from_form(body.graph)?,
            outbox,
            sessions,
            features,
            feed,
            empi,
            canary: None,
        })
    }

    /// A deterministic digest of the replicated state, for convergence checks.
    ///
    /// It covers exactly what a snapshot holds (including `last_applied`,
    /// but not the limits), through the same canonical encoding, with a
    /// fixed-seed hash; equal states give equal digests on every platform.
    pub fn state_hash(&self) -> u64 {
        digest64(&self.body_bytes())
    }
}

/// Frames `body` as a snapshot with a correct header and checksum, so tests
/// reach the decoder with arbitrary bodies.
#[cfg(test)]
pub(crate) fn frame_for_test(body: &[u8]) -> Vec<u8> {
    frame_version_for_test(VERSION, body)
}

/// Frames `body` as a snapshot of format `version`.
#[cfg(test)]
pub(crate) fn frame_version_for_test(version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use roaring::RoaringTreemap;
    use serde::de::DeserializeOwned;

    use super::*;
    use crate::command::EdgeUpdate;

    /// Decodes `value`'s postcard bytes as `T`: builds private types from
    /// tuples of the same shape, which postcard encodes identically.
    fn recode<T: DeserializeOwned>(value: &impl Serialize) -> T {
        postcard::from_bytes(&postcard::to_stdvec(value).unwrap()).unwrap()
    }

    fn empty_body() -> Body {
        postcard::from_bytes(&ShardState::new(0, 1, StateLimits::default()).body_bytes()).unwrap()
    }

    fn load(body: &Body) -> Result<ShardState, StateError> {
        ShardState::from_snapshot(
            &frame_for_test(&postcard::to_stdvec(body).unwrap()),
            StateLimits::default(),
        )
    }

    fn bitmap(values: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        values
            .iter()
            .copied()
            .collect::<RoaringTreemap>()
            .serialize_into(&mut out)
            .unwrap();
        out
    }

    type RawGraph = (Vec<(u64, Vec<u8>)>, Vec<(u64, Vec<u8>)>, Vec<(u32, u64)>);

    #[test]
    fn an_empty_body_loads() {
        assert_eq!(
            load(&empty_body()).unwrap(),
            ShardState::new(0, 1, StateLimits::default())
        );
    }

    #[test]
    fn decoded_invariants_are_checked() {
        let invalid = |body: Body| matches!(load(&body), Err(StateError::Invalid(_)));
        let with_timelines = |owners: BTreeMap<u64, BTreeMap<u64, Vec<u8>>>, last_id: u64| Body {
            timelines: recode(&(owners, last_id)),
            ..empty_body()
        };
        // An id above the shard's last id would let a later append reorder.
        assert!(invalid(with_timelines(
            BTreeMap::from([(1, BTreeMap::from([(5, vec![1])]))]),
            4
        )));
        assert!(invalid(with_timelines(BTreeMap::from([(1, BTreeMap::new())]), 4)));
        assert!(load(&with_timelines(
            BTreeMap::from([(1, BTreeMap::from([(4, vec![1])]))]),
            4
        ))
        .is_ok());

        let with_graph = |g: RawGraph| Body {
            graph: recode(&g),
            ..empty_body()
        };
        assert!(load(&with_graph((vec![(1, bitmap(&[2, 3]))], vec![], vec![(2, 7)]))).is_ok());
        assert!(invalid(with_graph((vec![(1, bitmap(&[]))], vec![], vec![]))));
        assert!(invalid(with_graph((vec![(1, bitmap(&[1]))], vec![], vec![]))));
        assert!(invalid(with_graph((
            vec![(2, bitmap(&[1])), (1, bitmap(&[2]))],
            vec![],
            vec![]
        ))));
        assert!(invalid(with_graph((vec![], vec![(1, b"junk".to_vec())], vec![]))));
        let mut trailing = bitmap(&[2]);
        trailing.push(0);
        assert!(invalid(with_graph((vec![(1, trailing)], vec![], vec![]))));
        assert!(invalid(with_graph((vec![], vec![], vec![(2, 7), (2, 8)]))));

        let with_outbox = |first_seq: u64| Body {
            outbox: recode(&BTreeMap::from([(
                3u32,
                (
                    first_seq,
                    vec![EdgeUpdate {
                        src: 1,
                        dst: 2,
                        add: true,
                    }],
                ),
            )])),
            ..empty_body()
        };
        assert_eq!(
            load(&with_outbox(5)).map(|s| s.outbox_pending(9)).ok(),
            Some(vec![(
                3,
                5,
                vec![EdgeUpdate {
                    src: 1,
                    dst: 2,
                    add: true
                }]
            )])
        );
        assert!(invalid(with_outbox(0)));
        assert!(invalid(with_outbox(u64::MAX)));
    }
}
