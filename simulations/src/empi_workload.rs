//! The identity-matching (EMPI) scenario: clients that link person records into master
//! identities through the real client library and the nodes' real EMPI service, stewards that
//! link and unlink pairs of them, and a subscriber that follows the change-event stream.
//!
//! What it is: the run's records come from `plexus_empi::synth` (a seeded population with
//! duplicates, typos and households, so records really match and identities form and merge).
//! Each EMPI client owns some of them (it alone writes those keys, so a key's writes are
//! sequential and the last acknowledged one is exact) and does a bounded number of operations
//! picked by the seed's weights: upserts of new records; re-upserts of its records with changed
//! fields, either a small edit or another person's fields (a source correcting a record, which
//! moves it to another identity); small ingest batches of both; steward links and unlinks of
//! pairs of its acknowledged records (each record in at most one pair, so steward actions on
//! different pairs never contradict each other); and match calls. A subscriber pages the change
//! events with its cursor from the start of the run to the end, keeping the cursor across
//! failed calls as a durable subscriber would. Everything done and answered goes in the history.
//!
//! Batches stay far below the size that trains a model (`TRAIN_RECORDS_MIN`): the nodes match
//! with the untrained model, which links exact and near duplicates.
//!
//! What it is not: a checker (`checkers::empi` is); `final_empi` only reads the healed state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_client::{ClientError, Upserted};
use plexus_empi::synth::{self, Population, SynthConfig};
use plexus_proto::{
    record_shard_key, shard_for_key, EmpiEvent, EmpiIngested, EmpiRead, EmpiState, MasterId, PersonRecord, ReadOp,
    Reply,
};
use rand::rngs::StdRng;
use rand::Rng;

use crate::checkers::empi::EmpiFinal;
use crate::cluster::Cluster;
use crate::net::SimNet;
use crate::params::{salt, SimParams};
use crate::trace::Trace;
use crate::workload::failure;

/// Candidates one match call asks for.
pub const MATCH_K: u32 = 5;
/// Most records in one ingest batch of the scenario.
pub const INGEST_BATCH_MAX: usize = 4;
/// Shortest pause between two event pages of the subscriber, in milliseconds.
pub const POLL_MS_MIN: u64 = 100;
/// Items asked for in one final-state read (below the state machine's read caps).
const FINAL_READ_ITEMS: u32 = 5_000;

/// How EMPI clients behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmpiMix {
    /// EMPI clients (0: no EMPI scenario, and no subscriber).
    pub clients: u64,
    /// Records of the population each client owns.
    pub records_per_client: u64,
    /// Operations each client does before it stops (earlier if the run heals first).
    pub ops_per_client: u64,
    /// Relative weights of: upsert a new record, re-upsert one with changed fields, ingest a
    /// batch, a steward link or unlink, a match.
    pub weights: [u32; 5],
    /// Of re-upserts, the percentage that give the record another person's fields.
    pub repoint_pct: u32,
    /// Events the subscriber asks for per page.
    pub events_page: u32,
    /// Longest pause between one client's operations, in milliseconds.
    pub think_ms_max: u64,
    /// Longest pause between two of the subscriber's pages, in milliseconds.
    pub poll_ms_max: u64,
}

/// The run's records: `clients * records_per_client` of them, client `c` (1-based) owning those
/// at indexes `i` with `i % clients == c - 1`.
pub fn population(params: &SimParams) -> Arc<Population> {
    let n = (params.empi.clients * params.empi.records_per_client) as usize;
    if n == 0 {
        return Arc::new(Population::default());
    }
    Arc::new(synth::generate(&SynthConfig::new(n, params.seed ^ salt::EMPI_DATA)))
}

/// One EMPI operation as a client issued it.
#[derive(Clone, Debug, PartialEq)]
pub enum EmpiAction {
    /// Link one record (new, or an update of its key).
    Upsert(PersonRecord),
    /// Link a batch of records.
    Ingest(Vec<PersonRecord>),
    /// A steward's link (`link`) or unlink of two records.
    Steward {
        /// One record.
        a: String,
        /// The other (the one an unlink moves).
        b: String,
        /// Link or unlink.
        link: bool,
    },
    /// Candidates for a record (not stored).
    Match(PersonRecord),
    /// One page of change events after `cursor`.
    Events {
        /// The cursor sent.
        cursor: String,
    },
}

/// What an EMPI operation came to.
#[derive(Clone, Debug, PartialEq)]
pub enum EmpiOutcome {
    /// An upsert's answer.
    Upserted(Upserted),
    /// A batch's outcomes, in input order.
    Ingested(Vec<EmpiIngested>),
    /// A steward action was applied.
    Done,
    /// A match's candidates: key, identity, linked.
    Matches(Vec<(String, MasterId, bool)>),
    /// A page of events and the cursor after it.
    Events(Vec<EmpiEvent>, String),
}

/// One completed EMPI operation (the subscriber is client `clients + 1`).
pub type EmpiOp = crate::workload::Completed<EmpiAction, EmpiOutcome>;

/// The EMPI history of a run.
pub type EmpiHistory = Arc<Mutex<Vec<EmpiOp>>>;

/// What one client knows of its records.
struct Own {
    /// Its records not sent yet, in population order.
    unsent: Vec<(PersonRecord, u32)>,
    /// Per key it sent: the fields last sent, and whose they are (the population's person).
    sent: BTreeMap<String, (PersonRecord, u32)>,
    /// Keys with at least one acknowledged write (they exist), with the identity the last
    /// acknowledgement named.
    acked: BTreeMap<String, MasterId>,
    /// Steward pairs, each record in at most one.
    pairs: Vec<(String, String)>,
    paired: BTreeSet<String>,
}

impl Own {
    fn new(pop: &Population, client: u64, clients: u64) -> Self {
        let unsent = (0..pop.records.len())
            .filter(|i| (*i as u64) % clients == client - 1)
            .map(|i| (pop.records[i].clone(), pop.truth[i]))
            .rev()
            .collect();
        Own {
            unsent,
            sent: BTreeMap::new(),
            acked: BTreeMap::new(),
            pairs: Vec::new(),
            paired: BTreeSet::new(),
        }
    }

    /// A new record, if one is left.
    fn fresh(&mut self) -> Option<PersonRecord> {
        let (r, person) = self.unsent.pop()?;
        self.sent.insert(r.key_string(), (r.clone(), person));
        Some(r)
    }

    /// A sent record with changed fields (not in `skip`): a small edit, or, `repoint_pct` percent
    /// of the time, the fields of a record of another person.
    fn changed(
        &mut self,
        rng: &mut StdRng,
        pop: &Population,
        repoint_pct: u32,
        skip: &BTreeSet<String>,
    ) -> Option<PersonRecord> {
        let keys: Vec<&String> = self.sent.keys().filter(|k| !skip.contains(*k)).collect();
        if keys.is_empty() {
            return None;
        }
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let (current, person) = self.sent.get(&key)?.clone();
        let (mut next, next_person) = if rng.gen_range(0..100) < repoint_pct {
            // Prefer a record last seen in another identity than this one's: taking its fields
            // should move this record there.
            let mine = self.acked.get(&key);
            let donors: Vec<&(PersonRecord, u32)> = self
                .sent
                .iter()
                .filter(|(k, (_, p))| *p != person && self.acked.get(*k).is_some_and(|m| Some(m) != mine))
                .map(|(_, d)| d)
                .collect();
            if donors.is_empty() {
                let i = rng.gen_range(0..pop.records.len());
                (pop.records[i].clone(), pop.truth[i])
            } else {
                donors[rng.gen_range(0..donors.len())].clone()
            }
        } else {
            let mut r = current.clone();
            match rng.gen_range(0..4) {
                0 => r.given_name = r.given_name.map(|g| synth::typo(rng, &g)),
                1 => r.family_name = r.family_name.map(|f| synth::typo(rng, &f)),
                2 => r.phone = Some(format!("555{:07}", rng.gen_range(0..10_000_000))),
                _ => r.address_line2 = Some(format!("APT {}", rng.gen_range(1..100))),
            }
            (r, person)
        };
        next.source = current.source;
        next.source_id = current.source_id;
        self.sent.insert(key, (next.clone(), next_person));
        Some(next)
    }

    /// A steward pair: an existing one, or a new one of two acknowledged unpaired records
    /// (of one person when there are such, since those share an identity an unlink must split).
    fn pair(&mut self, rng: &mut StdRng) -> Option<(String, String)> {
        let free: Vec<&String> = self.acked.keys().filter(|k| !self.paired.contains(*k)).collect();
        let reuse = !self.pairs.is_empty() && (free.len() < 2 || rng.gen_bool(0.5));
        if reuse {
            return Some(self.pairs[rng.gen_range(0..self.pairs.len())].clone());
        }
        if free.len() < 2 {
            return None;
        }
        let person = |k: &String| self.sent.get(k).map(|(_, p)| *p);
        let mut same: Vec<(String, String)> = Vec::new();
        for (i, a) in free.iter().enumerate() {
            for b in &free[i + 1..] {
                if person(a) == person(b) {
                    same.push(((*a).clone(), (*b).clone()));
                }
            }
        }
        let (a, b) = if same.is_empty() {
            let i = rng.gen_range(0..free.len());
            let j = (i + rng.gen_range(1..free.len())) % free.len();
            (free[i].clone(), free[j].clone())
        } else {
            same[rng.gen_range(0..same.len())].clone()
        };
        self.paired.insert(a.clone());
        self.paired.insert(b.clone());
        self.pairs.push((a.clone(), b.clone()));
        Some((a, b))
    }
}

/// A match for a record of the population, with a typo in its family name.
fn match_one(rng: &mut StdRng, pop: &Population) -> EmpiAction {
    let i = rng.gen_range(0..pop.records.len());
    let mut r = pop.records[i].clone();
    r.family_name = r.family_name.map(|f| synth::typo(rng, &f));
    EmpiAction::Match(r)
}

/// The action of weight class `kind`; when that one has nothing to act on yet, a new record,
/// else a changed one, else a match.
fn pick(kind: usize, own: &mut Own, rng: &mut StdRng, pop: &Population, mix: &EmpiMix) -> EmpiAction {
    let none = BTreeSet::new();
    let chosen = match kind {
        0 => own.fresh().map(EmpiAction::Upsert),
        1 => own.changed(rng, pop, mix.repoint_pct, &none).map(EmpiAction::Upsert),
        2 => {
            let mut batch: Vec<PersonRecord> = Vec::new();
            let mut keys: BTreeSet<String> = BTreeSet::new();
            for _ in 0..rng.gen_range(2..=INGEST_BATCH_MAX) {
                let r = if rng.gen_bool(0.5) {
                    own.fresh()
                } else {
                    own.changed(rng, pop, mix.repoint_pct, &keys)
                };
                if let Some(r) = r {
                    keys.insert(r.key_string());
                    batch.push(r);
                }
            }
            (!batch.is_empty()).then_some(EmpiAction::Ingest(batch))
        }
        3 => own.pair(rng).map(|(a, b)| EmpiAction::Steward {
            a,
            b,
            link: rng.gen_bool(0.5),
        }),
        _ => return match_one(rng, pop),
    };
    chosen
        .or_else(|| own.fresh().map(EmpiAction::Upsert))
        .or_else(|| own.changed(rng, pop, mix.repoint_pct, &none).map(EmpiAction::Upsert))
        .unwrap_or_else(|| match_one(rng, pop))
}

/// A short, stable rendering of an action for the trace.
fn shown(action: &EmpiAction) -> String {
    match action {
        EmpiAction::Upsert(r) => format!("upsert {}", r.key_string()),
        EmpiAction::Ingest(rs) => {
            let keys: Vec<String> = rs.iter().map(PersonRecord::key_string).collect();
            format!("ingest {keys:?}")
        }
        EmpiAction::Steward { a, b, link } => format!("{} {a} {b}", if *link { "link" } else { "unlink" }),
        EmpiAction::Match(r) => format!("match {}", r.key_string()),
        EmpiAction::Events { cursor } => format!("events after {cursor:?}"),
    }
}

/// Runs EMPI client `client` for `mix.ops_per_client` operations or until `stop` is set.
#[allow(clippy::too_many_arguments)]
pub async fn run_empi_client(
    client: u64,
    net: Arc<SimNet>,
    nodes: BTreeMap<String, u64>,
    mut rng: StdRng,
    mix: EmpiMix,
    pop: Arc<Population>,
    history: EmpiHistory,
    stop: Arc<AtomicBool>,
    trace: Trace,
) {
    let Some(cl) = crate::workload::connect(client, &net, &nodes, rng.gen::<u64>(), &stop, &trace).await else {
        return;
    };
    let mut own = Own::new(&pop, client, mix.clients);
    let total: u32 = mix.weights.iter().sum::<u32>().max(1);
    for _ in 0..mix.ops_per_client {
        if stop.load(Ordering::Acquire) || pop.records.is_empty() {
            break;
        }
        let mut draw = rng.gen_range(0..total);
        let mut kind = 0;
        while kind < mix.weights.len() - 1 && draw >= mix.weights[kind] {
            draw -= mix.weights[kind];
            kind += 1;
        }
        let action = pick(kind, &mut own, &mut rng, &pop, &mix);
        let invoked_us = trace.now_us();
        let result: Result<EmpiOutcome, ClientError> = match action.clone() {
            EmpiAction::Upsert(r) => cl.empi_upsert(r).await.map(EmpiOutcome::Upserted),
            EmpiAction::Ingest(rs) => cl.empi_ingest(rs).await.map(EmpiOutcome::Ingested),
            EmpiAction::Steward { a, b, link } => cl.empi_steward(&a, &b, link).await.map(|()| EmpiOutcome::Done),
            EmpiAction::Match(r) => cl
                .empi_match(r, MATCH_K)
                .await
                .map(|m| EmpiOutcome::Matches(m.into_iter().map(|c| (c.key, c.master, c.linked)).collect())),
            EmpiAction::Events { .. } => Err(ClientError::Timeout),
        };
        match (&action, &result) {
            (EmpiAction::Upsert(_), Ok(EmpiOutcome::Upserted(u))) => {
                own.acked.insert(u.key.clone(), u.master);
            }
            (EmpiAction::Ingest(_), Ok(EmpiOutcome::Ingested(outcomes))) => {
                for o in outcomes {
                    if let EmpiIngested::Linked { key, master } = o {
                        own.acked.insert(key.clone(), *master);
                    }
                }
            }
            _ => {}
        }
        let result = result.map_err(failure);
        let answer = match &result {
            Ok(EmpiOutcome::Upserted(u)) => format!("master={} created={} merged={:?}", u.master, u.created, u.merged),
            Ok(EmpiOutcome::Ingested(o)) => format!("{o:?}"),
            Ok(EmpiOutcome::Matches(m)) => format!("{m:?}"),
            other => format!("{other:?}"),
        };
        trace.event(format_args!("empi client {client} {} -> {answer}", shown(&action)));
        history.lock().unwrap_or_else(|p| p.into_inner()).push(EmpiOp {
            client,
            action,
            invoked_us,
            completed_us: trace.now_us(),
            result,
        });
        let think = rng.gen_range(1..=mix.think_ms_max.max(1));
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    cl.close().await;
}

/// Runs the change-event subscriber (client `client`) until `stop` is set: a page after its
/// cursor every while (at once again after a full page), the cursor kept across failed calls.
#[allow(clippy::too_many_arguments)]
pub async fn run_empi_subscriber(
    client: u64,
    net: Arc<SimNet>,
    nodes: BTreeMap<String, u64>,
    mut rng: StdRng,
    mix: EmpiMix,
    history: EmpiHistory,
    stop: Arc<AtomicBool>,
    trace: Trace,
) {
    let Some(cl) = crate::workload::connect(client, &net, &nodes, rng.gen::<u64>(), &stop, &trace).await else {
        return;
    };
    let mut cursor = String::new();
    let mut full = false;
    while !stop.load(Ordering::Acquire) {
        if !full {
            let pause = rng.gen_range(POLL_MS_MIN..=mix.poll_ms_max.max(POLL_MS_MIN));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let invoked_us = trace.now_us();
        let result = cl.empi_events(&cursor, mix.events_page).await.map_err(failure);
        let action = EmpiAction::Events { cursor: cursor.clone() };
        let answer = match &result {
            Ok((events, next)) => {
                full = events.len() >= mix.events_page as usize;
                let seqs: Vec<(u32, u64)> = events.iter().map(|e| (e.shard, e.seq)).collect();
                let shown = format!("events {seqs:?} cursor {next:?}");
                cursor = next.clone();
                shown
            }
            Err(e) => {
                full = false;
                format!("err {e}")
            }
        };
        trace.event(format_args!("empi subscriber {} -> {answer}", shown(&action)));
        history.lock().unwrap_or_else(|p| p.into_inner()).push(EmpiOp {
            client,
            action,
            invoked_us,
            completed_us: trace.now_us(),
            result: result.map(|(events, next)| EmpiOutcome::Events(events, next)),
        });
    }
    cl.close().await;
}

/// What the healed cluster holds for identity matching, read from one running replica of each
/// shard with no await in between (a consistent cut, when the cluster has converged): every
/// identity and event log of every shard, and every record of the population, the history or an
/// identity's members.
pub fn final_empi(cluster: &Cluster, params: &SimParams, pop: &Population, history: &[EmpiOp]) -> EmpiFinal {
    let shards = params.shard_count;
    let mut end = EmpiFinal {
        shard_count: shards,
        ..EmpiFinal::default()
    };
    let read = |shard: u32, op: EmpiRead| match cluster.read_applied(shard, &ReadOp::Empi(op)) {
        Some(Reply::EmpiState(s)) => Ok(s),
        other => Err(format!("shard {shard}: {other:?}")),
    };
    for shard in 0..shards {
        let mut after = None;
        loop {
            let op = EmpiRead::MasterPage {
                shard,
                after,
                limit: FINAL_READ_ITEMS,
            };
            match read(shard, op) {
                Ok(EmpiState::MasterPage(page)) if !page.is_empty() => {
                    after = page.last().map(|m| m.id);
                    end.masters.extend(page.into_iter().map(|m| (m.id, m)));
                }
                Ok(_) => break,
                Err(e) => {
                    end.unread.push(format!("identities of {e}"));
                    break;
                }
            }
        }
        let mut from_seq = 1;
        let mut log: (u64, Vec<EmpiEvent>) = (1, Vec::new());
        loop {
            let op = EmpiRead::Events {
                shard,
                from_seq,
                limit: FINAL_READ_ITEMS,
            };
            match read(shard, op) {
                Ok(EmpiState::Events(page)) => {
                    if log.1.is_empty() {
                        log.0 = page.first_retained;
                    }
                    let Some(last) = page.events.last().map(|e| e.seq) else {
                        break;
                    };
                    from_seq = last + 1;
                    log.1.extend(page.events);
                    if from_seq >= page.next_seq {
                        break;
                    }
                }
                Ok(other) => {
                    end.unread.push(format!("events of shard {shard}: {other:?}"));
                    break;
                }
                Err(e) => {
                    end.unread.push(format!("events of {e}"));
                    break;
                }
            }
        }
        end.events.insert(shard, log);
    }
    let mut keys: BTreeSet<String> = pop.records.iter().map(PersonRecord::key_string).collect();
    for op in history {
        match &op.action {
            EmpiAction::Upsert(r) => {
                keys.insert(r.key_string());
            }
            EmpiAction::Ingest(rs) => keys.extend(rs.iter().map(PersonRecord::key_string)),
            EmpiAction::Steward { a, b, .. } => keys.extend([a.clone(), b.clone()]),
            EmpiAction::Match(_) | EmpiAction::Events { .. } => {}
        }
    }
    keys.extend(end.masters.values().flat_map(|m| m.members.iter().cloned()));
    let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for k in keys {
        by_shard
            .entry(shard_for_key(&record_shard_key(&k), shards))
            .or_default()
            .push(k);
    }
    for (shard, keys) in by_shard {
        for chunk in keys.chunks(FINAL_READ_ITEMS as usize) {
            match read(shard, EmpiRead::Records { keys: chunk.to_vec() }) {
                Ok(EmpiState::Records(found)) if found.len() == chunk.len() => {
                    for (k, r) in chunk.iter().zip(found) {
                        match r {
                            Some(r) => {
                                end.records.insert(k.clone(), r);
                            }
                            None => {
                                end.absent.insert(k.clone());
                            }
                        }
                    }
                }
                other => end.unread.push(format!("records of shard {shard}: {other:?}")),
            }
        }
    }
    end.pending = pending_outbox(cluster, shards);
    end
}

/// EMPI outbox messages not yet delivered, over every running replica.
fn pending_outbox(cluster: &Cluster, shards: u32) -> usize {
    let mut pending = 0;
    for id in cluster.ids() {
        let Some(core) = cluster.core(id) else { continue };
        for g in 0..shards {
            if let Some(replica) = core.registry.get(g) {
                if let Ok(state) = replica.state().read() {
                    pending += state.empi_outbox_len();
                }
            }
        }
    }
    pending
}
