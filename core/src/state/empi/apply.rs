//! Identity matching's transitions, as methods of `ShardState`: they route by the shard map's
//! placement, queue into the EMPI outbox and answer through the shared limits.
//!
//! Every method here is pure like the rest of `apply`: time comes from the command, and every
//! iteration is over ordered maps and vectors. Where a message is addressed is a function of
//! the message alone (`empi_dest`), which is what lets a delivery check its addressee.

use std::collections::VecDeque;

use plexus_proto::{
    block_shard_key, master_shard_key, model_shard_key, record_shard_key, EmpiEventKind, EmpiRecord, ErrorReply,
    MasterId, PersonRecord, Reply, Response, ShardId,
};

use super::{new_master_id, route, Constraints, Master};
use crate::canary::Canary;
use crate::command::{EmpiBatch, EmpiMsg, EmpiPut};
use crate::state::ShardState;

fn bad(msg: String) -> ErrorReply {
    ErrorReply::BadRequest(msg)
}

/// Messages for this shard produced while applying, applied in order before the apply ends: a
/// queue rather than recursion, so a chain of forwards cannot deepen the stack.
type Local = VecDeque<EmpiMsg>;

/// A record's optional fields with their names, for length checks.
fn optional_fields(r: &PersonRecord) -> [(&'static str, &Option<String>); 13] {
    [
        ("given_name", &r.given_name),
        ("family_name", &r.family_name),
        ("birth_date", &r.birth_date),
        ("sex", &r.sex),
        ("street_number", &r.street_number),
        ("address_line", &r.address_line),
        ("address_line2", &r.address_line2),
        ("city", &r.city),
        ("postcode", &r.postcode),
        ("state", &r.state),
        ("phone", &r.phone),
        ("email", &r.email),
        ("national_id", &r.national_id),
    ]
}

/// The items of ascending `a` that ascending `b` lacks.
fn missing_from<'a>(a: &'a [String], b: &'a [String]) -> impl Iterator<Item = &'a String> {
    a.iter().filter(move |x| b.binary_search(x).is_err())
}

impl ShardState {
    /// `Busy` while the EMPI outbox holds more than its cap: writes that would add messages wait
    /// for delivery to catch up instead of growing it without bound. Deliveries are never
    /// refused, so the messages they generate can overshoot the cap for a while.
    fn empi_admit(&self) -> Result<(), ErrorReply> {
        let (messages, bytes) = self.empi.outbox_size();
        if bytes >= self.limits.empi.outbox_bytes_max {
            return Err(ErrorReply::Busy(format!(
                "empi outbox holds {messages} undelivered messages ({bytes} bytes)"
            )));
        }
        Ok(())
    }

    /// The shard a message is for: the blocking key's, the identity's or the record's.
    pub(in crate::state) fn empi_dest(&self, msg: &EmpiMsg) -> ShardId {
        let key = match msg {
            EmpiMsg::IndexAdd { block, .. } | EmpiMsg::IndexRemove { block, .. } => block_shard_key(block),
            EmpiMsg::MemberJoin { master, .. }
            | EmpiMsg::MemberLeave { master, .. }
            | EmpiMsg::MemberEnter { master, .. }
            | EmpiMsg::MemberUnlinks { master, .. } => master_shard_key(*master),
            EmpiMsg::Reassign { key, .. } | EmpiMsg::Constrain { key, .. } | EmpiMsg::EnterRefused { key, .. } => {
                record_shard_key(key)
            }
        };
        route(self.here, &key)
    }

    /// Sends one message: queued to apply here before this apply ends, or into the outbox.
    fn empi_send(&mut self, msg: EmpiMsg, local: &mut Local) {
        let dest = self.empi_dest(&msg);
        if dest == self.here.shard {
            local.push_back(msg);
        } else {
            self.empi.outbox.push(dest, msg);
        }
    }

    /// Applies the messages for this shard, and those they produce, in order.
    fn empi_drain(&mut self, mut local: Local, now_millis: u64) {
        while let Some(msg) = local.pop_front() {
            self.empi_apply_msg(msg, now_millis, &mut local);
        }
    }

    /// Appends an event to this shard's log.
    fn empi_event(&mut self, master: MasterId, record: Option<String>, kind: EmpiEventKind, now_millis: u64) {
        let (shard, retained_max) = (self.here.shard, self.limits.empi.events_retained_max);
        self.empi
            .events
            .push(shard, master, record, kind, now_millis, retained_max);
    }

    /// Applies one message addressed to this shard.
    fn empi_apply_msg(&mut self, msg: EmpiMsg, now_millis: u64, local: &mut Local) {
        match msg {
            EmpiMsg::IndexAdd { block, key } => {
                self.empi.index.add(&block, &key, self.limits.empi.bloom);
            }
            EmpiMsg::IndexRemove { block, key } => {
                self.empi.index.remove(&block, &key);
            }
            EmpiMsg::MemberJoin { master, key } => {
                self.empi_join(master, key, Constraints::default(), now_millis, local);
            }
            EmpiMsg::MemberEnter {
                master,
                key,
                unlinks,
                links,
            } => self.empi_join(master, key, Constraints { links, unlinks }, now_millis, local),
            EmpiMsg::MemberLeave { master, key } => {
                let left = self
                    .empi
                    .masters
                    .get_mut(&master)
                    .is_some_and(|m| m.members.remove(&key));
                if left {
                    self.empi.apart_set(master, &key, Vec::new());
                    self.empi_event(master, Some(key), EmpiEventKind::Unlinked, now_millis);
                }
            }
            EmpiMsg::MemberUnlinks { master, key, unlinks } => {
                // A record that is no member (any more) joins with its unlinks when it comes.
                let member = self.empi.masters.get(&master).is_some_and(|m| m.members.contains(&key));
                if member {
                    self.empi.apart_set(master, &key, unlinks);
                }
            }
            EmpiMsg::Reassign { key, from, master } => {
                let still_there = self.empi.records.get(&key).is_some_and(|r| r.master == from);
                if still_there {
                    self.empi_move(&key, master, local);
                }
            }
            EmpiMsg::EnterRefused {
                key,
                from,
                master,
                apart_from,
            } => {
                let Some(r) = self.empi.records.get(&key).filter(|r| r.master == from) else {
                    return;
                };
                if r.links.binary_search(&apart_from).is_ok() {
                    // The identity went by an unlink a link has replaced since: enter again with
                    // the constraints as they are now.
                    let enter = EmpiMsg::MemberEnter {
                        master: from,
                        key,
                        unlinks: r.unlinks.clone(),
                        links: r.links.clone(),
                    };
                    self.empi_send(enter, local);
                } else {
                    self.empi_move(&key, master, local);
                }
            }
            EmpiMsg::Constrain { key, other, link } => {
                self.empi_constrain_arrived(&key, &other, link, local);
                // The pair's owner (its smaller key) answers every change it applies with its
                // own view, so the other side ends where the owner's order of changes ends.
                if key < other {
                    let mirror = EmpiMsg::Constrain {
                        key: other,
                        other: key,
                        link,
                    };
                    self.empi_send(mirror, local);
                }
            }
        }
    }

    /// `MemberEnter` (and `MemberJoin`, with no unlinks): creates the identity for its first
    /// record, or adds the member; a merged identity sends the record on to the one it was
    /// merged into instead, and one holding a member the record is unlinked from (either way
    /// round) sends it to an identity of its own.
    fn empi_join(&mut self, master: MasterId, key: String, held: Constraints, now_millis: u64, local: &mut Local) {
        let apart = self.empi.apart_from(master, &key, &held);
        let (kind, merged_into) = match self.empi.masters.get_mut(&master) {
            None => {
                let members = [key.clone()].into_iter().collect();
                let m = Master {
                    members,
                    created_millis: now_millis,
                    merged_into: None,
                };
                self.empi.masters.insert(master, m);
                (Some(EmpiEventKind::Created), None)
            }
            Some(m) => match m.merged_into {
                Some(into) => (None, Some(into)),
                None if m.members.contains(&key) => (None, None),
                None if apart.is_some() => (None, None),
                None => {
                    m.members.insert(key.clone());
                    (Some(EmpiEventKind::Linked), None)
                }
            },
        };
        if let Some(into) = merged_into {
            let reassign = EmpiMsg::Reassign {
                key,
                from: master,
                master: into,
            };
            self.empi_send(reassign, local);
            return;
        }
        if let Some(apart_from) = apart {
            let refused = EmpiMsg::EnterRefused {
                master: new_master_id(&key, now_millis),
                key,
                from: master,
                apart_from,
            };
            self.empi_send(refused, local);
            return;
        }
        self.empi.apart_set(master, &key, held.unlinks);
        if let Some(kind) = kind {
            self.empi_event(master, Some(key), kind, now_millis);
        }
    }

    /// Moves a record of this shard to `master`; whether it moved (an unknown record, or one
    /// already there, does not).
    fn empi_move(&mut self, key: &str, master: MasterId, local: &mut Local) -> bool {
        let Some(r) = self.empi.records.get_mut(key) else {
            return false;
        };
        if r.master == master {
            return false;
        }
        // Not a write of its fields: `updated_millis`, the version a put is placed against,
        // stays (a put placed before a move still applies; the move's merge forwards it).
        let old = std::mem::replace(&mut r.master, master);
        let (unlinks, links) = (r.unlinks.clone(), r.links.clone());
        let key = key.to_string();
        self.empi_send(
            EmpiMsg::MemberLeave {
                master: old,
                key: key.clone(),
            },
            local,
        );
        let enter = EmpiMsg::MemberEnter {
            master,
            key,
            unlinks,
            links,
        };
        self.empi_send(enter, local);
        true
    }

    /// A steward constraint for a record of this shard. One for a record not stored yet
    /// waits in `pending` for its first put; past `pending_constraints_max` such records it is
    /// dropped (the service checks that both records exist before constraining them).
    fn empi_constrain_arrived(&mut self, key: &str, other: &str, link: bool, local: &mut Local) {
        if self.empi.records.contains_key(key) {
            self.empi_constrain_stored(key, other, link, local);
            return;
        }
        let full = self.empi.pending.len() >= self.limits.empi.pending_constraints_max;
        let c = match self.empi.pending.get_mut(key) {
            Some(c) => c,
            None if full => return,
            None => self.empi.pending.entry(key.to_string()).or_default(),
        };
        Constraints::set(&mut c.links, &mut c.unlinks, other, link);
    }

    /// Checks one put without applying it: the record is this shard's and within the limits.
    fn empi_check_put(&self, p: &EmpiPut) -> Result<(), ErrorReply> {
        let l = &self.limits.empi;
        let r = &p.record;
        if r.source.is_empty() || r.source_id.is_empty() || r.source.contains(':') {
            return Err(bad(format!(
                "empi record {:?} needs a source without ':' and a source id",
                r.key_string()
            )));
        }
        let key = r.key_string();
        if key.len() > l.key_bytes_max {
            return Err(bad(format!(
                "empi record key of {} bytes exceeds {}",
                key.len(),
                l.key_bytes_max
            )));
        }
        self.check_key(&record_shard_key(&key))?;
        if p.master == 0 {
            return Err(bad(format!(
                "empi record {key:?} names master 0, which no identity has"
            )));
        }
        for (name, value) in optional_fields(r) {
            if let Some(v) = value.as_ref().filter(|v| v.len() > l.field_bytes_max) {
                return Err(bad(format!(
                    "empi record {key:?} field {name} of {} bytes exceeds {}",
                    v.len(),
                    l.field_bytes_max
                )));
            }
        }
        if p.blocks.len() > l.record_blocks_max {
            return Err(bad(format!(
                "empi record {key:?} has {} blocking keys, more than {}",
                p.blocks.len(),
                l.record_blocks_max
            )));
        }
        if let Some(b) = p.blocks.iter().find(|b| b.is_empty() || b.len() > l.block_bytes_max) {
            return Err(bad(format!(
                "empi record {key:?} has a blocking key of {} bytes (1..={})",
                b.len(),
                l.block_bytes_max
            )));
        }
        Ok(())
    }

    /// `Command::EmpiPut`: every record checked first (one of another shard, or out of bounds,
    /// refuses the whole entry), then stored in order; `Counts`, per put the identity the
    /// record holds, or 0 where it was superseded.
    pub(in crate::state) fn empi_put(&mut self, puts: &[EmpiPut], now_millis: u64) -> Response {
        let max = self.limits.empi.put_records_max;
        if puts.len() > max {
            return Err(bad(format!(
                "{} empi records exceed the put limit of {max}",
                puts.len()
            )));
        }
        for p in puts {
            self.empi_check_put(p)?;
        }
        self.empi_admit()?;
        let mut local = Local::new();
        let mut placed = Vec::with_capacity(puts.len());
        for p in puts {
            let stored = self.empi.records.get(&p.record.key_string()).map(|r| r.updated_millis);
            let master = if stored == p.base {
                self.empi_put_one(p, now_millis, &mut local)
            } else {
                0
            };
            placed.push(master);
        }
        self.empi_drain(local, now_millis);
        Ok(Reply::Counts(placed))
    }

    /// Stores one checked record and sends its index and membership changes; the identity it
    /// holds. Its steward constraints are kept from the stored record, or taken from `pending`
    /// for a new one.
    fn empi_put_one(&mut self, p: &EmpiPut, now_millis: u64, local: &mut Local) -> MasterId {
        let key = p.record.key_string();
        let mut blocks = p.blocks.clone();
        blocks.sort_unstable();
        blocks.dedup();
        let (old_blocks, old_master, kept, version) = match self.empi.records.remove(&key) {
            Some(r) => (
                r.blocks,
                Some(r.master),
                Constraints {
                    links: r.links,
                    unlinks: r.unlinks,
                },
                next_version(r.updated_millis, now_millis),
            ),
            None => (
                Vec::new(),
                None,
                self.empi.pending.remove(&key).unwrap_or_default(),
                now_millis,
            ),
        };
        for block in missing_from(&old_blocks, &blocks) {
            let msg = EmpiMsg::IndexRemove {
                block: block.clone(),
                key: key.clone(),
            };
            self.empi_send(msg, local);
        }
        for block in missing_from(&blocks, &old_blocks) {
            let msg = EmpiMsg::IndexAdd {
                block: block.clone(),
                key: key.clone(),
            };
            self.empi_send(msg, local);
        }
        // A record a steward linked keeps its identity whatever the put says: the service reads
        // the constraint before placing, but a put placed just before a link arrived must not
        // undo it (only steward actions and merges move a linked record).
        let master = match old_master {
            Some(old) if !kept.links.is_empty() => old,
            _ => p.master,
        };
        if old_master != Some(master) {
            if let Some(old) = old_master {
                let msg = EmpiMsg::MemberLeave {
                    master: old,
                    key: key.clone(),
                };
                self.empi_send(msg, local);
            }
            // The canary (simulation only) loses the join of a record that changes identity, so
            // the new identity never lists it.
            let skip = old_master.is_some() && self.canary == Some(Canary::EmpiSkipsMemberJoin);
            if !skip {
                let msg = EmpiMsg::MemberEnter {
                    master,
                    key: key.clone(),
                    unlinks: kept.unlinks.clone(),
                    links: kept.links.clone(),
                };
                self.empi_send(msg, local);
            }
        }
        let record = EmpiRecord {
            record: p.record.clone(),
            master,
            links: kept.links,
            unlinks: kept.unlinks,
            blocks,
            updated_millis: version,
        };
        self.empi.records.insert(key, record);
        debug_assert_ne!(master, 0, "master ids start at 1: 0 answers a superseded put");
        master
    }

    /// `Command::EmpiConstrain`: the constraint on the record here (which must exist), and the
    /// same constraint sent to the other record's side.
    ///
    /// Both sides hold the pair's constraint, and two stewards may change it from either side at
    /// once, so one side orders the changes: the pair's smaller key (its owner). A change made at
    /// the owner is applied and mirrored to the other side; one made at the other side applies
    /// there at once and goes to the owner, which applies it in its order and mirrors the result
    /// back. Both sides end with the owner's last change; proposing on the owner's shard makes a
    /// steward's changes take effect in the order they were acknowledged.
    pub(in crate::state) fn empi_constrain(&mut self, key: &str, other: &str, link: bool, now_millis: u64) -> Response {
        let l = &self.limits.empi;
        if other.is_empty() || key.len() > l.key_bytes_max || other.len() > l.key_bytes_max {
            return Err(bad(format!(
                "empi constraint keys must hold 1..={} bytes",
                l.key_bytes_max
            )));
        }
        if key == other {
            return Err(bad(format!("empi record {key:?} cannot be constrained to itself")));
        }
        self.check_key(&record_shard_key(key))?;
        let Some(r) = self.empi.records.get(key) else {
            return Err(ErrorReply::NotFound(format!("empi record {key:?}")));
        };
        let known = r.links.binary_search_by(|k| k.as_str().cmp(other)).is_ok()
            || r.unlinks.binary_search_by(|k| k.as_str().cmp(other)).is_ok();
        if !known && r.links.len() + r.unlinks.len() >= l.record_constraints_max {
            return Err(bad(format!(
                "empi record {key:?} already has {} constraints",
                l.record_constraints_max
            )));
        }
        self.empi_admit()?;
        let mut local = Local::new();
        let changed = self.empi_constrain_stored(key, other, link, &mut local);
        // Sent even when nothing changed here: the owner's order decides, and applying a change
        // again is harmless.
        let msg = EmpiMsg::Constrain {
            key: other.to_string(),
            other: key.to_string(),
            link,
        };
        self.empi_send(msg, &mut local);
        self.empi_drain(local, now_millis);
        Ok(Reply::Changed(changed))
    }

    /// Sets the constraint on a stored record of this shard; whether it changed. A change of
    /// its unlinks goes to its identity (`MemberUnlinks`).
    fn empi_constrain_stored(&mut self, key: &str, other: &str, link: bool, local: &mut Local) -> bool {
        let Some(r) = self.empi.records.get_mut(key) else {
            return false;
        };
        let unlinked_before = r.unlinks.len();
        let changed = Constraints::set(&mut r.links, &mut r.unlinks, other, link);
        if r.unlinks.len() != unlinked_before {
            let msg = EmpiMsg::MemberUnlinks {
                master: r.master,
                key: key.to_string(),
                unlinks: r.unlinks.clone(),
            };
            self.empi_send(msg, local);
        }
        changed
    }

    /// `Command::EmpiReassign`: a steward's move of a record of this shard to another identity.
    pub(in crate::state) fn empi_reassign(&mut self, key: &str, master: MasterId, now_millis: u64) -> Response {
        self.check_key(&record_shard_key(key))?;
        self.empi_admit()?;
        let mut local = Local::new();
        let changed = self.empi_move(key, master, &mut local);
        self.empi_drain(local, now_millis);
        Ok(Reply::Changed(changed))
    }

    /// Whether following merges from `start` through identities of this shard reaches `target`.
    fn empi_merges_reach(&self, start: MasterId, target: MasterId) -> bool {
        let mut at = start;
        // Invariant: chains here are acyclic (this check refuses the merge that would close
        // one), so a walk longer than the identities held cannot happen; the bound makes sure.
        for _ in 0..=self.empi.masters.len() {
            if at == target {
                return true;
            }
            match self.empi.masters.get(&at).and_then(|m| m.merged_into) {
                Some(next) => at = next,
                None => return false,
            }
        }
        true
    }

    /// `Command::EmpiMerge`: `from` is marked merged into `into`, logs `Merged`, and each member
    /// is sent to its record's shard to move; `Count(members)`. Nothing happens when `from` is
    /// `into` or merged already. An unknown `from` is an identity whose first join is still in
    /// the outbox (a record was just moved to it): it is recorded as merged, empty, so that the
    /// join, when it arrives, goes on to `into` instead of founding an identity the merge missed.
    pub(in crate::state) fn empi_merge(&mut self, from: MasterId, into: MasterId, now_millis: u64) -> Response {
        self.check_key(&master_shard_key(from))?;
        self.empi_admit()?;
        if from == into || self.empi.masters.get(&from).is_some_and(|m| m.merged_into.is_some()) {
            return Ok(Reply::Count(0));
        }
        if self.empi_merges_reach(into, from) {
            return Err(bad(format!(
                "empi master {into} is merged into {from}: merging back would close a cycle"
            )));
        }
        let m = self.empi.masters.entry(from).or_insert_with(|| Master {
            members: Default::default(),
            created_millis: now_millis,
            merged_into: None,
        });
        m.merged_into = Some(into);
        let members = std::mem::take(&mut m.members);
        // The members take their unlinks along: each enters `into` with them.
        self.empi.apart.remove(&from);
        self.empi_event(from, None, EmpiEventKind::Merged { into }, now_millis);
        let moved = members.len() as u64;
        let mut local = Local::new();
        for key in members {
            let reassign = EmpiMsg::Reassign {
                key,
                from,
                master: into,
            };
            self.empi_send(reassign, &mut local);
        }
        self.empi_drain(local, now_millis);
        Ok(Reply::Count(moved))
    }

    /// Checks a delivery without applying it: how many leading messages were applied before,
    /// and the new high-water mark. A message not addressed to this shard, or naming a record
    /// that does not belong to the source shard where the sender must be the record's shard,
    /// refuses the batch.
    fn empi_check_delivery(&self, b: &EmpiBatch) -> Result<(usize, u64), ErrorReply> {
        let from = b.from_shard;
        if from >= self.here.shard_count {
            return Err(bad(format!(
                "empi delivery from shard {from} of {}",
                self.here.shard_count
            )));
        }
        let (skip, upto) = self
            .empi
            .delivered
            .admit(from, b.first_seq, b.items.len())
            .map_err(|e| bad(format!("empi {e}")))?;
        for msg in &b.items {
            let dest = self.empi_dest(msg);
            if dest != self.here.shard {
                return Err(bad(format!(
                    "empi message from shard {from} is for shard {dest}, which does not belong here"
                )));
            }
            // An identity's shard sends `Reassign` and `EnterRefused` for records of any shard.
            let sender_record = match msg {
                EmpiMsg::IndexAdd { key, .. }
                | EmpiMsg::IndexRemove { key, .. }
                | EmpiMsg::MemberJoin { key, .. }
                | EmpiMsg::MemberLeave { key, .. }
                | EmpiMsg::MemberEnter { key, .. }
                | EmpiMsg::MemberUnlinks { key, .. } => Some(key),
                EmpiMsg::Constrain { other, .. } => Some(other),
                EmpiMsg::Reassign { .. } | EmpiMsg::EnterRefused { .. } => None,
            };
            if let Some(key) = sender_record.filter(|k| route(self.here, &record_shard_key(k)) != from) {
                return Err(bad(format!(
                    "empi message from shard {from} names record {key:?}, which does not belong there"
                )));
            }
        }
        Ok((skip, upto))
    }

    /// `Command::EmpiDeliveries`: every batch checked first (a gap, a stray or a source named
    /// twice refuses the whole entry), then applied in order; `Counts` of each batch's new
    /// delivered-up-to.
    pub(in crate::state) fn empi_deliveries(&mut self, batches: &[EmpiBatch], now_millis: u64) -> Response {
        let mut checked = Vec::with_capacity(batches.len());
        for (i, b) in batches.iter().enumerate() {
            if batches[..i].iter().any(|o| o.from_shard == b.from_shard) {
                return Err(bad(format!("empi deliveries name source shard {} twice", b.from_shard)));
            }
            checked.push(self.empi_check_delivery(b)?);
        }
        let mut counts = Vec::with_capacity(batches.len());
        for (b, (skip, upto)) in batches.iter().zip(checked) {
            // What they produce for this shard is applied after them, in order.
            self.empi_drain(b.items[skip..].iter().cloned().collect(), now_millis);
            if !b.items.is_empty() {
                self.empi.delivered.record(b.from_shard, upto);
            }
            counts.push(upto);
        }
        Ok(Reply::Counts(counts))
    }

    /// `Command::EmpiOutboxTrims`: `Count(messages dropped)`.
    pub(in crate::state) fn empi_trims(&mut self, trims: &[(ShardId, u64)]) -> Response {
        let dropped = trims.iter().map(|(to, upto)| self.empi.outbox.trim(*to, *upto)).sum();
        Ok(Reply::Count(dropped))
    }

    /// `Command::EmpiSetModel`: stored when its version is above the stored one (or none is).
    pub(in crate::state) fn empi_set_model(&mut self, version: u64, model: &[u8]) -> Response {
        self.check_key(&model_shard_key())?;
        let max = self.limits.empi.model_bytes_max;
        if model.len() > max {
            return Err(bad(format!("empi model of {} bytes exceeds {max}", model.len())));
        }
        if self.empi.model.as_ref().is_some_and(|(v, _)| *v >= version) {
            return Ok(Reply::Changed(false));
        }
        self.empi.model = Some((version, model.to_vec()));
        Ok(Reply::Changed(true))
    }
}

/// A record's next version after `old`, at `now_millis`: the time its fields were written, and
/// always larger than the last, so that each put of a record has a version of its own (an
/// `EmpiPut`'s `base` names the version it was placed against).
fn next_version(old: u64, now_millis: u64) -> u64 {
    now_millis.max(old.saturating_add(1))
}
