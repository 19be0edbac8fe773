//! The gateway: admission control and routing of client requests.
//!
//! `Gateway` is what the QUIC endpoint calls for every client request. It
//! admits at most `requests_in_flight_max` requests (the rest get `Busy`
//! at once, so no queue grows without bound), then hands the request to the
//! supervised `GatewayActor`, which runs it against the local replica and
//! answers. A request for a shard this node does not lead gets a redirect.

use std::sync::Arc;

use futures::future::BoxFuture;
use plexus_net::ClientHandler;
use plexus_proto::{AdminOp, Consistency, ErrorReply, HelloOk, Op, Reply, Request, Response};
use plexus_raft::sim_hooks::Canary;
use plexus_raft::Command;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;

use crate::metrics::{self, RequestMetrics};
use crate::registry::Registry;

/// Messages of the gateway actor.
pub enum GatewayMsg {
    /// Serve one admitted request.
    Handle(Request, RpcReplyPort<Response>),
}

/// The supervised actor that executes admitted client requests.
pub struct GatewayActor;

impl Actor for GatewayActor {
    type Msg = GatewayMsg;
    type State = Arc<Registry>;
    type Arguments = Arc<Registry>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        registry: Arc<Registry>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(registry)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        registry: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Handle(req, reply) => {
                // Each request runs on its own task so a slow commit never
                // holds up the mailbox; admission already bounded how many exist.
                let registry = registry.clone();
                tokio::spawn(async move {
                    let resp = execute(&registry, req).await;
                    let _ = reply.send(resp);
                });
            }
        }
        Ok(())
    }
}

/// Runs one request against this node's replicas.
pub async fn execute(registry: &Registry, req: Request) -> Response {
    // `instrument`, not `span.enter()`: an entered guard held across `.await`
    // would leak the span onto whatever else runs on the thread meanwhile.
    let span = tracing::debug_span!("request", shard = req.shard);
    tracing::Instrument::instrument(execute_in_span(registry, req), span).await
}

async fn execute_in_span(registry: &Registry, req: Request) -> Response {
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
    }
}

/// The endpoint's client handler: admission, then the gateway actor.
pub struct Gateway {
    registry: Arc<Registry>,
    actor: ActorRef<GatewayMsg>,
    admission: Arc<Semaphore>,
    in_flight_max: usize,
    metrics: Arc<RequestMetrics>,
}

impl Gateway {
    /// A gateway admitting at most `in_flight_max` requests at once.
    pub fn new(registry: Arc<Registry>, actor: ActorRef<GatewayMsg>, in_flight_max: usize) -> Self {
        Self {
            registry,
            actor,
            admission: Arc::new(Semaphore::new(in_flight_max)),
            in_flight_max,
            metrics: Arc::new(RequestMetrics::default()),
        }
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
        let actor = self.actor.clone();
        Box::pin(async move {
            let resp = match permit {
                Err(_) => Err(ErrorReply::Busy("node is at its in-flight request limit".into())),
                Ok(_permit) => match actor.call(|port| GatewayMsg::Handle(req, port), None).await {
                    Ok(ractor::rpc::CallResult::Success(resp)) => resp,
                    Ok(_) => Err(ErrorReply::Internal("gateway dropped the request".into())),
                    Err(e) => Err(ErrorReply::Internal(format!("gateway unavailable: {e}"))),
                },
            };
            counters.record(kind, metrics::outcome(&resp), arrived.elapsed());
            resp
        })
    }
}
