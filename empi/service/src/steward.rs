//! A steward's view and hand: one record, the explanation of a pair, and manual link / unlink.
//!
//! A link records the constraint on both records (the first record's shard applies it and sends
//! it to the other's) and merges their identities, the younger into the older, whatever the
//! guard would say; automatic placement then never moves a linked record. An unlink records the
//! opposite constraint (automatic matching never puts them together again) and, if the two share
//! an identity, moves the second record to an identity of its own. Records linked to the second
//! record stay where they are: the steward splits further by unlinking them too.
//!
//! The answer comes once both records' shards hold the constraint, so an upsert of either
//! record that starts after it sees the constraint; the identities are read after that wait. A
//! link that would put two records a steward unlinked in one identity is refused, naming them.

use std::sync::Arc;
use std::time::Duration;

use plexus_actors::registry::{Registry, PATIENT_BACKOFF_MAX};
use plexus_core::Command;
use plexus_empi::context::MatchContext;
use plexus_proto::{
    master_shard_key, record_shard_key, shard_for_key, EmpiExplanation, EmpiFieldWeight, EmpiRecord, EmpiReply,
    ErrorReply, MasterId, Reply, Response, Session, EMPI_SPLIT_MEMBERS_MAX,
};

use crate::link::new_master;
use crate::reads;

fn not_found(key: &str) -> ErrorReply {
    ErrorReply::NotFound(format!("record {key}"))
}

/// `EmpiRequest::Get`.
pub(crate) async fn get(registry: &Arc<Registry>, key: String) -> Response {
    let mut found = reads::records(registry, std::slice::from_ref(&key)).await?;
    let record = found.remove(&key).ok_or_else(|| not_found(&key))?;
    Ok(Reply::Empi(EmpiReply::Record(Box::new(record))))
}

/// `EmpiRequest::Explain`: every field's level and weight, the term-frequency adjustments, the
/// prior and the total, and why the pair is or is not in one identity.
pub(crate) async fn explain(registry: &Arc<Registry>, ctx: &MatchContext, a: String, b: String) -> Response {
    let found = reads::records(registry, &[a.clone(), b.clone()]).await?;
    let (ra, rb) = match (found.get(&a), found.get(&b)) {
        (Some(x), Some(y)) => (x, y),
        (None, _) => return Err(not_found(&a)),
        (_, None) => return Err(not_found(&b)),
    };
    let (na, nb) = (ctx.normalize(&ra.record), ctx.normalize(&rb.record));
    let e = ctx.explain(&na, &nb);
    let masters = reads::masters(registry, &[ra.master, rb.master]).await?;
    let survivor = |m: u64| masters.get(&m).and_then(|x| x.merged_into).unwrap_or(m);
    let same_master = survivor(ra.master) == survivor(rb.master);
    let threshold = ctx.threshold();
    let reason = if ra.links.contains(&b) {
        "a steward linked them".to_string()
    } else if ra.unlinks.contains(&b) {
        "a steward unlinked them: automatic matching never joins them".to_string()
    } else if same_master && e.total >= threshold {
        format!(
            "linked: the weight {:.2} is at or above the threshold {threshold:.2}",
            e.total
        )
    } else if same_master {
        format!(
            "in one identity through other records (their own weight {:.2} is below the threshold {threshold:.2})",
            e.total
        )
    } else if e.total >= threshold {
        format!(
            "not linked although the weight {:.2} reaches the threshold {threshold:.2}: the clustering guard \
             (size, national id, sex or given-name rules) kept their identities apart, or they were placed before \
             one another was held",
            e.total
        )
    } else {
        format!(
            "not linked: the weight {:.2} is below the threshold {threshold:.2}",
            e.total
        )
    };
    let mut fields: Vec<EmpiFieldWeight> = e
        .fields
        .iter()
        .map(|t| EmpiFieldWeight {
            field: t.field.clone(),
            level: t.level.clone(),
            weight: t.weight,
            tf_adjustment: t.tf_adjustment,
        })
        .collect();
    // The graph term as a row of its own (its level is `null` where no embedding was computed:
    // online matching does not compute record-attribute graph embeddings yet).
    if let Some(g) = &e.graph {
        fields.push(EmpiFieldWeight {
            field: "graph".into(),
            level: match g.similarity {
                Some(s) => format!("{} ({s:.2})", g.level),
                None => g.level.clone(),
            },
            weight: g.weight,
            tf_adjustment: 0.0,
        });
    }
    let text = format!("{a} vs {b}\n{e}\n{reason}");
    Ok(Reply::Empi(EmpiReply::Explanation(Box::new(EmpiExplanation {
        a,
        b,
        fields,
        prior: e.prior,
        total: e.total,
        probability: e.probability,
        same_master,
        reason,
        text,
    }))))
}

/// `EmpiRequest::Link` (`link`) and `Unlink`. The constraint is proposed under the client's
/// `session`: a late copy of a request its client has moved past (say a link overtaken by an
/// unlink of the same pair) is refused there, before it changes anything.
pub(crate) async fn link(
    registry: &Arc<Registry>,
    a: String,
    b: String,
    link: bool,
    session: Option<Session>,
) -> Response {
    if a == b {
        return Err(ErrorReply::BadRequest(format!(
            "{a} cannot be linked or unlinked to itself"
        )));
    }
    let found = reads::records(registry, &[a.clone(), b.clone()]).await?;
    let (ra, rb) = match (found.get(&a), found.get(&b)) {
        (Some(x), Some(y)) => (x, y),
        (None, _) => return Err(not_found(&a)),
        (_, None) => return Err(not_found(&b)),
    };
    if link {
        if let Some((c, d)) = unlinked_across(registry, ra.master, rb.master, (&a, &b)).await? {
            return Err(ErrorReply::BadRequest(format!(
                "linking {a} and {b} would put {c} and {d} in one identity, which a steward unlinked: unlink {a} or {b} from its identity first, or link {c} and {d}"
            )));
        }
    }
    let now_millis = registry.clock.now_millis();
    // The pair's smaller key owns its constraint (the state machine mirrors it to the other
    // side): proposing there makes steward actions take effect in the order acknowledged.
    let (owner, other) = if a < b { (&a, &b) } else { (&b, &a) };
    let constrain = Command::EmpiConstrain {
        key: owner.clone(),
        other: other.clone(),
        link,
        now_millis,
    }
    .in_session(session);
    let owner_shard = shard_for_key(&record_shard_key(owner), registry.shard_count);
    registry
        .propose_patiently(owner_shard, constrain, registry.request_timeout)
        .await?;
    // The owner's shard sends the constraint on to the other record's; waiting for it there
    // means that from the answer on, an upsert of either record sees it. Re-reading the records
    // afterwards places the pair where they are now, not where they were before the wait: a put
    // placed before the constraint arrived has landed, and later ones keep a linked record.
    let (ra, rb) = await_both_sides(registry, owner, other, link).await?;
    let (ra, rb) = if a < b { (ra, rb) } else { (rb, ra) };
    let masters = reads::masters(registry, &[ra.master, rb.master]).await?;
    let survivor = |m: u64| masters.get(&m).and_then(|x| x.merged_into).unwrap_or(m);
    let (ma, mb) = (survivor(ra.master), survivor(rb.master));
    if link && ma != mb {
        // The younger (larger) id merges into the older, as automatic merges do: one order
        // everywhere, so merges never close a cycle.
        let (from, into) = (ma.max(mb), ma.min(mb));
        let shard = shard_for_key(&master_shard_key(from), registry.shard_count);
        registry
            .propose_patiently(
                shard,
                Command::EmpiMerge { from, into, now_millis },
                registry.request_timeout,
            )
            .await?;
    }
    if !link && ma == mb {
        let shard_b = shard_for_key(&record_shard_key(&b), registry.shard_count);
        let cmd = Command::EmpiReassign {
            key: b.clone(),
            master: new_master(&b, now_millis),
            now_millis,
        };
        registry
            .propose_patiently(shard_b, cmd, registry.request_timeout)
            .await?;
    }
    Ok(Reply::Empi(EmpiReply::Done))
}

/// `EmpiRequest::Split`: the record is unlinked from every other member of its identity, one
/// steward unlink at a time (the first moves it to an identity of its own; the rest keep the
/// others from ever taking it back), and its identity then is the answer. Not under a session:
/// it is several writes, and doing it again changes nothing.
pub(crate) async fn split(registry: &Arc<Registry>, key: String) -> Response {
    let mut found = reads::records(registry, std::slice::from_ref(&key)).await?;
    let record = found.remove(&key).ok_or_else(|| not_found(&key))?;
    let masters = reads::masters(registry, &[record.master]).await?;
    let mut others: Vec<String> = masters
        .get(&record.master)
        .map(|m| m.members.iter().filter(|k| **k != key).cloned().collect())
        .unwrap_or_default();
    if others.len() > EMPI_SPLIT_MEMBERS_MAX {
        return Err(ErrorReply::BadRequest(format!(
            "{key}'s identity has {} other members, more than a split unlinks ({EMPI_SPLIT_MEMBERS_MAX}): unlink them in steps",
            others.len()
        )));
    }
    // The identity's member list may lag a record that just moved in; the record itself is the
    // authority on where it is, and each unlink reads both records again before it moves one.
    others.sort();
    for other in &others {
        // `other` first: an unlink moves its second record, this one, and never `other`.
        link(registry, other.clone(), key.clone(), false, None).await?;
    }
    let mut found = reads::records(registry, std::slice::from_ref(&key)).await?;
    let record = found.remove(&key).ok_or_else(|| not_found(&key))?;
    Ok(Reply::Empi(EmpiReply::Split {
        key,
        master: record.master,
        unlinked: others,
    }))
}

/// Waits until the other record's side holds the owner's constraint on the pair (or the owner
/// no longer does: a later steward action superseded it), up to the request timeout; then the
/// owner's and the other record, read at their leaders.
async fn await_both_sides(
    registry: &Arc<Registry>,
    owner: &str,
    other: &str,
    link: bool,
) -> Result<(EmpiRecord, EmpiRecord), ErrorReply> {
    let holds = |r: &EmpiRecord, k: &str| {
        let list = if link { &r.links } else { &r.unlinks };
        list.iter().any(|x| x == k)
    };
    let keys = [owner.to_string(), other.to_string()];
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(5);
    loop {
        let mut found = reads::records(registry, &keys).await?;
        let (Some(ro), Some(rx)) = (found.remove(owner), found.remove(other)) else {
            return Err(ErrorReply::NotFound(format!("record {owner} or {other}")));
        };
        if !holds(&ro, other) || holds(&rx, owner) {
            return Ok((ro, rx));
        }
        if started.elapsed() + wait >= registry.request_timeout {
            return Err(ErrorReply::Timeout(format!(
                "the constraint on {owner} and {other} did not reach {other}'s shard in time (it holds at {owner}'s)"
            )));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(PATIENT_BACKOFF_MAX);
    }
}

/// A pair of records, one in each of the identities `x` and `y` stand for now (other than the
/// pair being linked), that a steward unlinked: linking would join them.
async fn unlinked_across(
    registry: &Arc<Registry>,
    x: MasterId,
    y: MasterId,
    linking: (&String, &String),
) -> Result<Option<(String, String)>, ErrorReply> {
    let masters = reads::masters(registry, &[x, y]).await?;
    let survivor = |m: MasterId| masters.get(&m).and_then(|e| e.merged_into).unwrap_or(m);
    let (sx, sy) = (survivor(x), survivor(y));
    if sx == sy {
        return Ok(None);
    }
    let live = reads::masters(registry, &[sx, sy]).await?;
    let members = |m: MasterId| live.get(&m).map(|e| e.members.clone()).unwrap_or_default();
    let (mx, my) = (members(sx), members(sy));
    let keys: Vec<String> = mx.iter().chain(&my).cloned().collect();
    let records = reads::records(registry, &keys).await?;
    let same = |c: &String, d: &String| (c, d) == linking || (d, c) == linking;
    for c in &mx {
        let Some(r) = records.get(c) else { continue };
        if let Some(d) = r.unlinks.iter().find(|d| my.contains(d) && !same(c, d)) {
            return Ok(Some((c.clone(), d.clone())));
        }
    }
    Ok(None)
}
