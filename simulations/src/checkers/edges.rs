//! Out-edges and in-edges agree after healing: `a → b` is in `a`'s out-set (on `a`'s shard) if
//! and only if `a` is in `b`'s in-set (on `b`'s shard).

use super::FinalState;

/// Checks `end`.
pub fn check(end: &FinalState) -> Vec<String> {
    let mut violations = Vec::new();
    for (src, outs) in &end.out_edges {
        for dst in outs {
            if !end.in_edges.get(dst).is_some_and(|s| s.contains(src)) {
                violations.push(format!("edge {src}->{dst} has its out-half but not its in-half"));
            }
        }
    }
    for (dst, ins) in &end.in_edges {
        for src in ins {
            if !end.out_edges.get(src).is_some_and(|s| s.contains(dst)) {
                violations.push(format!("edge {src}->{dst} has its in-half but not its out-half"));
            }
        }
    }
    violations
}
