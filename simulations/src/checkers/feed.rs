//! The feed's properties.
//!
//! - Every acknowledged post whose author never tried to delete it is in its author's timeline
//!   at the end; every post whose delete was acknowledged is not.
//! - One paging session of a home feed never hands out a post twice, and a time-ordered one
//!   hands them out strictly newest first.
//! - After healing, every user's home feed is exactly what the follow graph and the posts imply:
//!   the posts in the final timelines of the users it follows and its own, minus the posts its
//!   seen filter holds (asked of the filter itself, so its false positives count as seen),
//!   newest first, each once; and the ranked feed holds the same posts, each once. Fan-out that
//!   missed a reader, a purge or delete that did not arrive, a rebuild that lost a post or a
//!   cursor that skipped or repeated one all break it.

use std::collections::{BTreeMap, BTreeSet};

use plexus_proto::PostRef;

use crate::feed_workload::{FeedAction, FeedOutcome, FeedRecord};

/// What the healed cluster holds for the feed, and what a reader saw in it.
#[derive(Clone, Debug, Default)]
pub struct FeedFinal {
    /// Author → the posts in its timeline.
    pub timelines: BTreeMap<u64, BTreeSet<PostRef>>,
    /// User → the users it follows.
    pub follows: BTreeMap<u64, BTreeSet<u64>>,
    /// User → which candidate posts its seen filter holds.
    pub seen: BTreeMap<u64, BTreeMap<PostRef, bool>>,
    /// User → every post of its time-ordered home feed, over all pages, in order (`None`: the
    /// user does not exist, or the read failed with the given reason).
    pub chronological: BTreeMap<u64, Result<Vec<PostRef>, String>>,
    /// User → every post of its ranked home feed, over all pages, in order.
    pub ranked: BTreeMap<u64, Result<Vec<PostRef>, String>>,
}

impl FeedFinal {
    /// The home feed `user` should have: followed authors' and its own posts, minus seen ones,
    /// newest first.
    pub fn expected(&self, user: u64) -> Vec<PostRef> {
        let empty = BTreeSet::new();
        let follows = self.follows.get(&user).unwrap_or(&empty);
        let seen = self.seen.get(&user);
        let mut posts: Vec<PostRef> = follows
            .iter()
            .chain(std::iter::once(&user))
            .flat_map(|a| self.timelines.get(a).into_iter().flatten())
            .filter(|p| !seen.is_some_and(|s| s.get(p).copied().unwrap_or(false)))
            .copied()
            .collect();
        posts.sort_by_key(|p| std::cmp::Reverse(*p));
        posts.dedup();
        posts
    }

    /// Every post the users could have in their feeds (what the seen filters are asked about).
    pub fn candidates(&self, user: u64) -> Vec<PostRef> {
        let empty = BTreeSet::new();
        let follows = self.follows.get(&user).unwrap_or(&empty);
        follows
            .iter()
            .chain(std::iter::once(&user))
            .flat_map(|a| self.timelines.get(a).into_iter().flatten())
            .copied()
            .collect()
    }
}

fn twice(posts: &[PostRef]) -> Option<PostRef> {
    let mut seen = BTreeSet::new();
    posts.iter().find(|p| !seen.insert(**p)).copied()
}

/// Checks the feed history and final state.
pub fn check(history: &[FeedRecord], end: &FeedFinal) -> Vec<String> {
    let mut out = Vec::new();
    let delete_tried: BTreeSet<PostRef> = history
        .iter()
        .filter_map(|r| match r.action {
            FeedAction::Delete(p) => Some(p),
            _ => None,
        })
        .collect();
    for r in history {
        match (&r.action, &r.result) {
            (FeedAction::Post(author, _), Ok(FeedOutcome::Posted(p))) => {
                let kept = end.timelines.get(author).is_some_and(|t| t.contains(p));
                if !delete_tried.contains(p) && !kept {
                    out.push(format!("acknowledged post {p} is not in its author's timeline"));
                }
            }
            (FeedAction::Delete(p), Ok(FeedOutcome::Done(_)))
                if end.timelines.get(&p.author).is_some_and(|t| t.contains(p)) =>
            {
                out.push(format!(
                    "post {p} is still in its author's timeline after an acknowledged delete"
                ));
            }
            (FeedAction::Home { user, ranked }, Ok(FeedOutcome::Pages(posts))) => {
                if let Some(p) = twice(posts) {
                    out.push(format!(
                        "a {} home read of user {user} by client {} handed out post {p} twice",
                        if *ranked { "ranked" } else { "time-ordered" },
                        r.client
                    ));
                }
                if !ranked && posts.windows(2).any(|w| w[0] <= w[1]) {
                    out.push(format!("a time-ordered home read of user {user} is not newest first"));
                }
            }
            _ => {}
        }
    }
    for (user, got) in &end.chronological {
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                out.push(format!("final home read of user {user} failed: {e}"));
                continue;
            }
        };
        let want = end.expected(*user);
        if *got != want {
            let (g, w): (BTreeSet<PostRef>, BTreeSet<PostRef>) =
                (got.iter().copied().collect(), want.iter().copied().collect());
            let missing: Vec<String> = w.difference(&g).take(5).map(ToString::to_string).collect();
            let extra: Vec<String> = g.difference(&w).take(5).map(ToString::to_string).collect();
            out.push(format!(
                "home feed of user {user} holds {} posts where {} are implied (missing {missing:?}, unexpected {extra:?}{})",
                got.len(),
                want.len(),
                if twice(got).is_some() { ", a post twice" } else { "" }
            ));
        }
        match end.ranked.get(user) {
            Some(Ok(ranked)) => {
                let as_set: BTreeSet<PostRef> = ranked.iter().copied().collect();
                if twice(ranked).is_some() || as_set != want.iter().copied().collect::<BTreeSet<_>>() {
                    out.push(format!(
                        "ranked home feed of user {user} holds {} posts ({} distinct) where {} are implied",
                        ranked.len(),
                        as_set.len(),
                        want.len()
                    ));
                }
            }
            Some(Err(e)) => out.push(format!("final ranked home read of user {user} failed: {e}")),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(author: u64, id: u64) -> PostRef {
        PostRef { author, id }
    }

    fn end() -> FeedFinal {
        let mut e = FeedFinal::default();
        e.timelines.insert(1, BTreeSet::from([p(1, 10), p(1, 30)]));
        e.timelines.insert(2, BTreeSet::from([p(2, 20)]));
        e.timelines.insert(3, BTreeSet::from([p(3, 40)]));
        e.follows.insert(1, BTreeSet::from([2]));
        e.seen.insert(1, BTreeMap::from([(p(2, 20), false), (p(1, 10), true)]));
        e
    }

    #[test]
    fn the_implied_feed_is_followed_and_own_posts_minus_seen_newest_first() {
        assert_eq!(end().expected(1), vec![p(1, 30), p(2, 20)]);
        assert_eq!(end().expected(3), vec![p(3, 40)]);
    }

    #[test]
    fn a_missing_post_a_stray_one_and_a_repeat_are_violations() {
        let mut e = end();
        e.chronological.insert(1, Ok(vec![p(1, 30), p(2, 20)]));
        e.ranked.insert(1, Ok(vec![p(2, 20), p(1, 30)]));
        assert!(check(&[], &e).is_empty());
        e.chronological.insert(1, Ok(vec![p(1, 30)]));
        assert!(check(&[], &e)[0].contains("missing [\"2:20\"]"));
        e.chronological.insert(1, Ok(vec![p(1, 30), p(3, 40), p(2, 20)]));
        assert!(check(&[], &e)[0].contains("unexpected [\"3:40\"]"));
        e.chronological.insert(1, Ok(vec![p(1, 30), p(2, 20)]));
        e.ranked.insert(1, Ok(vec![p(2, 20), p(1, 30), p(2, 20)]));
        assert!(check(&[], &e)[0].contains("ranked"));
    }

    #[test]
    fn lost_posts_and_repeated_pages_are_violations() {
        let e = end();
        let rec = |action, result| FeedRecord {
            client: 1,
            action,
            invoked_us: 0,
            completed_us: 1,
            result: Ok(result),
        };
        let lost = rec(FeedAction::Post(2, b"x".to_vec()), FeedOutcome::Posted(p(2, 99)));
        assert!(check(std::slice::from_ref(&lost), &e)[0].contains("not in its author's timeline"));
        let deleted = rec(FeedAction::Delete(p(2, 99)), FeedOutcome::Done(false));
        assert!(
            check(&[lost, deleted], &e).is_empty(),
            "a delete was tried: the post may be gone"
        );
        let kept = rec(FeedAction::Delete(p(2, 20)), FeedOutcome::Done(true));
        assert!(check(&[kept], &e)[0].contains("after an acknowledged delete"));
        let repeat = rec(
            FeedAction::Home { user: 1, ranked: true },
            FeedOutcome::Pages(vec![p(2, 20), p(1, 30), p(2, 20)]),
        );
        assert!(check(&[repeat], &e)[0].contains("twice"));
        let unordered = rec(
            FeedAction::Home { user: 1, ranked: false },
            FeedOutcome::Pages(vec![p(2, 20), p(1, 30)]),
        );
        assert!(check(&[unordered], &e)[0].contains("newest first"));
    }
}
