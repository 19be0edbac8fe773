//! `kbench`: the aggregation bench from the command line, printing one JSON object per run (the same
//! figures `plexus kernels bench --json` prints). Also writes the bench graph as an edge list for the
//! scipy comparison and measures STREAM copy bandwidth.
//!
//! Usage: `kbench [--vertices N] [--edges E] [--seed S] [--graph PATH] [--dim K] [--op sum|mean|max|gcn]
//! [--dtype f32|bf16] [--backend scalar|avx2|avx512|neon|cuda] [--iters I] [--threads T]
//! [--write-edges PATH] [--stream-bytes B] [--info]`

use std::path::PathBuf;
use std::process::ExitCode;

use plexus_kernels::bench::bench_graph;
use plexus_kernels::graph::write_edge_list;
use plexus_kernels::{info, run_bench, stream_copy_gbps, AggOp, Backend, BenchOptions, DType};

fn parse(args: &[String]) -> Result<(BenchOptions, Option<PathBuf>, Option<usize>, bool), String> {
    let mut o = BenchOptions::default();
    let (mut write, mut stream, mut show_info) = (None, None, false);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--info" {
            show_info = true;
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--vertices" => o.vertices = num(v)?,
            "--edges" => o.edges = num(v)?,
            "--seed" => o.seed = num(v)? as u64,
            "--graph" => o.graph_path = Some(PathBuf::from(v)),
            "--dim" => o.dim = num(v)?,
            "--op" => o.op = AggOp::parse(v).ok_or_else(|| format!("unknown op {v}"))?,
            "--dtype" => o.dtype = DType::parse(v).ok_or_else(|| format!("unknown dtype {v}"))?,
            "--backend" => o.backend = Some(Backend::parse(v).ok_or_else(|| format!("unknown backend {v}"))?),
            "--iters" => o.iters = num(v)?,
            "--threads" => o.threads = Some(num(v)?),
            "--write-edges" => write = Some(PathBuf::from(v)),
            "--stream-bytes" => stream = Some(num(v)?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok((o, write, stream, show_info))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (opts, write, stream, show_info) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kbench: {e}");
            return ExitCode::from(2);
        }
    };
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        if show_info {
            println!("{}", serde_json::to_string(&info())?);
            return Ok(());
        }
        if let Some(bytes) = stream {
            println!(
                "{}",
                serde_json::json!({ "stream_copy_bytes": bytes, "gbps": stream_copy_gbps(bytes) })
            );
            return Ok(());
        }
        if let Some(path) = write {
            write_edge_list(&path, &bench_graph(&opts)?)?;
            return Ok(());
        }
        println!("{}", serde_json::to_string(&run_bench(&opts)?)?);
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kbench: {e}");
            ExitCode::FAILURE
        }
    }
}
