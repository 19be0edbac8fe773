//! Shard supervisors and shard actors.
//!
//! A `ShardActor` owns one group replica: it opens it from the WAL and the
//! snapshot file, registers it for the gateway, and on a timer pushes the
//! shard's cross-shard outbox to the destination shards. Its
//! `ShardSupervisor` restarts it after a failure with backoff, first shutting
//! down the failed replica's Raft tasks, until the restart budget runs out;
//! then the shard stays down on this node and the node serves the rest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use plexus_proto::{ErrorReply, Reply};
use plexus_raft::log_store::LogStore;
use plexus_raft::replica::{Replica, ReplicaOptions};
use plexus_raft::wal::SnapshotStore;
use plexus_raft::{Command, META_GROUP};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

/// How long a supervisor waits for its children to stop.
const CHILD_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

use crate::registry::Registry;
use crate::restart::{RestartBudget, RestartDecision, RestartPolicy};

/// Period of the shard actor's housekeeping tick while a leader has something to deliver (and
/// the least time between two ticks).
pub const TICK_PERIOD: Duration = Duration::from_millis(50);
/// Period of the tick with nothing to deliver: only to notice a leadership gained with an outbox
/// already pending. An apply that fills the outbox wakes the tick at once (`Replica::outbox_ready`),
/// so an idle group costs one wake-up a second instead of twenty.
pub const IDLE_TICK_PERIOD: Duration = Duration::from_millis(1_000);
/// Outbox items pushed to one destination shard per delivery.
pub const DELIVERY_ITEMS_MAX: usize = 1_024;
/// Deliveries one leader has in flight at once (to distinct destination shards).
pub const DELIVERIES_IN_FLIGHT_MAX: usize = 16;

/// Everything needed to (re)start one shard actor.
#[derive(Clone)]
pub struct ShardArgs {
    /// Group id.
    pub group: u32,
    /// The node's registry.
    pub registry: Arc<Registry>,
    /// The group's log (kept across restarts; it mirrors the WAL).
    pub log: LogStore,
    /// The node's snapshot files.
    pub snapshots: Arc<SnapshotStore>,
    /// Raft timings and limits.
    pub opts: ReplicaOptions,
}

/// Messages to a shard actor.
pub enum ShardMsg {
    /// Housekeeping: outbox delivery, meta bootstrap.
    Tick,
    /// Fault injection for tests: panic inside the actor.
    Panic,
}

/// Owns one replica.
pub struct ShardActor;

/// A running shard actor's state.
pub struct ShardState {
    replica: Replica,
    registry: Arc<Registry>,
    tick: Option<tokio::task::JoinHandle<()>>,
    busy: Arc<AtomicBool>,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(&self, myself: ActorRef<ShardMsg>, args: ShardArgs) -> Result<ShardState, ActorProcessingErr> {
        let reg = args.registry.clone();
        let replica = Replica::open(
            args.group,
            reg.node_id,
            args.log,
            args.snapshots,
            reg.transport.clone(),
            &args.opts,
        )
        .await?;
        let replicas = reg.replicas_of(args.group);
        // The first replica in placement order founds the group (and usually
        // becomes its first leader): placement rotates with the shard id, so
        // leadership starts spread over the nodes. Bootstrap is a no-op once a
        // log exists.
        if replicas.first() == Some(&reg.node_id) {
            let members: BTreeMap<u64, String> = replicas
                .into_iter()
                .filter_map(|n| reg.addr_of(n).map(|a| (n, a)))
                .collect();
            replica.bootstrap(members).await?;
        }
        reg.insert(replica.clone());
        tracing::debug!(group = args.group, "shard replica started");
        let tick = tokio::spawn(tick_loop(myself.clone(), replica.clone()));
        Ok(ShardState {
            replica,
            registry: reg,
            tick: Some(tick),
            busy: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Tick => {
                if st.replica.is_leader() && !st.busy.swap(true, Ordering::AcqRel) {
                    let (replica, registry, busy) = (st.replica.clone(), st.registry.clone(), st.busy.clone());
                    tokio::spawn(async move {
                        housekeeping(&replica, &registry).await;
                        busy.store(false, Ordering::Release);
                    });
                }
            }
            ShardMsg::Panic => panic!("injected panic in shard actor {}", st.replica.group),
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<ShardMsg>, st: &mut ShardState) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.tick.take() {
            t.abort();
        }
        st.registry.remove(st.replica.group);
        st.replica.shutdown().await;
        Ok(())
    }
}

/// Sends the actor its housekeeping ticks: every `TICK_PERIOD` while this replica leads and has
/// work (an outbox to deliver, the meta group's shard map to bootstrap), otherwise when the
/// outbox fills or after `IDLE_TICK_PERIOD`, and never more often than every `TICK_PERIOD`. Ends
/// when the actor is gone.
async fn tick_loop(me: ActorRef<ShardMsg>, replica: Replica) {
    loop {
        tokio::time::sleep(TICK_PERIOD).await;
        if !(replica.is_leader() && has_housekeeping(&replica)) {
            tokio::select! {
                biased;
                _ = replica.outbox_ready().notified() => {}
                _ = tokio::time::sleep(IDLE_TICK_PERIOD - TICK_PERIOD) => {}
            }
        }
        if me.cast(ShardMsg::Tick).is_err() {
            return;
        }
    }
}

/// Whether a leader has housekeeping to do: outbox entries to deliver, or (the meta group) a
/// shard map to bootstrap.
fn has_housekeeping(replica: &Replica) -> bool {
    match replica.state().read() {
        Ok(s) if replica.group == META_GROUP => s.shard_map().is_none(),
        Ok(s) => s.outbox_len() > 0,
        Err(_) => false,
    }
}

/// Leader-only periodic work: bootstrap the meta group's shard map and push
/// outbox entries to their destination shards (at-least-once delivery; the
/// destination skips sequence numbers it has applied, so it is exactly-once
/// in effect), then trim what the destination confirmed.
async fn housekeeping(replica: &Replica, registry: &Registry) {
    let timeout = registry.request_timeout;
    if replica.group == META_GROUP {
        let missing = replica.state().read().map(|s| s.shard_map().is_none()).unwrap_or(false);
        if missing {
            let mut map = registry.shard_map();
            map.shards.iter_mut().for_each(|s| s.leader = None);
            let _ = replica.propose(Command::SetShardMap(map), timeout).await;
        }
        return;
    }
    // The feed and EMPI outboxes are the node's workload pump's (`pump.rs`); this drains the edge halves.
    let edges = match replica.state().read() {
        Ok(s) => s.outbox_pending(DELIVERY_ITEMS_MAX),
        Err(_) => return,
    };
    let from_shard = replica.group;
    // Destinations are independent (each has its own sequence), so their deliveries overlap.
    futures::stream::iter(edges)
        .for_each_concurrent(DELIVERIES_IN_FLIGHT_MAX, |(dest, first_seq, items)| {
            let cmd = Command::EdgeDelivery {
                from_shard,
                first_seq,
                items,
            };
            deliver(replica, registry, dest, cmd)
        })
        .await;
}

/// Proposes one delivery on the destination shard and, once it answers how far it has applied,
/// trims this shard's outbox up to there.
async fn deliver(replica: &Replica, registry: &Registry, dest: u32, cmd: Command) {
    match registry.propose_anywhere(dest, cmd).await {
        Ok(Reply::Count(upto)) => {
            let trim = Command::OutboxTrim {
                to_shard: dest,
                upto_seq: upto,
            };
            if let Err(e) = replica.propose(trim, registry.request_timeout).await {
                tracing::debug!(shard = replica.group, dest, error = %e, "outbox trim deferred");
            }
        }
        Ok(other) => tracing::warn!(shard = replica.group, dest, ?other, "unexpected edge delivery answer"),
        Err(ErrorReply::NotLeader { .. } | ErrorReply::ShardUnavailable(_) | ErrorReply::Timeout(_)) => {}
        Err(e) => tracing::warn!(shard = replica.group, dest, error = %e, "edge delivery failed"),
    }
}

/// Messages to a shard supervisor.
pub enum SupervisorMsg {
    /// Forward a fault injection to the child.
    InjectPanic,
}

/// Restarts its shard actor after failures, within a budget.
pub struct ShardSupervisor;

/// A shard supervisor's state.
pub struct SupervisorState {
    args: ShardArgs,
    child: Option<ActorRef<ShardMsg>>,
    budget: RestartBudget,
    /// Restarts performed, for tests and status.
    pub restarts: u64,
}

impl ShardSupervisor {
    async fn spawn_child(myself: &ActorRef<SupervisorMsg>, st: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        let (child, _) = Actor::spawn_linked(None, ShardActor, st.args.clone(), myself.get_cell()).await?;
        st.child = Some(child);
        Ok(())
    }
}

impl Actor for ShardSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (ShardArgs, RestartPolicy);

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        (args, policy): (ShardArgs, RestartPolicy),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut st = SupervisorState {
            args,
            child: None,
            budget: RestartBudget::new(policy),
            restarts: 0,
        };
        Self::spawn_child(&myself, &mut st).await?;
        Ok(st)
    }

    async fn handle(
        &self,
        _me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::InjectPanic => {
                if let Some(c) = &st.child {
                    let _ = c.cast(ShardMsg::Panic);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SupervisorMsg>,
        _st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // ractor does not stop linked children with their supervisor: stop
        // them (and so their replicas' Raft tasks) before this actor is gone.
        myself
            .stop_children_and_wait(Some("supervisor stopping".into()), Some(CHILD_STOP_WAIT))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = evt {
            let group = st.args.group;
            tracing::error!(group, error = %err, "shard actor failed");
            st.child = None;
            // A panicking actor skips post_stop: stop its Raft tasks here so the
            // restarted replica is the only one using the group's log.
            if let Some(old) = st.args.registry.remove(group) {
                old.shutdown().await;
            }
            match st.budget.on_failure(tokio::time::Instant::now()) {
                RestartDecision::After(delay) => {
                    tokio::time::sleep(delay).await;
                    st.restarts += 1;
                    Self::spawn_child(&myself, st).await?;
                    tracing::info!(group, restarts = st.restarts, "shard actor restarted");
                }
                RestartDecision::GiveUp => {
                    tracing::error!(group, "shard actor keeps failing; giving up on this replica");
                }
            }
        }
        Ok(())
    }
}
