//! The lease probe: a fault that tests the leader read lease where it could go wrong.
//!
//! What it is: `probe` cuts a node that leads a group off from every peer while clients can
//! still reach it (clients sit outside every partition), waits for another replica to win an
//! election in a later term, appends a fresh entry to a probe timeline of that group through the
//! new leader, and once that append is acknowledged asks the cut-off node for a linearizable
//! read of the same timeline. An answer that lacks the acknowledged entry is a stale
//! linearizable read: a violation. It comes in two variants, one per rule the lease rests on:
//!
//! - isolation: the leader is cut off out of the blue, and its successor wins an ordinary
//!   election. A correct lease (`read_lease_ms`, at most half the shortest election timeout)
//!   ran out before any voter of its quorum would stand, so the cut-off node must confirm its
//!   leadership with a quorum it cannot reach, and the read fails. The `lease-too-long` canary
//!   (a lease twenty times as long) is what this variant catches.
//! - handover: the leader hands the group to a follower (`hand_over_to`, as a graceful stop or
//!   the balancer does), and is cut off the moment the follower stands. The transfer election
//!   skips the followers' lease, so the successor may win and take writes while the old
//!   leader's lease still runs: a correct leader stops using its lease for the handover and two
//!   election timeouts after it. The `lease-ignores-handover` canary is what it catches.
//!
//! Why a fault of its own: the workload's reads are spread over every key, so a read that lands
//! on a cut-off leader, for a key the new leader has just written, and after that write was
//! acknowledged, is too rare for the history checkers to see a broken lease.
//!
//! What it is not: a client. The probe calls the nodes' gateways (`NodeCore::execute`) directly,
//! as a client outside the partition would, and its timelines (owners from
//! [`PROBE_OWNER_BASE`]) are not in the workload's history; only this check reads them.

use std::time::Duration;

use plexus_proto::{Consistency, Cursor, Op, ReadOp, Reply, Request, Response, WriteOp};
use rand::rngs::StdRng;
use rand::Rng;

use crate::cluster::Cluster;
use crate::trace::Trace;

/// Probe timelines' owners start here, far from every workload key.
pub const PROBE_OWNER_BASE: u64 = 1 << 40;
/// Owner ids tried per probe to find one that maps to the probed group.
pub const PROBE_OWNERS_TRIED_MAX: u64 = 1 << 16;
/// How often the probe looks for its target standing (the old leader is cut off right after,
/// before the candidate's vote request can reach it) and for the new leader (the old leader's
/// lease, if it wrongly holds one, is running out meanwhile).
const POLL: Duration = Duration::from_millis(1);
/// How long the warm-up write through the probed leader may take.
const WARM_WRITE_WAIT: Duration = Duration::from_millis(1_000);
/// Entries a probe read asks for: the acknowledged entry is the newest, so one is enough.
const READ_PAGE_ENTRIES: u32 = 1;

/// One probe: cuts off `node` from its peers until `deadline` (virtual time), at once or (one
/// probe in two) when the follower it hands a group to stands, and checks that it serves no
/// stale linearizable read meanwhile. Heals the network before it returns. `n` numbers the
/// probe within the run (it picks the probe timeline). Returns a violation, if any.
pub async fn probe(
    cluster: &Cluster,
    node: u64,
    n: u64,
    deadline: tokio::time::Instant,
    rng: &mut StdRng,
    trace: &Trace,
) -> Option<String> {
    let registry = cluster.registry(node)?;
    // Shard groups only: the meta group holds no timelines to probe.
    let shard_count = cluster.shard_count();
    let led: Vec<_> = registry
        .led_replicas()
        .into_iter()
        .filter(|r| r.status().shard < shard_count)
        .collect();
    if led.is_empty() {
        trace.event(format_args!("fault lease probe skipped: node {node} leads no group"));
        return None;
    }
    let replica = &led[rng.gen_range(0..led.len())];
    let status = replica.status();
    let (group, term) = (status.shard, status.term);
    let followers: Vec<u64> = status.replicas.iter().copied().filter(|r| *r != node).collect();
    let handover_to =
        (rng.gen_bool(0.5) && !followers.is_empty()).then(|| followers[rng.gen_range(0..followers.len())]);
    let Some(owner) = (0..PROBE_OWNERS_TRIED_MAX)
        .map(|i| PROBE_OWNER_BASE + n * PROBE_OWNERS_TRIED_MAX + i)
        .find(|owner| read_op(*owner).shard(shard_count) == Some(group))
    else {
        trace.event(format_args!("fault lease probe: no probe owner maps to group {group}"));
        return None;
    };
    // A leader holds a lease only while a quorum keeps acknowledging it, and a quiet group's
    // leader has heard from nobody for a while: one write through it first makes it hold one,
    // so that a broken lease has something to break.
    let warm = Op::Write(WriteOp::TimelineAppend {
        owner,
        item: format!("lease-probe-{n}-warm").into_bytes(),
    });
    let warm_deadline = tokio::time::Instant::now() + WARM_WRITE_WAIT;
    let warmed = execute(cluster, node, group, warm, warm_deadline.min(deadline)).await;
    trace.event(format_args!(
        "fault lease probe: warm-up append at node {node} -> {warmed:?}"
    ));
    let handover = match handover_to {
        None => {
            trace.event(format_args!(
                "fault lease probe: isolate node {node}, leader of group {group} in term {term}"
            ));
            cluster.isolate(node);
            None
        }
        Some(to) => {
            trace.event(format_args!(
                "fault lease probe: node {node}, leader of group {group} in term {term}, hands it to node {to}"
            ));
            let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
            let handing =
                tokio::spawn(async move { plexus_actors::handover::hand_over_to(&registry, group, to, timeout).await });
            if !standing(cluster, to, group, term, deadline, || handing.is_finished()).await {
                trace.event(format_args!("fault lease probe: node {to} did not stand"));
            }
            trace.event(format_args!("fault lease probe: isolate node {node}"));
            cluster.isolate(node);
            Some(handing)
        }
    };
    let target = Target { group, term, owner, n };
    let violation = check(cluster, node, &target, deadline, trace).await;
    if let Some(handing) = handover {
        // Bounded by its own timeout, which ends at `deadline`.
        let moved = handing.await;
        trace.event(format_args!("fault lease probe: handover -> {moved:?}"));
    }
    tokio::time::sleep_until(deadline).await;
    cluster.net.heal();
    trace.event(format_args!("fault heal"));
    violation
}

/// Waits, polling every `POLL` until `deadline` or until `over` holds (the handover
/// ended), for `node`'s replica of `group` to reach a term after `term`: it stands for
/// election. Whether it did.
async fn standing(
    cluster: &Cluster,
    node: u64,
    group: u32,
    term: u64,
    deadline: tokio::time::Instant,
    over: impl Fn() -> bool,
) -> bool {
    while tokio::time::Instant::now() < deadline && !over() {
        let replica = cluster.registry(node).and_then(|r| r.get(group));
        if replica.is_some_and(|r| r.status().term > term) {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

/// What one probe reads and writes: `group`, led by the probed node in `term`, through the probe
/// timeline of `owner`; `n` numbers the probe.
struct Target {
    group: u32,
    term: u64,
    owner: u64,
    n: u64,
}

/// The probe's work while `node` is cut off; see the module doc.
async fn check(
    cluster: &Cluster,
    node: u64,
    target: &Target,
    deadline: tokio::time::Instant,
    trace: &Trace,
) -> Option<String> {
    let Target { group, term, owner, n } = *target;
    let Some(successor) = new_leader(cluster, node, group, term, deadline).await else {
        trace.event(format_args!(
            "fault lease probe: no new leader of group {group} in time"
        ));
        return None;
    };
    let item = format!("lease-probe-{n}").into_bytes();
    let append = Op::Write(WriteOp::TimelineAppend {
        owner,
        item: item.clone(),
    });
    let written = execute(cluster, successor, group, append, deadline).await;
    trace.event(format_args!(
        "fault lease probe: append to {owner} at node {successor} -> {written:?}"
    ));
    let Some(Ok(Reply::Appended(id))) = written else {
        return None;
    };
    let acked_us = trace.now_us();
    let read = execute(cluster, node, group, read_op(owner), deadline).await;
    trace.event(format_args!(
        "fault lease probe: read of {owner} at node {node} -> {read:?}"
    ));
    match read {
        Some(Ok(Reply::Page(page))) if !page.entries.iter().any(|e| e.id == id && e.item == item) => Some(format!(
            "lease probe: node {node}, cut off from its peers, answered a linearizable read of timeline {owner} \
             (group {group}) without entry {id}, which node {successor} had acknowledged at {acked_us} us \
             as leader in a term after {term}"
        )),
        _ => None,
    }
}

/// The newest-entry read of a probe timeline.
fn read_op(owner: u64) -> Op {
    Op::Read(ReadOp::TimelineRead {
        owner,
        cursor: Cursor::Latest,
        limit: READ_PAGE_ENTRIES,
    })
}

/// The first node other than `old` found leading `group` in a term after `term`, polled every
/// `POLL` until `deadline`.
async fn new_leader(cluster: &Cluster, old: u64, group: u32, term: u64, deadline: tokio::time::Instant) -> Option<u64> {
    while tokio::time::Instant::now() < deadline {
        let found = cluster.ids().into_iter().filter(|id| *id != old).find(|id| {
            let replica = cluster.registry(*id).and_then(|r| r.get(group));
            replica.is_some_and(|r| r.is_leader() && r.status().term > term)
        });
        if found.is_some() {
            return found;
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// `op` on `group` at `node`'s gateway, as a linearizable request without a session; `None`
/// when the node is down or did not answer by `deadline`.
async fn execute(cluster: &Cluster, node: u64, group: u32, op: Op, deadline: tokio::time::Instant) -> Option<Response> {
    let core = cluster.core(node)?;
    let req = Request {
        shard: group,
        consistency: Consistency::Linearizable,
        session: None,
        op,
    };
    tokio::time::timeout_at(deadline, core.execute(req)).await.ok()
}
