//! `etcd-bench-driver`: the etcd counterpart of `plexus bench --workload write`.
//!
//! It runs a fixed number of concurrent put loops against a set of etcd endpoints
//! for a fixed time, records each successful put's latency in an HDR histogram and
//! prints one JSON object with the same fields as `plexus bench --json`
//! (`ops_per_sec`, `p50_us`, `p99_us`, `p999_us`, `errors`, ...), so that
//! `benches/etcd/run.sh` can put the two side by side.
//!
//! It is not a general etcd benchmark (etcd ships its own `benchmark` tool) and it
//! does not start or stop etcd: `run.sh` does. Every value is 64 bytes by default
//! and keys are spread over owners as `owner/<n>/<seq>`, like plexus's timeline
//! appends to random owners. Worker `w` talks to endpoint `w % endpoints`; a member
//! that is not the leader forwards the proposal to the leader, as in a real
//! deployment where clients are spread over members.

mod load;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use etcd_client::{Client, ConnectOptions};
use serde_json::json;

use crate::load::{run_load, wait_ready, LoadSpec};

/// Largest concurrency accepted (each is a task with one put in flight), the same
/// limit as `plexus bench`.
const CONCURRENCY_MAX: usize = 4_096;
/// Most runtime worker threads accepted, the same limit as `plexus bench --client-threads`.
const THREADS_MAX: usize = 64;
/// Largest value size accepted, in bytes; etcd's default request limit is 1.5 MiB.
const VALUE_BYTES_MAX: usize = 1 << 20;

/// Why the driver stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A command-line value is out of its accepted range.
    #[error("bad argument: {0}")]
    BadArgs(String),
    /// The etcd client could not be set up for an endpoint.
    #[error("connect {endpoint}: {source}")]
    Connect {
        /// The endpoint as given on the command line.
        endpoint: String,
        /// The client library's error.
        source: etcd_client::Error,
    },
    /// An endpoint did not accept a put before the readiness deadline.
    #[error("{endpoint} not ready after {waited_secs}s: {last_error}")]
    NotReady {
        /// The endpoint as given on the command line.
        endpoint: String,
        /// Seconds waited.
        waited_secs: u64,
        /// The last error the probe put returned.
        last_error: String,
    },
    /// A latency histogram could not be created.
    #[error("histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    /// Two latency histograms could not be merged.
    #[error("histogram merge: {0}")]
    HistogramMerge(#[from] hdrhistogram::AdditionError),
    /// A put loop task panicked or was cancelled.
    #[error("worker task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

#[derive(Parser, Debug)]
#[command(about = "Concurrent put loops against etcd; prints the same JSON fields as `plexus bench --json`")]
struct Args {
    /// etcd client URLs, comma separated (e.g. http://127.0.0.1:2379,http://127.0.0.1:22379).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Puts in flight (one loop each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Distinct owners the keys are spread over.
    #[arg(long, default_value_t = 1000)]
    owners: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Seconds to wait for every endpoint to accept a put before measuring.
    #[arg(long, default_value_t = 30)]
    ready_timeout_secs: u64,
    /// Per-request deadline in milliseconds; a put past it counts as an error.
    #[arg(long, default_value_t = 5_000)]
    request_timeout_ms: u64,
    /// Runtime worker threads of the driver: 1 runs everything on one thread (like
    /// `plexus bench --client-threads 1`, its default).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn validate(args: &Args) -> Result<(), DriverError> {
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        return Err(DriverError::BadArgs(format!(
            "--concurrency must be in 1..={CONCURRENCY_MAX}"
        )));
    }
    if args.duration == 0 {
        return Err(DriverError::BadArgs("--duration must be at least 1".into()));
    }
    if args.owners == 0 {
        return Err(DriverError::BadArgs("--owners must be at least 1".into()));
    }
    if args.value_bytes > VALUE_BYTES_MAX {
        return Err(DriverError::BadArgs(format!(
            "--value-bytes must be at most {VALUE_BYTES_MAX}"
        )));
    }
    if args.threads == 0 || args.threads > THREADS_MAX {
        return Err(DriverError::BadArgs(format!("--threads must be in 1..={THREADS_MAX}")));
    }
    if args.endpoints.iter().any(|e| e.trim().is_empty()) {
        return Err(DriverError::BadArgs("--endpoints has an empty entry".into()));
    }
    Ok(())
}

async fn run(args: Args) -> Result<serde_json::Value, DriverError> {
    validate(&args)?;
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_millis(args.request_timeout_ms));
    // One client (one HTTP/2 connection) per endpoint, shared by the workers that
    // use it, as `plexus bench` shares one client among its workers.
    let mut clients = Vec::with_capacity(args.endpoints.len());
    for endpoint in &args.endpoints {
        let client = Client::connect([endpoint.as_str()], Some(options.clone()))
            .await
            .map_err(|source| DriverError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        clients.push(client);
    }
    for (endpoint, client) in args.endpoints.iter().zip(&clients) {
        wait_ready(
            endpoint,
            client.kv_client(),
            Duration::from_secs(args.ready_timeout_secs),
        )
        .await?;
    }
    let spec = LoadSpec {
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.duration),
        owners: args.owners,
        value_bytes: args.value_bytes,
    };
    let kvs = clients.iter().map(Client::kv_client).collect();
    let result = run_load(kvs, &spec).await?;
    let secs = result.elapsed.as_secs_f64();
    let hist = &result.hist;
    Ok(json!({
        "system": "etcd", "workload": "write", "concurrency": args.concurrency, "duration_secs": secs,
        "endpoints": args.endpoints.len(), "ops": hist.len(), "ops_per_sec": hist.len() as f64 / secs,
        "p50_us": hist.value_at_quantile(0.5), "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999), "errors": result.errors,
    }))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Checked before the runtime is built: a zero thread count would panic in tokio.
    if let Err(e) = validate(&args) {
        eprintln!("etcd-bench-driver: {e}");
        return ExitCode::FAILURE;
    }
    let built = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd-bench-driver: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("etcd-bench-driver: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "etcd-bench-driver",
            "--endpoints",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn defaults_match_plexus_bench() {
        let a = args(&[]);
        assert_eq!(
            a.endpoints,
            vec!["http://127.0.0.1:1".to_string(), "http://127.0.0.1:2".to_string()]
        );
        assert_eq!(
            (a.concurrency, a.duration, a.owners, a.value_bytes, a.threads),
            (64, 10, 1000, 64, 1)
        );
        assert!(validate(&a).is_ok());
    }

    #[test]
    fn out_of_range_arguments_are_rejected() {
        let cases: [(&[&str], &str); 6] = [
            (
                &["--concurrency", "0"],
                "bad argument: --concurrency must be in 1..=4096",
            ),
            (&["--duration", "0"], "bad argument: --duration must be at least 1"),
            (&["--owners", "0"], "bad argument: --owners must be at least 1"),
            (
                &["--value-bytes", "1048577"],
                "bad argument: --value-bytes must be at most 1048576",
            ),
            (&["--threads", "0"], "bad argument: --threads must be in 1..=64"),
            (&["--threads", "65"], "bad argument: --threads must be in 1..=64"),
        ];
        for (extra, want) in cases {
            let err = validate(&args(extra)).err().map(|e| e.to_string());
            assert_eq!(err.as_deref(), Some(want));
        }
    }
}
