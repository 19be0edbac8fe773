//! `plexus kernels info|bench --json` through the real binary: each prints
//! one JSON object with the figures the issue names. No cluster is needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_plexus");

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN).args(args).output().expect("run plexus");
    assert!(
        out.status.success(),
        "plexus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    assert_eq!(text.lines().count(), 1, "one JSON line expected, got {text:?}");
    serde_json::from_str(&text).expect("JSON output")
}

#[test]
fn kernels_info_names_the_backend_and_why() {
    let v = json_of(&["kernels", "info", "--json"]);
    let backend = v["backend"].as_str().expect("backend");
    assert!(["scalar", "avx2", "avx512", "neon", "cuda"].contains(&backend), "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
}

#[test]
fn kernels_bench_prints_one_object_with_the_figures() {
    let v = json_of(&[
        "kernels",
        "bench",
        "--vertices",
        "500",
        "--edges",
        "4000",
        "--seed",
        "7",
        "--dim",
        "16",
        "--op",
        "mean",
        "--dtype",
        "bf16",
        "--iters",
        "2",
        "--json",
    ]);
    assert_eq!(
        (v["vertices"].as_u64(), v["edges"].as_u64(), v["dim"].as_u64()),
        (Some(500), Some(4000), Some(16))
    );
    assert_eq!((v["op"].as_str(), v["dtype"].as_str()), (Some("mean"), Some("bf16")));
    assert!(v["backend"].as_str().is_some(), "{v}");
    for key in ["ms", "edges_per_sec", "gbps"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    // An edge list instead of the synthetic graph.
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.txt");
    std::fs::write(&graph, "0 1\n1 2\n2 0\n# comment\n2 1\n").unwrap();
    let v = json_of(&[
        "kernels",
        "bench",
        "--graph",
        graph.to_str().unwrap(),
        "--dim",
        "4",
        "--op",
        "gcn",
        "--iters",
        "1",
        "--json",
    ]);
    assert_eq!((v["vertices"].as_u64(), v["edges"].as_u64()), (Some(3), Some(4)));
}
