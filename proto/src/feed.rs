//! The social feed's wire types: post references, posts, home-feed requests and pages.
//!
//! A post is an entry of its author's timeline, so its id is that timeline's monotone entry id
//! (`millis << 20 | seq`). Ids are unique per author, not across authors (two authors posting
//! in the same millisecond on different shards get the same id), so a post is named by
//! `PostRef { author, id }`, written `AUTHOR:ID`, and feeds order posts by `(id, author)`.
//! This module holds data only; the node's feed service and the state machine give it meaning.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::msg::{EntryId, VertexId};

/// A feed user: the same id space as graph vertices and timeline owners.
pub type UserId = VertexId;

/// Largest `limit` of one home-feed page.
pub const FEED_PAGE_ITEMS_MAX: u32 = 200;
/// Most post references in one `FeedSeen` write.
pub const FEED_SEEN_ITEMS_MAX: usize = 1_000;
/// Longest home-feed cursor token a node parses, in bytes.
pub const FEED_CURSOR_BYTES_MAX: usize = 256;

/// Names one post: its author and its id in the author's timeline.
///
/// Ordered by `(id, author)`: newer posts compare greater, and two posts with one id are told
/// apart by author, so a feed never reorders equal timestamps between reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PostRef {
    /// The author (owner of the timeline the post lives in).
    pub author: UserId,
    /// The post's entry id in that timeline.
    pub id: EntryId,
}

impl PostRef {
    /// The smallest reference with this id (any author's post with `id` compares at least this).
    pub fn first_of(id: EntryId) -> PostRef {
        PostRef { author: 0, id }
    }

    /// The next reference in feed order, if any: used to turn an inclusive bound exclusive.
    pub fn successor(self) -> Option<PostRef> {
        match self.author.checked_add(1) {
            Some(author) => Some(PostRef { author, id: self.id }),
            None => self.id.checked_add(1).map(PostRef::first_of),
        }
    }

    /// The post's timestamp: the milliseconds in its id.
    pub fn millis(self) -> u64 {
        self.id >> crate::msg::ENTRY_SEQ_BITS
    }
}

impl Ord for PostRef {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.id, self.author).cmp(&(other.id, other.author))
    }
}

impl PartialOrd for PostRef {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for PostRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.author, self.id)
    }
}

impl FromStr for PostRef {
    type Err = String;

    /// Parses `AUTHOR:ID`, both unsigned decimal integers.
    fn from_str(s: &str) -> Result<Self, String> {
        let (author, id) = s
            .split_once(':')
            .ok_or_else(|| format!("post reference {s:?} is not AUTHOR:ID"))?;
        let author = author
            .parse()
            .map_err(|_| format!("post reference {s:?}: author {author:?} is not a user id"))?;
        let id = id
            .parse()
            .map_err(|_| format!("post reference {s:?}: {id:?} is not a post id"))?;
        Ok(PostRef { author, id })
    }
}

/// One post with its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPost {
    /// Which post.
    pub post: PostRef,
    /// The text (UTF-8 when written through `feed post`; bytes on the wire).
    #[serde(with = "serde_bytes")]
    pub text: Vec<u8>,
}

/// Where a home-feed page starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FeedCursor {
    /// The newest posts.
    #[default]
    Latest,
    /// Continue after a page: the `next` token that page carried.
    Before(String),
    /// Posts newer than this post id (any author), for a refresh; pages on with `Before`.
    After(EntryId),
}

/// Calls of the feed service, answered by the node leading the user's shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeedRequest {
    /// A page of `user`'s home feed: followed authors' posts and the user's own, newest window
    /// first, minus what the user has marked seen and deleted posts, ranked (or in time order).
    Home {
        /// Whose feed.
        user: UserId,
        /// Most posts on the page (1..=`FEED_PAGE_ITEMS_MAX`).
        limit: u32,
        /// Where the page starts.
        cursor: FeedCursor,
        /// Rank by the scoring pool (true) or list newest first (false).
        ranked: bool,
    },
}

impl FeedRequest {
    /// The user the request is routed by.
    pub fn user(&self) -> UserId {
        match self {
            FeedRequest::Home { user, .. } => *user,
        }
    }
}

/// One post on a home-feed page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedPost {
    /// The post.
    pub post: FeedPost,
    /// Its ranking score (higher first; 0 for every post of an unranked page).
    pub score: f32,
}

/// A home-feed page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct FeedPage {
    /// Posts in page order: best first (ranked) or newest first.
    pub posts: Vec<RankedPost>,
    /// The cursor of the next page (`FeedCursor::Before`), `None` when nothing is left.
    pub next: Option<String>,
    /// The newest post id the page's window reached, for a later `FeedCursor::After` refresh.
    pub newest: Option<EntryId>,
}

/// What a user's shard holds for one home-feed page (a node-internal read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FeedCandidates {
    /// Whether the user's home timeline is materialised (active within the window).
    pub materialised: bool,
    /// When the user was last marked active (Unix milliseconds; 0 if never).
    pub active_millis: u64,
    /// Home-timeline posts in the asked window, newest first, without seen posts and without
    /// posts of authors the user no longer follows (references only: a page fetches the texts
    /// of the few posts it hands out with `FeedTexts`).
    pub posts: Vec<PostRef>,
    /// Followed authors (and the user, if so) whose posts are pulled at read time.
    pub pulled: Vec<UserId>,
    /// Every followed author, when the timeline is not materialised (to rebuild it); else empty.
    pub followees: Vec<UserId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_refs_order_by_id_then_author_and_parse() {
        let a = PostRef { author: 9, id: 5 };
        let b = PostRef { author: 1, id: 6 };
        let c = PostRef { author: 2, id: 6 };
        assert!(a < b && b < c);
        assert_eq!(b.successor(), Some(PostRef { author: 2, id: 6 }));
        assert_eq!(
            PostRef {
                author: u64::MAX,
                id: 6
            }
            .successor(),
            Some(PostRef::first_of(7))
        );
        assert_eq!(
            PostRef {
                author: u64::MAX,
                id: u64::MAX
            }
            .successor(),
            None
        );
        assert_eq!("7:123".parse::<PostRef>(), Ok(PostRef { author: 7, id: 123 }));
        assert_eq!(PostRef { author: 7, id: 123 }.to_string(), "7:123");
        assert!("7".parse::<PostRef>().unwrap_err().contains("AUTHOR:ID"));
        assert!("x:1".parse::<PostRef>().unwrap_err().contains("not a user id"));
        assert!("1:-2".parse::<PostRef>().unwrap_err().contains("not a post id"));
        assert_eq!(
            PostRef {
                author: 1,
                id: 5 << 20 | 3
            }
            .millis(),
            5
        );
    }
}
