//! Linking records: one at a time (`Upsert`, `Match`) and in batches (`Ingest`).
//!
//! A record is normalised and blocked with the cluster's match context; the index shards name
//! the held records sharing a blocking key with it; those records and their identities are read;
//! each is scored; and `MatchContext::decide` says which identity the record joins and which
//! identities it bridges (merged into the oldest). The record is then written on its shard
//! (`EmpiPut`, whose apply sends the index and membership changes through the EMPI outbox) and
//! each merge proposed on the merged identity's shard (`EmpiMerge`).
//!
//! A batch does the same for every record in order, with the batch's own earlier records as
//! candidates too (an overlay of their blocks and identities), and with every read done up front
//! and every write grouped by shard. Between records it yields to the runtime, so a large batch
//! does not stall the node's other work. Two concurrent upserts of one person on different nodes
//! may each create an identity (neither sees the other yet); the change events show both.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use plexus_actors::registry::Registry;
use plexus_core::{Command, EmpiPut};
use plexus_empi::context::{Candidate, MatchContext};
use plexus_empi::normalize::NormalizedRecord;
use plexus_empi::schema::{PersonRecord, RecordExt};
use plexus_proto::{
    master_shard_key, record_shard_key, shard_for_key, EmpiIngested, EmpiMatch, EmpiRecord, EmpiReply, ErrorReply,
    MasterId, Reply, Response, Session,
};

use crate::reads::{self, Fresh};
use crate::recent::{Known, Offered, Recent};
use crate::Stats;

/// Candidates one record is scored against, at most (the first by key).
pub const CANDIDATES_MAX: usize = 2_048;
/// Records of a batch between two yields to the runtime.
pub const RECORDS_PER_YIELD: usize = 32;
/// Puts in one `EmpiPut` entry, at most.
pub const PUTS_PER_ENTRY_MAX: usize = 1_000;
/// Entries one batch's write has in flight at once.
pub const WRITES_IN_FLIGHT_MAX: usize = 16;
/// Hops followed along `merged_into` to an identity's survivor.
const MERGE_HOPS_MAX: usize = 8;
/// A record's placement: its identity, whether that was created, the identities merged into it.
pub(crate) type Placement = (MasterId, bool, Vec<MasterId>);
/// A record's write: `Ok(Some(identity))` applied, and the identity the record holds (the
/// placement's, unless a steward's link kept the record where it was, or the session table
/// answered with an earlier copy of the request's write); `Ok(None)` superseded: another put
/// wrote the record after this one read it (a concurrent request, or a repeat of this very put
/// that applied first), so this write takes effect just before that one and is overwritten at
/// once, which is what the caller is told (a late copy of a request its client gave up on,
/// still running, can never overwrite a newer write); or why it failed.
pub(crate) type Written = Result<Option<MasterId>, ErrorReply>;

fn bad(msg: String) -> ErrorReply {
    ErrorReply::BadRequest(msg)
}

/// A validated record with its key, normal form and blocking keys.
pub(crate) struct Prepared {
    pub(crate) record: PersonRecord,
    pub(crate) key: String,
    pub(crate) norm: Arc<NormalizedRecord>,
    pub(crate) blocks: Vec<String>,
}

/// Checks and normalises a record; the reason it is refused otherwise.
pub(crate) fn prepare(ctx: &MatchContext, record: PersonRecord) -> Result<Prepared, String> {
    let key = record.key().map_err(|e| format!("record key: {e}"))?.to_string();
    record
        .validate()
        .map_err(|issues| issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    let norm = Arc::new(ctx.normalize(&record));
    let blocks = ctx.blocks(&norm);
    Ok(Prepared {
        record,
        key,
        norm,
        blocks,
    })
}

/// A new identity's id (see `plexus_core::state::new_master_id`: ids order identities by age).
pub(crate) use plexus_core::state::new_master_id as new_master;

/// What the cluster holds around a set of records: the candidates their blocking keys reach,
/// normalised, and the identities those belong to (merged ones resolved to their survivors).
///
/// Records are numbered in key order once per read, and blocks name their members by number,
/// so finding a record's candidates compares integers, not keys (string comparisons of keys
/// were a sixth of a bulk ingest's time).
pub(crate) struct Held {
    /// Every record named, in key order; `None` where no shard holds it (any more).
    records: Vec<(String, Option<Known>)>,
    /// Key → its number in `records` (looked up, never iterated).
    numbers: HashMap<String, u32>,
    /// Blocking key → its members' numbers, ascending (looked up, never iterated).
    block_members: HashMap<String, Vec<u32>>,
    /// Identity → (survivor, its age: the survivor's id, smaller is older).
    pub(crate) masters: BTreeMap<MasterId, (MasterId, u64)>,
    /// Identity → its members as read (for the steward-unlink guard, `guard.rs`).
    members: HashMap<MasterId, Vec<String>>,
    /// Identity → the identities read or placed that merged into it (looked up, never iterated).
    absorbed: HashMap<MasterId, Vec<MasterId>>,
    /// Members of those identities that no block named, read for their steward constraints.
    strangers: HashMap<String, Arc<EmpiRecord>>,
    /// The stored version (`updated_millis`) of each record named in `also`, as its shard holds it.
    versions: HashMap<String, u64>,
}

/// The records named (absent ones left out), as fresh as asked, shared; no read for none.
async fn shared_records(
    registry: &Arc<Registry>,
    keys: &[String],
    fresh: Fresh,
) -> Result<HashMap<String, Arc<EmpiRecord>>, ErrorReply> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let found = reads::records_as(registry, keys, fresh).await?;
    Ok(found.into_iter().map(|(k, r)| (k, Arc::new(r))).collect())
}

impl Held {
    /// Reads what is held around `prepared` (and the records named in `also`, e.g. themselves).
    pub(crate) async fn read(
        registry: &Arc<Registry>,
        ctx: &MatchContext,
        prepared: &[&Prepared],
        also: &[String],
        offered: Offered,
        stats: &Stats,
        fresh: Fresh,
    ) -> Result<Held, ErrorReply> {
        let blocks: BTreeSet<String> = prepared.iter().flat_map(|p| p.blocks.iter().cloned()).collect();
        let blocks: Vec<String> = blocks.into_iter().collect();
        let (mut block_keys, rejected_blocks) = reads::blocks(registry, &blocks).await?;
        stats.blocks_asked.fetch_add(blocks.len() as u64, Ordering::Relaxed);
        stats
            .blocks_rejected
            .fetch_add(u64::from(rejected_blocks), Ordering::Relaxed);
        for (b, keys) in offered.blocks {
            block_keys.entry(b).or_default().extend(keys);
        }
        // Every record any block names (each block is capped by the index), and `also`.
        let mut keys: BTreeSet<&str> = also.iter().map(String::as_str).collect();
        for members in block_keys.values() {
            keys.extend(members.iter().map(String::as_str));
        }
        let keys: Vec<String> = keys.into_iter().map(str::to_string).collect();
        let numbers: HashMap<String, u32> = keys.iter().enumerate().map(|(i, k)| (k.clone(), i as u32)).collect();
        let block_members = block_keys
            .into_iter()
            .map(|(b, members)| {
                let mut n: Vec<u32> = members.iter().filter_map(|k| numbers.get(k).copied()).collect();
                n.sort_unstable();
                n.dedup();
                (b, n)
            })
            .collect();
        let mut found = reads::records_as(registry, &keys, fresh).await?;
        let versions: HashMap<String, u64> = also
            .iter()
            .filter_map(|k| found.get(k).map(|r| (k.clone(), r.updated_millis)))
            .collect();
        let mut offered = offered.records;
        // The shard's copy wins: it may carry a newer identity or steward constraints. Its
        // normal form is the offered one's when the fields are the same (normalising is most
        // of a candidate's cost).
        let records: Vec<(String, Option<Known>)> = keys
            .into_iter()
            .map(|k| {
                let known = match (found.remove(&k), offered.remove(&k)) {
                    (Some(r), Some((o, n))) if o.record == r.record => Some((Arc::new(r), n)),
                    (Some(r), _) => {
                        let n = Arc::new(ctx.normalize(&r.record));
                        Some((Arc::new(r), n))
                    }
                    (None, o) => o,
                };
                (k, known)
            })
            .collect();
        // The records the candidates are unlinked from, read for where they are now: an
        // identity's member list learns of a join through the outbox, so the guard cannot rely
        // on it to show that a candidate's identity and another hold an unlinked pair.
        let partners: BTreeSet<&String> = records
            .iter()
            .filter_map(|(_, r)| r.as_ref())
            .flat_map(|(r, _)| r.unlinks.iter())
            .filter(|u| !numbers.contains_key(*u))
            .collect();
        let partners: Vec<String> = partners.into_iter().cloned().collect();
        let partners = shared_records(registry, &partners, fresh).await?;
        let mut ids: BTreeSet<MasterId> = records
            .iter()
            .filter_map(|(_, r)| r.as_ref().map(|(r, _)| r.master))
            .chain(partners.values().map(|r| r.master))
            .collect();
        let mut masters: BTreeMap<MasterId, (MasterId, u64)> = BTreeMap::new();
        let mut members: HashMap<MasterId, Vec<String>> = HashMap::new();
        let mut resolved: BTreeMap<MasterId, Option<MasterId>> = BTreeMap::new();
        for _ in 0..MERGE_HOPS_MAX {
            let ask: Vec<MasterId> = ids.iter().copied().filter(|m| !resolved.contains_key(m)).collect();
            if ask.is_empty() {
                break;
            }
            let mut got = reads::masters_as(registry, &ask, fresh).await?;
            ids.clear();
            for m in ask {
                match got.remove(&m) {
                    Some(master) => {
                        resolved.insert(m, master.merged_into);
                        ids.extend(master.merged_into);
                        members.insert(m, master.members);
                    }
                    // Not created yet (its join is in flight).
                    None => {
                        resolved.insert(m, None);
                    }
                }
            }
        }
        for &m in resolved.keys() {
            let mut at = m;
            for _ in 0..MERGE_HOPS_MAX {
                match resolved.get(&at) {
                    Some(Some(next)) if *next != at => at = *next,
                    _ => break,
                }
            }
            masters.insert(m, (at, at));
        }
        let mut absorbed: HashMap<MasterId, Vec<MasterId>> = HashMap::new();
        for (&id, &(survivor, _)) in &masters {
            if id != survivor {
                absorbed.entry(survivor).or_default().push(id);
            }
        }
        // A record's own `master` is fresher than its identity's member list, which learns of a
        // join through the outbox: a record a steward's unlink just moved to an identity of its
        // own must count as a member there, or the guard would merge that identity back into
        // the one it was unlinked from (the simulator caught it). A list may then also name a
        // record whose leave is in flight: that only keeps more apart.
        let fresh_masters = records
            .iter()
            .filter_map(|(k, known)| known.as_ref().map(|(r, _)| (k, r.master)))
            .chain(partners.iter().map(|(k, r)| (k, r.master)));
        for (k, master) in fresh_masters {
            let list = members.entry(master).or_default();
            if !list.contains(k) {
                list.push(k.clone());
            }
        }
        // Members no block named: only their steward constraints are needed, not a normal form.
        let strangers: BTreeSet<&String> = members
            .values()
            .flatten()
            .filter(|k| !numbers.contains_key(*k))
            .collect();
        let strangers: Vec<String> = strangers.into_iter().cloned().collect();
        let mut strangers = shared_records(registry, &strangers, fresh).await?;
        for (k, r) in partners {
            strangers.entry(k).or_insert(r);
        }
        Ok(Held {
            records,
            numbers,
            block_members,
            masters,
            members,
            absorbed,
            strangers,
            versions,
        })
    }

    /// The version of `key` its shard held when read (for `EmpiPut::base`); `None`: no record.
    pub(crate) fn base(&self, key: &str) -> Option<u64> {
        self.versions.get(key).copied()
    }

    /// The members of `m` as read, and of the identities read or placed that merged into it.
    pub(crate) fn members_of(&self, m: MasterId) -> impl Iterator<Item = &String> + '_ {
        std::iter::once(m)
            .chain(self.absorbed.get(&m).into_iter().flatten().copied())
            .filter_map(|id| self.members.get(&id))
            .flatten()
    }

    /// A held state of identities and their members' records only (no blocks, no candidates).
    #[cfg(test)]
    pub(crate) fn of_identities(identities: &[(MasterId, &[EmpiRecord])]) -> Held {
        let mut members = HashMap::new();
        let mut strangers = HashMap::new();
        let mut masters = BTreeMap::new();
        for (m, records) in identities {
            masters.insert(*m, (*m, *m));
            members.insert(*m, records.iter().map(|r| r.record.key_string()).collect());
            for r in *records {
                strangers.insert(r.record.key_string(), Arc::new(r.clone()));
            }
        }
        Held {
            records: Vec::new(),
            numbers: HashMap::new(),
            block_members: HashMap::new(),
            masters,
            members,
            absorbed: HashMap::new(),
            strangers,
            versions: HashMap::new(),
        }
    }

    /// Notes that a record of the batch was placed in `m`.
    pub(crate) fn note_member(&mut self, m: MasterId, key: &str) {
        let members = self.members.entry(m).or_default();
        if !members.iter().any(|k| k == key) {
            members.push(key.to_string());
        }
    }

    /// Notes that placing a record merged `merged` into `into`.
    pub(crate) fn absorb(&mut self, into: MasterId, merged: MasterId) {
        let mut moved = self.absorbed.remove(&merged).unwrap_or_default();
        moved.push(merged);
        self.absorbed.entry(into).or_default().extend(moved);
    }

    /// A record's steward unlinks as held (a candidate's or another member's); none if unknown.
    pub(crate) fn unlinks_of(&self, key: &str) -> &[String] {
        match self.record(key).or_else(|| self.strangers.get(key)) {
            Some(r) => &r.unlinks,
            None => &[],
        }
    }

    /// The identity `m` stands for now, and its age (its id: see `new_master`).
    pub(crate) fn survivor(&self, m: MasterId) -> (MasterId, u64) {
        self.masters.get(&m).copied().unwrap_or((m, m))
    }

    /// A record as held, if any shard holds it.
    pub(crate) fn record(&self, key: &str) -> Option<&Arc<EmpiRecord>> {
        let n = *self.numbers.get(key)?;
        self.records[n as usize].1.as_ref().map(|(r, _)| r)
    }

    /// The held candidates of `p` (itself left out; the first `CANDIDATES_MAX` by key), scored.
    pub(crate) fn candidates(&self, ctx: &MatchContext, p: &Prepared, own_unlinks: &[String]) -> Vec<Candidate> {
        let mut numbers: Vec<u32> = p
            .blocks
            .iter()
            .filter_map(|b| self.block_members.get(b))
            .flatten()
            .copied()
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        let own = self.numbers.get(&p.key).copied();
        let held: Vec<(&String, &EmpiRecord, &Arc<NormalizedRecord>)> = numbers
            .into_iter()
            .filter(|n| Some(*n) != own)
            .take(CANDIDATES_MAX)
            .filter_map(|n| {
                let (k, known) = &self.records[n as usize];
                known.as_ref().map(|(r, norm)| (k, &**r, norm))
            })
            .collect();
        let norms: Vec<&NormalizedRecord> = held.iter().map(|(_, _, n)| &***n).collect();
        let weights = ctx.weights(&p.norm, &norms);
        held.into_iter()
            .zip(weights)
            .map(|((k, r, n), weight)| {
                let (master, created) = self.survivor(r.master);
                Candidate {
                    key: k.clone(),
                    record: n.clone(),
                    master,
                    master_created_millis: created,
                    weight,
                    unlinked: own_unlinks.contains(k) || r.unlinks.contains(&p.key),
                }
            })
            .collect()
    }
}

/// `EmpiRequest::Match`: the best `k` candidates of a record, without writing it.
pub(crate) async fn match_record(
    registry: &Arc<Registry>,
    ctx: &MatchContext,
    record: PersonRecord,
    k: u32,
    stats: &Stats,
) -> Response {
    let p = prepare(ctx, record).map_err(bad)?;
    // A match writes nothing: the nearest replicas' state will do.
    let held = Held::read(registry, ctx, &[&p], &[], Offered::default(), stats, Fresh::Stale).await?;
    let mut cands = held.candidates(ctx, &p, &[]);
    cands.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.key.cmp(&b.key)));
    let threshold = ctx.threshold();
    let matches = cands
        .into_iter()
        .take(k as usize)
        .map(|c| EmpiMatch {
            key: c.key,
            master: c.master,
            weight: c.weight,
            probability: plexus_empi::model::probability(c.weight),
            linked: c.weight >= threshold && !c.unlinked,
        })
        .collect();
    Ok(Reply::Empi(EmpiReply::Matches(matches)))
}

/// Where each record of a batch goes: `(identity, created, merged identities)`, in order.
pub(crate) async fn place(ctx: &MatchContext, held: &mut Held, batch: &[Prepared], now_millis: u64) -> Vec<Placement> {
    // The batch's own records, as candidates of the ones after them: per block the batch
    // indexes seen so far, and each one's identity.
    let mut overlay: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut placed: Vec<Placement> = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        if i % RECORDS_PER_YIELD == RECORDS_PER_YIELD - 1 {
            tokio::task::yield_now().await;
        }
        let existing = held.record(&p.key).cloned();
        let unlinks = existing.as_ref().map(|r| r.unlinks.clone()).unwrap_or_default();
        let mut cands = held.candidates(ctx, p, &unlinks);
        let mut seen: BTreeSet<usize> = BTreeSet::new();
        for b in &p.blocks {
            seen.extend(overlay.get(b.as_str()).into_iter().flatten().copied());
        }
        let earlier: Vec<usize> = seen.into_iter().filter(|j| batch[*j].key != p.key).collect();
        let norms: Vec<&NormalizedRecord> = earlier.iter().map(|j| &*batch[*j].norm).collect();
        for (j, weight) in earlier.iter().zip(ctx.weights(&p.norm, &norms)) {
            let (master, created) = held.survivor(placed[*j].0);
            cands.push(Candidate {
                key: batch[*j].key.clone(),
                record: batch[*j].norm.clone(),
                master,
                master_created_millis: created,
                weight,
                unlinked: unlinks.contains(&batch[*j].key),
            });
        }
        let decision = crate::guard::decide(ctx, held, &p.norm, &p.key, &unlinks, &mut cands);
        // A record a steward linked keeps its identity; an update that matches nothing keeps
        // the identity it had.
        let pinned = existing
            .as_ref()
            .filter(|r| !r.links.is_empty())
            .map(|r| held.survivor(r.master).0);
        let (master, created, merged) = match (pinned, decision.join, &existing) {
            (Some(m), _, _) => (m, false, Vec::new()),
            (None, Some(join), _) => (join, false, decision.merge),
            (None, None, Some(r)) => (held.survivor(r.master).0, false, Vec::new()),
            (None, None, None) => (new_master(&p.key, now_millis), true, Vec::new()),
        };
        if created {
            held.masters.insert(master, (master, master));
        }
        for m in &merged {
            held.masters.insert(*m, (master, master));
            held.absorb(master, *m);
        }
        held.note_member(master, &p.key);
        for b in &p.blocks {
            overlay.entry(b.as_str()).or_default().push(i);
        }
        placed.push((master, created, merged));
    }
    // Resolve every placement to its survivor (a later record may have merged an earlier one's
    // identity away).
    placed
        .into_iter()
        .map(|(m, c, merged)| (held.survivor(m).0, c, merged))
        .collect()
}

/// Writes a batch's placements: the records grouped by shard (up to `WRITES_IN_FLIGHT_MAX`
/// shards at once), each against the version `held` read, then the merges of the placements
/// that applied as placed. `session` (one record's upsert only: it names one write) makes the
/// put exactly-once for the client's request.
pub(crate) async fn write(
    registry: &Arc<Registry>,
    held: &Held,
    batch: &[Prepared],
    placed: &[Placement],
    now_millis: u64,
    session: Option<Session>,
) -> Vec<Written> {
    debug_assert!(session.is_none() || batch.len() == 1, "a session names one write");
    let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, p) in batch.iter().enumerate() {
        by_shard
            .entry(shard_for_key(&record_shard_key(&p.key), registry.shard_count))
            .or_default()
            .push(i);
    }
    let entries: Vec<(u32, Vec<usize>)> = by_shard
        .into_iter()
        .flat_map(|(shard, idx)| {
            idx.chunks(PUTS_PER_ENTRY_MAX)
                .map(|c| (shard, c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let answers: Vec<(Vec<usize>, Result<Reply, ErrorReply>)> = futures::stream::iter(entries)
        .map(|(shard, chunk)| async move {
            let puts = chunk
                .iter()
                .map(|&i| EmpiPut {
                    record: batch[i].record.clone(),
                    master: placed[i].0,
                    blocks: batch[i].blocks.clone(),
                    base: held.base(&batch[i].key),
                })
                .collect();
            let cmd = Command::EmpiPut { puts, now_millis }.in_session(session);
            let answer = registry.propose_patiently(shard, cmd, registry.request_timeout).await;
            (chunk, answer)
        })
        .buffer_unordered(WRITES_IN_FLIGHT_MAX)
        .collect()
        .await;
    let mut outcome: Vec<Written> = vec![Ok(None); batch.len()];
    for (chunk, answer) in answers {
        match answer {
            Ok(Reply::Counts(held)) if held.len() == chunk.len() => {
                for (i, m) in chunk.into_iter().zip(held) {
                    outcome[i] = Ok((m != 0).then_some(m));
                }
            }
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(reply) => reads::unexpected("a put", reply),
                };
                for i in chunk {
                    outcome[i] = Err(e.clone());
                }
            }
        }
    }
    let mut merges: BTreeSet<(MasterId, MasterId)> = BTreeSet::new();
    for ((master, _, merged), w) in placed.iter().zip(&outcome) {
        // Merges were decided with the placement: a record held elsewhere (linked, or placed
        // by an earlier copy of the request) makes them no decision of this write's.
        if *w == Ok(Some(*master)) {
            merges.extend(merged.iter().filter(|m| *m != master).map(|m| (*m, *master)));
        }
    }
    futures::stream::iter(merges)
        .for_each_concurrent(WRITES_IN_FLIGHT_MAX, |(from, into)| async move {
            let shard = shard_for_key(&master_shard_key(from), registry.shard_count);
            let cmd = Command::EmpiMerge { from, into, now_millis };
            if let Err(e) = registry.propose_patiently(shard, cmd, registry.request_timeout)
.await {
                tracing::warn!(from, into, error = %e, "identity merge failed; the next upsert touching them retries it");
            }
        })
        .await;
    outcome
}

/// `EmpiRequest::Upsert`.
pub(crate) async fn upsert(
    registry: &Arc<Registry>,
    ctx: &MatchContext,
    record: PersonRecord,
    session: Option<Session>,
    stats: &Stats,
) -> Response {
    let p = prepare(ctx, record).map_err(bad)?;
    let now_millis = registry.clock.now_millis();
    let also = std::slice::from_ref(&p.key);
    let mut held = Held::read(registry, ctx, &[&p], also, Offered::default(), stats, Fresh::Leader).await?;
    let batch = [p];
    let placed = place(ctx, &mut held, &batch, now_millis).await;
    let written = write(registry, &held, &batch, &placed, now_millis, session).await;
    stats.record_placed(&placed, &written);
    let (mut master, mut created, mut merged) = placed.into_iter().next().unwrap_or((0, false, Vec::new()));
    match written.into_iter().next() {
        Some(Err(e)) => return Err(e),
        // Held elsewhere than placed: the identity it holds is the answer, and this
        // placement's creation and merges did not happen.
        Some(Ok(Some(held))) if held != master => (master, created, merged) = (held, false, Vec::new()),
        _ => {}
    }
    let [p] = batch;
    Ok(Reply::Empi(EmpiReply::Upserted {
        key: p.key,
        master,
        created,
        merged,
    }))
}

/// `EmpiRequest::Ingest`: the batch's valid records placed and written; each record's outcome.
/// `recent` offers what this node linked in the last batches, and takes this batch's records.
/// `placing` makes concurrent batches place their records one batch after another (each one
/// offered the last one's placements before they are written), while their writes overlap.
pub(crate) async fn ingest(
    registry: &Arc<Registry>,
    ctx: &MatchContext,
    records: Vec<PersonRecord>,
    recent: &std::sync::Mutex<Recent>,
    placing: &tokio::sync::Mutex<()>,
    stats: &Stats,
) -> Response {
    let mut outcomes: Vec<Option<EmpiIngested>> = Vec::with_capacity(records.len());
    let mut batch: Vec<Prepared> = Vec::new();
    let mut slot_of: Vec<usize> = Vec::new();
    for r in records {
        let shown = r.key_string();
        match prepare(ctx, r) {
            Ok(p) => {
                slot_of.push(outcomes.len());
                outcomes.push(None);
                batch.push(p);
            }
            Err(reason) => outcomes.push(Some(EmpiIngested::Refused { key: shown, reason })),
        }
    }
    // A record sent twice in one batch: the last copy wins, as a later upsert would.
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in batch.iter().enumerate() {
        last.insert(p.key.as_str(), i);
    }
    let keep: Vec<bool> = (0..batch.len())
        .map(|i| last.get(batch[i].key.as_str()) == Some(&i))
        .collect();
    drop(last);
    let turn = placing.lock().await;
    let now_millis = registry.clock.now_millis();
    let keys: Vec<String> = batch.iter().map(|p| p.key.clone()).collect();
    let refs: Vec<&Prepared> = batch.iter().collect();
    let offered = recent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .around(batch.iter().flat_map(|p| p.blocks.iter()));
    let mut held = Held::read(registry, ctx, &refs, &keys, offered, stats, Fresh::Leader).await?;
    let mut kept: Vec<Prepared> = Vec::new();
    let mut kept_slot: Vec<usize> = Vec::new();
    let mut superseded: Vec<(usize, String)> = Vec::new();
    for (i, p) in batch.into_iter().enumerate() {
        if keep[i] {
            kept_slot.push(slot_of[i]);
            kept.push(p);
        } else {
            superseded.push((slot_of[i], p.key));
        }
    }
    let placed = place(ctx, &mut held, &kept, now_millis).await;
    {
        let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
        for (p, (master, _, _)) in kept.iter().zip(&placed) {
            recent.add(p.record.clone(), p.norm.clone(), *master, p.blocks.clone());
        }
    }
    drop(turn);
    let written = write(registry, &held, &kept, &placed, now_millis, None).await;
    {
        // A record not written, or superseded, is not what its shard holds: take it back out.
        let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
        for ((p, (master, _, _)), w) in kept.iter().zip(&placed).zip(&written) {
            if *w != Ok(Some(*master)) {
                recent.forget(&p.key, *master);
            }
        }
    }
    stats.record_placed(&placed, &written);
    for (j, p) in kept.iter().enumerate() {
        outcomes[kept_slot[j]] = Some(match &written[j] {
            Ok(held) => EmpiIngested::Linked {
                key: p.key.clone(),
                master: held.unwrap_or(placed[j].0),
            },
            Err(e) => EmpiIngested::Refused {
                key: p.key.clone(),
                reason: e.to_string(),
            },
        });
    }
    for (slot, key) in superseded {
        outcomes[slot] = Some(EmpiIngested::Refused {
            key,
            reason: "superseded by a later copy of the same record in this batch".into(),
        });
    }
    Ok(Reply::Empi(EmpiReply::Ingested(
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(EmpiIngested::Refused {
                    key: String::new(),
                    reason: "not processed".into(),
                })
            })
            .collect(),
    )))
}
