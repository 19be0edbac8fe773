//! The same seed gives a byte-identical event trace: two runs of several seeds, with different
//! fault mixes (the mix is drawn from the seed) and one without faults, hash equal.

use plexus_simulations::{run_seed, SimOptions};

fn twice(seed: u64, options: &SimOptions) {
    let a = run_seed(seed, options);
    let b = run_seed(seed, options);
    assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} diverged");
    assert_eq!(a.trace_lines, b.trace_lines, "seed {seed} diverged");
    assert_eq!(
        (a.ops, a.ops_ok, a.faults),
        (b.ops, b.ops_ok, b.faults),
        "seed {seed} diverged"
    );
    assert!(a.trace_lines > 1_000, "seed {seed} did too little to mean anything");
}

#[test]
fn same_seed_same_trace_with_faults() {
    for seed in [1, 2, 7] {
        twice(seed, &SimOptions::default());
    }
}

#[test]
fn same_seed_same_trace_without_faults() {
    twice(
        3,
        &SimOptions {
            no_faults: true,
            ..SimOptions::default()
        },
    );
}

#[test]
fn different_seeds_different_traces() {
    let a = run_seed(4, &SimOptions::default());
    let b = run_seed(5, &SimOptions::default());
    assert_ne!(a.trace_hash, b.trace_hash);
}
