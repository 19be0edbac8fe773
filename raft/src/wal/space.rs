//! Bookkeeping that decides which old segments can be deleted, and what a new segment's
//! checkpoint must hold.
//!
//! It tracks, per segment and per group, the range of entry indexes appended there that may still
//! be live, and per group the small state (vote, committed, purge point) that checkpoints repeat.
//! It does no IO: the writer thread and recovery feed it the same notes and act on its answers.
//!
//! A segment is dead when it is not the active one and, for every group with entries in it, those
//! entries are all at or below the group's purge point. Only a dead *prefix* of segments is ever
//! deleted: a `Truncate` in a later segment may have removed entries of an earlier one, and
//! replay is only exact if no segment between two survivors has gone.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use super::format::Checkpoint;

/// What the writer needs to know about one op, without its entry payloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpNote {
    /// Entries with indexes in `min..=max` were appended.
    Append {
        /// Raft group.
        group: u32,
        /// Lowest index in the op.
        min: u64,
        /// Highest index in the op.
        max: u64,
    },
    /// Entries at or above `from` were removed.
    Truncate {
        /// Raft group.
        group: u32,
        /// First removed index.
        from: u64,
    },
    /// Entries at or below `upto` were removed.
    Purge {
        /// Raft group.
        group: u32,
        /// Last removed index.
        upto: u64,
        /// Opaque purge meta bytes.
        meta: Vec<u8>,
    },
    /// A vote was saved.
    Vote {
        /// Raft group.
        group: u32,
        /// Vote bytes.
        bytes: Vec<u8>,
    },
    /// A committed pointer was saved.
    Committed {
        /// Raft group.
        group: u32,
        /// Committed bytes.
        bytes: Vec<u8>,
    },
    /// A checkpoint record was replayed.
    Checkpoint(Checkpoint),
}

/// One segment file as the space tracker sees it.
#[derive(Debug)]
pub(crate) struct SegmentInfo {
    /// Sequence number of its first record (also its name).
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Complete records in it.
    pub records: u64,
    /// Per group, the inclusive range of indexes appended here that may still be live.
    ranges: BTreeMap<u32, (u64, u64)>,
}

impl SegmentInfo {
    /// A segment with no records yet.
    pub fn new(first_seq: u64, path: PathBuf) -> Self {
        Self {
            first_seq,
            path,
            records: 0,
            ranges: BTreeMap::new(),
        }
    }
}

/// Tracked state of all segments and groups.
#[derive(Debug, Default)]
pub(crate) struct Space {
    /// Segments, oldest first; the last one is the active segment.
    pub segments: VecDeque<SegmentInfo>,
    /// Per group, the state a checkpoint repeats.
    groups: BTreeMap<u32, Checkpoint>,
}

impl Space {
    /// Records one op written into the last (active) segment.
    pub fn note(&mut self, note: OpNote) {
        match note {
            OpNote::Append { group, min, max } => {
                if let Some(active) = self.segments.back_mut() {
                    let range = active.ranges.entry(group).or_insert((min, max));
                    range.0 = range.0.min(min);
                    range.1 = range.1.max(max);
                }
            }
            OpNote::Truncate { group, from } => {
                for segment in &mut self.segments {
                    if let Some(&(min, max)) = segment.ranges.get(&group) {
                        if min >= from {
                            segment.ranges.remove(&group);
                        } else if max >= from {
                            // `min < from`, so `from >= 1` and the subtraction cannot underflow.
                            segment.ranges.insert(group, (min, from - 1));
                        }
                    }
                }
            }
            OpNote::Purge { group, upto, meta } => {
                let state = self.group(group);
                if state.purged_upto.is_none_or(|p| upto > p) {
                    state.purged_upto = Some(upto);
                    state.purged_meta = meta;
                }
            }
            OpNote::Vote { group, bytes } => self.group(group).vote = Some(bytes),
            OpNote::Committed { group, bytes } => self.group(group).committed = Some(bytes),
            OpNote::Checkpoint(checkpoint) => {
                let group = checkpoint.group;
                if let Some(bytes) = checkpoint.vote {
                    self.note(OpNote::Vote { group, bytes });
                }
                if let Some(bytes) = checkpoint.committed {
                    self.note(OpNote::Committed { group, bytes });
                }
                if let Some(upto) = checkpoint.purged_upto {
                    self.note(OpNote::Purge {
                        group,
                        upto,
                        meta: checkpoint.purged_meta,
                    });
                }
            }
        }
    }

    /// The checkpoint of every group, in group order.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.groups.values().cloned().collect()
    }

    /// How many of the oldest segments are dead and may be deleted, oldest first. The active
    /// (last) segment is never counted.
    pub fn dead_prefix(&self) -> usize {
        let inactive = self.segments.len().saturating_sub(1);
        self.segments
            .iter()
            .take(inactive)
            .take_while(|segment| {
                segment.ranges.iter().all(|(group, &(_, max))| {
                    self.groups
                        .get(group)
                        .and_then(|state| state.purged_upto)
                        .is_some_and(|purged| max <= purged)
                })
            })
            .count()
    }

    /// The mutable checkpoint state of `group`, created empty on first use.
    fn group(&mut self, group: u32) -> &mut Checkpoint {
        self.groups.entry(group).or_insert_with(|| Checkpoint {
            group,
            ..Checkpoint::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space_with(segments: u64) -> Space {
        let mut space = Space::default();
        for seq in 0..segments {
            space
                .segments
                .push_back(SegmentInfo::new(seq, PathBuf::from(format!("{seq}"))));
        }
        space
    }

    #[test]
    fn purge_frees_only_a_prefix_and_never_the_active_segment() {
        let mut space = Space::default();
        space.segments.push_back(SegmentInfo::new(0, PathBuf::from("0")));
        space.note(OpNote::Append {
            group: 1,
            min: 1,
            max: 10,
        });
        space.note(OpNote::Append {
            group: 2,
            min: 1,
            max: 5,
        });
        space.segments.push_back(SegmentInfo::new(1, PathBuf::from("1")));
        space.note(OpNote::Append {
            group: 1,
            min: 11,
            max: 20,
        });
        space.segments.push_back(SegmentInfo::new(2, PathBuf::from("2")));
        space.note(OpNote::Append {
            group: 1,
            min: 21,
            max: 22,
        });
        assert_eq!(space.dead_prefix(), 0);
        space.note(OpNote::Purge {
            group: 1,
            upto: 20,
            meta: vec![1],
        });
        // Segment 0 still holds live entries of group 2, which blocks segment 1 behind it too.
        assert_eq!(space.dead_prefix(), 0);
        space.note(OpNote::Purge {
            group: 2,
            upto: 5,
            meta: vec![2],
        });
        assert_eq!(space.dead_prefix(), 2);
        space.note(OpNote::Purge {
            group: 1,
            upto: 22,
            meta: vec![3],
        });
        assert_eq!(space.dead_prefix(), 2, "the active segment is never dead");
    }

    #[test]
    fn truncate_clamps_ranges_in_every_segment() {
        let mut space = space_with(1);
        space.note(OpNote::Append {
            group: 1,
            min: 5,
            max: 9,
        });
        space.segments.push_back(SegmentInfo::new(1, PathBuf::from("1")));
        space.note(OpNote::Truncate { group: 1, from: 3 });
        space.segments.push_back(SegmentInfo::new(2, PathBuf::from("2")));
        // Every entry of group 1 in segment 0 was truncated away, so nothing holds it.
        assert_eq!(space.dead_prefix(), 2);
    }

    #[test]
    fn purge_point_is_monotone_and_checkpointed() {
        let mut space = space_with(1);
        space.note(OpNote::Purge {
            group: 4,
            upto: 10,
            meta: vec![10],
        });
        space.note(OpNote::Purge {
            group: 4,
            upto: 7,
            meta: vec![7],
        });
        space.note(OpNote::Vote {
            group: 4,
            bytes: vec![1],
        });
        assert_eq!(
            space.checkpoints(),
            vec![Checkpoint {
                group: 4,
                vote: Some(vec![1]),
                committed: None,
                purged_upto: Some(10),
                purged_meta: vec![10],
            }]
        );
    }
}
