//! plexus's social feed service: the part of the feed workload that runs on a node above the
//! shard state machines.
//!
//! The replicated half lives in `plexus_core::state` (home timelines, seen filters, fan-out
//! through the feed outbox, all applied deterministically). This crate serves what needs more
//! than one shard or a clock: a home-feed page (`FeedRequest::Home`), which reads the reader's
//! home timeline, rebuilds it when it is not materialised, pulls the posts of high-fan-out
//! authors, drops seen posts, ranks the window with the scoring pool and pages through it with
//! stable cursors (`cursor`). Posting, deleting, marking seen and following are plain replicated
//! writes that clients send to the author's or reader's shard.
//!
//! It is not the state machine, the fan-out pump (the shard actors deliver every outbox) or a
//! client: applications use `plexus-client`'s feed calls.

pub mod cursor;
mod home;
pub mod rank;

use std::sync::Arc;

use futures::future::BoxFuture;
use plexus_actors::config::FeedConfig;
use plexus_actors::registry::Registry;
use plexus_actors::Workload;
use plexus_proto::{ErrorReply, FeedRequest, Op, Request, Response};
use plexus_raft::replica::Replica;

/// What the feed service needs of the node's `[feed]` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedSettings {
    /// Newest posts one ranked window holds at most.
    pub rank_candidates_max: usize,
    /// Weight of the reader–author similarity in a score.
    pub similarity_weight: f32,
    /// The recency term halves every this many milliseconds.
    pub recency_half_life_ms: u64,
    /// Posts per home timeline (the state machine's cap).
    pub home_len_max: usize,
    /// Posts per followed author a rebuild copies at most.
    pub follow_backfill_posts: usize,
    /// How long a home timeline stays materialised without a read, ms.
    pub active_window_ms: u64,
}

impl From<&FeedConfig> for FeedSettings {
    fn from(c: &FeedConfig) -> Self {
        Self {
            rank_candidates_max: c.rank_candidates_max,
            similarity_weight: c.rank_similarity_weight,
            recency_half_life_ms: c.rank_recency_half_life_ms,
            home_len_max: c.home_len_max,
            follow_backfill_posts: c.follow_backfill_posts,
            active_window_ms: c.active_window_ms,
        }
    }
}

/// The feed workload of a node.
pub struct FeedService {
    settings: Arc<FeedSettings>,
}

impl FeedService {
    /// A service with these settings.
    pub fn new(settings: FeedSettings) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }
}

impl Workload for FeedService {
    fn name(&self) -> &'static str {
        "feed"
    }

    fn serves(&self, op: &Op) -> bool {
        matches!(op, Op::Feed(_))
    }

    fn execute(&self, registry: Arc<Registry>, replica: Replica, req: Request) -> BoxFuture<'static, Response> {
        let settings = self.settings.clone();
        Box::pin(async move {
            let Op::Feed(feed) = req.op else {
                return Err(ErrorReply::Internal(
                    "the feed service got a request that is not its own".into(),
                ));
            };
            match feed {
                FeedRequest::Home {
                    user,
                    limit,
                    cursor,
                    ranked,
                } => {
                    let reader = home::Reader {
                        settings: &settings,
                        registry,
                        replica,
                        user,
                        ranked,
                    };
                    let span = tracing::debug_span!("feed_home", user, limit);
                    tracing::Instrument::instrument(reader.page(limit, cursor), span).await
                }
            }
        })
    }
}
