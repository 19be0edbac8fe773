//! All replicas of a shard converge after healing: the same last applied index and the same
//! state hash on every replica that runs.

use std::collections::BTreeMap;

use super::ReplicaEnd;

/// Whether the replicas of every shard agree; the violations say where they do not.
pub fn check(shards: &BTreeMap<u32, Vec<ReplicaEnd>>) -> Vec<String> {
    let mut violations = Vec::new();
    for (shard, replicas) in shards {
        let first = replicas.first().map(|(_, applied, hash)| (*applied, *hash));
        if replicas
            .iter()
            .any(|(_, applied, hash)| Some((*applied, *hash)) != first)
        {
            violations.push(format!(
                "shard {shard} replicas disagree (node, applied, hash): {replicas:?}"
            ));
        }
    }
    violations
}
