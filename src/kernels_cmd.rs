//! `plexus kernels info|bench`: which kernel backend this machine would use
//! and why, and the aggregation benchmark of `plexus_kernels::run_bench`.
//!
//! It runs locally, with no cluster; it measures and prints, and judges
//! nothing about the figures.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use plexus_kernels::{info, run_bench, AggOp, Backend, BenchOptions, BenchReport, DType};
use serde_json::json;

use crate::cli::CliResult;

/// Kernel backend commands.
#[derive(Subcommand, Debug)]
pub enum KernelsCmd {
    /// Name the backend scoring would use here and why.
    Info {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Time neighbour aggregation on a synthetic power-law graph or an edge list.
    Bench(KernelsBenchArgs),
}

/// Aggregation operator on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OpArg {
    Mean,
    Sum,
    Max,
    Gcn,
}

/// Feature storage type on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
}

/// Backend override on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Scalar,
    Avx2,
    Avx512,
    Neon,
    Cuda,
}

/// `plexus kernels bench (--vertices V --edges E [--seed S] | --graph EDGELIST) --dim K --op OP`.
#[derive(Args, Debug)]
pub struct KernelsBenchArgs {
    /// Vertices of the synthetic graph.
    #[arg(
        long,
        requires = "edges",
        required_unless_present = "graph",
        conflicts_with = "graph"
    )]
    pub vertices: Option<usize>,
    /// Edges of the synthetic graph.
    #[arg(long, requires = "vertices", conflicts_with = "graph")]
    pub edges: Option<usize>,
    /// Seed of the synthetic graph and the features.
    #[arg(long, default_value_t = 1, conflicts_with = "graph")]
    pub seed: u64,
    /// A text edge list (`src dst` per line) instead of the synthetic graph.
    #[arg(long)]
    pub graph: Option<PathBuf>,
    /// Feature width K.
    #[arg(long)]
    pub dim: usize,
    /// Aggregation operator.
    #[arg(long, value_enum)]
    pub op: OpArg,
    /// Feature storage type.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// Backend to time instead of the one `kernels info` names.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Timed iterations after one warm-up.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// CPU worker threads (default: all).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl KernelsBenchArgs {
    /// The bench options these arguments describe.
    pub fn options(&self) -> BenchOptions {
        let defaults = BenchOptions::default();
        BenchOptions {
            vertices: self.vertices.unwrap_or(defaults.vertices),
            edges: self.edges.unwrap_or(defaults.edges),
            seed: self.seed,
            graph_path: self.graph.clone(),
            dim: self.dim,
            op: match self.op {
                OpArg::Mean => AggOp::Mean,
                OpArg::Sum => AggOp::Sum,
                OpArg::Max => AggOp::Max,
                OpArg::Gcn => AggOp::Gcn,
            },
            dtype: match self.dtype {
                DTypeArg::F32 => DType::F32,
                DTypeArg::Bf16 => DType::Bf16,
            },
            backend: self.backend.map(|b| match b {
                BackendArg::Scalar => Backend::Scalar,
                BackendArg::Avx2 => Backend::Avx2,
                BackendArg::Avx512 => Backend::Avx512,
                BackendArg::Neon => Backend::Neon,
                BackendArg::Cuda => Backend::Cuda,
            }),
            iters: self.iters,
            threads: self.threads,
        }
    }
}

/// `kernels info` as one JSON object: the choice, its reason, and every backend's availability.
pub fn info_json() -> serde_json::Value {
    let chosen = info();
    let backends: Vec<_> = Backend::ALL
        .iter()
        .map(|b| match b.available() {
            Ok(()) => json!({"backend": b.name(), "available": true}),
            Err(why) => json!({"backend": b.name(), "available": false, "reason": why}),
        })
        .collect();
    json!({"backend": chosen.backend.name(), "name": chosen.name, "reason": chosen.reason, "backends": backends})
}

/// One line of human-readable figures.
pub fn report_text(r: &BenchReport) -> String {
    format!(
        "backend {} ({} threads): {} vertices, {} edges, K={}, op {}, {}: median {:.3} ms (min {:.3}), \
         {:.3e} edges/s, {:.2} GB/s",
        r.backend,
        r.threads,
        r.vertices,
        r.edges,
        r.dim,
        r.op.name(),
        r.dtype.name(),
        r.ms,
        r.ms_min,
        r.edges_per_sec,
        r.gbps
    )
}

/// Runs a `plexus kernels` subcommand.
pub fn run(cmd: KernelsCmd) -> CliResult {
    match cmd {
        KernelsCmd::Info { json } => {
            if json {
                println!("{}", info_json());
            } else {
                let chosen = info();
                println!("backend: {}", chosen.name);
                println!("reason:  {}", chosen.reason);
                for b in Backend::ALL {
                    match b.available() {
                        Ok(()) => println!("  {:<7} available", b.name()),
                        Err(why) => println!("  {:<7} unavailable: {why}", b.name()),
                    }
                }
            }
            Ok(())
        }
        KernelsCmd::Bench(args) => {
            let report = run_bench(&args.options()).map_err(|e| format!("kernels bench: {e}"))?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| format!("kernels bench: {e}"))?
                );
            } else {
                println!("{}", report_text(&report));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Cmd};

    fn bench_args(argv: &[&str]) -> Result<KernelsBenchArgs, String> {
        let full: Vec<&str> = ["plexus", "kernels", "bench"].iter().chain(argv).copied().collect();
        match Cli::try_parse_from(full).map_err(|e| e.to_string())?.cmd {
            Cmd::Kernels(KernelsCmd::Bench(a)) => Ok(a),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn bench_arguments_map_to_options() {
        let a = bench_args(&[
            "--vertices",
            "100",
            "--edges",
            "400",
            "--seed",
            "3",
            "--dim",
            "8",
            "--op",
            "gcn",
        ])
        .unwrap();
        let o = a.options();
        assert_eq!(
            (o.vertices, o.edges, o.seed, o.dim, o.op, o.dtype),
            (100, 400, 3, 8, AggOp::Gcn, DType::F32)
        );
        assert_eq!((o.graph_path, o.backend, o.iters), (None, None, 10));
        let a = bench_args(&[
            "--graph", "g.txt", "--dim", "4", "--op", "max", "--dtype", "bf16", "--json",
        ])
        .unwrap();
        let o = a.options();
        assert_eq!(
            (o.graph_path, o.op, o.dtype, a.json),
            (Some(PathBuf::from("g.txt")), AggOp::Max, DType::Bf16, true)
        );
        // Either a synthetic graph or an edge list, never both or neither; dim and op are required.
        assert!(bench_args(&["--dim", "4", "--op", "sum"]).is_err());
        assert!(bench_args(&["--vertices", "10", "--dim", "4", "--op", "sum"]).is_err());
        assert!(bench_args(&[
            "--vertices",
            "10",
            "--edges",
            "20",
            "--graph",
            "g",
            "--dim",
            "4",
            "--op",
            "sum"
        ])
        .is_err());
        assert!(bench_args(&["--vertices", "10", "--edges", "20", "--op", "sum"]).is_err());
    }

    #[test]
    fn a_tiny_bench_reports_every_figure() {
        let a = bench_args(&[
            "--vertices",
            "64",
            "--edges",
            "256",
            "--dim",
            "8",
            "--op",
            "mean",
            "--backend",
            "scalar",
            "--iters",
            "2",
        ])
        .unwrap();
        let r = run_bench(&a.options()).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["backend"], "scalar");
        assert_eq!(
            (v["vertices"].as_u64(), v["edges"].as_u64(), v["dim"].as_u64()),
            (Some(64), Some(256), Some(8))
        );
        for key in ["ms", "edges_per_sec", "gbps"] {
            assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
        }
        assert!(report_text(&r).starts_with("backend scalar (1 threads): 64 vertices, 256 edges, K=8, op mean, f32"));
        let shown = info_json();
        assert_eq!(shown["backend"], info().backend.name());
        assert_eq!(shown["backends"].as_array().map(Vec::len), Some(Backend::ALL.len()));
    }
}
