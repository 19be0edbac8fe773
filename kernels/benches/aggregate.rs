//! `cargo bench -p plexus-kernels --bench aggregate`: aggregation throughput of every CPU backend this
//! machine has (and CUDA when present) on a 50k-vertex / 1M-edge power-law graph, next to the STREAM copy
//! bandwidth. Prints figures; asserts nothing.

use plexus_kernels::{run_bench, stream_copy_gbps, AggOp, Backend, BenchOptions, DType};

fn main() {
    let stream = stream_copy_gbps(256 << 20);
    println!("STREAM copy: {stream:.1} GB/s");
    println!(
        "{:<8} {:>4} {:>5} {:<5} {:>9} {:>12} {:>8} {:>9}",
        "backend", "K", "dtype", "op", "ms", "Medges/s", "GB/s", "of STREAM"
    );
    for backend in Backend::ALL {
        if backend.available().is_err() {
            continue;
        }
        for dim in [64, 128, 256] {
            for dtype in [DType::F32, DType::Bf16] {
                for op in [AggOp::Sum, AggOp::Max] {
                    let opts = BenchOptions {
                        vertices: 50_000,
                        edges: 1_000_000,
                        dim,
                        op,
                        dtype,
                        backend: Some(backend),
                        iters: if backend == Backend::Scalar { 2 } else { 5 },
                        ..BenchOptions::default()
                    };
                    match run_bench(&opts) {
                        Ok(r) => println!(
                            "{:<8} {:>4} {:>5} {:<5} {:>9.2} {:>12.1} {:>8.1} {:>8.0}%",
                            r.backend,
                            dim,
                            dtype.name(),
                            op.name(),
                            r.ms,
                            r.edges_per_sec / 1e6,
                            r.gbps,
                            100.0 * r.gbps / stream
                        ),
                        Err(e) => println!("{} K={dim}: {e}", backend.name()),
                    }
                }
            }
        }
    }
}
