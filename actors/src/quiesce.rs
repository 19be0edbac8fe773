//! Quiescence on a running node: every `heartbeat_ms`, one pass of `plexus_raft::quiesce` over
//! this node's replicas, one ping to each peer that follows a group this node leads, and the
//! answers to peers' pings (`PeerRequest::Quiet`, from the peer service).
//!
//! The decisions are the sans-IO core's; this module only gathers the replicas' views, carries
//! out the core's actions (a claim taken as a heartbeat is `Replica::take_heartbeat`), switches
//! each replica's heartbeats and election timer (`Replica::set_quiet`) and moves the pings. It
//! runs in `start_core`, so the simulator runs it too.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::join_all;
use plexus_raft::network::{decode, encode, PeerRequest, PeerResponse};
use plexus_raft::quiesce::{FollowerAction, FollowerView, QuietClaim, QuietFollowers, QuietLeaders};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::registry::Registry;

/// The two sides of the protocol and what the last pass decided.
struct Inner {
    leaders: QuietLeaders,
    followers: QuietFollowers,
    /// Groups this node leads whose heartbeats the last pass turned off.
    leading_quiet: BTreeSet<u32>,
}

/// Quiescence of one node's groups.
pub struct Quiescence {
    registry: Arc<Registry>,
    inner: Mutex<Inner>,
    /// How long a ping waits for its answer (one pass).
    ping_timeout: Duration,
    /// Times a group this node leads went quiet.
    quieted_total: AtomicU64,
}

/// A node's quiescence figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuietStats {
    /// Groups this node leads that are quiet now.
    pub leading: u64,
    /// Groups this node follows that are quiet here now.
    pub following: u64,
    /// Times a group this node leads went quiet, since the node started.
    pub quieted_total: u64,
}

impl Quiescence {
    /// Quiescence for `registry`'s replicas: groups go quiet after `quiesce_after` idle, and a
    /// leader's node that has not pinged for `leader_silent_after` no longer vouches for its
    /// groups; pings are answered within `ping_timeout`.
    pub fn new(
        registry: Arc<Registry>,
        quiesce_after: Duration,
        leader_silent_after: Duration,
        ping_timeout: Duration,
    ) -> Arc<Self> {
        let me = registry.node_id;
        Arc::new(Self {
            registry,
            inner: Mutex::new(Inner {
                leaders: QuietLeaders::new(me, quiesce_after),
                followers: QuietFollowers::new(leader_silent_after),
                leading_quiet: BTreeSet::new(),
            }),
            ping_timeout,
            quieted_total: AtomicU64::new(0),
        })
    }

    /// Runs a pass every `every` until the handle is aborted.
    pub fn spawn(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.pass().await;
            }
        })
    }

    /// This node's quiescence figures.
    pub fn stats(&self) -> QuietStats {
        let inner = self.lock();
        QuietStats {
            leading: inner.leading_quiet.len() as u64,
            following: inner.followers.quiet_count() as u64,
            quieted_total: self.quieted_total.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is only ever replaced whole by the core's methods; a panic in one cannot
        // leave it half-updated in a way the next pass does not repair.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn follower_view(&self, group: u32) -> Option<FollowerView> {
        let replica = self.registry.get(group)?;
        Some(replica.follower_view(self.registry.starts(group)))
    }

    /// One pass: decide, release what lost its vouching, switch every replica, ping the peers.
    pub async fn pass(&self) {
        let now = Instant::now();
        let replicas = self.registry.all();
        let views: Vec<_> = replicas
            .iter()
            .map(|r| r.leader_view(self.registry.starts(r.group)))
            .collect();
        let (plan, releases) = {
            let mut inner = self.lock();
            let plan = inner.leaders.pass(now, &views);
            for group in plan.quiet.difference(&inner.leading_quiet) {
                tracing::debug!(group, "group quiet");
                self.quieted_total.fetch_add(1, Ordering::Relaxed);
            }
            for group in inner.leading_quiet.difference(&plan.quiet) {
                tracing::debug!(group, "group awake");
            }
            inner.leading_quiet = plan.quiet.clone();
            let releases = inner.followers.pass(now, |g| self.follower_view(g));
            (plan, releases)
        };
        self.carry_out(releases).await;
        self.switch(replicas.iter().map(|r| r.group));
        let answers = join_all(plan.pings.into_iter().map(|(peer, claims)| async move {
            let accepted = self.ping(peer, &claims).await;
            (peer, claims, accepted)
        }))
        .await;
        let mut inner = self.lock();
        for (peer, claims, accepted) in answers {
            inner.leaders.on_answer(peer, &claims, accepted.as_deref());
        }
    }

    /// Sends `claims` to `peer`; the groups it accepted, or `None` without an answer.
    async fn ping(&self, peer: u64, claims: &[QuietClaim]) -> Option<Vec<u32>> {
        let msg = encode(&PeerRequest::Quiet(claims.to_vec())).ok()?;
        match self
            .registry
            .transport
            .call_consensus(peer, msg, self.ping_timeout)
            .await
        {
            Ok(bytes) => match decode::<PeerResponse>(&bytes) {
                Ok(PeerResponse::Quiet(accepted)) => Some(accepted),
                Ok(other) => {
                    tracing::debug!(peer, ?other, "unexpected answer to a quiescence ping");
                    None
                }
                Err(e) => {
                    tracing::debug!(peer, error = %e, "malformed answer to a quiescence ping");
                    None
                }
            },
            Err(e) => {
                tracing::debug!(peer, error = %e, "quiescence ping not answered");
                None
            }
        }
    }

    /// Answers a ping from `from`: the claimed groups whose replicas here took the claim.
    pub async fn on_ping(&self, from: u64, claims: &[QuietClaim]) -> Vec<u32> {
        let now = Instant::now();
        let (mut accepted, actions) = {
            let mut inner = self.lock();
            inner.followers.on_ping(now, from, claims, |g| self.follower_view(g))
        };
        let touched: BTreeSet<u32> = actions
            .iter()
            .map(|a| match a {
                FollowerAction::Accept { claim, .. } => claim.group,
                FollowerAction::Release { group, .. } => *group,
            })
            .collect();
        accepted.extend(self.carry_out(actions).await);
        self.switch(touched.into_iter());
        accepted
    }

    /// Carries out the follower side's actions in order; returns the groups newly accepted.
    async fn carry_out(&self, actions: Vec<FollowerAction>) -> Vec<u32> {
        let mut accepted = Vec::new();
        for action in actions {
            match action {
                FollowerAction::Release { group, refresh } => {
                    if let (Some(claim), Some(replica)) = (refresh, self.registry.get(group)) {
                        // The leader's node is alive: count from now before standing.
                        replica.take_heartbeat(&claim).await;
                    }
                }
                FollowerAction::Accept {
                    leader,
                    claim,
                    instance,
                } => {
                    let group = claim.group;
                    let ok = match self.registry.get(group) {
                        Some(r) if self.registry.starts(group) == instance => r.take_heartbeat(&claim).await,
                        _ => false,
                    };
                    self.lock().followers.on_heartbeat(leader, claim, instance, ok);
                    if ok {
                        accepted.push(group);
                    }
                }
            }
        }
        accepted
    }

    /// Switches `groups`' replicas: heartbeats off only for quiet groups this node leads,
    /// election timers off only for groups quiet here as followers.
    fn switch(&self, groups: impl Iterator<Item = u32>) {
        let inner = self.lock();
        for group in groups {
            if let Some(replica) = self.registry.get(group) {
                replica.set_quiet(!inner.leading_quiet.contains(&group), !inner.followers.is_quiet(group));
            }
        }
    }
}
