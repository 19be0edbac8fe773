//! `plexus bench`: drives a running cluster through the client library with
//! a fixed number of requests in flight and reports throughput and latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use plexus_client::{Client, ClientConfig};
use plexus_proto::Cursor;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::cli::{BenchArgs, CliResult, Workload};

/// Entries per timeline read page, and per owner filled before a read run.
const READ_PAGE: u32 = 50;
/// Largest concurrency accepted (each is a task and an in-flight request).
const CONCURRENCY_MAX: usize = 4_096;
/// Most runtime threads `--client-threads` accepts.
const CLIENT_THREADS_MAX: usize = 64;

fn new_hist() -> CliResult<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

async fn prefill(client: &Client, owners: u64, concurrency: usize, item: &[u8]) -> CliResult {
    let next = Arc::new(AtomicU64::new(0));
    let total = owners * u64::from(READ_PAGE);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(total as usize).max(1) {
        let (c, next, item) = (client.clone(), next.clone(), item.to_vec());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), String>(());
                }
                c.timeline_append(i % owners, item.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> CliResult {
    if std::env::var_os("PLEXUS_LOG").is_some() {
        crate::cli::init_tracing();
    }
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        return Err(format!("--concurrency must be in 1..={CONCURRENCY_MAX}"));
    }
    if args.owners == 0 {
        return Err("--owners must be at least 1".into());
    }
    if args.client_threads == 0 || args.client_threads > CLIENT_THREADS_MAX {
        return Err(format!("--client-threads must be in 1..={CLIENT_THREADS_MAX}"));
    }
    if args.workload == Workload::Feed {
        return crate::bench_feed::run(&args);
    }
    if args.workload == Workload::Empi {
        return crate::bench_empi::run(&args);
    }
    let runtime = match args.client_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    runtime.map_err(|e| format!("tokio runtime: {e}"))?.block_on(async move {
        let cfg = ClientConfig::load(&args.client.config).map_err(|e| format!("{}: {e}", args.client.config.display()))?;
        let cfg = ClientConfig { in_flight_max: args.concurrency.max(cfg.in_flight_max), ..cfg };
        let client = Client::connect(cfg).await.map_err(|e| format!("connect: {e}"))?;
        let item = vec![b'x'; args.item_bytes];
        if args.workload == Workload::Read {
            // Progress goes to stderr in both modes: a fill takes seconds, and `--json` keeps
            // stdout for the one result object.
            let t = Instant::now();
            eprintln!("filling {} timelines with {READ_PAGE} entries each", args.owners);
            prefill(&client, args.owners, args.concurrency, &item).await?;
            eprintln!("filled in {:.1}s", t.elapsed().as_secs_f64());
        }
        let deadline = Instant::now() + Duration::from_secs(args.duration);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..args.concurrency {
            let (c, item, workload, owners) = (client.clone(), item.clone(), args.workload, args.owners);
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
                let mut hist = new_hist()?;
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let owner = rng.gen_range(0..owners);
                    let t = Instant::now();
                    let ok = match workload {
                        Workload::Write => c.timeline_append(owner, item.clone()).await.is_ok(),
                        Workload::Read => c.timeline_read(owner, Cursor::Latest, READ_PAGE).await.is_ok(),
                        Workload::Feed | Workload::Empi => return Err("runs in its own module".to_string()),
                    };
                    if ok {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    } else {
                        errors += 1;
                    }
                }
                Ok::<_, String>((hist, errors))
            }));
        }
        let mut hist = new_hist()?;
        let mut errors = 0;
        for t in tasks {
            let (h, e) = t.await.map_err(|e| e.to_string())??;
            hist.add(&h).map_err(|e| e.to_string())?;
            errors += e;
        }
        let secs = start.elapsed().as_secs_f64();
        let ops = hist.len() as f64 / secs;
        let workload = match args.workload {
            Workload::Write => "write",
            Workload::Read => "read",
            Workload::Feed => "feed",
            Workload::Empi => "empi",
        };
        if args.client.json {
            println!(
                "{}",
                json!({"workload": workload, "concurrency": args.concurrency, "duration_secs": secs,
                    "ops": hist.len(), "ops_per_sec": ops, "p50_us": hist.value_at_quantile(0.5),
                    "p99_us": hist.value_at_quantile(0.99), "p999_us": hist.value_at_quantile(0.999),
                    "errors": errors})
            );
        } else {
            println!(
                "{workload}: {:.0} ops/s over {secs:.1}s with {} in flight; latency p50 {} us, p99 {} us, p999 {} us; {errors} errors",
                ops,
                args.concurrency,
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                hist.value_at_quantile(0.999)
            );
        }
        client.close().await;
        Ok(())
    })
}
