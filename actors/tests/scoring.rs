//! Scoring through the client library against a running in-process cluster:
//! three nodes, one replica per shard, so candidates' features are read from
//! other nodes. Expected scores are computed here with plain loops.

mod common;

use std::net::SocketAddr;

use common::TOKEN;
use plexus_actors::config::RaftTimings;
use plexus_actors::{start_node, NodeHandle};
use plexus_client::{Client, ClientConfig, ClientError, ErrorReply, ScoreMode};
use plexus_kernels::weights::save_sage;
use plexus_kernels::{AggOp, SageLayer, SageModel};
use plexus_proto::{shard_for_key, ShardKey};

const SHARDS: u32 = 8;
const DIM: usize = 4;

async fn start_cluster(dir: &std::path::Path) -> (Vec<NodeHandle>, Vec<SocketAddr>) {
    start_cluster_with(dir, None).await
}

async fn start_cluster_with(
    dir: &std::path::Path,
    model: Option<std::path::PathBuf>,
) -> (Vec<NodeHandle>, Vec<SocketAddr>) {
    let raft = RaftTimings {
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        heartbeat_ms: 100,
        ..Default::default()
    };
    let mut cfgs = common::cluster_configs(dir, 3, SHARDS, 1, raft, false);
    for cfg in &mut cfgs {
        cfg.scoring.model = model.clone();
    }
    let addrs = cfgs.iter().map(|c| c.listen).collect();
    let mut nodes = Vec::new();
    for cfg in cfgs {
        nodes.push(start_node(cfg).await.unwrap());
    }
    common::wait_for_cluster_leaders(&nodes).await;
    (nodes, addrs)
}

/// Deterministic, well spread features for vertices 1..=11; others have none.
fn features_of(v: u64) -> Option<Vec<f32>> {
    (1..=11).contains(&v).then(|| {
        (0..DIM as u64)
            .map(|j| (((v * 37 + j * 101 + v * j * 13) % 97) as f32 - 48.0) / 16.0)
            .collect()
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The expected answer: every distinct candidate with features, best first, ties by lower id, top k.
fn expected(query: &[f32], candidates: &[u64], k: usize) -> Vec<(u64, f32)> {
    let distinct: std::collections::BTreeSet<u64> = candidates.iter().copied().collect();
    let mut all: Vec<(u64, f32)> = distinct
        .iter()
        .filter_map(|c| features_of(*c).map(|x| (*c, cosine(query, &x))))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // The data must not hold near-ties, or rounding could legitimately reorder them.
    for w in all.windows(2) {
        assert!(w[0].1 - w[1].1 > 1e-4, "test data has a near-tie: {all:?}");
    }
    all.truncate(k);
    all
}

fn assert_scores(got: &[(u64, f32)], want: &[(u64, f32)]) {
    let ids = |s: &[(u64, f32)]| s.iter().map(|p| p.0).collect::<Vec<_>>();
    assert_eq!(ids(got), ids(want), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g.1 - w.1).abs() < 1e-5, "score of {}: got {}, want {}", g.0, g.1, w.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_through_the_client_against_a_running_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, addrs) = start_cluster(tmp.path()).await;
    let ca_pem = std::fs::read_to_string(tmp.path().join("ca.pem")).unwrap();
    let seeds = addrs.iter().map(|a| a.to_string()).collect();
    let client = Client::connect(ClientConfig::new(seeds, ca_pem, TOKEN.into()))
        .await
        .unwrap();

    for v in 1..=12u64 {
        if let Some(x) = features_of(v) {
            assert!(client.set_features(v, x).await.unwrap());
        }
    }
    assert!(!client.set_features(3, features_of(3).unwrap()).await.unwrap());
    assert_eq!(
        client.features(&[12, 2, 3]).await.unwrap(),
        vec![None, features_of(2), features_of(3)]
    );
    let neighbours = [2u64, 5, 9];
    for n in neighbours {
        assert!(client.follow(1, n).await.unwrap());
    }
    // Candidates live on shards of every node, so most features are read from peers.
    let candidates: Vec<u64> = (2..=12).chain([5, 40]).collect();
    let host = |v: u64| nodes[0].registry.replicas_of(shard_for_key(&ShardKey::Id(v), SHARDS))[0];
    let hosts: std::collections::BTreeSet<u64> = candidates.iter().map(|c| host(*c)).collect();
    assert_eq!(hosts.len(), 3, "candidates should span all nodes");

    let own = features_of(1).unwrap();
    let got = client.score(1, candidates.clone(), 5, ScoreMode::Cosine).await.unwrap();
    assert_scores(&got, &expected(&own, &candidates, 5));

    let mut mean = vec![0.0f32; DIM];
    for v in [1u64].iter().chain(&neighbours) {
        for (m, x) in mean.iter_mut().zip(features_of(*v).unwrap()) {
            *m += x / 4.0;
        }
    }
    let got = client
        .score(1, candidates.clone(), 100, ScoreMode::NeighborMean)
        .await
        .unwrap();
    assert_scores(&got, &expected(&mean, &candidates, 100));
    assert_eq!(
        got.len(),
        10,
        "candidates 2..=11 have features; 5 is asked twice, 12 and 40 have none"
    );

    // These nodes have no model: a GraphSAGE score is refused with the setting to change.
    match client.score(1, candidates.clone(), 3, ScoreMode::Sage).await {
        Err(ClientError::Server(ErrorReply::BadRequest(m))) => assert!(m.contains("[scoring] model"), "{m}"),
        other => panic!("sage without a model answered {other:?}"),
    }

    // Limits and missing features are answered, not guessed at.
    match client.score(1, candidates.clone(), 0, ScoreMode::Cosine).await {
        Err(ClientError::Server(ErrorReply::BadRequest(_))) => {}
        other => panic!("k = 0 answered {other:?}"),
    }
    match client.score(12, candidates.clone(), 3, ScoreMode::Cosine).await {
        Err(ClientError::Server(ErrorReply::NotFound(m))) => assert_eq!(m, "features of vertex 12"),
        other => panic!("a vertex without features answered {other:?}"),
    }
    match client.set_features(1, vec![f32::NAN]).await {
        Err(ClientError::Server(ErrorReply::BadRequest(_))) => {}
        other => panic!("NaN features answered {other:?}"),
    }

    // Every node reports its scoring backend.
    for (node, addr) in nodes.iter().zip(&addrs) {
        let status = client.node_status(&addr.to_string()).await.unwrap();
        let backend = node.registry.scoring().map(|p| p.backend_name().to_string());
        assert!(backend.is_some());
        assert_eq!(status.scoring_backend, backend);
    }
    client.close().await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// One GraphSAGE layer `DIM -> 3` with fixed, uneven weights (the last layer of a loaded model:
/// no ReLU, no normalisation).
fn test_layer() -> SageLayer {
    let w = |seed: usize| -> Vec<f32> {
        (0..3 * DIM)
            .map(|i| (((i * 7 + seed) % 11) as f32 - 5.0) / 4.0)
            .collect()
    };
    SageLayer {
        in_dim: DIM,
        out_dim: 3,
        agg: AggOp::Mean,
        w_neigh: w(3),
        bias: vec![0.25, -0.5, 0.125],
        w_self: w(8),
        relu: false,
        l2_normalize: false,
    }
}

/// `W_self·own + W_neigh·agg + b`, with plain loops.
fn embed(l: &SageLayer, own: &[f32], agg: &[f32]) -> Vec<f32> {
    (0..l.out_dim)
        .map(|c| {
            let row = |w: &[f32], x: &[f32]| -> f32 { (0..l.in_dim).map(|i| w[c * l.in_dim + i] * x[i]).sum() };
            l.bias[c] + row(&l.w_self, own) + row(&l.w_neigh, agg)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphsage_model_from_safetensors_ranks_candidates_by_their_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = test_layer();
    let model = SageModel {
        layers: vec![layer.clone()],
    };
    let path = tmp.path().join("model.safetensors");
    std::fs::write(&path, save_sage(&model, "convs.").unwrap()).unwrap();
    let (nodes, addrs) = start_cluster_with(tmp.path(), Some(path)).await;
    let ca_pem = std::fs::read_to_string(tmp.path().join("ca.pem")).unwrap();
    let seeds = addrs.iter().map(|a| a.to_string()).collect();
    let client = Client::connect(ClientConfig::new(seeds, ca_pem, TOKEN.into()))
        .await
        .unwrap();
    for v in 1..=11u64 {
        assert!(client.set_features(v, features_of(v).unwrap()).await.unwrap());
    }
    let neighbours = [2u64, 5, 9];
    for n in neighbours {
        assert!(client.follow(1, n).await.unwrap());
    }
    // The vertex aggregates its out-neighbours (mean); a candidate is embedded alone (a zero
    // aggregate), then ranked by cosine similarity of the embeddings.
    let mut mean = vec![0.0f32; DIM];
    for n in neighbours {
        for (m, x) in mean.iter_mut().zip(features_of(n).unwrap()) {
            *m += x / neighbours.len() as f32;
        }
    }
    let query = embed(&layer, &features_of(1).unwrap(), &mean);
    let candidates: Vec<u64> = (2..=11).collect();
    let mut want: Vec<(u64, f32)> = candidates
        .iter()
        .map(|c| {
            (
                *c,
                cosine(&query, &embed(&layer, &features_of(*c).unwrap(), &[0.0; DIM])),
            )
        })
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for w in want.windows(2) {
        assert!(w[0].1 - w[1].1 > 1e-4, "test data has a near-tie: {want:?}");
    }
    want.truncate(6);
    let got = client.score(1, candidates.clone(), 6, ScoreMode::Sage).await.unwrap();
    assert_scores(&got, &want);
    // The same request without the model's view ranks differently: the model is what ranked.
    let plain = client.score(1, candidates, 6, ScoreMode::NeighborMean).await.unwrap();
    assert_ne!(
        plain.iter().map(|p| p.0).collect::<Vec<_>>(),
        got.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    // Features of another width than the model takes are refused by name.
    assert!(client.set_features(40, vec![1.0, 2.0]).await.unwrap());
    match client.score(40, vec![2], 1, ScoreMode::Sage).await {
        Err(ClientError::Server(ErrorReply::BadRequest(m))) => assert!(m.contains("width 2"), "{m}"),
        other => panic!("a width the model does not take answered {other:?}"),
    }
    client.close().await;
    for node in nodes {
        node.shutdown().await;
    }
}
