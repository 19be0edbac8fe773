//! Every CPU backend this machine has against the scalar reference, for all four operators, f32 and bf16,
//! on random graphs with empty rows, isolated vertices and one very high-degree row.
//!
//! Tolerances: sum, mean and max walk edges in the same order with one accumulator per value on every
//! path, so they must match the reference bit for bit. GCN differs by rounding only (per-vertex
//! `1/sqrt(deg)` and fused multiply-add against a per-edge `f64` weight), so the bound is relative to
//! the magnitude of the summed terms, not of the (possibly cancelled) result:
//! |a − b| ≤ 1e-5 · max(1, Σ_j |x_j| / sqrt(deg(i)·deg(j))).

use plexus_kernels::cpu::{self, Isa};
use plexus_kernels::graph::SplitMix64;
use plexus_kernels::{to_bf16, AggOp, Backend, Csr, Features, Kernels};

/// A random block: `rows` destinations over `src` sources, row 0 empty, the last source isolated (never a
/// column), row 1 a hub holding `hub` edges, other rows 0..=8 edges.
fn random_block(rows: usize, src: usize, hub: usize, seed: u64) -> Csr {
    let mut rng = SplitMix64::new(seed);
    let mut edges = Vec::new();
    for dst in 1..rows {
        let deg = if dst == 1 { hub } else { rng.below(9) as usize };
        for _ in 0..deg {
            edges.push((rng.below(src as u64 - 1) as u32, dst as u32));
        }
    }
    Csr::from_edges(rows, src, &edges).unwrap()
}

fn check(isa: Isa, csr: &Csr, x: &Features<'_>, op: AggOp) {
    let view = csr.view().unwrap();
    let n = csr.num_rows() * x.dim();
    let (mut want, mut got) = (vec![0.0f32; n], vec![0.0f32; n]);
    cpu::aggregate(Isa::Scalar, 1, &view, x, op, &mut want).unwrap();
    cpu::aggregate(isa, 2, &view, x, op, &mut got).unwrap();
    let mut magnitude = vec![0.0f32; n];
    if op == AggOp::Gcn {
        let abs: Vec<f32> = (0..x.rows() * x.dim())
            .map(|k| x.get(k / x.dim(), k % x.dim()).abs())
            .collect();
        cpu::aggregate(
            Isa::Scalar,
            1,
            &view,
            &Features::f32(&abs, x.dim()).unwrap(),
            op,
            &mut magnitude,
        )
        .unwrap();
    }
    assert!(
        want[..x.dim()].iter().all(|&v| v == 0.0),
        "empty row 0 must be 0 for {op:?}"
    );
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let ok = if op == AggOp::Gcn {
            (a - b).abs() <= 1e-5 * magnitude[i].max(1.0)
        } else {
            a.to_bits() == b.to_bits()
        };
        assert!(
            ok,
            "{isa:?} {op:?} {:?} dim {} at {i}: {a} vs reference {b}",
            x.dtype(),
            x.dim()
        );
    }
}

#[test]
fn every_cpu_backend_matches_the_reference() {
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512, Isa::Neon]
        .into_iter()
        .filter(|i| i.available())
        .collect();
    println!("testing {:?} against the scalar reference", isas);
    for (seed, dim) in [
        (1u64, 1usize),
        (2, 3),
        (3, 8),
        (4, 17),
        (5, 64),
        (6, 100),
        (7, 128),
        (8, 300),
    ] {
        let csr = random_block(257, 300, 5000, seed);
        let mut rng = SplitMix64::new(seed * 7);
        let xf: Vec<f32> = (0..300 * dim).map(|_| rng.next_signed_f32() * 4.0).collect();
        let xb = to_bf16(&xf);
        for isa in isas.iter().copied().chain([Isa::Scalar]) {
            for op in AggOp::ALL {
                check(isa, &csr, &Features::f32(&xf, dim).unwrap(), op);
                check(isa, &csr, &Features::bf16(&xb, dim).unwrap(), op);
            }
        }
    }
}

#[test]
fn max_of_all_negative_inputs_stays_negative() {
    // Row 0 gathers sources 0 and 1, row 1 is empty.
    let csr = Csr::new(vec![0, 2, 2], vec![0, 1], 2).unwrap();
    let x = [-3.0f32, -1.0, -2.0, -5.0];
    for backend in Backend::ALL
        .into_iter()
        .filter(|b| b.isa().is_some_and(|i| i.available()))
    {
        let mut out = [9.0f32; 4];
        Kernels::new(backend)
            .unwrap()
            .aggregate(
                &csr.view().unwrap(),
                &Features::f32(&x, 2).unwrap(),
                AggOp::Max,
                &mut out,
            )
            .unwrap();
        assert_eq!(out, [-2.0, -1.0, 0.0, 0.0], "{backend:?}");
    }
}

#[test]
fn gcn_matches_a_hand_computed_three_node_example() {
    // Edges (src → dst): 1→0, 2→0, 0→1, 0→2 (a star centred on 0), stored by destination.
    // deg(0) = 2 (row length), deg(1) = deg(2) = 1; source out-degrees: 0 appears twice, 1 and 2 once.
    // out[0] = x1/sqrt(2·1) + x2/sqrt(2·1); out[1] = x0/sqrt(1·2); out[2] = x0/sqrt(1·2).
    let csr = Csr::from_edges(3, 3, &[(1, 0), (2, 0), (0, 1), (0, 2)]).unwrap();
    let x = [1.0f32, 2.0, 4.0];
    let s = std::f32::consts::FRAC_1_SQRT_2;
    let want = [(2.0 + 4.0) * s, s, s];
    for backend in Backend::ALL
        .into_iter()
        .filter(|b| b.isa().is_some_and(|i| i.available()))
    {
        let mut out = [0.0f32; 3];
        Kernels::new(backend)
            .unwrap()
            .aggregate(
                &csr.view().unwrap(),
                &Features::f32(&x, 1).unwrap(),
                AggOp::Gcn,
                &mut out,
            )
            .unwrap();
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() <= 1e-6, "{backend:?}: {out:?} vs {want:?}");
        }
    }
    // With GCN's self-loops (A + I): every degree grows by one.
    let looped = csr.with_self_loops().unwrap();
    assert_eq!(looped.row_offsets, vec![0, 3, 5, 7]);
    let mut out = [0.0f32; 3];
    let k = Kernels::new(Backend::Scalar).unwrap();
    k.aggregate(
        &looped.view().unwrap(),
        &Features::f32(&x, 1).unwrap(),
        AggOp::Gcn,
        &mut out,
    )
    .unwrap();
    let w = [1.0 / 3.0f32, 1.0 / 6.0f32.sqrt(), 1.0 / 2.0];
    let want = [
        1.0 * w[0] + 2.0 * w[1] + 4.0 * w[1],
        1.0 * w[1] + 2.0 * w[2],
        1.0 * w[1] + 4.0 * w[2],
    ];
    for (a, b) in out.iter().zip(want) {
        assert!((a - b).abs() <= 1e-6, "self-loops: {out:?} vs {want:?}");
    }
}

#[test]
fn mean_and_sum_exact_on_a_small_block() {
    let csr = Csr::from_edges(3, 3, &[(0, 1), (2, 1), (1, 2)]).unwrap();
    let x = [1.0f32, 10.0, 2.0, 20.0, 4.0, 40.0];
    let k = Kernels::new(cpu_best()).unwrap();
    let mut out = [7.0f32; 6];
    k.aggregate(
        &csr.view().unwrap(),
        &Features::f32(&x, 2).unwrap(),
        AggOp::Sum,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [0.0, 0.0, 5.0, 50.0, 2.0, 20.0]);
    k.aggregate(
        &csr.view().unwrap(),
        &Features::f32(&x, 2).unwrap(),
        AggOp::Mean,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [0.0, 0.0, 2.5, 25.0, 2.0, 20.0]);
}

fn cpu_best() -> Backend {
    match Isa::best() {
        Isa::Avx512 => Backend::Avx512,
        Isa::Avx2 => Backend::Avx2,
        Isa::Neon => Backend::Neon,
        Isa::Scalar => Backend::Scalar,
    }
}

#[test]
fn bf16_conversion_rounds_to_nearest_even() {
    let one_ulp = 2f32.powi(-7); // bf16 spacing just above 1.0
    let cases = [
        (1.0f32, 1.0f32),
        (1.0 + one_ulp / 2.0, 1.0),                            // halfway, 1.0 is even: down
        (1.0 + 3.0 * one_ulp / 2.0, 1.0 + 2.0 * one_ulp),      // halfway, 1+2ulp is even: up
        (1.0 + one_ulp / 2.0 + 2f32.powi(-20), 1.0 + one_ulp), // just above halfway: up
        (-1.0 - one_ulp / 2.0, -1.0),
    ];
    for (input, want) in cases {
        assert_eq!(to_bf16(&[input])[0].to_f32(), want, "{input}");
    }
    assert!(to_bf16(&[f32::NAN])[0].to_f32().is_nan());
}

#[test]
fn malformed_blocks_are_errors() {
    assert!(Csr::new(vec![1, 2], vec![0], 1).is_err());
    assert!(Csr::new(vec![0, 2, 1], vec![0, 0], 1).is_err());
    assert!(Csr::new(vec![0, 1], vec![5], 2).is_err());
    assert!(Csr::new(vec![], vec![], 0).is_err());
    let csr = Csr::new(vec![0, 1], vec![0], 1).unwrap();
    let mut out = [0.0f32; 3];
    let x = [1.0f32, 2.0];
    let err = Kernels::new(Backend::Scalar).unwrap().aggregate(
        &csr.view().unwrap(),
        &Features::f32(&x, 2).unwrap(),
        AggOp::Sum,
        &mut out,
    );
    assert!(err.is_err());
}
