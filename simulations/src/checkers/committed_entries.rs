//! Raft safety: committed entries never change, and every snapshot holds exactly the state of
//! the committed entries it claims to cover.
//!
//! Entries: every replica's state machine reports each entry it applies (through
//! `SimHooks::on_apply`) as `(group, index, leader id, payload hash)`; an index of a group that is
//! ever applied as two different entries — on two replicas, or on one replica before and after a
//! crash — is a violation. Only applied entries count, and an entry is applied only once
//! committed, so this is Raft's state machine safety property for everything applied one entry
//! at a time. The leader id is openraft's `(term, node)`.
//!
//! Snapshots: a replica that installs a snapshot never applies the entries it covers, so they
//! are checked through the snapshot instead. Every snapshot a state machine builds, installs or
//! loads at start-up is reported (through `SimHooks::on_snapshot`) with its last log id and the
//! hash of the state it holds (`ShardState::state_hash`). Two things must hold:
//! - its last log id is the one applied at that index (the same leader id as the entry first
//!   reported there), and
//! - its state hash equals that of a reference state machine that starts empty and applies the
//!   group's first-reported entries, in index order, up to the snapshot's index. The reference
//!   is `ShardState::apply` itself (with the run's canary, so a canary that changes what apply
//!   does is not mistaken for a snapshot bug), so this checks that installing a snapshot gives
//!   the state that applying the committed log gives.
//!
//! Every index a snapshot covers must have been applied by some replica: a snapshot is built
//! only from applied state, and an install or load only carries a built one. An index the
//! replay finds missing is a violation. The replay runs after the run (`check`), from the
//! entries kept while it ran (each index's first report keeps its command).
//!
//! What it is not: a check of what the entries did to the answers clients saw (the state
//! checkers do that), or of snapshots' bytes on disk (the WAL and snapshot tests do that).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::{Entry, EntryPayload, LogId};
use plexus_core::state::{ShardState, StateLimits};
use plexus_raft::sim_hooks::{ApplyObserver, Canary, SnapshotEvent, SnapshotObserver};
use plexus_raft::types::TypeConfig;
use plexus_raft::Command;

use crate::trace::fnv1a;

/// Violations kept for the report; more are counted, not kept.
pub const CONFLICTS_KEPT_MAX: usize = 16;

/// openraft's leader id as `(term, node)`.
type Leader = (u64, u64);

/// The first report of one `(group, index)`.
#[derive(Debug)]
struct First {
    leader: Leader,
    hash: u64,
    node: u64,
    /// The command, for the reference replay; `None` for blank and membership entries, which
    /// do not touch the shard state.
    command: Option<Command>,
}

/// One reported snapshot.
#[derive(Clone, Debug)]
struct Snapshot {
    node: u64,
    group: u32,
    event: SnapshotEvent,
    /// `(index, leader)` of its last entry; `None` for a snapshot of the empty state.
    last: Option<(u64, Leader)>,
    state_hash: u64,
}

#[derive(Debug, Default)]
struct Log {
    first: BTreeMap<(u32, u64), First>,
    snapshots: Vec<Snapshot>,
    conflicts: Vec<String>,
    conflicts_total: u64,
    reports: u64,
}

impl Log {
    fn conflict(&mut self, sentence: impl FnOnce() -> String) {
        self.conflicts_total += 1;
        if self.conflicts.len() < CONFLICTS_KEPT_MAX {
            self.conflicts.push(sentence());
        }
    }
}

/// Every applied entry and every snapshot seen in a run, shared by the nodes' observers. Cheap
/// to clone.
#[derive(Clone, Debug)]
pub struct AppliedEntries {
    log: Arc<Mutex<Log>>,
    /// Shards in the cluster (the reference state's placement needs it).
    shard_count: u32,
    /// The canary the nodes run with (the reference applies with it too).
    canary: Option<Canary>,
    /// The state limits the nodes apply with (the reference applies with them too).
    limits: StateLimits,
}

fn leader_of(log_id: &LogId<u64>) -> Leader {
    (log_id.leader_id.term, log_id.leader_id.node_id)
}

fn event_name(event: SnapshotEvent) -> &'static str {
    match event {
        SnapshotEvent::Built => "built",
        SnapshotEvent::Installed => "installed",
        SnapshotEvent::Loaded => "loaded",
    }
}

impl AppliedEntries {
    /// An empty record for a cluster of `shard_count` shards whose nodes run with `canary` and
    /// apply with `limits`.
    pub fn new(shard_count: u32, canary: Option<Canary>, limits: StateLimits) -> Self {
        Self {
            log: Arc::default(),
            shard_count,
            canary,
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // Only ever updated by whole assignments under the lock; a poisoned log is still usable.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The observer through which node `node` reports every entry it applies.
    pub fn apply_observer(&self, node: u64) -> ApplyObserver {
        let applied = self.clone();
        Arc::new(move |group, entry: &Entry<TypeConfig>| {
            // Encoding into a Vec cannot fail for these types; an empty encoding would only make
            // conflicting entries look equal, never equal ones look different.
            let bytes = postcard::to_allocvec(&entry.payload).unwrap_or_default();
            let hash = fnv1a(0xcbf2_9ce4_8422_2325, &bytes);
            let command = match &entry.payload {
                EntryPayload::Normal(command) => Some(command),
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            };
            applied.record(node, group, entry.log_id, hash, command);
        })
    }

    /// The observer through which node `node` reports every snapshot it builds, installs or
    /// loads.
    pub fn snapshot_observer(&self, node: u64) -> SnapshotObserver {
        let applied = self.clone();
        Arc::new(move |group, event, last, state_hash| applied.record_snapshot(node, group, event, last, state_hash))
    }

    /// Records that `node` applied, in `group`, the entry `log_id` whose payload hashes to `hash`
    /// (`command` is its command, if it has one).
    pub fn record(&self, node: u64, group: u32, log_id: LogId<u64>, hash: u64, command: Option<&Command>) {
        let mut log = self.lock();
        log.reports += 1;
        let index = log_id.index;
        let leader = leader_of(&log_id);
        let first = match log.first.get(&(group, index)) {
            Some(f) => (f.leader, f.hash, f.node),
            None => {
                let command = command.cloned();
                log.first.insert(
                    (group, index),
                    First {
                        leader,
                        hash,
                        node,
                        command,
                    },
                );
                return;
            }
        };
        if (first.0, first.1) != (leader, hash) {
            log.conflict(|| {
                format!(
                    "group {group} index {index} was applied as term {} leader {} entry {:016x} on node {} and as \
                     term {} leader {} entry {hash:016x} on node {node}",
                    first.0 .0, first.0 .1, first.1, first.2, leader.0, leader.1
                )
            });
        }
    }

    /// Records that `node`'s state machine of `group` built, installed or loaded (`event`) a
    /// snapshot up to `last` whose state hashes to `state_hash`.
    pub fn record_snapshot(
        &self,
        node: u64,
        group: u32,
        event: SnapshotEvent,
        last: Option<LogId<u64>>,
        state_hash: u64,
    ) {
        self.lock().snapshots.push(Snapshot {
            node,
            group,
            event,
            last: last.map(|l| (l.index, leader_of(&l))),
            state_hash,
        });
    }

    /// Entry reports received (every replica's applies, re-applies after restarts included).
    pub fn reports(&self) -> u64 {
        self.lock().reports
    }

    /// Snapshot reports received: how many were built, installed and loaded.
    pub fn snapshot_reports(&self) -> [u64; 3] {
        let mut counts = [0; 3];
        for s in &self.lock().snapshots {
            let slot = match s.event {
                SnapshotEvent::Built => 0,
                SnapshotEvent::Installed => 1,
                SnapshotEvent::Loaded => 2,
            };
            counts[slot] += 1;
        }
        counts
    }
}

/// Checks what the run's replicas applied and the snapshots they built, installed and loaded.
pub fn check(applied: &AppliedEntries) -> Vec<String> {
    let mut log = applied.lock();
    let mut per_group: BTreeMap<u32, Vec<Snapshot>> = BTreeMap::new();
    for s in &log.snapshots {
        per_group.entry(s.group).or_default().push(s.clone());
    }
    for (group, mut snapshots) in per_group {
        snapshots.sort_by_key(|s| s.last.map(|(index, _)| index));
        replay(applied, &mut log, group, &snapshots);
    }
    let mut violations = log.conflicts.clone();
    let more = log.conflicts_total.saturating_sub(log.conflicts.len() as u64);
    if more > 0 {
        violations.push(format!("and {more} more applied entries or snapshots conflict"));
    }
    violations
}

/// Replays `group`'s first-reported entries into a reference state and compares every snapshot
/// (sorted by index) with it.
fn replay(applied: &AppliedEntries, log: &mut Log, group: u32, snapshots: &[Snapshot]) {
    let mut reference = ShardState::new(group, applied.shard_count, applied.limits.clone());
    reference.set_canary(applied.canary);
    // The next index the replay expects, and the state hash at the last index replayed (cached:
    // several snapshots often share an index).
    let mut next: Option<u64> = None;
    let mut hash_at: Option<(Option<u64>, u64)> = None;
    let mut conflicts = Vec::new();
    for s in snapshots {
        let upto = s.last.map(|(index, _)| index);
        let what = || {
            let at = match s.last {
                Some((index, (term, leader))) => format!("up to index {index} (term {term} leader {leader})"),
                None => "of the empty state".to_string(),
            };
            format!(
                "node {} {} a snapshot of group {group} {at}",
                s.node,
                event_name(s.event)
            )
        };
        if let Some((index, leader)) = s.last {
            match log.first.get(&(group, index)) {
                Some(f) if f.leader != leader => {
                    conflicts.push(format!(
                        "{}, but index {index} was applied as term {} leader {} on node {}",
                        what(),
                        f.leader.0,
                        f.leader.1,
                        f.node
                    ));
                    continue;
                }
                _ => {}
            }
        }
        if hash_at.map(|(at, _)| at) != Some(upto) {
            // Advance the reference to `upto`, from wherever it is.
            let mut missing = None;
            if let Some(upto) = upto {
                let from = next.unwrap_or_else(|| {
                    log.first
                        .range((group, 0)..=(group, upto))
                        .next()
                        .map_or(0, |((_, i), _)| *i)
                });
                for index in from..=upto {
                    let Some(f) = log.first.get(&(group, index)) else {
                        missing = Some(index);
                        break;
                    };
                    if let Some(command) = &f.command {
                        // A refused command (its answer is an error) leaves the state as it was,
                        // on every replica alike; the answer is not what is compared here.
                        let _ = reference.apply(index, command);
                    }
                    next = Some(index + 1);
                }
            }
            if let Some(index) = missing {
                conflicts.push(format!("{}, but no replica applied index {index}", what()));
                // The replay cannot pass the hole; later snapshots of this group are unchecked.
                break;
            }
            hash_at = Some((upto, reference.state_hash()));
        }
        let expected = hash_at.map_or(0, |(_, h)| h);
        if s.state_hash != expected {
            conflicts.push(format!(
                "{} whose state hash {:016x} differs from {expected:016x}, the state that the group's applied \
                 entries give up to that index",
                what(),
                s.state_hash
            ));
        }
    }
    for c in conflicts {
        log.conflict(|| c);
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use plexus_proto::WriteOp;

    use super::*;

    fn id(term: u64, leader: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, leader), index)
    }

    #[test]
    fn one_index_two_entries_is_caught_and_repeats_are_fine() {
        let applied = AppliedEntries::new(4, None, StateLimits::default());
        applied.record(1, 3, id(2, 1, 10), 0xaa, None);
        applied.record(2, 3, id(2, 1, 10), 0xaa, None);
        applied.record(1, 3, id(2, 1, 10), 0xaa, None);
        applied.record(1, 4, id(5, 2, 10), 0xbb, None);
        assert!(check(&applied).is_empty());
        applied.record(3, 3, id(3, 3, 10), 0xcc, None);
        assert_eq!(
            check(&applied),
            vec![
                "group 3 index 10 was applied as term 2 leader 1 entry 00000000000000aa on node 1 and as term 3 \
                 leader 3 entry 00000000000000cc on node 3"
                    .to_string()
            ]
        );
        assert_eq!(applied.reports(), 5);
    }

    fn append(owner: u64, item: &str) -> Command {
        Command::Client {
            session: None,
            op: WriteOp::TimelineAppend {
                owner,
                item: item.as_bytes().to_vec(),
            },
            now_millis: 1_700_000_000_000,
        }
    }

    /// Group 0's state after applying `commands` at indexes 1, 2, ...
    fn state_after(commands: &[Command]) -> u64 {
        let mut s = ShardState::new(0, 1, StateLimits::default());
        for (i, c) in commands.iter().enumerate() {
            let _ = s.apply(i as u64 + 1, c);
        }
        s.state_hash()
    }

    #[test]
    fn a_snapshot_must_hold_the_state_of_the_entries_it_covers() {
        let (a, b, c) = (append(7, "a"), append(7, "b"), append(7, "c"));
        let applied = AppliedEntries::new(1, None, StateLimits::default());
        // Node 1 applies indexes 1..=3 one by one; node 2 installs a snapshot up to index 2.
        for (i, cmd) in [&a, &b, &c].into_iter().enumerate() {
            applied.record(1, 0, id(1, 1, i as u64 + 1), i as u64, Some(cmd));
        }
        let empty = ShardState::new(0, 1, StateLimits::default()).state_hash();
        applied.record_snapshot(2, 0, SnapshotEvent::Loaded, None, empty);
        applied.record_snapshot(
            2,
            0,
            SnapshotEvent::Installed,
            Some(id(1, 1, 2)),
            state_after(&[a.clone(), b.clone()]),
        );
        applied.record_snapshot(
            1,
            0,
            SnapshotEvent::Built,
            Some(id(1, 1, 3)),
            state_after(&[a.clone(), b.clone(), c.clone()]),
        );
        assert_eq!(check(&applied), Vec::<String>::new());
        assert_eq!(applied.snapshot_reports(), [1, 1, 1]);

        // A snapshot that claims index 2 but holds the state after index 3 (a builder that read
        // the state after it had moved on), one whose last entry is not the one applied there,
        // and one past anything applied.
        applied.record_snapshot(
            3,
            0,
            SnapshotEvent::Built,
            Some(id(1, 1, 2)),
            state_after(&[a.clone(), b, c]),
        );
        applied.record_snapshot(3, 0, SnapshotEvent::Installed, Some(id(2, 3, 3)), 0);
        applied.record_snapshot(2, 0, SnapshotEvent::Loaded, Some(id(1, 1, 5)), 0);
        let expected_at_2 = format!("{:016x}", state_after(&[a.clone(), append(7, "b")]));
        let violations = check(&applied);
        assert_eq!(violations.len(), 3, "{violations:#?}");
        assert!(
            violations[0]
                .starts_with("node 3 built a snapshot of group 0 up to index 2 (term 1 leader 1) whose state hash")
                && violations[0].contains(&format!("differs from {expected_at_2}")),
            "{}",
            violations[0]
        );
        assert_eq!(
            violations[1],
            "node 3 installed a snapshot of group 0 up to index 3 (term 2 leader 3), but index 3 was applied as term \
             1 leader 1 on node 1"
        );
        assert_eq!(
            violations[2],
            "node 2 loaded a snapshot of group 0 up to index 5 (term 1 leader 1), but no replica applied index 4"
        );
    }
}
