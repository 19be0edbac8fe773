//! The simulated client: the client library's routing, retry and session logic over the
//! simulated network.
//!
//! What it is: a reproduction of `plexus-client`'s request path — a cached leader per shard,
//! `NotLeader` redirects, retries of retryable errors with equal-jitter exponential backoff, a
//! per-request timeout, and exactly-once sessions (one sequence number per logical write, reused
//! by every retry, `ack_below` = the lowest sequence still in flight). The random draws come from
//! the client's seeded RNG.
//!
//! What it is not: `plexus-client` itself. That crate is bound to QUIC (quinn connections per
//! node) and has no transport seam yet; giving it one is the next increment, after which this
//! module should disappear.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use plexus_proto::{Consistency, ErrorReply, Op, ReadOp, Request, Response, Session, WriteOp};
use rand::rngs::StdRng;
use rand::Rng;

use crate::net::SimNet;

/// Attempts per request, the first one included.
pub const ATTEMPTS_MAX: u32 = 8;
/// Backoff before the second attempt, doubling per failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(20);
/// Longest backoff between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_millis(1_000);

/// One simulated client.
pub struct SimClient {
    /// The session's client id.
    pub client_id: u64,
    net: Arc<SimNet>,
    rng: StdRng,
    nodes: Vec<u64>,
    shard_count: u32,
    leaders: BTreeMap<u32, u64>,
    next_seq: u64,
    request_timeout: Duration,
}

impl SimClient {
    /// A client of a cluster of `nodes` with `shard_count` shards.
    pub fn new(client_id: u64, net: Arc<SimNet>, rng: StdRng, nodes: Vec<u64>, shard_count: u32) -> Self {
        Self {
            client_id,
            net,
            rng,
            nodes,
            shard_count,
            leaders: BTreeMap::new(),
            next_seq: 1,
            request_timeout: Duration::from_millis(3_000),
        }
    }

    /// The client's RNG (the workload draws its choices from it too).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Forgets every cached leader, as a client that just (re)connected knows none: its next
    /// request goes to a random node and follows the redirect.
    pub fn forget_leaders(&mut self) {
        self.leaders.clear();
    }

    /// A write under a fresh session sequence number, retried until answered or out of attempts.
    pub async fn write(&mut self, op: WriteOp) -> Response {
        let seq = self.next_seq;
        self.next_seq += 1;
        // Operations are sequential per client: every earlier write is answered or abandoned.
        let session = Session {
            client_id: self.client_id,
            seq,
            ack_below: seq,
        };
        self.send(Op::Write(op), Some(session)).await
    }

    /// A linearizable read.
    pub async fn read(&mut self, op: ReadOp) -> Response {
        self.send(Op::Read(op), None).await
    }

    async fn send(&mut self, op: Op, session: Option<Session>) -> Response {
        let shard = op.shard(self.shard_count).unwrap_or(0);
        let mut last = Err(ErrorReply::ShardUnavailable(shard));
        let mut failures = 0u32;
        for _ in 0..ATTEMPTS_MAX {
            let node = match self.leaders.get(&shard) {
                Some(n) => *n,
                None => self.nodes[self.rng.gen_range(0..self.nodes.len())],
            };
            let req = Request {
                shard,
                consistency: Consistency::Linearizable,
                session,
                op: op.clone(),
            };
            let answer = self.net.client_call(node, req, self.request_timeout).await;
            match &answer {
                Err(ErrorReply::NotLeader { leader: Some(l), .. }) if *l != node => {
                    // A redirect is not a failure: go straight to the named leader.
                    self.leaders.insert(shard, *l);
                }
                Err(e) if e.is_retryable() => {
                    self.leaders.remove(&shard);
                    failures += 1;
                    let delay = backoff(failures, self.rng.gen::<f64>());
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    if answer.is_ok() {
                        self.leaders.insert(shard, node);
                    }
                    return answer;
                }
            }
            last = answer;
        }
        last
    }
}

/// Equal-jitter exponential backoff, as `plexus-client` computes it.
fn backoff(failures: u32, unit: f64) -> Duration {
    let shift = failures.saturating_sub(1).min(31);
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << shift).min(BACKOFF_MAX);
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}
