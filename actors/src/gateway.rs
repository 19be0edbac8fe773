//! The gateway: client connections, admission control and routing of client requests.
//!
//! Every client connection the QUIC endpoint accepts is run by the supervised `GatewayActor`
//! (`ClientHandler::run_connection`): the actor holds the connection's serving task, so its stop
//! or failure ends every client connection it runs (each closed with `CLOSE_CONN_DROPPED`, and
//! clients redial), and the node supervisor restarts a failed one. Requests do not pass through
//! its mailbox: each request stream already has a task of its own, which calls `Gateway::handle`.
//! That admits at most `requests_in_flight_max` requests at once (the rest get `Busy` at once,
//! so no queue grows without bound) and runs the request against the local replica. A request
//! for a shard this node does not lead gets a redirect.

use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use plexus_net::ClientHandler;
use plexus_proto::{AdminOp, Consistency, ErrorReply, HelloOk, Op, Reply, Request, Response};
use plexus_raft::replica::Replica;
use plexus_raft::sim_hooks::Canary;
use plexus_raft::Command;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::{self, RequestMetrics};
use crate::registry::Registry;

/// Messages of the gateway actor.
pub enum GatewayMsg {
    /// Run one accepted client connection until it ends.
    Connection(BoxFuture<'static, ()>),
    /// Panic (fault injection for tests: the supervisor must restart the actor).
    Panic,
}

/// The supervised actor that runs the node's client connections.
pub struct GatewayActor;

/// Where the node keeps the running gateway actor; the supervisor replaces it on a restart.
pub type GatewaySlot = Arc<RwLock<Option<ActorRef<GatewayMsg>>>>;

impl Actor for GatewayActor {
    type Msg = GatewayMsg;
    /// The serving task of every connection this actor runs: dropped with the actor, which
    /// aborts them all.
    type State = JoinSet<()>;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _args: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok(JoinSet::new())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        conns: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Connection(serve) => {
                // Forget the connections that ended since the last one came, so the set holds
                // about as many tasks as there are live connections (`client_conns_max`).
                while conns.try_join_next().is_some() {}
                conns.spawn(serve);
            }
            GatewayMsg::Panic => panic!("injected gateway panic"),
        }
        Ok(())
    }
}

/// Runs one request against this node's replicas (or its workloads).
pub async fn execute(registry: &Arc<Registry>, req: Request) -> Response {
    // `instrument`, not `span.enter()`: an entered guard held across `.await`
    // would leak the span onto whatever else runs on the thread meanwhile.
    let span = tracing::debug_span!("request", shard = req.shard);
    tracing::Instrument::instrument(execute_in_span(registry, req), span).await
}

async fn execute_in_span(registry: &Arc<Registry>, req: Request) -> Response {
    if let Op::Admin(admin) = &req.op {
        return Ok(match admin {
            AdminOp::ShardMap => Reply::ShardMap(registry.shard_map()),
            AdminOp::Status => Reply::Status(registry.status(registry.scoring().map(|p| p.backend_name().to_string()))),
        });
    }
    let expected = req.op.shard(registry.shard_count).unwrap_or(req.shard);
    if expected != req.shard {
        return Err(ErrorReply::WrongShard {
            got: req.shard,
            expected,
        });
    }
    let Some(replica) = registry.get(req.shard) else {
        return Err(registry.redirect(req.shard));
    };
    if matches!(req.op, Op::Feed(_) | Op::Empi(_)) {
        return execute_workload(registry, replica, req).await;
    }
    match req.op {
        Op::Write(op) => {
            if !replica.is_leader() {
                return Err(registry.redirect(req.shard));
            }
            let cmd = Command::Client {
                session: req.session,
                op,
                now_millis: registry.clock.now_millis(),
            };
            replica.propose(cmd, registry.request_timeout).await
        }
        Op::Read(op) => {
            // The `StaleRead` canary (simulation only) lets any replica answer.
            let stale_canary = replica.canary() == Some(Canary::StaleRead);
            if req.consistency == Consistency::Linearizable && !replica.is_leader() && !stale_canary {
                return Err(registry.redirect(req.shard));
            }
            replica.read(&op, req.consistency, registry.request_timeout).await
        }
        Op::Admin(_) => Err(ErrorReply::Internal("admin op fell through".into())),
        // Any replica scores (from stale state, see `score`); no leadership check.
        Op::Score(score) => crate::score::execute_score(registry, &replica, score).await,
        Op::Feed(_) | Op::Empi(_) => Err(ErrorReply::Internal("workload op fell through".into())),
    }
}

/// Hands a request to the workload that serves it, at the leader of its shard.
async fn execute_workload(registry: &Arc<Registry>, replica: Replica, req: Request) -> Response {
    let Some(workload) = registry.workload_for(&req.op) else {
        return Err(ErrorReply::BadRequest(format!(
            "this node runs no workload for {} requests",
            Op::KINDS[req.op.kind()]
        )));
    };
    // Workloads read linearizably at the shard they are routed to: only its leader serves them.
    if !replica.is_leader() {
        return Err(registry.redirect(req.shard));
    }
    workload.execute(registry.clone(), replica, req).await
}

/// The endpoint's client handler: connections to the gateway actor; requests through admission
/// to the replicas.
pub struct Gateway {
    registry: Arc<Registry>,
    actor: GatewaySlot,
    admission: Arc<Semaphore>,
    in_flight_max: usize,
    metrics: Arc<RequestMetrics>,
}

impl Gateway {
    /// A gateway admitting at most `in_flight_max` requests at once, handing connections to the
    /// actor in `actor` (whichever runs when a connection comes).
    pub fn new(registry: Arc<Registry>, actor: GatewaySlot, in_flight_max: usize) -> Self {
        Self {
            registry,
            actor,
            admission: Arc::new(Semaphore::new(in_flight_max)),
            in_flight_max,
            metrics: Arc::new(RequestMetrics::default()),
        }
    }

    /// The gateway actor running now, if any.
    pub fn actor(&self) -> Option<ActorRef<GatewayMsg>> {
        self.actor.read().ok().and_then(|a| a.clone())
    }

    /// Requests answered so far, by kind, outcome and latency.
    pub fn metrics(&self) -> &RequestMetrics {
        &self.metrics
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight_max.saturating_sub(self.admission.available_permits())
    }
}

impl ClientHandler for Gateway {
    fn hello(&self) -> HelloOk {
        HelloOk {
            node_id: self.registry.node_id,
            shard_map: self.registry.shard_map(),
        }
    }

    fn handle(&self, req: Request) -> BoxFuture<'static, Response> {
        // The runtime's clock, so that under the simulator's paused time latencies are virtual.
        let arrived = tokio::time::Instant::now();
        let kind = metrics::op_kind(&req.op);
        let counters = self.metrics.clone();
        let permit = self.admission.clone().try_acquire_owned();
        let registry = self.registry.clone();
        Box::pin(async move {
            let resp = match permit {
                Err(_) => Err(ErrorReply::Busy("node is at its in-flight request limit".into())),
                Ok(_permit) => execute(&registry, req).await,
            };
            counters.record(kind, metrics::outcome(&resp), arrived.elapsed());
            resp
        })
    }

    fn run_connection(&self, serve: BoxFuture<'static, ()>) {
        let refused = match self.actor() {
            Some(actor) => actor.cast(GatewayMsg::Connection(serve)).err().map(|e| e.to_string()),
            None => Some("no gateway actor".to_string()),
        };
        // Dropping the serving future closes the connection (`CLOSE_CONN_DROPPED`); the client
        // redials, by then most likely to a restarted actor.
        if let Some(why) = refused {
            tracing::warn!(reason = %why, "client connection dropped: the gateway actor is not running");
        }
    }
}
