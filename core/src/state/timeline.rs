//! Timelines: per owner, a capped map from monotone entry id to item bytes.
//!
//! One owner's items lie back to back in one buffer, with a separate index of ids, so a page is
//! read from contiguous memory: with one allocation per item (a `BTreeMap` of `Vec`s), copying a
//! page of 50 items out was one cache miss per item and the largest cost of a timeline read.
//! Snapshots encode a timeline exactly as that map of id to bytes.
//!
//! Entry ids are `millis << ENTRY_SEQ_BITS`, bumped past the shard's last id
//! so they strictly increase within the shard even when a new leader's clock
//! is behind the old one's. Paging is by id cursor, never by offset. This is
//! not fan-out: which timelines an item is appended to is decided elsewhere.

use std::collections::{BTreeMap, VecDeque};

use plexus_proto::{Cursor, EntryId, ErrorReply, OwnerId, Page, TimelineEntry, ENTRY_SEQ_BITS};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every timeline of one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Timelines {
    /// Entries per owner; an owner with no entries has no key, so equal
    /// contents have equal encodings whatever their history.
    owners: BTreeMap<OwnerId, Timeline>,
    /// Largest id ever assigned on this shard (0 before the first).
    last_id: EntryId,
}

impl Timelines {
    /// Appends `item` to `owner`'s timeline stamped at `now_millis`, then
    /// drops the oldest entries past `len_max`; answers the new id.
    pub(crate) fn append(
        &mut self,
        owner: OwnerId,
        item: &[u8],
        now_millis: u64,
        len_max: usize,
    ) -> Result<EntryId, ErrorReply> {
        let stamped = now_millis
            .checked_mul(1u64 << ENTRY_SEQ_BITS)
            .ok_or_else(|| ErrorReply::BadRequest(format!("now_millis {now_millis} does not fit an entry id")))?;
        let next = self
            .last_id
            .checked_add(1)
            .ok_or_else(|| ErrorReply::Internal("the shard's entry id space is exhausted".into()))?;
        let id = stamped.max(next);
        debug_assert!(id > self.last_id);
        self.last_id = id;
        let timeline = self.owners.entry(owner).or_default();
        timeline.push(id, item);
        while timeline.len() > len_max {
            timeline.pop_oldest();
        }
        if timeline.is_empty() {
            self.owners.remove(&owner);
        }
        debug_assert!(self.owners.get(&owner).is_none_or(|t| t.len() <= len_max));
        Ok(id)
    }

    /// Deletes one entry; whether it existed.
    pub(crate) fn delete(&mut self, owner: OwnerId, id: EntryId) -> bool {
        let Some(timeline) = self.owners.get_mut(&owner) else {
            return false;
        };
        let existed = timeline.remove(id);
        if timeline.is_empty() {
            self.owners.remove(&owner);
        }
        existed
    }

    /// One page of `owner`'s timeline. `limit` must already be capped and
    /// non-zero.
    pub(crate) fn read(&self, owner: OwnerId, cursor: Cursor, limit: usize) -> Page {
        let Some(timeline) = self.owners.get(&owner) else {
            return Page::default();
        };
        let index = &timeline.index;
        let (entries, has_more) = match cursor {
            Cursor::Latest => take(index.iter().rev().map(|s| timeline.entry(s)), limit),
            Cursor::Before(before) => {
                let end = index.partition_point(|s| s.id < before);
                take(index.range(..end).rev().map(|s| timeline.entry(s)), limit)
            }
            Cursor::After(after) => {
                let start = index.partition_point(|s| s.id <= after);
                take(index.range(start..).map(|s| timeline.entry(s)), limit)
            }
        };
        Page { entries, has_more }
    }

    /// `owner`'s entries with ids below `before` (all, if `None`), newest first, borrowed.
    pub(crate) fn newest(
        &self,
        owner: OwnerId,
        before: Option<EntryId>,
    ) -> impl Iterator<Item = (EntryId, &[u8])> + '_ {
        self.owners.get(&owner).into_iter().flat_map(move |t| {
            let end = before.map_or(t.index.len(), |b| t.index.partition_point(|s| s.id < b));
            t.index.range(..end).rev().map(move |s| (s.id, t.item(s)))
        })
    }

    /// The item of `owner`'s entry `id`, if it is there.
    pub(crate) fn get(&self, owner: OwnerId, id: EntryId) -> Option<&[u8]> {
        let t = self.owners.get(&owner)?;
        let pos = t.index.binary_search_by_key(&id, |s| s.id).ok()?;
        Some(t.item(&t.index[pos]))
    }

    /// Largest id ever assigned on this shard.
    pub(crate) fn last_id(&self) -> EntryId {
        self.last_id
    }

    /// Number of owners with at least one entry.
    #[cfg(test)]
    pub(crate) fn owners_len(&self) -> usize {
        self.owners.len()
    }

    /// Checks what a decoded snapshot must satisfy: no empty timeline, and no
    /// id above `last_id`, so future ids stay strictly increasing. Lengths
    /// are not checked against a cap: limits may have been lowered since.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (owner, timeline) in &self.owners {
            match timeline.index.back() {
                None => return Err(format!("timeline of owner {owner} is empty")),
                Some(Slot { id, .. }) if *id > self.last_id => {
                    return Err(format!(
                        "timeline of owner {owner} has id {id} above the shard's last id"
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Debug check after a write to `owner`.
    pub(crate) fn check_owner(&self, owner: OwnerId, len_max: usize) -> bool {
        self.owners.get(&owner).is_none_or(|t| {
            !t.is_empty() && t.len() <= len_max && t.index.back().is_some_and(|s| s.id <= self.last_id) && t.check()
        })
    }
}

/// Where one entry's item lies in its timeline's buffer.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: EntryId,
    start: usize,
    len: usize,
}

/// Dead bytes a timeline's buffer may hold before it is compacted, at the least: below this a
/// copy would cost more than the memory it frees.
const TIMELINE_DEAD_BYTES_MIN: usize = 4096;

/// One owner's entries, oldest first. Items lie back to back in `bytes`; an item dropped or
/// deleted leaves its bytes dead until the buffer is compacted, which happens once the dead
/// bytes outnumber the live ones, so the buffer is at most about twice its contents and each
/// byte is copied O(1) times on average.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timeline {
    /// Ids strictly ascending, each with its item's place in `bytes`.
    index: VecDeque<Slot>,
    bytes: Vec<u8>,
    /// Bytes of `bytes` that no slot refers to.
    dead: usize,
}

impl Timeline {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Appends an entry; `id` must exceed every id here (the shard's ids only grow).
    fn push(&mut self, id: EntryId, item: &[u8]) {
        debug_assert!(self.index.back().is_none_or(|s| s.id < id));
        self.index.push_back(Slot {
            id,
            start: self.bytes.len(),
            len: item.len(),
        });
        self.bytes.extend_from_slice(item);
    }

    fn pop_oldest(&mut self) {
        if let Some(s) = self.index.pop_front() {
            self.dead += s.len;
            self.compact_if_sparse();
        }
    }

    /// Removes the entry with `id`; whether there was one.
    fn remove(&mut self, id: EntryId) -> bool {
        let Ok(pos) = self.index.binary_search_by_key(&id, |s| s.id) else {
            return false;
        };
        if let Some(s) = self.index.remove(pos) {
            self.dead += s.len;
        }
        self.compact_if_sparse();
        true
    }

    fn compact_if_sparse(&mut self) {
        let live = self.bytes.len() - self.dead;
        if self.dead < TIMELINE_DEAD_BYTES_MIN.max(live) {
            return;
        }
        let mut bytes = Vec::with_capacity(live);
        for s in &mut self.index {
            let start = bytes.len();
            bytes.extend_from_slice(&self.bytes[s.start..s.start + s.len]);
            s.start = start;
        }
        self.bytes = bytes;
        self.dead = 0;
    }

    fn item(&self, s: &Slot) -> &[u8] {
        &self.bytes[s.start..s.start + s.len]
    }

    fn entry(&self, s: &Slot) -> TimelineEntry {
        TimelineEntry {
            id: s.id,
            item: self.item(s).to_vec(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (EntryId, &[u8])> {
        self.index.iter().map(|s| (s.id, self.item(s)))
    }

    /// Debug check: ids ascending, every item inside the buffer, the dead count right.
    fn check(&self) -> bool {
        let ascending = self
            .index
            .iter()
            .zip(self.index.iter().skip(1))
            .all(|(a, b)| a.id < b.id);
        let inside = self.index.iter().all(|s| s.start + s.len <= self.bytes.len());
        let live: usize = self.index.iter().map(|s| s.len).sum();
        ascending && inside && live + self.dead == self.bytes.len()
    }
}

/// Equal when the entries are, however the buffers are laid out.
impl PartialEq for Timeline {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Timeline {}

/// Encoded exactly as a `BTreeMap<EntryId, Vec<u8>>` (an id → bytes map in id order), the
/// snapshot format from before the contiguous layout.
impl Serialize for Timeline {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Timeline {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<EntryId, Vec<u8>>::deserialize(deserializer)?;
        let mut t = Timeline {
            index: VecDeque::with_capacity(map.len()),
            bytes: Vec::with_capacity(map.values().map(Vec::len).sum()),
            dead: 0,
        };
        for (id, item) in &map {
            t.push(*id, item);
        }
        Ok(t)
    }
}

/// The first `limit` items and whether another follows.
fn take<T>(mut it: impl Iterator<Item = T>, limit: usize) -> (Vec<T>, bool) {
    // Sized from the iterator's lower bound (exact for a whole timeline), never beyond `limit`.
    let mut entries = Vec::with_capacity(it.size_hint().0.min(limit));
    entries.extend(it.by_ref().take(limit));
    let has_more = it.next().is_some();
    (entries, has_more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1 << ENTRY_SEQ_BITS;

    fn ids(page: &Page) -> Vec<EntryId> {
        page.entries.iter().map(|e| e.id).collect()
    }

    #[test]
    fn ids_monotone_with_equal_and_decreasing_clock() {
        let mut t = Timelines::default();
        assert_eq!(t.append(1, b"a", 1_000, 800), Ok(1_000 * MS));
        assert_eq!(t.append(1, b"b", 1_000, 800), Ok(1_000 * MS + 1));
        assert_eq!(t.append(2, b"c", 1_000, 800), Ok(1_000 * MS + 2));
        // A new leader whose clock is behind still moves forward.
        assert_eq!(t.append(1, b"d", 900, 800), Ok(1_000 * MS + 3));
        assert_eq!(t.append(1, b"e", 1_001, 800), Ok(1_001 * MS));
        assert_eq!(t.last_id(), 1_001 * MS);
    }

    #[test]
    fn clock_overflow_is_refused() {
        let mut t = Timelines::default();
        assert!(matches!(
            t.append(1, b"a", u64::MAX, 800),
            Err(ErrorReply::BadRequest(_))
        ));
        assert_eq!(t, Timelines::default());
    }

    #[test]
    fn cap_drops_oldest() {
        let mut t = Timelines::default();
        for i in 0..803u64 {
            t.append(7, &i.to_le_bytes(), 5, 800).unwrap();
        }
        let page = t.read(7, Cursor::After(0), 1_000);
        assert_eq!(page.entries.len(), 800);
        assert_eq!(
            page.entries[0],
            TimelineEntry {
                id: 5 * MS + 3,
                item: 3u64.to_le_bytes().to_vec()
            }
        );
        assert_eq!(page.entries[799].id, 5 * MS + 802);
        assert!(!page.has_more);
    }

    #[test]
    fn cursors_and_has_more() {
        let mut t = Timelines::default();
        for i in 1..=5u64 {
            t.append(3, format!("p{i}").as_bytes(), i, 800).unwrap();
        }
        let latest = t.read(3, Cursor::Latest, 2);
        assert_eq!(ids(&latest), vec![5 * MS, 4 * MS]);
        assert_eq!(latest.entries[0].item, b"p5".to_vec());
        assert!(latest.has_more);
        let before = t.read(3, Cursor::Before(4 * MS), 2);
        assert_eq!((ids(&before), before.has_more), (vec![3 * MS, 2 * MS], true));
        let before = t.read(3, Cursor::Before(2 * MS), 2);
        assert_eq!((ids(&before), before.has_more), (vec![MS], false));
        let after = t.read(3, Cursor::After(MS), 2);
        assert_eq!((ids(&after), after.has_more), (vec![2 * MS, 3 * MS], true));
        let after = t.read(3, Cursor::After(3 * MS), 2);
        assert_eq!((ids(&after), after.has_more), (vec![4 * MS, 5 * MS], false));
        let all = t.read(3, Cursor::Latest, 5);
        assert_eq!((all.entries.len(), all.has_more), (5, false));
        assert_eq!(t.read(4, Cursor::Latest, 5), Page::default());
    }

    #[test]
    fn delete_existing_and_missing() {
        let mut t = Timelines::default();
        let id = t.append(1, b"x", 10, 800).unwrap();
        assert!(!t.delete(1, id + 1));
        assert!(!t.delete(2, id));
        assert!(t.delete(1, id));
        assert!(!t.delete(1, id));
        assert_eq!(t.owners_len(), 0);
        assert_eq!(t.read(1, Cursor::Latest, 10), Page::default());
        // The id is never reused.
        assert_eq!(t.append(1, b"y", 10, 800), Ok(id + 1));
    }

    /// The layout this module replaced, as the reference the contiguous one must match.
    type Reference = BTreeMap<EntryId, Vec<u8>>;

    fn reference_page(r: &Reference, cursor: Cursor, limit: usize) -> Page {
        let all: Vec<TimelineEntry> = match cursor {
            Cursor::Latest => r.iter().rev().map(|(id, v)| (*id, v)).collect::<Vec<_>>(),
            Cursor::Before(b) => r.range(..b).rev().map(|(id, v)| (*id, v)).collect(),
            Cursor::After(a) => r.range(a.saturating_add(1)..).map(|(id, v)| (*id, v)).collect(),
        }
        .into_iter()
        .map(|(id, v)| TimelineEntry { id, item: v.clone() })
        .collect();
        let has_more = all.len() > limit;
        Page {
            entries: all.into_iter().take(limit).collect(),
            has_more,
        }
    }

    #[derive(Clone, Debug)]
    enum TOp {
        Append(usize),
        Delete(usize),
        Read(u8, usize, usize),
    }

    fn top() -> impl Strategy<Value = TOp> {
        prop_oneof![
            4 => (0usize..1000).prop_map(TOp::Append),
            1 => (0usize..64).prop_map(TOp::Delete),
            2 => (0u8..3, 0usize..64, 1usize..40).prop_map(|(c, at, limit)| TOp::Read(c, at, limit)),
        ]
    }

    proptest! {
        /// Appends (items of 0..1000 bytes, so buffers compact often), deletes of existing and
        /// missing ids and reads at every kind of cursor agree with the map-of-`Vec`s layout,
        /// page for page, and the snapshot encoding is the same bytes throughout.
        #[test]
        fn the_contiguous_layout_behaves_and_encodes_like_a_map_of_items(ops in proptest::collection::vec(top(), 1..200)) {
            let mut t = Timelines::default();
            let mut r = Reference::new();
            let len_max = 40;
            for (step, op) in ops.iter().enumerate() {
                match op {
                    TOp::Append(n) => {
                        let item: Vec<u8> = (0..*n).map(|i| (i + step) as u8).collect();
                        let id = t.append(9, &item, step as u64, len_max).unwrap();
                        r.insert(id, item);
                        while r.len() > len_max {
                            r.pop_first();
                        }
                    }
                    TOp::Delete(at) => {
                        // An id that exists when `at` points into the map, else one that never did.
                        let id = r.keys().nth(*at).copied().unwrap_or(u64::MAX - *at as u64);
                        prop_assert_eq!(t.delete(9, id), r.remove(&id).is_some());
                    }
                    TOp::Read(c, at, limit) => {
                        let id = r.keys().nth(*at).copied().unwrap_or(*at as u64);
                        let cursor = match c {
                            0 => Cursor::Latest,
                            1 => Cursor::Before(id),
                            _ => Cursor::After(id),
                        };
                        prop_assert_eq!(t.read(9, cursor, *limit), reference_page(&r, cursor, *limit));
                    }
                }
                prop_assert!(t.check_owner(9, len_max));
                if let Some(tl) = t.owners.get(&9) {
                    // Compaction keeps the buffer within about twice its contents.
                    let live = tl.bytes.len() - tl.dead;
                    prop_assert!(tl.dead < TIMELINE_DEAD_BYTES_MIN.max(live) + 1, "{} dead, {} live", tl.dead, live);
                }
                if step % 16 != 15 && step + 1 != ops.len() {
                    continue;
                }
                let encoded = postcard::to_stdvec(&t.owners.get(&9)).unwrap();
                let want = postcard::to_stdvec(&(!r.is_empty()).then_some(&r)).unwrap();
                prop_assert_eq!(&encoded, &want);
                let decoded: Option<Timeline> = postcard::from_bytes(&encoded).unwrap();
                prop_assert_eq!(decoded.as_ref(), t.owners.get(&9));
            }
        }
    }
}
