//! Home-feed cursors: where the next page of a ranked (or time-ordered) feed starts.
//!
//! A ranked feed cannot page by one post id: the page after "the best 20 of the newest 2,000"
//! is "the next best 20 of the same 2,000", and which those are depends on the scores. So a page
//! belongs to a window, a fixed range of posts in feed order (`[floor, below)`), ranked as a
//! whole; the cursor names the window and the last post handed out in rank order. Recomputing
//! the window's ranking gives the same order (scores are deterministic and their recency term is
//! measured from the window's upper bound, not from the clock), so a page never repeats or skips
//! a post of the window. Once a window is exhausted, the next one is the newest posts below its
//! floor. Nothing here is an offset: posts marked seen or deleted between pages only drop out.
//!
//! A cursor travels as a short text token (`FeedPage::next`) that names the user it was made
//! for, so a token handed to another user's feed, or mangled, is refused with a clear error.

use plexus_proto::{EntryId, PostRef, UserId, FEED_CURSOR_BYTES_MAX};

/// Version tag of the token format.
const TOKEN_TAG: &str = "h1";

/// Position in a rank order: a score and the post, compared as (score, post) descending.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankKey {
    /// The post's score.
    pub score: f32,
    /// The post.
    pub post: PostRef,
}

impl RankKey {
    /// Whether `self` comes strictly after `other` in rank order (lower score, or equal score and
    /// older post). Scores are finite by construction.
    pub fn after(&self, other: &RankKey) -> bool {
        match self.score.total_cmp(&other.score) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => self.post < other.post,
        }
    }
}

/// The decoded form of a `FeedCursor::Before` token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cursor {
    /// The user the cursor was made for.
    pub user: UserId,
    /// Whether the feed is ranked (a ranked cursor cannot continue a time-ordered feed).
    pub ranked: bool,
    /// The window's exclusive upper bound.
    pub below: PostRef,
    /// The window's inclusive lower bound; `None`: a new window below `below`, not yet fixed.
    pub floor: Option<PostRef>,
    /// Whether the window ends at `floor` for good (a refresh stops at the post it started from).
    pub last_window: bool,
    /// The last post handed out in the window; `None`: nothing of it yet.
    pub last: Option<RankKey>,
}

fn post_text(p: PostRef) -> String {
    format!("{}-{}", p.id, p.author)
}

fn parse_post(s: &str) -> Option<PostRef> {
    let (id, author) = s.split_once('-')?;
    Some(PostRef {
        id: id.parse().ok()?,
        author: author.parse().ok()?,
    })
}

impl Cursor {
    /// The token text.
    pub fn encode(&self) -> String {
        let floor = self.floor.map_or_else(|| "_".to_string(), post_text);
        let last = self.last.map_or_else(
            || "_".to_string(),
            |k| format!("{:08x}-{}", k.score.to_bits(), post_text(k.post)),
        );
        format!(
            "{TOKEN_TAG}.{}.{}.{}.{}.{}.{}",
            self.user,
            if self.ranked { "r" } else { "t" },
            post_text(self.below),
            floor,
            if self.last_window { "e" } else { "o" },
            last
        )
    }

    /// Parses a token for `user`'s feed (ranked or not, as asked), with the reason it is refused.
    pub fn decode(token: &str, user: UserId, ranked: bool) -> Result<Cursor, String> {
        if token.len() > FEED_CURSOR_BYTES_MAX {
            return Err(format!("a cursor is at most {FEED_CURSOR_BYTES_MAX} bytes"));
        }
        let garbage = || format!("{token:?} is not a home-feed cursor");
        let parts: Vec<&str> = token.split('.').collect();
        let [tag, owner, mode, below, floor, end, last] = parts[..] else {
            return Err(garbage());
        };
        if tag != TOKEN_TAG {
            return Err(garbage());
        }
        let owner: UserId = owner.parse().map_err(|_| garbage())?;
        if owner != user {
            return Err(format!("the cursor belongs to user {owner}'s feed, not user {user}'s"));
        }
        let cursor_ranked = match mode {
            "r" => true,
            "t" => false,
            _ => return Err(garbage()),
        };
        if cursor_ranked != ranked {
            return Err(format!(
                "the cursor continues a {} feed; ask for the same order",
                if cursor_ranked { "ranked" } else { "time-ordered" }
            ));
        }
        let below = parse_post(below).ok_or_else(garbage)?;
        let floor = match floor {
            "_" => None,
            f => Some(parse_post(f).ok_or_else(garbage)?),
        };
        let last_window = match end {
            "e" => true,
            "o" => false,
            _ => return Err(garbage()),
        };
        let last = match last {
            "_" => None,
            l => {
                let (bits, post) = l.split_once('-').ok_or_else(garbage)?;
                let score = f32::from_bits(u32::from_str_radix(bits, 16).map_err(|_| garbage())?);
                let post = parse_post(post).ok_or_else(garbage)?;
                if !score.is_finite() {
                    return Err(garbage());
                }
                Some(RankKey { score, post })
            }
        };
        if floor.is_some_and(|f| f >= below) || last.is_some_and(|k| k.post >= below || floor.is_none()) {
            return Err(garbage());
        }
        Ok(Cursor {
            user,
            ranked,
            below,
            floor,
            last_window,
            last,
        })
    }
}

/// The exclusive bound just above post id `id` (every post with this id or less lies below it).
pub fn above_id(id: EntryId) -> Option<PostRef> {
    id.checked_add(1).map(PostRef::first_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u64, author: u64) -> PostRef {
        PostRef { id, author }
    }

    #[test]
    fn tokens_round_trip_and_name_their_user() {
        let c = Cursor {
            user: 42,
            ranked: true,
            below: p(900, 3),
            floor: Some(p(100, 7)),
            last_window: false,
            last: Some(RankKey {
                score: 0.75,
                post: p(500, 1),
            }),
        };
        let token = c.encode();
        assert_eq!(Cursor::decode(&token, 42, true), Ok(c));
        assert!(Cursor::decode(&token, 43, true).unwrap_err().contains("user 42's feed"));
        assert!(Cursor::decode(&token, 42, false).unwrap_err().contains("ranked feed"));
        let open = Cursor {
            floor: None,
            last: None,
            last_window: true,
            ranked: false,
            ..c
        };
        assert_eq!(Cursor::decode(&open.encode(), 42, false), Ok(open));
    }

    #[test]
    fn garbage_tokens_are_refused() {
        for bad in [
            "",
            "h1",
            "h2.42.r.1-1._.o._",
            "h1.42.r.1-1._.o._.x",
            "h1.x.r.1-1._.o._",
            "h1.42.q.1-1._.o._",
            "h1.42.r.1_1._.o._",
            "h1.42.r.5-1.9-1.o._",
            "h1.42.r.5-1._.o.3f800000-1-1",
            "h1.42.r.5-1.1-1.o.7fc00000-2-1",
            "h1.42.r.5-1.1-1.z._",
        ] {
            assert!(Cursor::decode(bad, 42, true).is_err(), "{bad:?} accepted");
        }
        assert!(Cursor::decode(&"x".repeat(300), 42, true)
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn rank_order_is_score_then_newer_post() {
        let k = |score, id| RankKey { score, post: p(id, 1) };
        assert!(k(0.5, 9).after(&k(0.6, 1)));
        assert!(k(0.5, 1).after(&k(0.5, 2)));
        assert!(!k(0.5, 2).after(&k(0.5, 2)));
        assert!(!k(0.7, 1).after(&k(0.5, 2)));
        assert_eq!(above_id(7), Some(PostRef::first_of(8)));
        assert_eq!(above_id(u64::MAX), None);
    }
}
