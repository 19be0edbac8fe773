//! Identity matching's properties, on the EMPI history and the state read after healing.
//!
//! - Writes: a record with an acknowledged write (an upsert, or a batch record answered
//!   `Linked`) exists at the end and holds the fields of a write that may have been its last:
//!   the last acknowledged one, one acknowledged concurrently with it, or any that failed (an
//!   unknown outcome may take effect at any time after it was sent). A record nobody wrote
//!   must not exist.
//! - Structure: every record names a live (not merged) identity that lists it; every member a
//!   live identity lists names that identity; a merged identity lists no one.
//! - Change stream: the events the subscriber received, page after page, are per shard numbered
//!   1, 2, 3... without a gap or a repeat, and are the shard's final event log or a prefix of it;
//!   and replaying every shard's final log (`Created`/`Linked` add the record to the identity,
//!   `Unlinked` removes it, `Merged` empties it and marks it merged) gives exactly the final
//!   members (and merge target) of every identity.
//! - Steward: for each pair, the last acknowledged link or unlink holds at the end (one identity
//!   after a link, two after an unlink), unless an opposite action on the pair, a steward
//!   action moving one of its records (an unlink of another pair) for a link, or a write of one
//!   of its records, failed or ran concurrently with it. Writes after it cannot undo it: the
//!   steward's answer waits until both records' shards hold the constraint.
//!
//! What it is not: a judge of matching quality (which identities automatic matching forms is the
//! model's business); only what the service promises is checked.

use std::collections::{BTreeMap, BTreeSet};

use plexus_proto::{
    master_shard_key, shard_for_key, EmpiEvent, EmpiEventKind, EmpiIngested, EmpiMaster, EmpiRecord, MasterId,
    PersonRecord, ShardId,
};

use crate::empi_workload::{EmpiAction, EmpiOp, EmpiOutcome};

/// Violations of one kind reported at most (the rest are counted).
const SHOWN_MAX: usize = 8;

/// What the healed cluster holds for identity matching.
#[derive(Clone, Debug, Default)]
pub struct EmpiFinal {
    /// Virtual shards of the cluster.
    pub shard_count: u32,
    /// Records read at the end, by key.
    pub records: BTreeMap<String, EmpiRecord>,
    /// Keys asked for that no record has.
    pub absent: BTreeSet<String>,
    /// Every identity of every shard, merged ones included.
    pub masters: BTreeMap<MasterId, EmpiMaster>,
    /// Per shard, the number of its first retained event and its log from there.
    pub events: BTreeMap<ShardId, (u64, Vec<EmpiEvent>)>,
    /// EMPI outbox messages undelivered when the state was read.
    pub pending: usize,
    /// Final reads that went unanswered.
    pub unread: Vec<String>,
}

/// Collects violations, keeping the first few of each kind.
struct Out {
    lines: Vec<String>,
    counts: BTreeMap<&'static str, usize>,
}

impl Out {
    fn push(&mut self, kind: &'static str, line: String) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        if *n <= SHOWN_MAX {
            self.lines.push(line);
        }
    }

    fn finish(mut self) -> Vec<String> {
        for (kind, n) in &self.counts {
            if *n > SHOWN_MAX {
                self.lines.push(format!("{} more {kind} violations", n - SHOWN_MAX));
            }
        }
        self.lines
    }
}

/// Checks the EMPI history against the final state.
pub fn check(history: &[EmpiOp], end: &EmpiFinal) -> Vec<String> {
    let mut out = Out {
        lines: Vec::new(),
        counts: BTreeMap::new(),
    };
    for u in &end.unread {
        out.push("read", format!("a final read failed: {u}"));
    }
    if end.pending > 0 {
        out.push(
            "read",
            format!(
                "the final state was read with {} outbox messages undelivered",
                end.pending
            ),
        );
    }
    writes(history, end, &mut out);
    structure(end, &mut out);
    stream(history, end, &mut out);
    replay(end, &mut out);
    steward(history, end, &mut out);
    out.finish()
}

/// One write of a record: its fields, when it was sent and answered, and whether it was
/// acknowledged.
struct Write<'a> {
    record: &'a PersonRecord,
    invoked_us: u64,
    completed_us: u64,
    acked: bool,
}

/// The records `op` wrote, each with whether its write was acknowledged.
fn written(op: &EmpiOp) -> Vec<(&PersonRecord, bool)> {
    match (&op.action, &op.result) {
        (EmpiAction::Upsert(r), res) => vec![(r, res.is_ok())],
        (EmpiAction::Ingest(rs), Ok(EmpiOutcome::Ingested(outcomes))) if outcomes.len() == rs.len() => rs
            .iter()
            .zip(outcomes)
            .map(|(r, o)| {
                (
                    r,
                    matches!(o, EmpiIngested::Linked { key, .. } if *key == r.key_string()),
                )
            })
            .collect(),
        (EmpiAction::Ingest(rs), _) => rs.iter().map(|r| (r, false)).collect(),
        _ => Vec::new(),
    }
}

fn writes(history: &[EmpiOp], end: &EmpiFinal, out: &mut Out) {
    let mut by_key: BTreeMap<String, Vec<Write<'_>>> = BTreeMap::new();
    for op in history {
        for (record, acked) in written(op) {
            by_key.entry(record.key_string()).or_default().push(Write {
                record,
                invoked_us: op.invoked_us,
                completed_us: op.completed_us,
                acked,
            });
        }
    }
    for (key, ws) in &by_key {
        let last = ws.iter().filter(|w| w.acked).max_by_key(|w| w.completed_us);
        match (end.records.get(key), last) {
            (None, Some(l)) if end.absent.contains(key) => out.push(
                "write",
                format!(
                    "record {key} is missing, though a write of it was acknowledged at {}us",
                    l.completed_us
                ),
            ),
            (Some(held), _) => {
                let possible = |w: &&Write<'_>| !w.acked || last.is_none_or(|l| w.completed_us >= l.invoked_us);
                if !ws.iter().filter(possible).any(|w| *w.record == held.record) {
                    out.push(
                        "write",
                        format!(
                            "record {key} holds fields no write could have left last ({} writes, last acknowledged at {:?}us): {:?}",
                            ws.len(),
                            last.map(|l| l.completed_us),
                            held.record
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    for key in end.records.keys().filter(|k| !by_key.contains_key(*k)) {
        out.push("write", format!("record {key} exists, but no client wrote it"));
    }
}

fn structure(end: &EmpiFinal, out: &mut Out) {
    for (key, r) in &end.records {
        match end.masters.get(&r.master) {
            None => out.push(
                "structure",
                format!("record {key} names identity {}, which does not exist", r.master),
            ),
            Some(m) if m.merged_into.is_some() => out.push(
                "structure",
                format!(
                    "record {key} names identity {}, which was merged into {:?}",
                    r.master, m.merged_into
                ),
            ),
            Some(m) if !m.members.contains(key) => out.push(
                "structure",
                format!(
                    "record {key} names identity {}, which does not list it (members {:?})",
                    r.master, m.members
                ),
            ),
            Some(_) => {}
        }
    }
    for (id, m) in &end.masters {
        if m.merged_into.is_some() {
            if !m.members.is_empty() {
                out.push(
                    "structure",
                    format!("identity {id} was merged but still lists {:?}", m.members),
                );
            }
            continue;
        }
        for key in &m.members {
            match end.records.get(key) {
                Some(r) if r.master != *id => out.push(
                    "structure",
                    format!("identity {id} lists record {key}, which names identity {}", r.master),
                ),
                Some(_) => {}
                None => out.push(
                    "structure",
                    format!("identity {id} lists record {key}, which does not exist"),
                ),
            }
        }
    }
}

fn stream(history: &[EmpiOp], end: &EmpiFinal, out: &mut Out) {
    let mut subscribers: BTreeMap<u64, Vec<&EmpiEvent>> = BTreeMap::new();
    for op in history {
        if let (EmpiAction::Events { .. }, Ok(EmpiOutcome::Events(events, _))) = (&op.action, &op.result) {
            subscribers.entry(op.client).or_default().extend(events);
        }
    }
    for (client, events) in subscribers {
        let mut next: BTreeMap<ShardId, u64> = BTreeMap::new();
        for e in events {
            let want = next.entry(e.shard).or_insert(1);
            if e.seq != *want {
                out.push(
                    "stream",
                    format!(
                        "subscriber {client} got event {} of shard {} where {} was next (a {})",
                        e.seq,
                        e.shard,
                        *want,
                        if e.seq > *want { "gap" } else { "repeat" }
                    ),
                );
            }
            *want = e.seq + 1;
            let Some((first, log)) = end.events.get(&e.shard) else {
                out.push(
                    "stream",
                    format!(
                        "subscriber {client} got an event of shard {}, which has no log",
                        e.shard
                    ),
                );
                continue;
            };
            if e.seq < *first {
                continue;
            }
            match log.get((e.seq - first) as usize) {
                Some(held) if held == e => {}
                held => out.push(
                    "stream",
                    format!(
                        "subscriber {client} got {e:?}, but the final log of shard {} holds {held:?} there",
                        e.shard
                    ),
                ),
            }
        }
    }
}

/// What replaying one identity's events gives.
#[derive(Default)]
struct Replayed {
    members: BTreeSet<String>,
    merged_into: Option<MasterId>,
    created: usize,
}

fn replay(end: &EmpiFinal, out: &mut Out) {
    let mut truncated: BTreeSet<ShardId> = BTreeSet::new();
    let mut masters: BTreeMap<MasterId, Replayed> = BTreeMap::new();
    for (shard, (first, log)) in &end.events {
        if *first != 1 {
            truncated.insert(*shard);
            continue;
        }
        for (i, e) in log.iter().enumerate() {
            if e.seq != i as u64 + 1 || e.shard != *shard {
                out.push(
                    "replay",
                    format!(
                        "the final log of shard {shard} holds event {} of shard {} at position {}",
                        e.seq,
                        e.shard,
                        i + 1
                    ),
                );
            }
            let m = masters.entry(e.master).or_default();
            match (&e.kind, &e.record) {
                (EmpiEventKind::Created, Some(r)) => {
                    m.created += 1;
                    m.members.insert(r.clone());
                }
                (EmpiEventKind::Linked, Some(r)) => {
                    m.members.insert(r.clone());
                }
                (EmpiEventKind::Unlinked, Some(r)) => {
                    m.members.remove(r);
                }
                (EmpiEventKind::Merged { into }, _) => {
                    m.members.clear();
                    m.merged_into = Some(*into);
                }
                (kind, None) => out.push(
                    "replay",
                    format!("event {} of shard {shard} ({kind:?}) names no record", e.seq),
                ),
            }
        }
    }
    let ids: BTreeSet<MasterId> = masters.keys().chain(end.masters.keys()).copied().collect();
    let empty = Replayed::default();
    for id in ids {
        let shard = shard_for_key(&master_shard_key(id), end.shard_count.max(1));
        if truncated.contains(&shard) {
            continue;
        }
        let r = masters.get(&id).unwrap_or(&empty);
        let Some(m) = end.masters.get(&id) else {
            out.push("replay", format!("the events name identity {id}, which does not exist"));
            continue;
        };
        // An identity merged before its first join arrived may never log `Created`.
        if r.created > 1 {
            out.push(
                "replay",
                format!("identity {id} was created {} times in the events", r.created),
            );
        }
        let held: BTreeSet<String> = m.members.iter().cloned().collect();
        if held != r.members || m.merged_into != r.merged_into {
            let missing: Vec<&String> = r.members.difference(&held).take(5).collect();
            let extra: Vec<&String> = held.difference(&r.members).take(5).collect();
            out.push(
                "replay",
                format!(
                    "identity {id} holds {} members merged into {:?}, but its events give {} merged into {:?} (not held {missing:?}, not in the events {extra:?})",
                    held.len(),
                    m.merged_into,
                    r.members.len(),
                    r.merged_into
                ),
            );
        }
    }
}

/// The identity a record ends in, following merges (bounded by the identities held).
fn identity_of(end: &EmpiFinal, key: &str) -> Option<MasterId> {
    let mut at = end.records.get(key)?.master;
    for _ in 0..=end.masters.len() {
        match end.masters.get(&at).and_then(|m| m.merged_into) {
            Some(next) => at = next,
            None => break,
        }
    }
    Some(at)
}

fn steward(history: &[EmpiOp], end: &EmpiFinal, out: &mut Out) {
    let actions: Vec<(&EmpiOp, &String, &String, bool)> = history
        .iter()
        .filter_map(|op| match &op.action {
            EmpiAction::Steward { a, b, link } => Some((op, a, b, *link)),
            _ => None,
        })
        .collect();
    let pair = |a: &String, b: &String| {
        if a < b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        }
    };
    let pairs: BTreeSet<(String, String)> = actions.iter().map(|(_, a, b, _)| pair(a, b)).collect();
    for (a, b) in pairs {
        let on_pair = |x: &String, y: &String| pair(x, y) == (a.clone(), b.clone());
        let Some(&(last, _, _, link)) = actions
            .iter()
            .filter(|(op, x, y, _)| op.result.is_ok() && on_pair(x, y))
            .max_by_key(|(op, ..)| op.completed_us)
        else {
            continue;
        };
        // Could `op` have taken effect after `last`? Failed ones may, at any time.
        let after = |op: &EmpiOp| op.result.is_err() || (!std::ptr::eq(op, last) && op.completed_us >= last.invoked_us);
        let doubt = actions.iter().any(|(op, x, y, l)| {
            let opposite = on_pair(x, y) && *l != link;
            // An unlink of another pair moves its second record, which may be one of these.
            let moves_one = !on_pair(x, y) && !*l && link && (**y == a || **y == b);
            (opposite || moves_one) && after(op)
        });
        // A write of either record placed before the constraint reached its shard may land
        // after the steward's call (an unknown outcome, or one running concurrently): it may
        // join an unlinked record back, or have moved a record the link then missed.
        let rewritten = history.iter().any(|op| {
            after(op)
                && written(op)
                    .iter()
                    .any(|(r, _)| r.key_string() == a || r.key_string() == b)
        });
        if doubt || rewritten {
            continue;
        }
        let (Some(ma), Some(mb)) = (identity_of(end, &a), identity_of(end, &b)) else {
            continue;
        };
        if link && ma != mb {
            out.push(
                "steward",
                format!(
                    "records {a} and {b} end in identities {ma} and {mb}, though their last steward action, a link acknowledged at {}us, joined them",
                    last.completed_us
                ),
            );
        }
        if !link && ma == mb {
            out.push(
                "steward",
                format!(
                    "records {a} and {b} end in one identity {ma}, though their last steward action, an unlink acknowledged at {}us, separated them",
                    last.completed_us
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_client::Upserted;
    use plexus_proto::ErrorReply;

    fn person(key: &str, given: &str) -> PersonRecord {
        let (source, id) = key.split_once(':').unwrap_or(("S", key));
        PersonRecord {
            source: source.into(),
            source_id: id.into(),
            given_name: Some(given.into()),
            ..PersonRecord::default()
        }
    }

    fn op(client: u64, action: EmpiAction, at: u64, result: Result<EmpiOutcome, ErrorReply>) -> EmpiOp {
        EmpiOp {
            client,
            action,
            invoked_us: at,
            completed_us: at + 10,
            result,
        }
    }

    fn upserted(key: &str, master: MasterId) -> Result<EmpiOutcome, ErrorReply> {
        Ok(EmpiOutcome::Upserted(Upserted {
            key: key.into(),
            master,
            created: false,
            merged: Vec::new(),
        }))
    }

    fn steward(a: &str, b: &str, link: bool) -> EmpiAction {
        EmpiAction::Steward {
            a: a.into(),
            b: b.into(),
            link,
        }
    }

    fn timeout() -> ErrorReply {
        ErrorReply::Timeout("t".into())
    }

    fn event(seq: u64, master: MasterId, record: Option<&str>, kind: EmpiEventKind) -> EmpiEvent {
        EmpiEvent {
            shard: 0,
            seq,
            master,
            record: record.map(String::from),
            kind,
            millis: seq,
        }
    }

    fn master(id: MasterId, members: &[&str], merged_into: Option<MasterId>) -> (MasterId, EmpiMaster) {
        let m = EmpiMaster {
            id,
            members: members.iter().map(|m| m.to_string()).collect(),
            created_millis: 1,
            merged_into,
        };
        (id, m)
    }

    /// A consistent history and end: A:1 and A:2 linked by a steward in identity 10 (A:2 came
    /// through identity 30, merged into 10), B:1 alone in 20, one shard.
    fn scene() -> (Vec<EmpiOp>, EmpiFinal) {
        let log = vec![
            event(1, 10, Some("A:1"), EmpiEventKind::Created),
            event(2, 30, Some("A:2"), EmpiEventKind::Created),
            event(3, 30, None, EmpiEventKind::Merged { into: 10 }),
            event(4, 10, Some("A:2"), EmpiEventKind::Linked),
            event(5, 20, Some("B:1"), EmpiEventKind::Created),
        ];
        let history = vec![
            op(1, EmpiAction::Upsert(person("A:1", "ann")), 100, upserted("A:1", 10)),
            op(1, EmpiAction::Upsert(person("A:2", "anne")), 200, upserted("A:2", 30)),
            op(1, EmpiAction::Upsert(person("B:1", "bob")), 300, upserted("B:1", 20)),
            op(1, steward("A:1", "A:2", true), 400, Ok(EmpiOutcome::Done)),
            op(
                2,
                EmpiAction::Events { cursor: String::new() },
                150,
                Ok(EmpiOutcome::Events(log[..2].to_vec(), "c".into())),
            ),
            op(
                2,
                EmpiAction::Events { cursor: "c".into() },
                500,
                Ok(EmpiOutcome::Events(log[2..].to_vec(), "d".into())),
            ),
        ];
        let record = |key: &str, given: &str, master: MasterId| EmpiRecord {
            record: person(key, given),
            master,
            links: Vec::new(),
            unlinks: Vec::new(),
            blocks: Vec::new(),
            updated_millis: 1,
        };
        let end = EmpiFinal {
            shard_count: 1,
            records: BTreeMap::from([
                ("A:1".to_string(), record("A:1", "ann", 10)),
                ("A:2".to_string(), record("A:2", "anne", 10)),
                ("B:1".to_string(), record("B:1", "bob", 20)),
            ]),
            absent: BTreeSet::new(),
            masters: BTreeMap::from([
                master(10, &["A:1", "A:2"], None),
                master(20, &["B:1"], None),
                master(30, &[], Some(10)),
            ]),
            events: BTreeMap::from([(0, (1, log))]),
            pending: 0,
            unread: Vec::new(),
        };
        (history, end)
    }

    fn one_containing(found: &[String], what: &str) {
        assert!(
            found.iter().any(|v| v.contains(what)),
            "no violation says {what:?}: {found:#?}"
        );
    }

    #[test]
    fn a_consistent_run_passes() {
        let (history, end) = scene();
        assert_eq!(check(&history, &end), Vec::<String>::new());
    }

    #[test]
    fn a_lost_or_altered_record_is_caught_and_unknown_outcomes_are_allowed() {
        let (mut history, mut end) = scene();
        let b = end.records.remove("B:1").unwrap();
        end.absent.insert("B:1".into());
        one_containing(&check(&history, &end), "record B:1 is missing");
        end.absent.clear();
        end.records.insert("B:1".into(), b);
        end.records.get_mut("B:1").unwrap().record.given_name = Some("rob".into());
        one_containing(
            &check(&history, &end),
            "record B:1 holds fields no write could have left last",
        );
        // A write of those fields that timed out may have applied, even before the last ack.
        history.insert(0, op(1, EmpiAction::Upsert(person("B:1", "rob")), 50, Err(timeout())));
        assert!(check(&history, &end).is_empty());
        // An earlier acknowledged write cannot be the last one.
        history[0].result = upserted("B:1", 20);
        one_containing(&check(&history, &end), "holds fields");
        // A batch record refused is an unknown outcome too; one answered `Linked` an ack.
        let batch = vec![person("C:1", "cy")];
        let refused = EmpiIngested::Refused {
            key: "C:1".into(),
            reason: "r".into(),
        };
        history[0] = op(
            1,
            EmpiAction::Ingest(batch),
            50,
            Ok(EmpiOutcome::Ingested(vec![refused])),
        );
        end.records.get_mut("B:1").unwrap().record.given_name = Some("bob".into());
        end.absent.insert("C:1".into());
        assert!(check(&history, &end).is_empty());
        if let Ok(EmpiOutcome::Ingested(o)) = &mut history[0].result {
            o[0] = EmpiIngested::Linked {
                key: "C:1".into(),
                master: 40,
            };
        }
        one_containing(&check(&history, &end), "record C:1 is missing");
    }

    #[test]
    fn a_record_nobody_wrote_is_caught() {
        let (history, mut end) = scene();
        let mut stray = end.records["B:1"].clone();
        stray.record = person("Z:9", "zed");
        end.records.insert("Z:9".into(), stray);
        end.masters.get_mut(&20).unwrap().members.push("Z:9".into());
        one_containing(&check(&history, &end), "record Z:9 exists, but no client wrote it");
    }

    #[test]
    fn broken_identities_are_caught() {
        let (history, end) = scene();
        let mut e = end.clone();
        e.records.get_mut("A:2").unwrap().master = 30;
        one_containing(
            &check(&history, &e),
            "record A:2 names identity 30, which was merged into",
        );
        e.records.get_mut("A:2").unwrap().master = 99;
        one_containing(
            &check(&history, &e),
            "record A:2 names identity 99, which does not exist",
        );
        let mut e = end.clone();
        e.records.get_mut("A:2").unwrap().master = 20;
        let found = check(&history, &e);
        one_containing(&found, "record A:2 names identity 20, which does not list it");
        one_containing(&found, "identity 10 lists record A:2, which names identity 20");
        let mut e = end.clone();
        e.masters.get_mut(&30).unwrap().members.push("A:2".into());
        one_containing(&check(&history, &e), "identity 30 was merged but still lists");
        let mut e = end;
        e.masters.get_mut(&20).unwrap().members.push("Q:1".into());
        one_containing(
            &check(&history, &e),
            "identity 20 lists record Q:1, which does not exist",
        );
    }

    #[test]
    fn a_gap_a_repeat_or_a_foreign_event_in_the_stream_is_caught() {
        let (mut history, end) = scene();
        let log = end.events[&0].1.clone();
        let page = |events: &[EmpiEvent]| Ok(EmpiOutcome::Events(events.to_vec(), "x".into()));
        history[5].result = page(&log[3..]);
        one_containing(
            &check(&history, &end),
            "got event 4 of shard 0 where 3 was next (a gap)",
        );
        history[5].result = page(&log[1..]);
        one_containing(
            &check(&history, &end),
            "got event 2 of shard 0 where 3 was next (a repeat)",
        );
        let mut other = log[2..].to_vec();
        other[0].kind = EmpiEventKind::Merged { into: 20 };
        history[5].result = page(&other);
        one_containing(&check(&history, &end), "but the final log of shard 0 holds");
        let mut beyond = log[2..].to_vec();
        beyond.push(event(6, 20, Some("B:2"), EmpiEventKind::Linked));
        history[5].result = page(&beyond);
        one_containing(&check(&history, &end), "holds None there");
        // A failed page is skipped: the next one continues from the same cursor.
        history[5].result = Err(timeout());
        assert!(check(&history, &end).is_empty());
    }

    #[test]
    fn members_the_events_do_not_explain_are_caught() {
        let (_, end) = scene();
        let mut e = end.clone();
        // The log misses A:2's join of 10 (and the subscriber saw what the log holds).
        let log = &mut e.events.get_mut(&0).unwrap().1;
        log.remove(3);
        for (i, ev) in log.iter_mut().enumerate() {
            ev.seq = i as u64 + 1;
        }
        let found = check(&[], &e);
        one_containing(
            &found,
            "identity 10 holds 2 members merged into None, but its events give 1",
        );
        let mut e = end.clone();
        e.events.get_mut(&0).unwrap().1[2].kind = EmpiEventKind::Merged { into: 20 };
        one_containing(&check(&[], &e), "identity 30 holds 0 members merged into Some(10)");
        let mut e = end.clone();
        e.events
            .get_mut(&0)
            .unwrap()
            .1
            .push(event(6, 20, Some("B:1"), EmpiEventKind::Created));
        one_containing(&check(&[], &e), "identity 20 was created 2 times");
        let mut e = end;
        e.events.get_mut(&0).unwrap().1[4].seq = 7;
        one_containing(
            &check(&[], &e),
            "the final log of shard 0 holds event 7 of shard 0 at position 5",
        );
    }

    #[test]
    fn a_steward_action_that_does_not_hold_is_caught_unless_in_doubt() {
        let (mut history, mut end) = scene();
        // A:1 and A:2 were linked but end apart.
        end.records.get_mut("A:2").unwrap().master = 20;
        end.masters.get_mut(&10).unwrap().members = vec!["A:1".into()];
        end.masters.get_mut(&20).unwrap().members = vec!["A:2".into(), "B:1".into()];
        let found = check(&history, &end);
        one_containing(&found, "records A:1 and A:2 end in identities 10 and 20");
        assert!(
            found.iter().all(|v| !v.contains("structure") && !v.contains("names")),
            "{found:#?}"
        );
        // An unlink of the pair that timed out may have applied after the link.
        history.push(op(1, steward("A:2", "A:1", false), 600, Err(timeout())));
        assert!(!check(&history, &end).iter().any(|v| v.contains("records A:1")));
        // So may a write of A:2 that timed out (its fields are the ones held), or one that ran
        // concurrently with the link; one answered before the link began may not.
        history.pop();
        history.push(op(1, EmpiAction::Upsert(person("A:2", "anne")), 600, Err(timeout())));
        assert!(!check(&history, &end).iter().any(|v| v.contains("records A:1")));
        history.pop();
        history.push(op(
            1,
            EmpiAction::Upsert(person("A:2", "anne")),
            395,
            upserted("A:2", 20),
        ));
        assert!(!check(&history, &end).iter().any(|v| v.contains("records A:1")));
        history.pop();
        history.push(op(
            1,
            EmpiAction::Upsert(person("A:2", "anne")),
            350,
            upserted("A:2", 20),
        ));
        one_containing(
            &check(&history, &end),
            "records A:1 and A:2 end in identities 10 and 20",
        );
        // An unlink of another pair moving A:2, concurrent with the link, may have split them.
        history.pop();
        history.push(op(3, steward("B:1", "A:2", false), 405, Ok(EmpiOutcome::Done)));
        assert!(!check(&history, &end).iter().any(|v| v.contains("records A:1")));
        // An acknowledged unlink after the link is the last action: then apart is right, and
        // together would be caught.
        history.pop();
        history.push(op(1, steward("A:2", "A:1", false), 600, Ok(EmpiOutcome::Done)));
        assert!(!check(&history, &end).iter().any(|v| v.contains("records A:1")));
        let (_, together) = scene();
        one_containing(
            &check(&history, &together),
            "records A:1 and A:2 end in one identity 10",
        );
    }
}
