//! Steward unlinks kept at the identity: a placement or merge decided before an unlink never
//! joins the pair whenever it lands, and an unlink a link has replaced keeps no one out.

use plexus_proto::{master_shard_key, Reply};

use plexus_proto::MasterId;

use super::tests::{masters_on, on, put, records_on, sorted, Cluster};
use crate::state::EmpiLimits;

/// A cluster holding `a` in `m1` and `b` in `m2`, which a steward unlinked, all delivered.
fn unlinked_pair(a: &str, b: &str, m1: MasterId, m2: MasterId) -> Cluster {
    let mut c = Cluster::new(EmpiLimits::default());
    c.put(vec![put(a, m1, &[])]).unwrap();
    c.put(vec![put(b, m2, &[])]).unwrap();
    c.pump();
    assert_eq!(c.constrain(a, b, false), Ok(Reply::Changed(true)));
    c.pump();
    c
}

#[test]
fn a_merge_decided_before_an_unlink_never_joins_the_pair_whenever_it_lands() {
    let mut c = Cluster::new(EmpiLimits::default());
    let (a, b, x) = (&records_on(0, 1)[0], &records_on(1, 1)[0], &records_on(2, 1)[0]);
    let [m1, m2] = [masters_on(1, 1)[0], masters_on(0, 1)[0]];
    c.put(vec![put(a, m1, &[])]).unwrap();
    c.put(vec![put(x, m1, &[])]).unwrap();
    c.put(vec![put(b, m2, &[])]).unwrap();
    c.pump();
    // A steward unlinks a and b, which sit in two identities; the service had already decided
    // (before the unlink) that a record bridges them, and its merge lands only now.
    assert_eq!(c.constrain(a, b, false), Ok(Reply::Changed(true)));
    c.pump();
    assert_eq!(c.merge(m2, m1), Ok(Reply::Count(1)));
    c.pump();
    let (ra, rb) = (c.record(a).unwrap(), c.record(b).unwrap());
    assert_eq!(ra.master, m1);
    assert_ne!(
        rb.master, m1,
        "m1 holds a, which b is unlinked from: b goes to its own identity"
    );
    assert_ne!(rb.master, m2, "m2 is merged");
    assert_eq!(c.members(rb.master), vec![b.clone()]);
    assert_eq!(c.members(m1), sorted(&[a, x]));
    assert_eq!(c.violations(), Vec::<String>::new());
    // The identity checks from the member's side too: x is unlinked from y (x owns the
    // constraint, so x's shard applies it first), and y, whose shard has not heard of it yet,
    // is placed into m1. x's unlinks reach m1's shard before y's entry: y stays out.
    let y = records_on(3, 20).into_iter().find(|k| k > x).unwrap();
    let m3 = masters_on(0, 2)[1];
    c.put(vec![put(&y, m3, &[])]).unwrap();
    c.pump();
    assert_eq!(c.constrain(x, &y, false), Ok(Reply::Changed(true)));
    c.put(vec![put(&y, m1, &[])]).unwrap();
    assert_eq!(c.record(&y).map(|r| r.unlinks), Some(vec![]), "y does not know yet");
    c.deliver_to(on(&master_shard_key(m1)));
    assert!(!c.members(m1).contains(&y), "x is unlinked from y: y stays out of m1");
    c.pump();
    let ry = c.record(&y).unwrap();
    assert!(ry.master != m1 && ry.master != m3, "y went to an identity of its own");
    assert_eq!(c.members(ry.master), vec![y.clone()]);
    assert_eq!(c.members(m1), sorted(&[a, x]));
    assert_eq!(c.violations(), Vec::<String>::new());
}

#[test]
fn an_unlink_replaced_by_a_link_lets_the_pair_join() {
    let (a, b) = (&records_on(2, 1)[0], &records_on(1, 1)[0]);
    let [m1, m2] = [masters_on(3, 1)[0], masters_on(0, 1)[0]];
    let mut c = unlinked_pair(a, b, m1, m2);
    assert_eq!(c.shards[3].0.empi.apart.len(), 1, "m1 keeps a's unlink");
    // The steward links them; b's shard hears of it, and the merge moves b to m1, whose shard
    // gets b's entry (from shard 1) before a's news that its unlink is gone (from shard 2).
    assert_eq!(c.constrain(a, b, true), Ok(Reply::Changed(true)));
    c.deliver_to(1);
    assert_eq!(c.record(b).map(|r| r.links), Some(vec![a.clone()]));
    assert_eq!(c.merge(m2, m1), Ok(Reply::Count(1)));
    c.deliver_to(1);
    c.deliver_to(3);
    assert!(
        c.members(m1).contains(b),
        "b is linked to a: m1's older view of a's unlink does not keep it out"
    );
    c.pump();
    assert!(
        c.shards.iter().all(|(s, _)| s.empi.apart.is_empty()),
        "the identities forget unlinks that no longer stand"
    );
    assert_eq!(c.members(m1), sorted(&[a, b]));
    assert_eq!(c.violations(), Vec::<String>::new());
}

#[test]
fn a_record_refused_on_an_unlink_a_link_has_replaced_enters_again() {
    let (a, b) = (&records_on(0, 1)[0], &records_on(2, 1)[0]);
    let [m1, m2] = [masters_on(1, 1)[0], masters_on(3, 1)[0]];
    let mut c = unlinked_pair(a, b, m1, m2);
    // The steward links them (a's shard first); before b's shard hears of it, b is placed
    // into m1, still carrying the unlink, and m1 refuses it.
    assert_eq!(c.constrain(a, b, true), Ok(Reply::Changed(true)));
    c.put(vec![put(b, m1, &[])]).unwrap();
    c.deliver_to(1);
    assert!(
        !c.members(m1).contains(b),
        "b's unlink from a, as b's shard sent it, keeps it out"
    );
    // b's shard gets the link before the refusal: b enters m1 again, and is taken.
    c.pump();
    assert_eq!(c.record(b).map(|r| (r.master, r.links)), Some((m1, vec![a.clone()])));
    assert_eq!(c.members(m1), sorted(&[a, b]));
    assert_eq!(c.violations(), Vec::<String>::new());
}
