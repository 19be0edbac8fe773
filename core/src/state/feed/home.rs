//! Home timelines: per reader, the posts fanned out to them, capped and ordered by
//! `PostRef` (id, then author).
//!
//! A home timeline exists only while its reader is active: it is materialised when the reader
//! reads (`FeedActivate`), fan-out appends only to materialised ones, and one whose reader has
//! not been active within the window is dropped when the next delivery finds it, to be rebuilt
//! from the followed authors' timelines on the next read. Trimming to the cap happens here, in
//! the apply of the write that overflows it, so no background job can race a reader.
//!
//! Activation and rebuild are two commands with reads of other shards in between, and the
//! rebuild can fail half-way (a leader change, a timeout): a home counts as materialised for
//! reads only once its rebuild is merged (`complete`); until then fan-out already reaches it.
//!
//! A home remembers the last posts deleted from it (`tombstones`, bounded): a rebuild reads
//! authors' timelines before its merge is applied, and a delete applied between the two must not
//! be undone by the merge. Fan-out messages need no such guard, since one source shard's
//! messages arrive in the order they were sent.

use std::collections::{BTreeMap, VecDeque};

use plexus_proto::{FeedPost, PostRef, UserId};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// One reader's home timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Home {
    /// Posts by reference, with their text.
    posts: BTreeMap<PostRef, ByteBuf>,
    /// When the reader was last marked active, in Unix milliseconds.
    active_millis: u64,
    /// The most recently deleted posts, oldest first.
    tombstones: VecDeque<PostRef>,
    /// Whether the rebuild that follows activation has been merged: until then fan-out already
    /// reaches the timeline, but reads do not count it as materialised, so a rebuild that failed
    /// half-way is done again by the next read.
    complete: bool,
}

/// Limits a home timeline is kept within.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HomeCaps {
    /// Posts kept; inserting past it drops the oldest.
    pub(crate) len_max: usize,
    /// Deleted posts remembered.
    pub(crate) tombstones_max: usize,
}

impl Home {
    /// An empty timeline, active at `now_millis`.
    pub(crate) fn new(now_millis: u64) -> Self {
        Self {
            active_millis: now_millis,
            ..Self::default()
        }
    }

    /// When the reader was last active.
    pub(crate) fn active_millis(&self) -> u64 {
        self.active_millis
    }

    /// Whether the rebuild after activation has been merged.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    /// Records that the rebuild after activation has been merged.
    pub(crate) fn set_complete(&mut self) {
        self.complete = true;
    }

    /// Marks the reader active (never moving the mark back: leaders' clocks may differ).
    pub(crate) fn touch(&mut self, now_millis: u64) {
        self.active_millis = self.active_millis.max(now_millis);
    }

    /// Adds a post unless it is there, was deleted, or is older than everything in a full
    /// timeline; then trims to the cap. Whether the post is in the timeline afterwards.
    pub(crate) fn insert(&mut self, post: &FeedPost, caps: HomeCaps) -> bool {
        if self.posts.contains_key(&post.post) || self.tombstones.contains(&post.post) {
            return false;
        }
        if self.posts.len() >= caps.len_max && self.posts.first_key_value().is_some_and(|(o, _)| post.post < *o) {
            return false;
        }
        self.posts.insert(post.post, ByteBuf::from(post.text.clone()));
        while self.posts.len() > caps.len_max {
            self.posts.pop_first();
        }
        debug_assert!(self.posts.len() <= caps.len_max.max(1));
        self.posts.contains_key(&post.post)
    }

    /// The text of `post`, if the timeline holds it.
    pub(crate) fn text(&self, post: &PostRef) -> Option<&[u8]> {
        self.posts.get(post).map(|t| t.as_slice())
    }

    /// Removes a deleted post and remembers it; whether it was there.
    pub(crate) fn delete(&mut self, post: PostRef, caps: HomeCaps) -> bool {
        if !self.tombstones.contains(&post) {
            self.tombstones.push_back(post);
            while self.tombstones.len() > caps.tombstones_max {
                self.tombstones.pop_front();
            }
        }
        self.posts.remove(&post).is_some()
    }

    /// Removes every post by `author`; how many.
    pub(crate) fn purge(&mut self, author: UserId) -> usize {
        let before = self.posts.len();
        self.posts.retain(|p, _| p.author != author);
        before - self.posts.len()
    }

    /// Posts below `below` (exclusive) and at or above `floor`, newest first.
    pub(crate) fn window(
        &self,
        below: Option<PostRef>,
        floor: Option<PostRef>,
    ) -> impl Iterator<Item = (&PostRef, &[u8])> + '_ {
        let lo = floor.unwrap_or(PostRef::first_of(0));
        let range = match below {
            // An empty range when the bounds cross, rather than BTreeMap's panic.
            Some(b) if b <= lo => self.posts.range(lo..lo),
            Some(b) => self.posts.range(lo..b),
            None => self.posts.range(lo..),
        };
        range.rev().map(|(p, t)| (p, t.as_slice()))
    }

    /// Posts held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.posts.len()
    }

    /// Checks what a decoded snapshot must satisfy.
    pub(crate) fn validate(&self, user: UserId) -> Result<(), String> {
        if self
            .tombstones
            .iter()
            .enumerate()
            .any(|(i, t)| self.tombstones.range(..i).any(|u| u == t))
        {
            return Err(format!("home timeline of user {user} names a tombstone twice"));
        }
        if let Some(t) = self.tombstones.iter().find(|t| self.posts.contains_key(t)) {
            return Err(format!("home timeline of user {user} holds deleted post {t}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: HomeCaps = HomeCaps {
        len_max: 3,
        tombstones_max: 2,
    };

    fn post(author: u64, id: u64) -> FeedPost {
        FeedPost {
            post: PostRef { author, id },
            text: format!("{author}/{id}").into_bytes(),
        }
    }

    fn refs(h: &Home, below: Option<PostRef>, floor: Option<PostRef>) -> Vec<PostRef> {
        h.window(below, floor).map(|(p, _)| *p).collect()
    }

    #[test]
    fn keeps_the_newest_posts_once_each_and_never_a_deleted_one() {
        let mut h = Home::new(5);
        assert!(h.insert(&post(1, 10), CAPS));
        assert!(!h.insert(&post(1, 10), CAPS), "a post is held once");
        assert!(h.insert(&post(2, 10), CAPS));
        assert!(h.insert(&post(1, 12), CAPS));
        assert!(h.insert(&post(3, 11), CAPS), "the oldest goes to make room");
        assert!(!h.insert(&post(9, 1), CAPS), "older than a full timeline");
        assert_eq!(
            refs(&h, None, None),
            vec![
                PostRef { author: 1, id: 12 },
                PostRef { author: 3, id: 11 },
                PostRef { author: 2, id: 10 }
            ]
        );
        assert!(h.delete(PostRef { author: 3, id: 11 }, CAPS));
        assert!(!h.insert(&post(3, 11), CAPS), "a deleted post does not come back");
        assert!(!h.delete(PostRef { author: 4, id: 1 }, CAPS));
        assert!(!h.delete(PostRef { author: 5, id: 1 }, CAPS));
        // Only two tombstones are kept: the first one is forgotten.
        assert!(h.insert(&post(3, 11), CAPS));
        assert_eq!(h.purge(1), 1);
        assert_eq!(h.len(), 2);
        assert!(h.validate(1).is_ok());
    }

    #[test]
    fn windows_are_half_open_and_newest_first() {
        let mut h = Home::new(0);
        let caps = HomeCaps {
            len_max: 10,
            tombstones_max: 1,
        };
        for (a, i) in [(1, 1), (2, 2), (1, 3), (3, 3), (2, 4)] {
            h.insert(&post(a, i), caps);
        }
        let r = |author, id| PostRef { author, id };
        assert_eq!(refs(&h, Some(r(3, 3)), None), vec![r(1, 3), r(2, 2), r(1, 1)]);
        assert_eq!(refs(&h, None, Some(r(3, 3))), vec![r(2, 4), r(3, 3)]);
        assert_eq!(refs(&h, Some(r(2, 2)), Some(r(3, 3))), Vec::<PostRef>::new());
        h.touch(9);
        h.touch(4);
        assert_eq!(h.active_millis(), 9);
    }
}
