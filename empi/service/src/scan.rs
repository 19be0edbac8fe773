//! Reads over every shard: identities in id order, and the change-event stream.
//!
//! Change events are logged on each identity's shard, numbered per shard without gaps. A
//! subscriber's cursor holds the next number it wants from every shard (`e1:N0,N1,...`), so a
//! page never repeats or skips an event, whichever nodes serve it and however long the
//! subscriber was away, as long as the shards still hold the events: a cursor behind a shard's
//! retention gets a clear error naming how many events were dropped, never a silent gap.

use std::collections::BTreeMap;
use std::sync::Arc;

use plexus_actors::registry::Registry;
use plexus_proto::{
    EmpiEvent, EmpiEventPage, EmpiMaster, EmpiRead, EmpiReply, EmpiState, ErrorReply, MasterId, ReadOp, Reply, Response,
};

use crate::reads::{read_many, unexpected, Fresh};

/// Version tag of the event cursor.
const CURSOR_TAG: &str = "e1:";

/// Parses a cursor for `shards` shards (empty: every shard from its first event).
pub(crate) fn parse_cursor(cursor: &str, shards: u32) -> Result<Vec<u64>, String> {
    if cursor.is_empty() {
        return Ok(vec![1; shards as usize]);
    }
    let body = cursor
        .strip_prefix(CURSOR_TAG)
        .ok_or_else(|| format!("{cursor:?} is not an event cursor (e1:...)"))?;
    let next: Vec<u64> = body
        .split(',')
        .map(|n| n.parse::<u64>().ok().filter(|n| *n >= 1))
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| format!("{cursor:?} is not an event cursor (e1:...)"))?;
    if next.len() != shards as usize {
        return Err(format!(
            "the cursor names {} shards; this cluster has {shards}",
            next.len()
        ));
    }
    Ok(next)
}

/// The cursor text.
pub(crate) fn cursor_text(next: &[u64]) -> String {
    let parts: Vec<String> = next.iter().map(u64::to_string).collect();
    format!("{CURSOR_TAG}{}", parts.join(","))
}

/// `EmpiRequest::Events`: up to `limit` events after the cursor, shard by shard.
pub(crate) async fn events(registry: &Arc<Registry>, cursor: &str, limit: u32) -> Response {
    let shards = registry.shard_count;
    let mut next = parse_cursor(cursor, shards).map_err(ErrorReply::BadRequest)?;
    let reads = (0..shards)
        .map(|s| {
            let op = ReadOp::Empi(EmpiRead::Events {
                shard: s,
                from_seq: next[s as usize],
                limit,
            });
            (s, op)
        })
        .collect();
    let mut events: Vec<EmpiEvent> = Vec::new();
    for (s, r) in read_many(registry, reads, Fresh::Stale).await.into_iter().enumerate() {
        let page = match r? {
            Reply::EmpiState(EmpiState::Events(p)) => p,
            other => return Err(unexpected("an events read", other)),
        };
        let EmpiEventPage {
            events: got,
            first_retained,
            ..
        } = page;
        if first_retained > next[s] {
            return Err(ErrorReply::BadRequest(format!(
                "events {}..{} of shard {s} were dropped by retention before this cursor read them; \
                 start again from an empty cursor and reconcile with `empi clusters`",
                next[s],
                first_retained - 1
            )));
        }
        let room = (limit as usize).saturating_sub(events.len());
        for e in got.into_iter().take(room) {
            if e.seq != next[s] {
                return Err(ErrorReply::Internal(format!(
                    "shard {s} answered event {} where {} was next",
                    e.seq, next[s]
                )));
            }
            next[s] += 1;
            events.push(e);
        }
    }
    Ok(Reply::Empi(EmpiReply::Events {
        events,
        cursor: cursor_text(&next),
    }))
}

/// `EmpiRequest::Clusters`: identities in id order after `after` (merged-away and empty ones left
/// out), with their members.
pub(crate) async fn clusters(registry: &Arc<Registry>, after: Option<MasterId>, limit: u32) -> Response {
    let reads = (0..registry.shard_count)
        .map(|s| {
            let op = ReadOp::Empi(EmpiRead::MasterPage { shard: s, after, limit });
            (s, op)
        })
        .collect();
    let mut all: BTreeMap<MasterId, EmpiMaster> = BTreeMap::new();
    let mut more = false;
    for r in read_many(registry, reads, Fresh::Stale).await {
        match r? {
            Reply::EmpiState(EmpiState::MasterPage(page)) => {
                // A shard that filled its page may hold more beyond it.
                more |= page.len() >= limit as usize;
                all.extend(page.into_iter().map(|m| (m.id, m)));
            }
            other => return Err(unexpected("an identities read", other)),
        }
    }
    let mut masters: Vec<EmpiMaster> = Vec::new();
    let mut last = after;
    let total = all.len();
    for (id, m) in all.into_iter().take(limit as usize) {
        last = Some(id);
        if m.merged_into.is_none() && !m.members.is_empty() {
            masters.push(m);
        }
    }
    let next = (more || total > limit as usize).then_some(last).flatten();
    Ok(Reply::Empi(EmpiReply::Clusters { masters, next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(parse_cursor("", 3), Ok(vec![1, 1, 1]));
        assert_eq!(parse_cursor(&cursor_text(&[4, 1, 9]), 3), Ok(vec![4, 1, 9]));
        assert!(parse_cursor("e1:4,1", 3).unwrap_err().contains("names 2 shards"));
        assert!(parse_cursor("e1:4,0,1", 3).is_err());
        assert!(parse_cursor("x", 3).unwrap_err().contains("not an event cursor"));
        assert!(parse_cursor("e1:a,b,c", 3).is_err());
    }
}
