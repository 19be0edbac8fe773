//! GraphSAGE weights (safetensors round trip, PyG names), the two-layer forward against plain loops,
//! cosine top-k, backend selection on this machine, the edge-list loader and the bench API.

use plexus_kernels::graph::{power_law_csr, read_edge_list, write_edge_list, SplitMix64};
use plexus_kernels::weights::{load_sage, save_sage};
use plexus_kernels::{
    cosine_scores, info, run_bench, top_k, AggOp, Backend, BenchOptions, Csr, DType, Kernels, SageLayer, SageModel,
    TwoHopSample,
};

fn random_layer(rng: &mut SplitMix64, in_dim: usize, out_dim: usize, last: bool) -> SageLayer {
    let mut v = |n: usize| (0..n).map(|_| rng.next_signed_f32() * 0.5).collect::<Vec<f32>>();
    SageLayer {
        in_dim,
        out_dim,
        agg: AggOp::Mean,
        w_neigh: v(out_dim * in_dim),
        bias: v(out_dim),
        w_self: v(out_dim * in_dim),
        relu: !last,
        l2_normalize: !last,
    }
}

fn model() -> SageModel {
    let mut rng = SplitMix64::new(42);
    SageModel {
        layers: vec![random_layer(&mut rng, 5, 7, false), random_layer(&mut rng, 7, 3, true)],
    }
}

#[test]
fn safetensors_round_trip_with_pyg_names() {
    let m = model();
    for prefix in ["convs.", "layers."] {
        let bytes = save_sage(&m, prefix).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<&str> = st.names();
        names.sort();
        let want: Vec<String> = (0..2)
            .flat_map(|n| ["lin_l.bias", "lin_l.weight", "lin_r.weight"].map(|t| format!("{prefix}{n}.{t}")))
            .collect();
        assert_eq!(names, want);
        assert_eq!(st.tensor(&format!("{prefix}0.lin_l.weight")).unwrap().shape(), &[7, 5]);
        assert_eq!(
            load_sage(&bytes, None, AggOp::Mean).unwrap(),
            m,
            "auto-detected prefix {prefix}"
        );
        assert_eq!(load_sage(&bytes, Some(prefix), AggOp::Mean).unwrap(), m);
    }
}

#[test]
fn hostile_weight_files_are_errors() {
    assert!(load_sage(b"not a safetensors file", None, AggOp::Mean).is_err());
    assert!(load_sage(&[0xff; 8], None, AggOp::Mean).is_err());
    let mut bad = model();
    bad.layers[1].in_dim = 6; // no longer chains with layer 0 and w shapes disagree
    assert!(save_sage(&bad, "convs.").is_err());
}

/// The forward pass written as plain loops, independent of the crate's kernels.
#[allow(clippy::needless_range_loop)] // index loops are the point: this is the plain-loop reference
fn reference_layer(l: &SageLayer, block: &Csr, x: &[f32]) -> Vec<f32> {
    let (i_dim, o_dim) = (l.in_dim, l.out_dim);
    let mut out = Vec::new();
    for r in 0..block.num_rows() {
        let cols = &block.col_indices[block.row_offsets[r] as usize..block.row_offsets[r + 1] as usize];
        let mut agg = vec![0.0f32; i_dim];
        for &j in cols {
            for k in 0..i_dim {
                agg[k] += x[j as usize * i_dim + k];
            }
        }
        if !cols.is_empty() {
            agg.iter_mut().for_each(|v| *v /= cols.len() as f32);
        }
        let mut h = vec![0.0f32; o_dim];
        for o in 0..o_dim {
            let mut s = l.bias[o];
            for k in 0..i_dim {
                s += l.w_self[o * i_dim + k] * x[r * i_dim + k] + l.w_neigh[o * i_dim + k] * agg[k];
            }
            h[o] = if l.relu { s.max(0.0) } else { s };
        }
        if l.l2_normalize {
            let n = h.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 0.0 {
                h.iter_mut().for_each(|v| *v /= n);
            }
        }
        out.extend(h);
    }
    out
}

#[test]
fn two_layer_forward_matches_plain_loops() {
    // 2 targets, 4 hop-1 vertices, 9 hop-2 vertices; target 1 and hop-1 vertex 3 have no neighbours.
    let outer = Csr::from_edges(4, 9, &[(4, 0), (5, 0), (1, 0), (6, 1), (7, 2), (8, 2), (0, 2)]).unwrap();
    let inner = Csr::from_edges(2, 4, &[(2, 0), (3, 0), (1, 0)]).unwrap();
    let sample = TwoHopSample {
        outer: outer.clone(),
        inner: inner.clone(),
    };
    let mut rng = SplitMix64::new(9);
    let x: Vec<f32> = (0..9 * 5).map(|_| rng.next_signed_f32()).collect();
    let m = model();
    let want = reference_layer(&m.layers[1], &inner, &reference_layer(&m.layers[0], &outer, &x));
    for backend in Backend::ALL
        .into_iter()
        .filter(|b| b.isa().is_some_and(|i| i.available()))
    {
        let got = m
            .forward_two_hop(&Kernels::new(backend).unwrap(), &sample, &x, 2)
            .unwrap();
        assert_eq!(got.len(), 2 * 3);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{backend:?}: {got:?} vs {want:?}"
            );
        }
    }
    let bad = TwoHopSample {
        outer: inner,
        inner: outer,
    };
    assert!(m
        .forward_two_hop(&Kernels::new(Backend::Scalar).unwrap(), &bad, &x, 1)
        .is_err());
}

#[test]
fn cosine_top_k_is_exact_with_ties_to_the_lower_index() {
    let q = [1.0f32, 0.0];
    // Scores: 0, 1, -1, 1 (tie with 1), 0 (zero vector), 1/sqrt(2).
    let cands = [0.0f32, 2.0, 3.0, 0.0, -1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0];
    let scores = cosine_scores(&q, &cands, 2).unwrap();
    assert_eq!(scores[..5], [0.0, 1.0, -1.0, 1.0, 0.0]);
    assert!((scores[5] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    let top = top_k(&scores, 4);
    let idx: Vec<u32> = top.iter().map(|t| t.0).collect();
    assert_eq!(idx, vec![1, 3, 5, 0]);
    assert_eq!(top_k(&scores, 100).len(), 6);
    assert!(top_k(&scores, 0).is_empty());
    assert_eq!(
        top_k(&[f32::NAN, 0.5, 0.5], 3).iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![1, 2, 0]
    );
    let k = Kernels::new(Backend::Scalar).unwrap();
    assert_eq!(k.cosine(&q, &cands).unwrap(), scores);
    assert!(cosine_scores(&q, &cands[..3], 1).is_err());
}

#[test]
fn info_selects_the_cpu_and_names_the_missing_library() {
    let i = info();
    if i.backend == Backend::Cuda {
        println!("CUDA present: {}", i.reason);
        return;
    }
    assert_ne!(i.backend, Backend::Cuda);
    assert!(
        i.reason.contains("libcuda") || i.reason.contains("libnvrtc") || i.reason.contains("no CUDA device"),
        "{}",
        i.reason
    );
    assert!(Kernels::new(Backend::Cuda).is_err());
    assert_eq!(Kernels::auto().backend(), i.backend);
}

#[test]
fn edge_list_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csr = power_law_csr(100, 1000, 3).unwrap();
    assert_eq!(csr, power_law_csr(100, 1000, 3).unwrap(), "generator is deterministic");
    let path = dir.path().join("g.txt");
    write_edge_list(&path, &csr).unwrap();
    let (edges, n) = read_edge_list(&path).unwrap();
    assert_eq!(edges.len(), 1000);
    assert_eq!(Csr::from_edges(n, n, &edges).unwrap().col_indices, csr.col_indices[..]);
    std::fs::write(&path, "# comment\n0 1\n\n2 x\n").unwrap();
    match read_edge_list(&path) {
        Err(plexus_kernels::KernelError::EdgeList { line, .. }) => assert_eq!(line, 4),
        other => panic!("expected an edge-list error, got {other:?}"),
    }
}

#[test]
fn bench_reports_its_figures() {
    let opts = BenchOptions {
        vertices: 1000,
        edges: 20_000,
        dim: 16,
        dtype: DType::Bf16,
        op: AggOp::Gcn,
        backend: Some(Backend::Scalar),
        iters: 2,
        ..BenchOptions::default()
    };
    let r = run_bench(&opts).unwrap();
    assert_eq!(
        (r.backend.as_str(), r.vertices, r.edges, r.dim, r.threads),
        ("scalar", 1000, 20_000, 16, 1)
    );
    assert_eq!(r.bytes, 20_000 * 16 * 2 + 4 * 20_000 + 1000 * 16 * 4 + 4 * 1001);
    assert!(r.ms > 0.0 && r.gbps > 0.0 && r.edges_per_sec > 0.0);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["op"], "gcn");
    assert_eq!(json["dtype"], "bf16");
    assert!(run_bench(&BenchOptions { iters: 0, ..opts }).is_err());
}
