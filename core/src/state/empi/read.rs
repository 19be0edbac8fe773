//! Identity matching's node-internal reads (`ReadOp::Empi`), as methods of `ShardState`.
//!
//! Each is bounded by a named cap in `EmpiLimits`: counts per request are refused past it, and
//! pages are cut to it. Keys named must all be this shard's (`WrongShard` otherwise): the EMPI
//! service groups its reads per shard. They read applied state only and change nothing.

use std::ops::Bound;

use plexus_proto::{
    block_shard_key, master_shard_key, record_shard_key, EmpiBlocks, EmpiEventPage, EmpiRead, EmpiState, ErrorReply,
    Reply, Response,
};

use super::index::Lookup;
use crate::state::{capped_limit, ShardState};

/// `BadRequest` when a read names more than `max` items.
fn count_within(what: &str, n: usize, max: usize) -> Result<(), ErrorReply> {
    if n > max {
        return Err(ErrorReply::BadRequest(format!(
            "{n} {what} exceed the empi read limit of {max}"
        )));
    }
    Ok(())
}

impl ShardState {
    /// Serves `ReadOp::Empi`.
    pub(in crate::state) fn empi_read(&self, read: &EmpiRead) -> Response {
        let l = &self.limits.empi;
        let state = match read {
            EmpiRead::Blocks { blocks } => {
                count_within("blocking keys", blocks.len(), l.blocks_read_max)?;
                for b in blocks {
                    self.check_key(&block_shard_key(b))?;
                }
                EmpiState::Blocks(self.empi_blocks(blocks))
            }
            EmpiRead::Records { keys } => {
                count_within("record keys", keys.len(), l.records_read_max)?;
                for k in keys {
                    self.check_key(&record_shard_key(k))?;
                }
                EmpiState::Records(keys.iter().map(|k| self.empi.records.get(k).cloned()).collect())
            }
            EmpiRead::Masters { ids } => {
                count_within("master ids", ids.len(), l.masters_read_max)?;
                for id in ids {
                    self.check_key(&master_shard_key(*id))?;
                }
                EmpiState::Masters(
                    ids.iter()
                        .map(|id| self.empi.masters.get(id).map(|m| m.to_proto(*id)))
                        .collect(),
                )
            }
            EmpiRead::MasterPage { after, limit, .. } => {
                // The shard itself was checked by `read` (it is the routing key).
                let limit = capped_limit(*limit, l.masters_page_max)?;
                let start = after.map_or(Bound::Unbounded, Bound::Excluded);
                let mut members = 0usize;
                let mut page = Vec::new();
                for (id, m) in self.empi.masters.range((start, Bound::Unbounded)).take(limit) {
                    members += m.members.len();
                    if !page.is_empty() && members > l.page_members_max {
                        break;
                    }
                    page.push(m.to_proto(*id));
                }
                EmpiState::MasterPage(page)
            }
            EmpiRead::Events { from_seq, limit, .. } => {
                let limit = capped_limit(*limit, l.events_page_max)?;
                let log = &self.empi.events;
                EmpiState::Events(EmpiEventPage {
                    events: log.from(*from_seq, limit).cloned().collect(),
                    next_seq: log.next_seq(),
                    first_retained: log.first_retained(),
                })
            }
            EmpiRead::Model => EmpiState::Model(self.empi.model.clone()),
        };
        Ok(Reply::EmpiState(state))
    }

    /// The records under `blocks`: the Bloom filter first (its rejections counted), then the
    /// index; each list cut to `block_records_max`, and all of them together to
    /// `blocks_read_records_max`, a cut list named in `oversize`.
    fn empi_blocks(&self, blocks: &[String]) -> EmpiBlocks {
        let l = &self.limits.empi;
        let mut out = EmpiBlocks::default();
        let mut budget = l.blocks_read_records_max;
        for block in blocks {
            match self.empi.index.lookup(block) {
                Lookup::Rejected => out.rejected = out.rejected.saturating_add(1),
                Lookup::Absent => {}
                Lookup::Found(keys) => {
                    let take = keys.len().min(l.block_records_max).min(budget);
                    budget -= take;
                    out.found
                        .push((block.clone(), keys.iter().take(take).cloned().collect()));
                    if take < keys.len() {
                        out.oversize.push(block.clone());
                    }
                }
            }
        }
        out
    }
}
