//! The node's scoring pool: supervised actors that batch scoring requests
//! and run each batch's kernel work on a blocking thread.
//!
//! [`ScoringPool`] is the shared front: it owns the kernels (chosen once per
//! node by `Kernels::auto()`: CUDA when present, else the widest CPU SIMD
//! path), admits at most `score_queue_requests_max` requests at once (the
//! rest get `Busy` at once; admission comes before the features are
//! gathered, so it bounds their memory too) and hands each to one of its
//! [`ScoringActor`]s, round robin. The admission permit travels with the request until it is
//! answered, so the actors' mailboxes form one bounded queue although ractor
//! mailboxes themselves are unbounded.
//!
//! An actor collects requests into a batch until it holds
//! `score_batch_requests_max` requests or `score_batch_values_max` values,
//! or `score_batch_wait_us` has passed since the batch's first request
//! (tokio timers round this up to their 1 ms resolution), then runs
//! [`run_batch`] under `spawn_blocking` and answers every request. While a
//! batch computes, new requests wait in the mailbox, so batches grow with
//! load. The node supervisor restarts a failed actor; requests it held are
//! answered `Internal` (their reply channel is dropped).
//!
//! This module does not gather features (see `score`) or decide backends
//! (see `plexus_kernels::select_backend`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use plexus_kernels::{BackendInfo, Kernels, SageModel};
use plexus_proto::ErrorReply;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::score_batch::{run_batch, ScoreJob, ScoreResult};

/// Sizes of the scoring pool and its batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoringLimits {
    /// Requests admitted (queued or computing) at once; more get `Busy`.
    pub score_queue_requests_max: usize,
    /// Most requests in one batch.
    pub score_batch_requests_max: usize,
    /// Most feature values (queries and candidates) in one batch; a single
    /// larger request forms a batch of its own.
    pub score_batch_values_max: usize,
    /// Longest wait, in microseconds, from a batch's first request to its run.
    pub score_batch_wait_us: u64,
    /// Scoring actors in the pool.
    pub score_actors: usize,
}

impl Default for ScoringLimits {
    fn default() -> Self {
        Self {
            score_queue_requests_max: 256,
            score_batch_requests_max: 64,
            score_batch_values_max: 16 * 1024 * 1024,
            score_batch_wait_us: 500,
            score_actors: 2,
        }
    }
}

/// Counters of the pool's work since the node started.
#[derive(Debug, Default)]
pub struct ScoringStats {
    /// Batches run.
    pub batches: AtomicU64,
    /// Requests answered by those batches.
    pub requests: AtomicU64,
}

/// An admitted request's place in the queue, held from before its features
/// are gathered until it is answered.
pub struct ScoreTicket(OwnedSemaphorePermit);

/// A request waiting in an actor, with its answer channel and admission permit.
pub struct Pending {
    job: ScoreJob,
    reply: oneshot::Sender<ScoreResult>,
    permit: OwnedSemaphorePermit,
}

/// Messages of a scoring actor.
pub enum ScoringMsg {
    /// Score one request (batched with others).
    Score(Pending),
    /// The wait of batch `generation` is over: run it if it is still open.
    Flush(u64),
}

/// One batching actor of the pool.
pub struct ScoringActor;

/// A scoring actor's state: the open batch.
pub struct ScoringState {
    kernels: Arc<Kernels>,
    model: Option<Arc<SageModel>>,
    stats: Arc<ScoringStats>,
    limits: ScoringLimits,
    batch: Vec<Pending>,
    batch_values: usize,
    /// Counts batches, so a `Flush` timer of a batch already run is ignored.
    generation: u64,
}

impl ScoringState {
    /// Runs the open batch on a blocking thread and answers its requests.
    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        self.generation += 1;
        self.batch_values = 0;
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (jobs, replies): (Vec<ScoreJob>, Vec<_>) = batch.into_iter().map(|p| (p.job, (p.reply, p.permit))).unzip();
        let (kernels, model) = (self.kernels.clone(), self.model.clone());
        let span = tracing::debug_span!("score_batch", requests = jobs.len());
        let answers =
            tokio::task::spawn_blocking(move || span.in_scope(|| run_batch(&kernels, model.as_deref(), &jobs))).await;
        match answers {
            Ok(answers) => {
                for ((reply, _permit), answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
                Ok(())
            }
            Err(e) => {
                // A panicking kernel fails the actor so the supervisor restarts it.
                for (reply, _permit) in replies {
                    let _ = reply.send(Err(ErrorReply::Internal("scoring batch failed".into())));
                }
                Err(format!("scoring batch panicked: {e}").into())
            }
        }
    }
}

impl Actor for ScoringActor {
    type Msg = ScoringMsg;
    type State = ScoringState;
    type Arguments = (Arc<Kernels>, Option<Arc<SageModel>>, Arc<ScoringStats>, ScoringLimits);

    async fn pre_start(
        &self,
        _myself: ActorRef<ScoringMsg>,
        (kernels, model, stats, limits): Self::Arguments,
    ) -> Result<ScoringState, ActorProcessingErr> {
        Ok(ScoringState {
            kernels,
            model,
            stats,
            limits,
            batch: Vec::new(),
            batch_values: 0,
            generation: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ScoringMsg>,
        msg: ScoringMsg,
        st: &mut ScoringState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ScoringMsg::Score(p) => {
                if st.batch.is_empty() {
                    let generation = st.generation;
                    let wait = Duration::from_micros(st.limits.score_batch_wait_us);
                    myself.send_after(wait, move || ScoringMsg::Flush(generation));
                }
                st.batch_values += p.job.values();
                st.batch.push(p);
                if st.batch.len() >= st.limits.score_batch_requests_max
                    || st.batch_values >= st.limits.score_batch_values_max
                {
                    st.flush().await?;
                }
            }
            ScoringMsg::Flush(generation) => {
                if generation == st.generation {
                    st.flush().await?;
                }
            }
        }
        Ok(())
    }
}

/// The node's scoring pool (see the module docs). Shared through the registry.
pub struct ScoringPool {
    info: BackendInfo,
    kernels: Arc<Kernels>,
    model: Option<Arc<SageModel>>,
    stats: Arc<ScoringStats>,
    limits: ScoringLimits,
    admission: Arc<Semaphore>,
    actors: RwLock<Vec<Option<ActorRef<ScoringMsg>>>>,
    next: AtomicUsize,
}

impl ScoringPool {
    /// A pool over `kernels`, described by `info`; its actors start with
    /// [`ScoringPool::spawn_actors`].
    pub fn new(kernels: Kernels, info: BackendInfo, limits: ScoringLimits) -> Self {
        let actors = limits.score_actors.max(1);
        Self {
            info,
            kernels: Arc::new(kernels),
            model: None,
            stats: Arc::default(),
            admission: Arc::new(Semaphore::new(limits.score_queue_requests_max.max(1))),
            limits,
            actors: RwLock::new(vec![None; actors]),
            next: AtomicUsize::new(0),
        }
    }

    /// A pool on the backend `Kernels::auto()` picks, logging which and why.
    /// Probing and opening a GPU can take a while: call it off the async workers.
    pub fn auto(limits: ScoringLimits) -> Self {
        let mut info = plexus_kernels::select_backend();
        let kernels = Kernels::auto();
        if kernels.backend() != info.backend {
            // `auto` fell back to the CPU because the chosen device failed to open.
            info.reason = format!(
                "{} could not open; fell back to {}",
                info.name,
                kernels.backend().name()
            );
            info.name = kernels.backend().name().to_string();
            info.backend = kernels.backend();
        }
        tracing::info!(backend = %info.name, reason = %info.reason, "scoring backend chosen");
        Self::new(kernels, info, limits)
    }

    /// The pool with a GraphSAGE model for `ScoreMode::Sage` (set before `spawn_actors`).
    pub fn with_model(mut self, model: SageModel) -> Self {
        self.model = Some(Arc::new(model));
        self
    }

    /// The GraphSAGE model `ScoreMode::Sage` runs, if the node was given one.
    pub fn model(&self) -> Option<&SageModel> {
        self.model.as_deref()
    }

    /// The backend's name, as `plexus status` shows it.
    pub fn backend_name(&self) -> &str {
        &self.info.name
    }

    /// The backend, its name and why it was chosen.
    pub fn backend_info(&self) -> &BackendInfo {
        &self.info
    }

    /// Batches and requests run so far.
    pub fn stats(&self) -> &ScoringStats {
        &self.stats
    }

    /// The pool's limits.
    pub fn limits(&self) -> &ScoringLimits {
        &self.limits
    }

    async fn spawn_one(&self, slot: usize, supervisor: ActorCell) -> Result<(), SpawnErr> {
        let args = (
            self.kernels.clone(),
            self.model.clone(),
            self.stats.clone(),
            self.limits.clone(),
        );
        let (actor, _) = Actor::spawn_linked(None, ScoringActor, args, supervisor).await?;
        if let Ok(mut actors) = self.actors.write() {
            if let Some(s) = actors.get_mut(slot) {
                *s = Some(actor);
            }
        }
        Ok(())
    }

    /// Starts every actor of the pool, linked to `supervisor`.
    pub async fn spawn_actors(&self, supervisor: ActorCell) -> Result<(), SpawnErr> {
        let slots = self.actors.read().map(|a| a.len()).unwrap_or(0);
        for slot in 0..slots {
            self.spawn_one(slot, supervisor.clone()).await?;
        }
        Ok(())
    }

    /// The slot of the pool actor with id `id`, if it is one of ours.
    pub fn slot_of(&self, id: ActorId) -> Option<usize> {
        let actors = self.actors.read().ok()?;
        actors.iter().position(|a| a.as_ref().is_some_and(|a| a.get_id() == id))
    }

    /// Replaces the actor in `slot` with a fresh one linked to `supervisor`.
    pub async fn restart(&self, slot: usize, supervisor: ActorCell) -> Result<(), SpawnErr> {
        if let Ok(mut actors) = self.actors.write() {
            if let Some(s) = actors.get_mut(slot) {
                *s = None;
            }
        }
        self.spawn_one(slot, supervisor).await
    }

    /// Admits one request, or `Busy` when `score_queue_requests_max` are
    /// admitted already. Callers admit before gathering features, so the
    /// limit also bounds the gathered features held in memory.
    pub fn admit(&self) -> Result<ScoreTicket, ErrorReply> {
        match self.admission.clone().try_acquire_owned() {
            Ok(permit) => Ok(ScoreTicket(permit)),
            Err(_) => Err(ErrorReply::Busy(format!(
                "scoring queue holds {} requests",
                self.limits.score_queue_requests_max
            ))),
        }
    }

    /// Scores one gathered, admitted request: the batch's answer, or
    /// `Timeout` after `timeout`.
    pub async fn score(&self, ticket: ScoreTicket, job: ScoreJob, timeout: Duration) -> ScoreResult {
        let permit = ticket.0;
        let actor = {
            let actors = self
                .actors
                .read()
                .map_err(|_| ErrorReply::Internal("scoring pool lock poisoned".into()))?;
            let n = actors.len().max(1);
            let first = self.next.fetch_add(1, Ordering::Relaxed);
            // A slot is empty only while its actor restarts: take the next live one.
            (0..n).find_map(|i| actors.get((first + i) % n).cloned().flatten())
        };
        let Some(actor) = actor else {
            return Err(ErrorReply::Busy("scoring actors are restarting".into()));
        };
        let (tx, rx) = oneshot::channel();
        let pending = Pending { job, reply: tx, permit };
        if actor.cast(ScoringMsg::Score(pending)).is_err() {
            return Err(ErrorReply::Busy("scoring actor is stopping".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ErrorReply::Internal("scoring actor failed before answering".into())),
            Err(_) => Err(ErrorReply::Timeout(format!("scoring not done in {timeout:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use plexus_kernels::{Backend, BackendInfo};
    use plexus_proto::ScoreMode;

    use super::*;

    /// A parent for the pool's linked actors; it ignores their events.
    struct Parent;

    impl Actor for Parent {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _me: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    fn pool(limits: ScoringLimits) -> ScoringPool {
        let info = BackendInfo {
            backend: Backend::Scalar,
            name: "scalar".into(),
            reason: "test".into(),
        };
        ScoringPool::new(Kernels::new(Backend::Scalar).unwrap(), info, limits)
    }

    /// Candidates 1..=n on the unit circle at angle i·0.1, query at angle 0.
    fn job(n: u64, k: usize) -> ScoreJob {
        ScoreJob {
            mode: ScoreMode::Cosine,
            dim: 2,
            query_rows: vec![1.0, 0.0],
            candidate_ids: (1..=n).collect(),
            candidates: (1..=n)
                .flat_map(|i| {
                    let a = i as f32 * 0.1;
                    [a.cos(), a.sin()]
                })
                .collect(),
            k,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_are_batched_and_all_answered() {
        let (parent, handle) = Actor::spawn(None, Parent, ()).await.unwrap();
        let limits = ScoringLimits {
            score_batch_requests_max: 8,
            score_actors: 2,
            ..ScoringLimits::default()
        };
        let pool = Arc::new(pool(limits));
        pool.spawn_actors(parent.get_cell()).await.unwrap();
        let tasks: Vec<_> = (1..=40u64)
            .map(|n| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let ticket = pool.admit()?;
                    pool.score(ticket, job(n, 2), Duration::from_secs(30)).await
                })
            })
            .collect();
        for (n, t) in (1..=40u64).zip(tasks) {
            let got = t.await.unwrap().unwrap();
            // The nearest angles to the query are the two lowest ids.
            let ids: Vec<u64> = got.iter().map(|p| p.0).collect();
            assert_eq!(ids, if n == 1 { vec![1] } else { vec![1, 2] }, "request {n}");
            assert!((got[0].1 - 0.1f32.cos()).abs() < 1e-6);
        }
        assert_eq!(pool.slot_of(parent.get_id()), None);
        // Every request was answered by a batch of at most 8.
        assert_eq!(pool.stats().requests.load(Ordering::Relaxed), 40);
        let batches = pool.stats().batches.load(Ordering::Relaxed);
        assert!((5..=40).contains(&batches), "{batches} batches");
        parent.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_answers_busy_at_once() {
        let (parent, handle) = Actor::spawn(None, Parent, ()).await.unwrap();
        let limits = ScoringLimits {
            score_queue_requests_max: 1,
            // Long enough that the first request is still waiting when the second arrives.
            score_batch_wait_us: 2_000_000,
            score_actors: 1,
            ..ScoringLimits::default()
        };
        let pool = Arc::new(pool(limits));
        pool.spawn_actors(parent.get_cell()).await.unwrap();
        let first = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let ticket = pool.admit()?;
                pool.score(ticket, job(3, 1), Duration::from_secs(60)).await
            })
        };
        // Let the first request take the only slot and sit in its batch's wait.
        while pool.admission.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            pool.admit(),
            Err(ErrorReply::Busy(m)) if m == "scoring queue holds 1 requests"
        ));
        // The batch runs once its wait is over, and frees the slot.
        let got = first.await.unwrap().unwrap();
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1]);
        assert_eq!(pool.admission.available_permits(), 1);
        parent.stop(None);
        handle.await.unwrap();
    }
}
