//! `plexus bench --workload empi`: identity matching on a running cluster, against ground truth.
//!
//! Phases: generate `--records` synthetic person records with ground truth (`plexus-empi`'s
//! seeded generator: typos, nicknames, swapped day and month, moves, twins and households);
//! bulk-link them into the cluster (`EmpiRequest::Ingest` batches of `--batch`, up to
//! `--ingest-concurrency` in flight) and time it; read every identity back (`empi clusters`)
//! and score it: pairwise precision, recall and F1 against the truth, and the blocking pair
//! completeness of the cluster's blocking rules on this data; then, with `--match-records`
//! records held (the rest generated and linked first), time one-record `match` calls from
//! `--match-clients` clients for `--duration` seconds (queries are records of the population
//! under a new key, so each finds its own person). Last, unless `--no-ablation`, the ablation
//! the issue asks for: the same population linked by `plexus-empi`'s batch pipeline in this
//! process with the full model, without the graph signal and without term-frequency
//! adjustment. (The cluster's online path scores without the graph signal: record-attribute
//! graph embeddings are computed by the batch pipeline only, so the ablation runs there.)
//!
//! Progress goes to stderr, the figures to stdout (JSON with `--json`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use plexus_client::{Client, ClientConfig, EmpiIngested, PersonRecord};
use plexus_empi::context::MatchContext;
use plexus_empi::eval::pairwise;
use plexus_empi::linker::{Linker, LinkerConfig};
use plexus_empi::synth::{generate, Population, SynthConfig, SYNTH_RECORDS_MAX};
use plexus_proto::EMPI_INGEST_RECORDS_MAX;
use serde_json::json;

use crate::cli::{BenchArgs, CliResult};

/// Most match clients.
const MATCH_CLIENTS_MAX: usize = 1_024;
/// Candidates a timed match asks for.
const MATCH_K: u32 = 5;
/// Batches in flight at most.
const INGEST_CONCURRENCY_MAX: usize = 64;
/// How long the identities may take to settle after the last batch (outbox deliveries).
const SETTLE_WITHIN: Duration = Duration::from_secs(120);
/// The batch pipeline's ablation runs on at most this many records (its memory is a few GB at
/// a million).
const ABLATION_RECORDS_MAX: usize = 500_000;

fn hist() -> CliResult<Histogram<u64>> {
    Histogram::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())
}

pub fn run(args: &BenchArgs) -> CliResult {
    if args.records == 0 || args.records > SYNTH_RECORDS_MAX {
        return Err(format!("--records must be in 1..={SYNTH_RECORDS_MAX}"));
    }
    if args.match_records > SYNTH_RECORDS_MAX {
        return Err(format!("--match-records must be at most {SYNTH_RECORDS_MAX}"));
    }
    if args.batch == 0 || args.batch > EMPI_INGEST_RECORDS_MAX {
        return Err(format!("--batch must be in 1..={EMPI_INGEST_RECORDS_MAX}"));
    }
    if args.ingest_concurrency == 0 || args.ingest_concurrency > INGEST_CONCURRENCY_MAX {
        return Err(format!("--ingest-concurrency must be in 1..={INGEST_CONCURRENCY_MAX}"));
    }
    if args.match_clients == 0 || args.match_clients > MATCH_CLIENTS_MAX {
        return Err(format!("--match-clients must be in 1..={MATCH_CLIENTS_MAX}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(bench(args))
}

async fn bench(args: &BenchArgs) -> CliResult {
    let cfg = ClientConfig::load(&args.client.config).map_err(|e| format!("{}: {e}", args.client.config.display()))?;
    let cfg = ClientConfig {
        // A batch is linked in seconds, not the default attempt's two.
        attempt_timeout: cfg.attempt_timeout.max(Duration::from_secs(120)),
        request_timeout: cfg.request_timeout.max(Duration::from_secs(240)),
        in_flight_max: cfg.in_flight_max.max(args.match_clients),
        ..cfg
    };
    let client = Client::connect(cfg).await.map_err(|e| format!("connect: {e}"))?;
    let held_before = held(&client).await?.len();
    if held_before > 0 {
        return Err(format!(
            "the cluster already holds {held_before} EMPI records: run the benchmark on a fresh cluster, \
             so the identities it scores are its own"
        ));
    }

    eprintln!("generating {} records (seed {})", args.records, args.seed);
    let pop = generate(&SynthConfig::new(args.records, args.seed));
    let people = pop.truth.iter().collect::<std::collections::BTreeSet<_>>().len();

    // Bulk link.
    let started = Instant::now();
    let refused = ingest(&client, &pop.records, args, "bulk").await?;
    let bulk_secs = started.elapsed().as_secs_f64();
    let bulk_rate = pop.records.len() as f64 / bulk_secs;
    eprintln!(
        "bulk link: {} records in {bulk_secs:.2}s ({bulk_rate:.0}/s), {refused} refused",
        pop.records.len()
    );

    // Quality, once every identity has settled.
    let labels = settle(&client, pop.records.len() - refused as usize).await?;
    let keys: Vec<String> = pop.records.iter().map(PersonRecord::key_string).collect();
    let (predicted, truth): (Vec<u64>, Vec<u32>) = keys
        .iter()
        .zip(&pop.truth)
        .filter_map(|(k, t)| labels.get(k).map(|m| (*m, *t)))
        .unzip();
    let m = pairwise(&predicted, &truth);
    let identities = predicted.iter().collect::<std::collections::BTreeSet<_>>().len();
    let completeness = pair_completeness(&pop)?;
    eprintln!(
        "pairwise precision {:.5} recall {:.5} F1 {:.5}; blocking pair completeness {completeness:.5}",
        m.precision, m.recall, m.f1
    );

    // One-record match latency with `--match-records` held.
    let mut latency = serde_json::Value::Null;
    if args.match_records > 0 {
        if args.match_records > pop.records.len() {
            let more = generate(&SynthConfig::new(args.match_records - pop.records.len(), args.seed + 1));
            // The second population's keys must not collide with the first's.
            let records: Vec<PersonRecord> = more
                .records
                .into_iter()
                .map(|mut r| {
                    r.source_id.insert(0, 'M');
                    r
                })
                .collect();
            eprintln!("loading {} more records for the match phase", records.len());
            ingest(&client, &records, args, "more").await?;
        }
        latency = match_latency(&client, &pop, args).await?;
    }
    client.close().await;

    let ablation = if args.no_ablation {
        serde_json::Value::Null
    } else {
        ablation(&pop, args.seed)?
    };
    let out = json!({
        "workload": "empi",
        "records": pop.records.len(),
        "people": people,
        "bulk": {"seconds": bulk_secs, "records_per_second": bulk_rate, "refused": refused,
                  "batch": args.batch, "in_flight": args.ingest_concurrency},
        "quality": {"precision": m.precision, "recall": m.recall, "f1": m.f1,
                    "true_pairs": m.true_pairs, "predicted_pairs": m.predicted_pairs,
                    "identities": identities, "blocking_pair_completeness": completeness},
        "match": latency,
        "ablation": ablation,
    });
    if args.client.json {
        println!("{out}");
    } else {
        print_text(&out);
    }
    Ok(())
}

/// Links `records` in batches, `--ingest-concurrency` at once; how many the cluster refused.
async fn ingest(client: &Client, records: &[PersonRecord], args: &BenchArgs, what: &str) -> CliResult<u64> {
    use futures::StreamExt;
    let started = Instant::now();
    let mut done = 0usize;
    let mut refused = 0u64;
    let mut last = Instant::now();
    let mut answers = futures::stream::iter(records.chunks(args.batch))
        .map(|chunk| {
            let c = client.clone();
            let batch = chunk.to_vec();
            async move { (batch.len(), c.empi_ingest(batch).await) }
        })
        .buffered(args.ingest_concurrency);
    while let Some((n, answer)) = answers.next().await {
        let outcomes = answer.map_err(|e| format!("{what}: a batch failed: {e}"))?;
        refused += outcomes
            .iter()
            .filter(|o| matches!(o, EmpiIngested::Refused { .. }))
            .count() as u64;
        done += n;
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!("{what}: {done}/{} records, {:.0}/s", records.len(), done as f64 / secs);
        }
    }
    Ok(refused)
}

/// Every held record's identity.
async fn held(client: &Client) -> CliResult<HashMap<String, u64>> {
    let mut out = HashMap::new();
    let mut after = None;
    loop {
        let (page, next) = client
            .empi_clusters(after, 10_000)
            .await
            .map_err(|e| format!("clusters: {e}"))?;
        for m in page {
            for k in m.members {
                out.insert(k, m.id);
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// The identities once `expected` records are listed and two readings a second apart agree
/// (the EMPI outbox delivers memberships and merges a moment after each write).
async fn settle(client: &Client, expected: usize) -> CliResult<HashMap<String, u64>> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut last = held(client).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = held(client).await?;
        if now.len() >= expected && now == last {
            return Ok(now);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "identities did not settle within {SETTLE_WITHIN:?}: {} of {expected} records listed",
                now.len()
            ));
        }
        last = now;
    }
}

/// Of the pairs of records of one person, the share that share a blocking key under the
/// cluster's blocking rules (the default rules, which the cluster's model keeps).
fn pair_completeness(pop: &Population) -> CliResult<f64> {
    let ctx = MatchContext::untrained().map_err(|e| e.to_string())?;
    let blocks: Vec<Vec<String>> = pop.records.iter().map(|r| ctx.blocks(&ctx.normalize(r))).collect();
    let mut members: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, t) in pop.truth.iter().enumerate() {
        members.entry(*t).or_default().push(i);
    }
    let (mut pairs, mut covered) = (0u64, 0u64);
    for m in members.values() {
        for (x, &a) in m.iter().enumerate() {
            for &b in &m[x + 1..] {
                pairs += 1;
                covered += u64::from(blocks[a].iter().any(|k| blocks[b].contains(k)));
            }
        }
    }
    Ok(if pairs == 0 { 1.0 } else { covered as f64 / pairs as f64 })
}

/// `--match-clients` clients each matching records of the population under a new key, for
/// `--duration` seconds.
async fn match_latency(client: &Client, pop: &Population, args: &BenchArgs) -> CliResult<serde_json::Value> {
    let held = held(client).await?.len();
    eprintln!(
        "match: {} clients for {}s with {held} records held",
        args.match_clients, args.duration
    );
    let records = Arc::new(pop.records.clone());
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for w in 0..args.match_clients {
        let (c, records) = (client.clone(), records.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist()?;
            let (mut found, mut errors) = (0u64, 0u64);
            let mut i = w;
            while Instant::now() < deadline {
                let mut q = records[i % records.len()].clone();
                q.source_id.push_str("-q");
                i += MATCH_CLIENTS_MAX + 7;
                let t = Instant::now();
                match c.empi_match(q, MATCH_K).await {
                    Ok(m) => {
                        h.record(t.elapsed().as_micros().max(1) as u64)
                            .map_err(|e| e.to_string())?;
                        found += u64::from(!m.is_empty());
                    }
                    Err(_) => errors += 1,
                }
            }
            Ok::<_, String>((h, found, errors))
        }));
    }
    let mut all = hist()?;
    let (mut found, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (h, f, e) = t.await.map_err(|e| e.to_string())??;
        all.add(h).map_err(|e| e.to_string())?;
        found += f;
        errors += e;
    }
    let us = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok(
        json!({"held_records": held, "clients": args.match_clients, "calls": all.len(),
              "per_second": all.len() as f64 / args.duration as f64, "with_candidates": found, "errors": errors,
              "p50_ms": us(0.5), "p99_ms": us(0.99), "p999_ms": us(0.999), "max_ms": all.max() as f64 / 1000.0}),
    )
}

/// The batch pipeline on the population: full, without the graph signal, without TF.
fn ablation(pop: &Population, seed: u64) -> CliResult<serde_json::Value> {
    let n = pop.records.len().min(ABLATION_RECORDS_MAX);
    let base = LinkerConfig {
        seed,
        ..LinkerConfig::default()
    };
    let variants = [
        ("full", base.clone()),
        (
            "without_graph",
            LinkerConfig {
                graph: None,
                ..base.clone()
            },
        ),
        (
            "without_tf",
            LinkerConfig {
                tf_adjust: false,
                ..base.clone()
            },
        ),
    ];
    let mut out = serde_json::Map::new();
    out.insert("records".into(), json!(n));
    for (name, config) in variants {
        eprintln!("ablation: {name} on {n} records");
        let mut linker = Linker::new(config).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let report = linker
            .link_batch(pop.records[..n].to_vec(), &mut |_| {})
            .map_err(|e| e.to_string())?;
        let secs = started.elapsed().as_secs_f64();
        let truth: Vec<u32> = report.input_index.iter().map(|&i| pop.truth[i as usize]).collect();
        let m = pairwise(&linker.labels(), &truth);
        out.insert(
            name.into(),
            json!({"precision": m.precision, "recall": m.recall, "f1": m.f1, "seconds": secs,
                   "kernel_backend": report.kernel_backend}),
        );
    }
    Ok(serde_json::Value::Object(out))
}

fn print_text(v: &serde_json::Value) {
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    println!("records: {}  people: {}", v["records"], v["people"]);
    let b = &v["bulk"];
    println!(
        "bulk link (replicated): {:.2}s, {:.0} records/s, {} refused",
        f(&b["seconds"]),
        f(&b["records_per_second"]),
        b["refused"]
    );
    let q = &v["quality"];
    println!(
        "pairwise precision {:.5}  recall {:.5}  F1 {:.5}  identities {}  blocking pair completeness {:.5}",
        f(&q["precision"]),
        f(&q["recall"]),
        f(&q["f1"]),
        q["identities"],
        f(&q["blocking_pair_completeness"])
    );
    let m = &v["match"];
    if !m.is_null() {
        println!(
            "match ({} clients, {} records held): {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  ({} errors)",
            m["clients"],
            m["held_records"],
            f(&m["per_second"]),
            f(&m["p50_ms"]),
            f(&m["p99_ms"]),
            f(&m["p999_ms"]),
            m["errors"]
        );
    }
    let a = &v["ablation"];
    if !a.is_null() {
        println!("ablation (batch pipeline, {} records):", a["records"]);
        for name in ["full", "without_graph", "without_tf"] {
            let r = &a[name];
            println!(
                "  {name:<14} precision {:.5}  recall {:.5}  F1 {:.5}  ({:.1}s)",
                f(&r["precision"]),
                f(&r["recall"]),
                f(&r["f1"]),
                f(&r["seconds"])
            );
        }
    }
}
