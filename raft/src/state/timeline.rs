//! Timelines: per owner, a capped map from monotone entry id to item bytes.
//!
//! Entry ids are `millis << ENTRY_SEQ_BITS`, bumped past the shard's last id
//! so they strictly increase within the shard even when a new leader's clock
//! is behind the old one's. Paging is by id cursor, never by offset. This is
//! not fan-out: which timelines an item is appended to is decided elsewhere.

use std::collections::BTreeMap;
use std::ops::Bound;

use plexus_proto::{Cursor, EntryId, ErrorReply, OwnerId, Page, TimelineEntry, ENTRY_SEQ_BITS};
use serde::{Deserialize, Serialize};

/// Every timeline of one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Timelines {
    /// Entries per owner; an owner with no entries has no key, so equal
    /// contents have equal encodings whatever their history.
    owners: BTreeMap<OwnerId, BTreeMap<EntryId, Vec<u8>>>,
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
        timeline.insert(id, item.to_vec());
        while timeline.len() > len_max {
            timeline.pop_first();
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
        let existed = timeline.remove(&id).is_some();
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
        let entry = |(id, item): (&EntryId, &Vec<u8>)| TimelineEntry {
            id: *id,
            item: item.clone(),
        };
        let (entries, has_more) = match cursor {
            Cursor::Latest => take(timeline.iter().rev().map(entry), limit),
            Cursor::Before(before) => take(timeline.range(..before).rev().map(entry), limit),
            Cursor::After(after) => take(
                timeline.range((Bound::Excluded(after), Bound::Unbounded)).map(entry),
                limit,
            ),
        };
        Page { entries, has_more }
    }

    /// Largest id ever assigned on this shard.
    #[cfg(test)]
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
            match timeline.last_key_value() {
                None => return Err(format!("timeline of owner {owner} is empty")),
                Some((id, _)) if *id > self.last_id => {
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
            !t.is_empty() && t.len() <= len_max && t.last_key_value().is_some_and(|(id, _)| *id <= self.last_id)
        })
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
}
