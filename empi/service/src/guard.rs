//! Steward unlinks across identities: automatic placement never joins a record to an identity
//! holding a record it is unlinked from, nor merges two identities between whose members a
//! steward unlink stands.
//!
//! `MatchContext::decide` sees only the record's candidates, and the record's own unlinks mark
//! those it must not join. An identity is more than the candidates a record reaches: a record
//! unlinked from one member, or a bridge between two identities one of whose members a steward
//! separated from a member of the other, would join them through members that were never
//! candidates. The held identities' members and their constraints (`Held::members_of`,
//! `Held::unlinks_of`) show the conflict; the decision is then taken again with the conflicting
//! identity's candidates marked unlinked, or the two identities kept apart, until it holds.

use plexus_empi::context::{Candidate, Decision, MatchContext};
use plexus_empi::normalize::NormalizedRecord;
use plexus_proto::MasterId;

use crate::link::Held;

/// Decisions taken for one record at most; past them it joins nothing rather than break an
/// unlink (each round adds a constraint, so the bound is only reached by a pathological case).
pub const ROUNDS_MAX: usize = 8;

/// Whether record `key` (with its own `unlinks`) is separated from a member of identity `m`.
fn separated(held: &Held, key: &str, unlinks: &[String], m: MasterId) -> bool {
    held.members_of(m)
        .any(|member| member != key && (unlinks.contains(member) || held.unlinks_of(member).iter().any(|u| u == key)))
}

/// Whether a member of `x` is unlinked from a member of `y`.
fn apart(held: &Held, x: MasterId, y: MasterId) -> bool {
    let ys: Vec<&String> = held.members_of(y).collect();
    held.members_of(x)
        .any(|a| held.unlinks_of(a).iter().any(|u| ys.contains(&u)))
}

/// The decision for record `key`, respecting every steward unlink the held identities show.
pub(crate) fn decide(
    ctx: &MatchContext,
    held: &Held,
    norm: &NormalizedRecord,
    key: &str,
    unlinks: &[String],
    cands: &mut [Candidate],
) -> Decision {
    let mut kept_apart: Vec<(usize, usize)> = Vec::new();
    for _ in 0..ROUNDS_MAX {
        let decision = ctx.decide_apart(norm, cands, &kept_apart);
        let involved: Vec<MasterId> = decision
            .join
            .into_iter()
            .chain(decision.merge.iter().copied())
            .collect();
        let mut changed = false;
        for &m in &involved {
            if separated(held, key, unlinks, m) {
                for c in cands.iter_mut().filter(|c| c.master == m && !c.unlinked) {
                    c.unlinked = true;
                    changed = true;
                }
            }
        }
        let first = |m: MasterId| cands.iter().position(|c| c.master == m);
        for (i, &x) in involved.iter().enumerate() {
            for &y in &involved[i + 1..] {
                if let (Some(a), Some(b)) = (first(x), first(y)) {
                    if !kept_apart.contains(&(a, b)) && (apart(held, x, y) || apart(held, y, x)) {
                        kept_apart.push((a, b));
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return decision;
        }
    }
    Decision {
        join: None,
        merge: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use plexus_empi::schema::{PersonRecord, RecordExt};
    use plexus_proto::EmpiRecord;

    use super::*;

    fn person(id: &str) -> PersonRecord {
        let mut r = PersonRecord::new("S", id);
        r.given_name = Some("JOHN".into());
        r.family_name = Some("SMITH".into());
        r.birth_date = Some("1980-02-03".into());
        r.phone = Some("5551234567".into());
        r
    }

    fn held(id: &str, master: MasterId, unlinks: &[&str]) -> EmpiRecord {
        EmpiRecord {
            record: person(id),
            master,
            links: Vec::new(),
            unlinks: unlinks.iter().map(|u| format!("S:{u}")).collect(),
            blocks: Vec::new(),
            updated_millis: 1,
        }
    }

    fn candidate(ctx: &MatchContext, norm: &NormalizedRecord, r: &EmpiRecord) -> Candidate {
        let n = ctx.normalize(&r.record);
        let weight = ctx.weights(norm, &[&n])[0];
        Candidate {
            key: r.record.key_string(),
            record: Arc::new(n),
            master: r.master,
            master_created_millis: r.master,
            weight,
            unlinked: false,
        }
    }

    #[test]
    fn unlinks_between_members_that_are_no_candidates_still_hold() {
        let ctx = MatchContext::untrained().unwrap();
        let norm = ctx.normalize(&person("new"));
        // Identity 10 holds a (a candidate) and c (not one); identity 20 holds b (a candidate)
        // and d (not one); a steward unlinked c from d.
        let (a, c) = (held("a", 10, &[]), held("c", 10, &["d"]));
        let (b, d) = (held("b", 20, &[]), held("d", 20, &["c"]));
        let h = Held::of_identities(&[(10, &[a.clone(), c.clone()]), (20, &[b.clone(), d.clone()])]);
        let mut cands = vec![candidate(&ctx, &norm, &a), candidate(&ctx, &norm, &b)];
        assert_eq!(
            ctx.decide(&norm, &cands),
            Decision {
                join: Some(10),
                merge: vec![20]
            },
            "alone, the candidates bridge both identities"
        );
        let d1 = decide(&ctx, &h, &norm, "S:new", &[], &mut cands.clone());
        assert_eq!(
            d1,
            Decision {
                join: Some(10),
                merge: vec![]
            }
        );
        // A record unlinked from c may not join c's identity, through a or otherwise.
        let d2 = decide(&ctx, &h, &norm, "S:new", &["S:c".to_string()], &mut cands);
        assert_eq!(
            d2,
            Decision {
                join: Some(20),
                merge: vec![]
            }
        );
        assert!(cands[0].unlinked && !cands[1].unlinked);
        // Nor may one that c is unlinked from (the constraint seen from c's side only).
        let c2 = held("c", 10, &["new"]);
        let h = Held::of_identities(&[(10, &[a.clone(), c2]), (20, &[b.clone(), held("d", 20, &[])])]);
        let mut cands = vec![candidate(&ctx, &norm, &a), candidate(&ctx, &norm, &b)];
        assert_eq!(decide(&ctx, &h, &norm, "S:new", &[], &mut cands).join, Some(20));
    }
}
