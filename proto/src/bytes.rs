//! Serde adapters that encode byte strings in one piece.
//!
//! serde treats a `Vec<u8>` as a sequence of separate `u8`s, so postcard encodes and decodes
//! it one byte and one call at a time; a 50-entry timeline page spent more time there than in
//! the shard's read. `serde_bytes` (for `Vec<u8>`) and [`byte_strings`] (for `Vec<Vec<u8>>`)
//! hand the bytes over as one slice instead. The wire format does not change: postcard writes
//! a byte string and a sequence of `u8` alike, a varint length and then the raw bytes (the
//! tests below hold it to that), as `docs/PROTOCOL.md` describes.

/// `#[serde(with = "byte_strings")]` for a `Vec<Vec<u8>>`: a sequence of byte strings.
pub mod byte_strings {
    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Entries preallocated from a peer-supplied length, at most: the length is hostile input
    /// until the bytes behind it arrive.
    const PREALLOC_ENTRIES_MAX: usize = 1_024;

    /// Serializes `v` as a sequence of byte strings.
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for item in v {
            seq.serialize_element(Bytes::new(item))?;
        }
        seq.end()
    }

    /// Deserializes a sequence of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        struct Strings;
        impl<'de> Visitor<'de> for Strings {
            type Value = Vec<Vec<u8>>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of byte strings")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOC_ENTRIES_MAX));
                while let Some(item) = seq.next_element::<ByteBuf>()? {
                    out.push(item.into_vec());
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Strings)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use crate::{Page, ReadOp, TimelineEntry, WriteOp};

    /// What the messages were before the adapters: plain serde sequences of `u8`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct PlainEntry {
        id: u64,
        item: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum PlainWrite {
        FilterCreate,
        FilterAdd { name: String, keys: Vec<Vec<u8>> },
        FilterSeal,
        TimelineAppend { owner: u64, item: Vec<u8> },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum PlainRead {
        FilterContains { name: String, keys: Vec<Vec<u8>> },
    }

    proptest! {
        #[test]
        fn a_page_encodes_as_plain_byte_sequences_did(entries in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8)) {
            let page = Page {
                entries: entries.iter().map(|(id, item)| TimelineEntry { id: *id, item: item.clone() }).collect(),
                has_more: true,
            };
            let plain: (Vec<PlainEntry>, bool) = (
                entries.iter().map(|(id, item)| PlainEntry { id: *id, item: item.clone() }).collect(),
                true,
            );
            let bytes = postcard::to_stdvec(&page).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_stdvec(&plain).unwrap());
            prop_assert_eq!(postcard::from_bytes::<Page>(&bytes).unwrap(), page);
        }

        #[test]
        fn keys_and_items_encode_as_plain_byte_sequences_did(keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20), item in proptest::collection::vec(any::<u8>(), 0..300)) {
            let add = WriteOp::FilterAdd { name: "f".into(), keys: keys.clone() };
            let plain = PlainWrite::FilterAdd { name: "f".into(), keys: keys.clone() };
            let bytes = postcard::to_stdvec(&add).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_stdvec(&plain).unwrap());
            prop_assert_eq!(postcard::from_bytes::<WriteOp>(&bytes).unwrap(), add);

            let append = WriteOp::TimelineAppend { owner: 7, item: item.clone() };
            let bytes = postcard::to_stdvec(&append).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_stdvec(&PlainWrite::TimelineAppend { owner: 7, item }).unwrap());
            prop_assert_eq!(postcard::from_bytes::<WriteOp>(&bytes).unwrap(), append);

            let contains = ReadOp::FilterContains { name: "f".into(), keys: keys.clone() };
            let bytes = postcard::to_stdvec(&contains).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_stdvec(&PlainRead::FilterContains { name: "f".into(), keys }).unwrap());
            prop_assert_eq!(postcard::from_bytes::<ReadOp>(&bytes).unwrap(), contains);
        }
    }

    #[test]
    fn a_byte_string_list_longer_than_its_bytes_is_an_error_not_an_allocation() {
        // Variant 1 (FilterAdd), name "f", then a claimed 2^32 keys and nothing behind them.
        let hostile = [1u8, 1, b'f', 0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(postcard::from_bytes::<WriteOp>(&hostile).is_err());
    }
}
