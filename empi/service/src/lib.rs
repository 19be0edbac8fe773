//! plexus identity matching on a node: the EMPI service, a `Workload` of `plexus-actors`.
//!
//! The replicated half is `plexus_core::state::empi` (records on their shards, the blocking index
//! on the blocking keys' shards, identities and their change events on the identities' shards,
//! the model on its own shard, all changes between shards through the EMPI outbox). This crate
//! serves `EmpiRequest`s: it reads that state across shards (`reads`), matches and places records
//! with `plexus-empi`'s pure pipeline (`link`: normalise, block, compare, Fellegi-Sunter with
//! term-frequency adjustment, the clustering guard), proposes the writes, and answers steward
//! actions, explanations, identity listings and change-event pages (`steward`, `scan`).
//!
//! The model: until a bulk ingest brings at least `TRAIN_RECORDS_MIN` records, matching uses
//! the untrained context (neutral m and u); the first such batch trains m, u and λ by EM, with
//! the IDF and term-frequency tables, and stores it on the model's shard (`EmpiSetModel`),
//! which every node then loads (`ContextCache`, checked every `MODEL_RECHECK`).
//!
//! It is not the state machine and not the client: applications call `plexus-client`'s EMPI
//! operations, people `plexus empi`.

mod guard;
mod link;
mod reads;
mod recent;
mod scan;
mod steward;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use plexus_actors::registry::Registry;
use plexus_actors::Workload;
use plexus_core::Command;
use plexus_empi::context::MatchContext;
use plexus_empi::linker::{Linker, LinkerConfig};
use plexus_proto::{
    model_shard_key, shard_for_key, EmpiRead, EmpiRequest, EmpiState, ErrorReply, Op, ReadOp, Reply, Request, Response,
    Session, EMPI_CLUSTERS_PAGE_MAX, EMPI_EVENTS_PAGE_MAX, EMPI_INGEST_RECORDS_MAX, EMPI_MATCH_K_MAX,
};
use plexus_raft::replica::Replica;
use tokio::time::Instant;

/// Records a bulk batch must hold to train the model when none is stored.
pub const TRAIN_RECORDS_MIN: usize = 1_000;
/// How often a node checks the model's shard for a newer model.
pub const MODEL_RECHECK: Duration = Duration::from_secs(5);

fn bad(msg: String) -> ErrorReply {
    ErrorReply::BadRequest(msg)
}

/// The match context in use on this node, and its version (0: untrained).
pub struct ContextCache {
    current: Mutex<Option<(u64, Arc<MatchContext>, Instant)>>,
}

impl ContextCache {
    fn new() -> Self {
        Self {
            current: Mutex::new(None),
        }
    }

    /// The context, re-read from the model's shard when the last check is older than
    /// `MODEL_RECHECK` (or `force`).
    async fn get(&self, registry: &Arc<Registry>, force: bool) -> Result<(u64, Arc<MatchContext>), ErrorReply> {
        let cached = self.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((v, ctx, at)) = &cached {
            if !force && at.elapsed() < MODEL_RECHECK {
                return Ok((*v, ctx.clone()));
            }
        }
        let shard = shard_for_key(&model_shard_key(), registry.shard_count);
        let stored = match registry
            .read_stale_anywhere(shard, ReadOp::Empi(EmpiRead::Model))
            .await?
        {
            Reply::EmpiState(EmpiState::Model(m)) => m,
            other => return Err(reads::unexpected("a model read", other)),
        };
        let (version, ctx) = match (stored, cached) {
            (Some((v, _)), Some((cv, ctx, _))) if v == cv => (v, ctx),
            (Some((v, bytes)), _) => {
                let ctx = MatchContext::from_json(&bytes)
                    .map_err(|e| ErrorReply::Internal(format!("stored model version {v}: {e}")))?;
                (v, Arc::new(ctx))
            }
            (None, Some((0, ctx, _))) => (0, ctx),
            (None, _) => {
                let ctx = MatchContext::untrained().map_err(|e| ErrorReply::Internal(e.to_string()))?;
                (0, Arc::new(ctx))
            }
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, ctx.clone(), Instant::now()));
        Ok((version, ctx))
    }
}

/// What the service has done, for the node's metrics.
#[derive(Default)]
pub struct Stats {
    /// Blocking keys looked up in the index.
    pub blocks_asked: AtomicU64,
    /// Of those, keys a shard's Bloom filter rejected before any lookup.
    pub blocks_rejected: AtomicU64,
    /// Records linked (stored with their identity).
    pub records_linked: AtomicU64,
    /// Identities created.
    pub identities_created: AtomicU64,
    /// Identities merged into others by automatic matching.
    pub identities_merged: AtomicU64,
}

impl Stats {
    /// Counts a written batch's placements.
    pub(crate) fn record_placed(&self, placed: &[link::Placement], written: &[link::Written]) {
        for ((master, created, merged), w) in placed.iter().zip(written) {
            if matches!(w, Ok(Some(_))) {
                self.records_linked.fetch_add(1, Ordering::Relaxed);
            }
            // The placement's creation and merges happened only where it applied as placed.
            if *w == Ok(Some(*master)) {
                self.identities_created
                    .fetch_add(u64::from(*created), Ordering::Relaxed);
                self.identities_merged.fetch_add(merged.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// The EMPI workload of a node.
pub struct EmpiService {
    inner: Arc<Inner>,
}

/// What requests share.
struct Inner {
    contexts: ContextCache,
    recent: Mutex<recent::Recent>,
    /// Bulk batches place their records one after another (see `link::ingest`).
    placing: tokio::sync::Mutex<()>,
    /// Held while a model is trained, so that two first batches do not both train one.
    training: tokio::sync::Mutex<()>,
    stats: Stats,
}

impl Default for EmpiService {
    fn default() -> Self {
        Self::new()
    }
}

impl EmpiService {
    /// A service; the model comes from the cluster.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                contexts: ContextCache::new(),
                recent: Mutex::default(),
                placing: tokio::sync::Mutex::new(()),
                training: tokio::sync::Mutex::new(()),
                stats: Stats::default(),
            }),
        }
    }

    /// What the service has done so far.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }
}

/// Trains a model on a bulk batch (off the async workers: training is seconds of CPU for a large
/// batch) and stores it as version 1 on the model's shard.
async fn train(registry: &Arc<Registry>, records: &[plexus_empi::schema::PersonRecord]) -> Result<(), ErrorReply> {
    let records = records.to_vec();
    let ctx = tokio::task::spawn_blocking(move || {
        let config = LinkerConfig {
            graph: None,
            ..LinkerConfig::default()
        };
        let mut linker = Linker::new(config).map_err(|e| e.to_string())?;
        linker.link_batch(records, &mut |_| {}).map_err(|e| e.to_string())?;
        Ok::<_, String>(MatchContext::from_linker(&linker))
    })
    .await
    .map_err(|e| ErrorReply::Internal(format!("model training: {e}")))?
    .map_err(|e| ErrorReply::Internal(format!("model training: {e}")))?;
    let shard = shard_for_key(&model_shard_key(), registry.shard_count);
    let cmd = Command::EmpiSetModel {
        version: 1,
        model: ctx.to_json(),
    };
    registry
        .propose_patiently(shard, cmd, registry.request_timeout)
        .await
        .map(|_| ())
}

/// Serves one request; `session` is the client's exactly-once session, which the writes of an
/// upsert and of a steward's link or unlink carry (`Command::InSession`).
async fn serve(inner: Arc<Inner>, registry: Arc<Registry>, req: EmpiRequest, session: Option<Session>) -> Response {
    let (contexts, stats) = (&inner.contexts, &inner.stats);
    match req {
        EmpiRequest::Upsert { record } => {
            let (_, ctx) = contexts.get(&registry, false).await?;
            link::upsert(&registry, &ctx, record, session, stats).await
        }
        EmpiRequest::Match { record, k } => {
            if k == 0 || k > EMPI_MATCH_K_MAX {
                return Err(bad(format!("k {k} is outside 1..={EMPI_MATCH_K_MAX}")));
            }
            let (_, ctx) = contexts.get(&registry, false).await?;
            link::match_record(&registry, &ctx, record, k, stats).await
        }
        EmpiRequest::Ingest { records } => {
            if records.is_empty() || records.len() > EMPI_INGEST_RECORDS_MAX {
                return Err(bad(format!(
                    "an ingest batch holds 1..={EMPI_INGEST_RECORDS_MAX} records, not {}",
                    records.len()
                )));
            }
            let (mut version, mut ctx) = contexts.get(&registry, false).await?;
            if version == 0 && records.len() >= TRAIN_RECORDS_MIN {
                let _training = inner.training.lock().await;
                (version, ctx) = contexts.get(&registry, true).await?;
                if version == 0 {
                    train(&registry, &records).await?;
                    (version, ctx) = contexts.get(&registry, true).await?;
                    tracing::info!(version, records = records.len(), "empi model trained and stored");
                }
            }
            link::ingest(&registry, &ctx, records, &inner.recent, &inner.placing, stats).await
        }
        EmpiRequest::Explain { a, b } => {
            let (_, ctx) = contexts.get(&registry, false).await?;
            steward::explain(&registry, &ctx, a, b).await
        }
        EmpiRequest::Link { a, b } => steward::link(&registry, a, b, true, session).await,
        EmpiRequest::Unlink { a, b } => steward::link(&registry, a, b, false, session).await,
        EmpiRequest::Get { key } => steward::get(&registry, key).await,
        EmpiRequest::Split { key } => steward::split(&registry, key).await,
        EmpiRequest::Clusters { after, limit } => {
            if limit == 0 || limit > EMPI_CLUSTERS_PAGE_MAX {
                return Err(bad(format!("limit {limit} is outside 1..={EMPI_CLUSTERS_PAGE_MAX}")));
            }
            scan::clusters(&registry, after, limit).await
        }
        EmpiRequest::Events { cursor, limit } => {
            if limit == 0 || limit > EMPI_EVENTS_PAGE_MAX {
                return Err(bad(format!("limit {limit} is outside 1..={EMPI_EVENTS_PAGE_MAX}")));
            }
            scan::events(&registry, &cursor, limit).await
        }
    }
}

impl Workload for EmpiService {
    fn name(&self) -> &'static str {
        "empi"
    }

    fn serves(&self, op: &Op) -> bool {
        matches!(op, Op::Empi(_))
    }

    fn counters(&self) -> Vec<plexus_actors::workload::Counter> {
        let s = &self.inner.stats;
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "plexus_empi_blocks_looked_up_total",
                "Blocking keys identity matching looked up in the blocking index.",
                v(&s.blocks_asked),
            ),
            (
                "plexus_empi_blocks_bloom_rejected_total",
                "Of those, keys a shard's Bloom filter rejected before any lookup.",
                v(&s.blocks_rejected),
            ),
            (
                "plexus_empi_records_linked_total",
                "Records linked to an identity and stored.",
                v(&s.records_linked),
            ),
            (
                "plexus_empi_identities_created_total",
                "Identities created by linking.",
                v(&s.identities_created),
            ),
            (
                "plexus_empi_identities_merged_total",
                "Identities merged into others by automatic matching.",
                v(&s.identities_merged),
            ),
        ]
    }

    fn execute(&self, registry: Arc<Registry>, replica: Replica, req: Request) -> BoxFuture<'static, Response> {
        let inner = self.inner.clone();
        let _ = replica;
        Box::pin(async move {
            let Op::Empi(empi) = req.op else {
                return Err(ErrorReply::Internal(
                    "the EMPI service got a request that is not its own".into(),
                ));
            };
            let span = tracing::debug_span!("empi");
            tracing::Instrument::instrument(serve(inner, registry, *empi, req.session), span).await
        })
    }
}
