//! The social feed's typed calls: posting, deleting, marking seen, registering users and reading
//! a home feed. Follows are the graph's [`Client::follow`] and [`Client::unfollow`].
//!
//! A post is acknowledged once it is durable in its author's timeline; it reaches followers'
//! home feeds asynchronously (usually within tens of milliseconds), so a home read right after
//! a post may not show it yet.

use plexus_proto::{Consistency, EntryId, FeedCursor, FeedPage, FeedRequest, Op, PostRef, Reply, UserId, WriteOp};

use crate::client::Client;
use crate::error::ClientError;

fn unexpected(op: &'static str, reply: Reply) -> ClientError {
    ClientError::UnexpectedReply {
        op,
        reply: format!("{reply:?}"),
    }
}

impl Client {
    /// Registers `user` for the feed; true if it is new. Following or being followed registers
    /// a user too; posting, reading and marking seen need a registered user.
    pub async fn feed_user_add(&self, user: UserId) -> Result<bool, ClientError> {
        match self
            .call(Op::Write(WriteOp::FeedUserAdd { user }), Consistency::Linearizable)
            .await?
        {
            Reply::Changed(b) => Ok(b),
            r => Err(unexpected("feed_user_add", r)),
        }
    }

    /// Posts `text` as `author`; the post's reference once it is durable in the author's
    /// timeline. Fan-out to followers follows asynchronously.
    pub async fn feed_post(&self, author: UserId, text: impl Into<Vec<u8>>) -> Result<PostRef, ClientError> {
        let op = WriteOp::FeedPost {
            author,
            text: text.into(),
        };
        match self.call(Op::Write(op), Consistency::Linearizable).await? {
            Reply::Appended(id) => Ok(PostRef { author, id }),
            r => Err(unexpected("feed_post", r)),
        }
    }

    /// Deletes `author`'s post `id` from the author's timeline and every home feed it reached;
    /// true if it existed.
    pub async fn feed_delete(&self, author: UserId, id: EntryId) -> Result<bool, ClientError> {
        match self
            .call(Op::Write(WriteOp::FeedDelete { author, id }), Consistency::Linearizable)
            .await?
        {
            Reply::Changed(b) => Ok(b),
            r => Err(unexpected("feed_delete", r)),
        }
    }

    /// Marks `posts` seen by `user` (at most `FEED_SEEN_ITEMS_MAX` per call); true if any was
    /// not yet. Seen posts leave the user's home feed.
    pub async fn feed_seen(&self, user: UserId, posts: Vec<PostRef>) -> Result<bool, ClientError> {
        match self
            .call(Op::Write(WriteOp::FeedSeen { user, posts }), Consistency::Linearizable)
            .await?
        {
            Reply::Changed(b) => Ok(b),
            r => Err(unexpected("feed_seen", r)),
        }
    }

    /// A page of `user`'s home feed: posts of followed authors and the user's own, without seen
    /// and deleted posts, ranked by the scoring pool (`ranked`) or newest first. Pass the page's
    /// `next` as `FeedCursor::Before` for the page after it, or a post id as `FeedCursor::After`
    /// for what is newer.
    pub async fn feed_home(
        &self,
        user: UserId,
        limit: u32,
        cursor: FeedCursor,
        ranked: bool,
    ) -> Result<FeedPage, ClientError> {
        let op = Op::Feed(FeedRequest::Home {
            user,
            limit,
            cursor,
            ranked,
        });
        match self.call(op, Consistency::Linearizable).await? {
            Reply::FeedPage(p) => Ok(p),
            r => Err(unexpected("feed_home", r)),
        }
    }
}
