//! The feed's transitions across a whole (small) cluster of shard states: every shard's state
//! machine, with a pump that delivers edge and feed outboxes between them the way leaders do.

use plexus_proto::{
    shard_for_key, ErrorReply, FeedCandidates, FeedPost, PostRef, ReadOp, Reply, Response, ShardKey, UserId, WriteOp,
};

use std::collections::BTreeMap;

use crate::command::{Command, FeedBatch};
use crate::state::{FeedLimits, ShardState, StateLimits};

const SHARDS: u32 = 4;
const NOW: u64 = 1_000_000;

fn shard_of(u: UserId) -> u32 {
    shard_for_key(&ShardKey::Id(u), SHARDS)
}

/// The first `n` user ids (from 1) that live on `shard`.
fn users_on(shard: u32, n: usize) -> Vec<UserId> {
    (1u64..).filter(|u| shard_of(*u) == shard).take(n).collect()
}

/// Every shard of a cluster, each with its next log index.
struct Cluster {
    shards: Vec<(ShardState, u64)>,
    now: u64,
}

impl Cluster {
    fn new(feed: FeedLimits) -> Self {
        let limits = StateLimits {
            feed,
            ..StateLimits::default()
        };
        Self {
            shards: (0..SHARDS)
                .map(|s| (ShardState::new(s, SHARDS, limits.clone()), 0))
                .collect(),
            now: NOW,
        }
    }

    fn apply(&mut self, shard: u32, cmd: &Command) -> Response {
        let (state, index) = &mut self.shards[shard as usize];
        *index += 1;
        state.apply(*index, cmd)
    }

    fn write(&mut self, op: WriteOp) -> Response {
        let shard = shard_for_key(&op.shard_key(), SHARDS);
        self.now += 1;
        let cmd = Command::Client {
            session: None,
            op,
            now_millis: self.now,
        };
        self.apply(shard, &cmd)
    }

    fn read(&self, op: ReadOp) -> Response {
        let shard = shard_for_key(&op.shard_key(), SHARDS);
        self.shards[shard as usize].0.read(&op)
    }

    /// Delivers every outbox until none holds anything, as the nodes' pumps do: edges one
    /// delivery per pair of shards, feed messages gathered per destination from every source
    /// (`FeedDeliveries`) and trimmed per source at once (`FeedOutboxTrims`).
    fn pump(&mut self) {
        for _round in 0..16 {
            let mut moved = false;
            let mut feed: BTreeMap<u32, Vec<FeedBatch>> = BTreeMap::new();
            for from in 0..SHARDS {
                let state = &self.shards[from as usize].0;
                let edges = state.outbox_pending(1_024);
                for (dest, first_seq, items) in state.feed_outbox_pending(64, 1 << 20) {
                    feed.entry(dest).or_default().push(FeedBatch {
                        from_shard: from,
                        first_seq,
                        items,
                    });
                }
                for (dest, first_seq, items) in edges {
                    moved = true;
                    let reply = self.apply(
                        dest,
                        &Command::EdgeDelivery {
                            from_shard: from,
                            first_seq,
                            items,
                        },
                    );
                    let Ok(Reply::Count(upto)) = reply else {
                        panic!("{reply:?}")
                    };
                    self.apply(
                        from,
                        &Command::OutboxTrim {
                            to_shard: dest,
                            upto_seq: upto,
                        },
                    )
                    .unwrap();
                }
            }
            let mut trims: BTreeMap<u32, Vec<(u32, u64)>> = BTreeMap::new();
            for (dest, batches) in feed {
                moved = true;
                let sources: Vec<u32> = batches.iter().map(|b| b.from_shard).collect();
                let cmd = Command::FeedDeliveries {
                    batches,
                    now_millis: self.now,
                };
                let Ok(Reply::Counts(uptos)) = self.apply(dest, &cmd) else {
                    panic!("feed deliveries refused")
                };
                for (from, upto) in sources.into_iter().zip(uptos) {
                    trims.entry(from).or_default().push((dest, upto));
                }
            }
            for (from, trims) in trims {
                self.apply(from, &Command::FeedOutboxTrims { trims }).unwrap();
            }
            if !moved {
                return;
            }
        }
        panic!("outboxes did not drain");
    }

    fn activate(&mut self, user: UserId) -> Response {
        let cmd = Command::FeedActivate {
            user,
            now_millis: self.now,
        };
        self.apply(shard_of(user), &cmd)
    }

    /// Activates `user`'s home timeline and merges `posts` as the feed service's rebuild does.
    fn materialise(&mut self, user: UserId) {
        self.activate(user).unwrap();
        self.rebuild(user, vec![]);
    }

    fn rebuild(&mut self, user: UserId, posts: Vec<FeedPost>) {
        let cmd = Command::FeedRebuild {
            user,
            posts,
            now_millis: self.now,
        };
        let reply = self.apply(shard_of(user), &cmd);
        assert!(matches!(reply, Ok(Reply::Count(_))), "{reply:?}");
    }

    fn candidates(&self, user: UserId) -> FeedCandidates {
        match self.read(ReadOp::FeedCandidates {
            user,
            below: None,
            floor: None,
            max: 10_000,
            now_millis: self.now,
        }) {
            Ok(Reply::FeedCandidates(c)) => c,
            other => panic!("candidates of {user}: {other:?}"),
        }
    }

    fn home(&self, user: UserId) -> Vec<PostRef> {
        self.candidates(user).posts
    }

    fn post(&mut self, author: UserId, text: &str) -> PostRef {
        match self.write(WriteOp::FeedPost {
            author,
            text: text.as_bytes().to_vec(),
        }) {
            Ok(Reply::Appended(id)) => PostRef { author, id },
            other => panic!("post by {author}: {other:?}"),
        }
    }

    fn follow(&mut self, src: UserId, dst: UserId, add: bool) {
        let op = if add {
            WriteOp::Follow { src, dst }
        } else {
            WriteOp::Unfollow { src, dst }
        };
        self.write(op).unwrap();
    }
}

fn limits() -> FeedLimits {
    FeedLimits {
        home_len_max: 5,
        follow_backfill_posts: 2,
        pulled_followers_min: 100,
        ..FeedLimits::default()
    }
}

#[test]
fn a_post_reaches_every_active_follower_once_and_no_one_else() {
    let mut c = Cluster::new(limits());
    let author = users_on(0, 1)[0];
    let followers: Vec<UserId> = (0..SHARDS).flat_map(|s| users_on(s, 3).into_iter().skip(1)).collect();
    let stranger = users_on(2, 1)[0];
    for f in &followers {
        c.follow(*f, author, true);
    }
    c.write(WriteOp::FeedUserAdd { user: stranger }).unwrap();
    c.pump();
    for u in followers.iter().chain([&author, &stranger]) {
        assert_eq!(
            c.activate(*u),
            Ok(Reply::Bool(false)),
            "home of {u} starts unmaterialised"
        );
    }
    // Until a rebuild is merged, a home timeline does not count as materialised.
    assert_eq!(c.activate(author), Ok(Reply::Bool(false)));
    for u in followers.iter().chain([&author]) {
        c.rebuild(*u, vec![]);
    }
    assert_eq!(c.activate(author), Ok(Reply::Bool(true)));
    let p = c.post(author, "hello");
    c.pump();
    for f in followers.iter().chain([&author]) {
        assert_eq!(c.home(*f), vec![p], "home of {f}");
    }
    assert!(c.home(stranger).is_empty());
    // Delivery again (a retried batch) changes nothing: sequences are applied once.
    // The texts come by reference: from the reader's home timeline, or the author's.
    let texts = c.read(ReadOp::FeedTexts {
        owner: followers[0],
        posts: vec![p, PostRef { author, id: p.id + 1 }],
    });
    assert_eq!(
        texts,
        Ok(Reply::FeedPosts(vec![FeedPost {
            post: p,
            text: b"hello".to_vec()
        }]))
    );
    let from_author = c.read(ReadOp::FeedTexts {
        owner: author,
        posts: vec![p],
    });
    assert!(matches!(from_author, Ok(Reply::FeedPosts(v)) if v.len() == 1));
    let refs_only = c.read(ReadOp::FeedLatest {
        authors: vec![author],
        per_author: 5,
        below: None,
        floor: None,
        texts: false,
        follower: None,
    });
    assert_eq!(
        refs_only,
        Ok(Reply::FeedPosts(vec![FeedPost { post: p, text: vec![] }]))
    );
}

#[test]
fn inactive_readers_get_no_fan_out_and_are_told_whom_to_rebuild_from() {
    let mut c = Cluster::new(limits());
    let [author, reader] = [users_on(1, 1)[0], users_on(2, 1)[0]];
    c.follow(reader, author, true);
    c.pump();
    let p1 = c.post(author, "one");
    c.pump();
    let before = c.candidates(reader);
    assert!(!before.materialised && before.posts.is_empty());
    assert_eq!(before.followees, vec![author]);
    // The feed service activates, pulls the followees' latest posts, and merges them.
    assert_eq!(c.activate(reader), Ok(Reply::Bool(false)));
    let latest = match c.read(ReadOp::FeedLatest {
        authors: vec![author],
        per_author: 10,
        below: None,
        floor: None,
        texts: true,
        follower: None,
    }) {
        Ok(Reply::FeedPosts(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(latest.iter().map(|p| p.post).collect::<Vec<_>>(), vec![p1]);
    let rebuild = Command::FeedRebuild {
        user: reader,
        posts: latest.clone(),
        now_millis: c.now,
    };
    assert_eq!(c.apply(shard_of(reader), &rebuild), Ok(Reply::Count(1)));
    assert_eq!(
        c.apply(shard_of(reader), &rebuild),
        Ok(Reply::Count(0)),
        "a rebuild merges, never duplicates"
    );
    let p2 = c.post(author, "two");
    c.pump();
    assert_eq!(c.home(reader), vec![p2, p1]);
    // Past the active window the home timeline is no longer materialised, and the next
    // delivery drops it.
    c.now += limits().active_window_ms + 1;
    let p3 = c.post(author, "three");
    c.pump();
    let after = c.candidates(reader);
    assert!(!after.materialised && after.posts.is_empty(), "{after:?}");
    assert!(
        !c.shards[shard_of(reader) as usize].0.feed.homes.contains_key(&reader),
        "the expired home timeline is dropped"
    );
    assert_eq!(
        c.read(ReadOp::FeedLatest {
            authors: vec![author],
            per_author: 1,
            below: None,
            floor: None,
            texts: true,
            follower: None,
        }),
        Ok(Reply::FeedPosts(vec![FeedPost {
            post: p3,
            text: b"three".to_vec()
        }]))
    );
}

#[test]
fn a_home_whose_rebuild_did_not_finish_is_not_materialised_but_keeps_its_fan_out() {
    let mut c = Cluster::new(limits());
    let [author, reader] = [users_on(1, 1)[0], users_on(3, 1)[0]];
    c.follow(reader, author, true);
    c.pump();
    assert_eq!(c.activate(reader), Ok(Reply::Bool(false)));
    // The rebuild failed half-way; fan-out still reaches the activated timeline...
    let p = c.post(author, "during the rebuild");
    c.pump();
    let half = c.candidates(reader);
    assert!(!half.materialised, "a read must rebuild again");
    assert_eq!(half.followees, vec![author]);
    // ...and the next activation keeps it while the rebuild is done again.
    assert_eq!(c.activate(reader), Ok(Reply::Bool(false)));
    c.rebuild(reader, vec![]);
    assert_eq!(c.activate(reader), Ok(Reply::Bool(true)));
    assert_eq!(c.home(reader), vec![p]);
}

#[test]
fn follow_backfills_unfollow_purges_and_reads_filter_unfollowed_authors() {
    let mut c = Cluster::new(limits());
    let [author, reader] = [users_on(3, 1)[0], users_on(0, 1)[0]];
    c.write(WriteOp::FeedUserAdd { user: author }).unwrap();
    c.write(WriteOp::FeedUserAdd { user: reader }).unwrap();
    let posts: Vec<PostRef> = (0..3).map(|i| c.post(author, &format!("p{i}"))).collect();
    c.materialise(reader);
    c.follow(reader, author, true);
    c.pump();
    // The latest two (the backfill size), newest first.
    assert_eq!(c.home(reader), vec![posts[2], posts[1]]);
    c.follow(reader, author, false);
    // Before the purge arrives, the read already leaves the unfollowed author out.
    assert!(c.home(reader).is_empty());
    c.pump();
    c.follow(reader, author, true);
    c.pump();
    assert_eq!(c.home(reader), vec![posts[2], posts[1]]);
}

#[test]
fn a_deleted_post_leaves_every_home_and_never_comes_back() {
    let mut c = Cluster::new(limits());
    let author = users_on(1, 1)[0];
    let readers = [users_on(2, 1)[0], users_on(3, 1)[0]];
    for r in readers {
        c.follow(r, author, true);
    }
    c.pump();
    for r in readers {
        c.materialise(r);
    }
    let keep = c.post(author, "keep");
    let gone = c.post(author, "gone");
    c.pump();
    // A rebuild that read the author's timeline before the delete...
    let stale = vec![FeedPost {
        post: gone,
        text: b"gone".to_vec(),
    }];
    assert_eq!(
        c.write(WriteOp::FeedDelete { author, id: gone.id }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(
        c.write(WriteOp::FeedDelete { author, id: gone.id }),
        Ok(Reply::Changed(false))
    );
    c.pump();
    for r in readers {
        assert_eq!(c.home(r), vec![keep]);
        // ...and merges after it cannot bring it back.
        let cmd = Command::FeedRebuild {
            user: r,
            posts: stale.clone(),
            now_millis: c.now,
        };
        assert_eq!(c.apply(shard_of(r), &cmd), Ok(Reply::Count(0)));
        assert_eq!(c.home(r), vec![keep]);
    }
}

#[test]
fn authors_past_the_threshold_are_pulled_not_fanned_out() {
    let mut c = Cluster::new(FeedLimits {
        pulled_followers_min: 2,
        ..limits()
    });
    let star = users_on(0, 1)[0];
    let fans: Vec<UserId> = (1..SHARDS).map(|s| users_on(s, 1)[0]).collect();
    for f in &fans {
        c.follow(*f, star, true);
        c.pump();
        c.materialise(*f);
    }
    let p = c.post(star, "to the many");
    c.pump();
    for f in &fans {
        let cand = c.candidates(*f);
        assert!(cand.posts.is_empty(), "a pulled author's post was fanned out to {f}");
        assert_eq!(cand.pulled, vec![star], "reader {f} learns the author is pulled");
    }
    assert_eq!(c.candidates(star).pulled, vec![star], "the author pulls its own posts");
    // Deleting a post of the pulled era sends nothing; the timeline loses it.
    assert_eq!(
        c.write(WriteOp::FeedDelete { author: star, id: p.id }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(c.shards[0].0.feed_outbox_len(), 0);
}

#[test]
fn homes_hold_no_post_of_a_pulled_author_so_its_deletes_need_no_fan_out() {
    let mut c = Cluster::new(FeedLimits {
        pulled_followers_min: 2,
        ..limits()
    });
    let star = users_on(0, 1)[0];
    let fans: Vec<UserId> = (1..SHARDS).map(|s| users_on(s, 1)[0]).collect();
    c.write(WriteOp::FeedUserAdd { user: star }).unwrap();
    c.materialise(star);
    for f in &fans[..2] {
        c.follow(*f, star, true);
        c.pump();
        c.materialise(*f);
    }
    // Fanned out while the author had few followers: in the author's and both fans' homes.
    let early = c.post(star, "before the crowd");
    c.pump();
    assert_eq!(c.home(star), vec![early]);
    assert_eq!(c.home(fans[0]), vec![early]);
    // A rebuild that read the author's timeline merges a post; then the author is pulled.
    let late = fans[2];
    c.follow(late, star, true);
    c.pump();
    assert!(
        c.candidates(late).pulled.contains(&star),
        "the third follower makes it pulled"
    );
    let pulled_era = c.post(star, "to the many");
    c.activate(late).unwrap();
    c.rebuild(
        late,
        vec![FeedPost {
            post: pulled_era,
            text: b"to the many".to_vec(),
        }],
    );
    c.pump();
    for reader in [star, fans[0], fans[1], late] {
        let cand = c.candidates(reader);
        assert!(
            cand.posts.is_empty(),
            "home of {reader} keeps a pulled author's post: {cand:?}"
        );
        assert_eq!(cand.pulled, vec![star], "{reader} pulls the author at read time");
    }
    // So deleting the pulled-era post needs no fan-out, and unfollowing and following again
    // cannot bring it back from a home.
    assert_eq!(
        c.write(WriteOp::FeedDelete {
            author: star,
            id: pulled_era.id
        }),
        Ok(Reply::Changed(true))
    );
    c.follow(fans[0], star, false);
    c.pump();
    c.follow(fans[0], star, true);
    c.pump();
    assert!(c.home(fans[0]).is_empty());
}

#[test]
fn a_rebuild_reads_no_author_whose_in_edge_is_in_flight_nor_outlives_a_follow_change() {
    let mut c = Cluster::new(limits());
    let author = users_on(0, 1)[0];
    let reader = users_on(1, 1)[0];
    c.write(WriteOp::FeedUserAdd { user: author }).unwrap();
    let early = c.post(author, "before the follow");
    let latest = |c: &Cluster| match c.read(ReadOp::FeedLatest {
        authors: vec![author],
        per_author: 10,
        below: None,
        floor: None,
        texts: false,
        follower: Some(reader),
    }) {
        Ok(Reply::FeedPosts(p)) => p.into_iter().map(|p| p.post).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    // The follow's in-edge has not reached the author's shard: a delete there now reaches no
    // home, so the author's shard gives a rebuild nothing yet.
    c.follow(reader, author, true);
    c.activate(reader).unwrap();
    assert_eq!(c.candidates(reader).followees, vec![author]);
    assert!(latest(&c).is_empty(), "in-edge in flight");
    assert_eq!(
        c.write(WriteOp::FeedDelete { author, id: early.id }),
        Ok(Reply::Changed(true))
    );
    let kept = c.post(author, "still there");
    c.pump();
    assert_eq!(latest(&c), vec![kept], "in-edge arrived");
    c.rebuild(reader, vec![]);
    assert_eq!(c.home(reader), vec![kept], "the backfill brought the live post only");
    // A follow change while a rebuild is under way drops the unfinished home.
    c.now += 2 * FeedLimits::default().active_window_ms;
    assert_eq!(c.activate(reader), Ok(Reply::Bool(false)));
    c.follow(reader, author, false);
    c.pump();
    let stale = Command::FeedRebuild {
        user: reader,
        posts: vec![FeedPost {
            post: kept,
            text: b"still there".to_vec(),
        }],
        now_millis: c.now,
    };
    assert_eq!(
        c.apply(shard_of(reader), &stale),
        Ok(Reply::Count(0)),
        "nothing left to merge into"
    );
    assert!(!c.candidates(reader).materialised);
}

#[test]
fn seen_posts_and_the_cap_shape_the_candidates() {
    let mut c = Cluster::new(limits());
    let [author, reader] = [users_on(2, 1)[0], users_on(2, 2)[1]];
    c.follow(reader, author, true);
    c.materialise(reader);
    let posts: Vec<PostRef> = (0..7).map(|i| c.post(author, &format!("p{i}"))).collect();
    c.pump();
    // Capped at five, newest kept.
    assert_eq!(c.home(reader), posts[2..].iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(
        c.write(WriteOp::FeedSeen {
            user: reader,
            posts: vec![posts[6], posts[4]],
        }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(c.home(reader), vec![posts[5], posts[3], posts[2]]);
    assert_eq!(
        c.read(ReadOp::FeedSeenContains {
            user: reader,
            posts: vec![posts[6], posts[5]],
        }),
        Ok(Reply::Bools(vec![true, false]))
    );
    // Windows: below is exclusive, floor inclusive.
    let window = c.read(ReadOp::FeedCandidates {
        user: reader,
        below: Some(posts[5]),
        floor: Some(posts[2]),
        max: 10,
        now_millis: c.now,
    });
    let Ok(Reply::FeedCandidates(w)) = window else {
        panic!("{window:?}")
    };
    assert_eq!(w.posts, vec![posts[3], posts[2]]);
}

#[test]
fn bad_feed_input_is_refused_with_a_reason() {
    let mut c = Cluster::new(limits());
    let ghost = users_on(1, 1)[0];
    let user = users_on(1, 2)[1];
    assert!(
        matches!(c.write(WriteOp::FeedPost { author: ghost, text: b"x".to_vec() }), Err(ErrorReply::NotFound(m)) if m.contains("feed user"))
    );
    assert!(matches!(
        c.read(ReadOp::FeedCandidates {
            user: ghost,
            below: None,
            floor: None,
            max: 1,
            now_millis: 0
        }),
        Err(ErrorReply::NotFound(_))
    ));
    c.write(WriteOp::FeedUserAdd { user }).unwrap();
    let big = vec![b'x'; limits().post_bytes_max + 1];
    assert!(
        matches!(c.write(WriteOp::FeedPost { author: user, text: big }), Err(ErrorReply::BadRequest(m)) if m.contains("bytes"))
    );
    assert!(matches!(
        c.write(WriteOp::FeedPost {
            author: user,
            text: vec![]
        }),
        Err(ErrorReply::BadRequest(_))
    ));
    let many = vec![PostRef { author: 1, id: 1 }; plexus_proto::FEED_SEEN_ITEMS_MAX + 1];
    assert!(matches!(
        c.write(WriteOp::FeedSeen { user, posts: many }),
        Err(ErrorReply::BadRequest(_))
    ));
    // A delivery naming a recipient of another shard is refused whole.
    let stray = Command::FeedDelivery {
        from_shard: 1,
        first_seq: 1,
        items: vec![crate::command::FeedMsg::Purge {
            user: users_on(2, 1)[0],
            author: user,
        }],
        now_millis: 0,
    };
    assert!(matches!(c.apply(1, &stray), Err(ErrorReply::BadRequest(m)) if m.contains("does not belong")));
    let wrong_source = Command::FeedDelivery {
        from_shard: 3,
        first_seq: 1,
        items: vec![crate::command::FeedMsg::Pulled { author: user }],
        now_millis: 0,
    };
    assert!(matches!(c.apply(1, &wrong_source), Err(ErrorReply::BadRequest(_))));
    // Gathered deliveries are refused whole when any batch is bad, or names a source twice.
    let good = FeedBatch {
        from_shard: 1,
        first_seq: 1,
        items: vec![crate::command::FeedMsg::Pulled { author: user }],
    };
    let gap = FeedBatch {
        from_shard: 2,
        first_seq: 5,
        items: vec![crate::command::FeedMsg::Pulled {
            author: users_on(2, 1)[0],
        }],
    };
    let cmd = |batches| Command::FeedDeliveries { batches, now_millis: 0 };
    assert!(matches!(c.apply(1, &cmd(vec![good.clone(), gap])), Err(ErrorReply::BadRequest(m)) if m.contains("gap")));
    assert!(
        matches!(c.apply(1, &cmd(vec![good.clone(), good.clone()])), Err(ErrorReply::BadRequest(m)) if m.contains("twice"))
    );
    assert_eq!(c.apply(1, &cmd(vec![good.clone()])), Ok(Reply::Counts(vec![1])));
    assert_eq!(
        c.apply(1, &cmd(vec![good])),
        Ok(Reply::Counts(vec![1])),
        "a redelivery applies nothing"
    );
}

#[test]
fn a_full_feed_outbox_refuses_posts_and_follows_until_delivered() {
    let mut c = Cluster::new(FeedLimits {
        outbox_bytes_max: 64,
        ..limits()
    });
    let author = users_on(0, 1)[0];
    let far = users_on(1, 1)[0];
    c.follow(far, author, true);
    c.pump();
    c.post(author, &"x".repeat(60));
    assert!(matches!(
        c.write(WriteOp::FeedPost {
            author,
            text: b"y".to_vec()
        }),
        Err(ErrorReply::Busy(_))
    ));
    assert!(matches!(
        c.write(WriteOp::Follow { src: author, dst: far }),
        Err(ErrorReply::Busy(_))
    ));
    c.pump();
    c.post(author, "y");
}

#[test]
fn feed_state_survives_a_snapshot_and_hashes_equal() {
    let mut c = Cluster::new(limits());
    let [author, reader] = [users_on(0, 1)[0], users_on(1, 1)[0]];
    c.follow(reader, author, true);
    c.pump();
    c.materialise(reader);
    let p = c.post(author, "kept across a snapshot");
    c.write(WriteOp::FeedSeen {
        user: reader,
        posts: vec![PostRef { author: 5, id: 5 }],
    })
    .unwrap();
    // Snapshot both shards with the post still in the author's outbox.
    for s in [0usize, 1] {
        let state = &c.shards[s].0;
        let back = ShardState::from_snapshot(
            &state.to_snapshot(),
            StateLimits {
                feed: limits(),
                ..StateLimits::default()
            },
        )
        .unwrap();
        assert_eq!(&back, state);
        assert_eq!(back.state_hash(), state.state_hash());
        c.shards[s].0 = back;
    }
    c.pump();
    assert_eq!(c.home(reader), vec![p]);
}
