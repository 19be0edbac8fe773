//! The simulated network: the `RaftTransport` every simulated node uses, and the client links.
//!
//! What it is: message-level delivery between node cores in one process. Every send draws, from
//! one seeded RNG in send order, whether the request or its answer is lost, how long each way
//! takes (so messages reorder), and whether the request is delivered twice. Partitions are sets
//! of blocked directed links, so a one-way partition is one blocked pair. A lost message is never
//! answered: the caller sees its deadline pass, as it would over QUIC. Delivery calls the same
//! `NodeCore::handle_peer` / `NodeCore::execute` code that the QUIC endpoint calls.
//!
//! What it is not: a byte-level network. There is no QUIC, TLS or framing here (the issue allows
//! replacing the QUIC transport at the message level; running quinn over a simulated socket is
//! the stretch goal).
//!
//! Failures are reported as `TransportError::Timeout` (openraft maps it to a network error): the
//! `Unreachable` kind would send openraft's replication into its backoff loop, whose unbiased
//! `tokio::select!` draws from tokio's unseeded RNG (see ARCHITECTURE.md, entropy leaks).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use plexus_actors::NodeCore;
use plexus_raft::network::{BoxFut, RaftTransport, TransportError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::trace::{fnv1a, Trace};

/// Network fault rates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetFaults {
    /// Probability that a request or an answer is lost, in parts per million.
    pub loss_ppm: u32,
    /// Probability that a request is delivered twice, in parts per million.
    pub dup_ppm: u32,
    /// Shortest one-way latency, in microseconds.
    pub delay_us_min: u64,
    /// Longest one-way latency, in microseconds (random delays reorder messages).
    pub delay_us_max: u64,
}

impl NetFaults {
    /// A healthy network: no loss, no duplication, short latencies.
    pub fn healthy() -> Self {
        Self {
            loss_ppm: 0,
            dup_ppm: 0,
            delay_us_min: 100,
            delay_us_max: 1_000,
        }
    }
}

struct Slot {
    core: Option<Arc<NodeCore>>,
    epoch: u64,
}

struct NetState {
    rng: StdRng,
    faults: NetFaults,
    nodes: BTreeMap<u64, Slot>,
    /// Blocked directed links `(from, to)`.
    blocked: BTreeSet<(u64, u64)>,
}

/// What the RNG decided for one message exchange.
struct Plan {
    lost_request: bool,
    lost_answer: bool,
    request_delay: Duration,
    answer_delay: Duration,
    duplicate_delay: Option<Duration>,
}

/// The network of one simulated cluster.
pub struct SimNet {
    state: Mutex<NetState>,
    trace: Trace,
}

impl SimNet {
    /// A network drawing from `seed`, with `faults` in force.
    pub fn new(seed: u64, faults: NetFaults, trace: Trace) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(NetState {
                rng: StdRng::seed_from_u64(seed),
                faults,
                nodes: BTreeMap::new(),
                blocked: BTreeSet::new(),
            }),
            trace,
        })
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        // Every change is a single assignment; a panicking holder leaves it consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a new incarnation of `node` (down until `attach`) and returns its epoch.
    pub fn next_epoch(&self, node: u64) -> u64 {
        let mut st = self.lock();
        let slot = st.nodes.entry(node).or_insert(Slot { core: None, epoch: 0 });
        slot.epoch += 1;
        slot.core = None;
        slot.epoch
    }

    /// Makes incarnation `epoch` of `node` reachable through `core`.
    pub fn attach(&self, node: u64, epoch: u64, core: Arc<NodeCore>) {
        let mut st = self.lock();
        if let Some(slot) = st.nodes.get_mut(&node) {
            if slot.epoch == epoch {
                slot.core = Some(core);
            }
        }
    }

    /// Takes `node` off the network (a crash): every message to or from it is lost from now on.
    pub fn detach(&self, node: u64) {
        let mut st = self.lock();
        if let Some(slot) = st.nodes.get_mut(&node) {
            slot.epoch += 1;
            slot.core = None;
        }
    }

    /// The transport incarnation `epoch` of `node` sends through.
    pub fn transport(self: &Arc<Self>, node: u64, epoch: u64) -> Arc<dyn RaftTransport> {
        Arc::new(SimTransport {
            net: self.clone(),
            from: node,
            epoch,
        })
    }

    /// Replaces the fault rates.
    pub fn set_faults(&self, faults: NetFaults) {
        self.lock().faults = faults;
    }

    /// Blocks the directed link `from → to`.
    pub fn block(&self, from: u64, to: u64) {
        self.lock().blocked.insert((from, to));
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }

    /// The cores of the nodes that are up, by id.
    pub fn cores(&self) -> Vec<(u64, Arc<NodeCore>)> {
        self.lock()
            .nodes
            .iter()
            .filter_map(|(id, slot)| slot.core.clone().map(|c| (*id, c)))
            .collect()
    }

    fn plan(&self) -> Plan {
        let mut st = self.lock();
        let f = st.faults.clone();
        let lost = |rng: &mut StdRng| f.loss_ppm > 0 && rng.gen_range(0..1_000_000) < f.loss_ppm;
        let lost_request = lost(&mut st.rng);
        let lost_answer = lost(&mut st.rng);
        let delay = |rng: &mut StdRng| Duration::from_micros(rng.gen_range(f.delay_us_min..=f.delay_us_max));
        let request_delay = delay(&mut st.rng);
        let answer_delay = delay(&mut st.rng);
        let duplicate = f.dup_ppm > 0 && st.rng.gen_range(0..1_000_000) < f.dup_ppm;
        let duplicate_delay = duplicate.then(|| delay(&mut st.rng));
        Plan {
            lost_request,
            lost_answer,
            request_delay,
            answer_delay,
            duplicate_delay,
        }
    }

    /// The core of `to` if `from → to` is open and both ends are up (`from` 0 is a client).
    fn reachable(&self, from: u64, from_epoch: Option<u64>, to: u64) -> Option<(Arc<NodeCore>, u64)> {
        let st = self.lock();
        if st.blocked.contains(&(from, to)) {
            return None;
        }
        if let Some(epoch) = from_epoch {
            if st.nodes.get(&from).map(|s| s.epoch) != Some(epoch) {
                return None;
            }
        }
        let slot = st.nodes.get(&to)?;
        slot.core.clone().map(|c| (c, slot.epoch))
    }

    fn still(&self, node: u64, epoch: u64) -> bool {
        self.lock()
            .nodes
            .get(&node)
            .is_some_and(|s| s.epoch == epoch && s.core.is_some())
    }

    fn link_open(&self, from: u64, to: u64) -> bool {
        !self.lock().blocked.contains(&(from, to))
    }

    async fn peer_exchange(
        self: Arc<Self>,
        from: u64,
        epoch: u64,
        to: u64,
        msg: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        if self.lock().nodes.get(&from).is_none_or(|s| s.epoch != epoch) {
            // A crashed incarnation's tasks are winding down: their sends vanish untraced, so
            // the order in which they stop cannot show in the trace.
            return std::future::pending().await;
        }
        let plan = self.plan();
        let digest = fnv1a(0, &msg);
        if plan.lost_request {
            self.trace.event(format_args!("net lost {from}->{to} {digest:016x}"));
            return std::future::pending().await;
        }
        tokio::time::sleep(plan.request_delay).await;
        let Some((core, to_epoch)) = self.reachable(from, Some(epoch), to) else {
            self.trace.event(format_args!("net cut {from}->{to} {digest:016x}"));
            return std::future::pending().await;
        };
        self.trace
            .event(format_args!("net deliver {from}->{to} len={} {digest:016x}", msg.len()));
        if let Some(delay) = plan.duplicate_delay {
            let (net, msg) = (self.clone(), msg.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some((core, _)) = net.reachable(from, None, to) {
                    net.trace
                        .event(format_args!("net duplicate {from}->{to} {digest:016x}"));
                    let _ = core.handle_peer(from, msg).await;
                }
            });
        }
        // The receiver works on its own task, as it would on its own endpoint: the sender
        // giving up does not cancel the receiver's work.
        let answer = match tokio::spawn(async move { core.handle_peer(from, msg).await }).await {
            Ok(answer) => answer,
            Err(_) => return std::future::pending().await,
        };
        tokio::time::sleep(plan.answer_delay).await;
        if plan.lost_answer || !self.link_open(to, from) || !self.still(to, to_epoch) {
            self.trace
                .event(format_args!("net answer-lost {to}->{from} {digest:016x}"));
            return std::future::pending().await;
        }
        answer.map_err(|e| TransportError::Remote(to, e))
    }

    /// One client exchange with node `to`: the request leg, `serve` run on the node's own task,
    /// the answer leg, with loss and delays drawn like any message's. A lost request or answer,
    /// a node that is down or a blocked link means this never completes: a real client sees no
    /// answer either, and its own timeouts decide. Clients sit outside every partition (their
    /// links are never blocked), so only the node's side matters.
    ///
    /// `conn_epoch` is the incarnation the client's connection was made to: a restarted node
    /// does not know that connection and answers `Err(StaleConnection)` (QUIC's stateless
    /// reset). `None` is a fresh dial. `Ok` carries the incarnation that served.
    pub async fn client_exchange<T: Send + 'static>(
        self: &Arc<Self>,
        to: u64,
        conn_epoch: Option<u64>,
        serve: impl FnOnce(Arc<NodeCore>) -> BoxFut<T> + Send + 'static,
    ) -> Result<(T, u64), StaleConnection> {
        let plan = self.plan();
        if plan.lost_request {
            return std::future::pending().await;
        }
        tokio::time::sleep(plan.request_delay).await;
        let Some((core, epoch)) = self.reachable(0, None, to) else {
            return std::future::pending().await;
        };
        let answer = if conn_epoch.is_some_and(|e| e != epoch) {
            Err(StaleConnection)
        } else {
            // The node works on its own task, as on its own endpoint: a client that gives up
            // does not cancel the node's work.
            match tokio::spawn(serve(core)).await {
                Ok(answer) => Ok((answer, epoch)),
                Err(_) => return std::future::pending().await,
            }
        };
        tokio::time::sleep(plan.answer_delay).await;
        if plan.lost_answer || !self.still(to, epoch) {
            return std::future::pending().await;
        }
        answer
    }
}

/// A client's connection named an earlier incarnation of the node it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleConnection;

/// The `RaftTransport` of one node incarnation.
struct SimTransport {
    net: Arc<SimNet>,
    from: u64,
    epoch: u64,
}

impl RaftTransport for SimTransport {
    fn call(&self, to: u64, msg: Vec<u8>, timeout: Duration) -> BoxFut<Result<Vec<u8>, TransportError>> {
        let (net, from, epoch) = (self.net.clone(), self.from, self.epoch);
        Box::pin(async move {
            match tokio::time::timeout(timeout, net.peer_exchange(from, epoch, to, msg)).await {
                Ok(answer) => answer,
                Err(_) => Err(TransportError::Timeout(to, timeout)),
            }
        })
    }
}
