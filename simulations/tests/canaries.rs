//! Each canary bug is caught by the checker meant for it within a bounded range of seeds, the
//! catching run replays to the same trace hash (determinism holds with a canary on), and the
//! same seed without the canary passes every checker.

use plexus_raft::sim_hooks::Canary;
use plexus_simulations::{run_seed, SimOptions};

/// Seeds tried per canary before the test gives up.
const SEEDS_TRIED_MAX: u64 = 16;

fn caught_by(canary: Canary, checker: &str) {
    let with = SimOptions {
        canary: Some(canary),
        ..SimOptions::default()
    };
    let prefix = format!("{checker}: ");
    let found = (0..SEEDS_TRIED_MAX)
        .map(|seed| run_seed(seed, &with))
        .find(|r| r.violations.iter().any(|v| v.starts_with(&prefix)));
    let Some(report) = found else {
        panic!("canary {canary}: no seed in 0..{SEEDS_TRIED_MAX} made `{checker}` report a violation");
    };
    let seed = report.seed;
    assert_eq!(report.canary.as_deref(), Some(canary.name()));
    let again = run_seed(seed, &with);
    assert_eq!(
        (again.trace_hash.as_str(), again.trace_lines),
        (report.trace_hash.as_str(), report.trace_lines),
        "canary {canary} seed {seed} did not replay"
    );
    assert_eq!(again.violations, report.violations);
    let without = run_seed(seed, &SimOptions::default());
    assert!(
        without.violations.is_empty(),
        "seed {seed} fails without the canary too: {:#?}",
        without.violations
    );
}

#[test]
fn ack_before_fsync_loses_committed_entries() {
    caught_by(Canary::AckBeforeFsync, "committed_entries");
}

#[test]
fn stale_read_is_not_linearizable() {
    caught_by(Canary::StaleRead, "linearizable");
}

#[test]
fn double_apply_applies_a_retry_twice() {
    caught_by(Canary::DoubleApply, "exactly_once");
}

#[test]
fn half_follow_leaves_an_edge_half() {
    caught_by(Canary::HalfFollow, "edges");
}
