//! Bulk-link benchmark on synthetic records with ground truth: records/s, pairs compared, blocking pair
//! completeness, pairwise precision/recall/F1, an ablation (full model, without the graph signal,
//! without term-frequency adjustment, without the clustering guard) and one-record match latency.
//!
//! `cargo run --release -p plexus-empi --example link_bench -- --records 500000 --seed 1`
//! Options: `--people N` (default records/2), `--threshold BITS`, `--queries N` (match look-ups timed,
//! default 2000), `--no-ablation`. Progress goes to stderr, results to stdout.

use std::time::{Duration, Instant};

use plexus_empi::eval::{blocking, pairwise};
use plexus_empi::linker::{Linker, LinkerConfig, Stage};
use plexus_empi::synth::{generate, SynthConfig};

struct Args {
    records: usize,
    people: Option<usize>,
    seed: u64,
    threshold: Option<f64>,
    queries: usize,
    ablation: bool,
    diagnose: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        records: 100_000,
        people: None,
        seed: 1,
        threshold: None,
        queries: 2000,
        ablation: true,
        diagnose: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--records" => args.records = value("--records")?.parse().map_err(|e| format!("--records: {e}"))?,
            "--people" => args.people = Some(value("--people")?.parse().map_err(|e| format!("--people: {e}"))?),
            "--seed" => args.seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--threshold" => {
                args.threshold = Some(value("--threshold")?.parse().map_err(|e| format!("--threshold: {e}"))?)
            }
            "--queries" => args.queries = value("--queries")?.parse().map_err(|e| format!("--queries: {e}"))?,
            "--no-ablation" => args.ablation = false,
            "--diagnose" => args.diagnose = value("--diagnose")?.parse().map_err(|e| format!("--diagnose: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

struct Run {
    truth: Vec<u32>,
    elapsed: Duration,
    stages: Vec<(Stage, Duration)>,
    precision: f64,
    recall: f64,
    f1: f64,
    pairs: u64,
    masters: usize,
}

fn run(
    name: &str,
    config: LinkerConfig,
    pop: &plexus_empi::synth::Population,
    report_blocking: bool,
) -> Result<(Run, Linker), String> {
    let mut linker = Linker::new(config).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut last = (Stage::Prepare, start);
    let mut stages = Vec::new();
    let records = pop.records.clone();
    let t0 = Instant::now();
    let report = linker
        .link_batch(records, &mut |stage| {
            let now = Instant::now();
            if stage != Stage::Prepare {
                stages.push((last.0, now - last.1));
            }
            eprintln!("  [{name}] {:>7.2}s {stage:?}", (now - t0).as_secs_f64());
            last = (stage, now);
        })
        .map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    let truth: Vec<u32> = report.input_index.iter().map(|&i| pop.truth[i as usize]).collect();
    let m = pairwise(&linker.labels(), &truth);
    if report_blocking {
        let b = blocking(&truth, report.candidate_pairs, |a, b| linker.was_candidate(a, b));
        println!("candidate pairs compared: {}", report.candidate_pairs);
        for (rule, n) in &report.pairs_per_rule {
            println!("  rule {rule:<12} {n:>12} pairs");
        }
        println!(
            "oversize blocks skipped: {} ({} pairs); blocks skipped at the pair cap: {}",
            report.oversize_blocks, report.oversize_pairs, report.capped_blocks
        );
        println!(
            "blocking pair completeness: {:.5} ({} of {} true pairs); reduction ratio {:.7}",
            b.pair_completeness, b.covered_true_pairs, b.true_pairs, b.reduction_ratio
        );
        for (i, s) in report.training.sessions.iter().enumerate() {
            if let Some(s) = s {
                println!(
                    "EM session {i}: {} iterations, converged {}, match share {:.4}",
                    s.iterations, s.converged, s.lambda_candidates
                );
            }
        }
        let l = &report.training.lambda;
        println!(
            "lambda run: {} iterations, match share among candidates {:.4}, prior lambda {:.3e}",
            l.iterations, l.lambda_candidates, l.lambda
        );
        println!(
            "kernel backend for the graph: {}; hub attributes dropped: {}",
            report.kernel_backend, report.graph_hub_attributes
        );
        println!(
            "links above threshold: {}; master identities: {}",
            report.links, report.masters
        );
    }
    Ok((
        Run {
            truth,
            elapsed,
            stages,
            precision: m.precision,
            recall: m.recall,
            f1: m.f1,
            pairs: report.candidate_pairs,
            masters: report.masters,
        },
        linker,
    ))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("link_bench: {e}");
            std::process::exit(2);
        }
    };
    let mut synth = SynthConfig::new(args.records, args.seed);
    if let Some(p) = args.people {
        synth.people = p;
    }
    eprintln!(
        "generating {} records of {} people (seed {})",
        synth.records, synth.people, synth.seed
    );
    let t = Instant::now();
    let pop = generate(&synth);
    eprintln!(
        "generated in {:.2}s ({} twin pairs)",
        t.elapsed().as_secs_f64(),
        pop.twin_pairs
    );

    let mut base = LinkerConfig {
        keep_candidate_pairs: true,
        seed: args.seed,
        ..LinkerConfig::default()
    };
    if let Some(th) = args.threshold {
        base.cluster.threshold_bits = th;
    }
    println!(
        "records: {}  people: {}  threads: {}",
        pop.records.len(),
        synth.people,
        plexus_empi::util::threads()
    );
    let (full, linker) = match run("full", base.clone(), &pop, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("link_bench: {e}");
            std::process::exit(1);
        }
    };
    let secs = full.elapsed.as_secs_f64();
    println!(
        "bulk link: {:.2}s, {:.0} records/s, {} pairs compared ({:.0} pairs/s)",
        secs,
        pop.records.len() as f64 / secs,
        full.pairs,
        full.pairs as f64 / secs
    );
    for (stage, d) in &full.stages {
        println!("  {:<12} {:>8.3}s", format!("{stage:?}"), d.as_secs_f64());
    }
    println!(
        "pairwise precision {:.5}  recall {:.5}  F1 {:.5}  (masters {})",
        full.precision, full.recall, full.f1, full.masters
    );

    if args.diagnose > 0 {
        diagnose(&linker, &full.truth, args.diagnose);
    }

    // One-record look-ups against everything held: records of the batch with a changed key, so each
    // query finds its own person's other records and not itself.
    if args.queries > 0 {
        let n = args.queries.min(pop.records.len());
        let step = (pop.records.len() / n).max(1);
        let queries: Vec<_> = (0..n)
            .map(|i| {
                let mut r = pop.records[i * step].clone();
                r.source_id.push_str("-q");
                r
            })
            .collect();
        let mut lat: Vec<f64> = Vec::with_capacity(n);
        let mut found = 0usize;
        for q in &queries {
            let t = Instant::now();
            let top = linker.match_record(q, 5);
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            found += usize::from(!top.is_empty());
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
        println!(
            "one-record match against {} held records: p50 {:.0} us, p99 {:.0} us, max {:.0} us ({} of {} queries had candidates)",
            linker.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0),
            found,
            n
        );
        if let Some(top) = linker.match_record(&queries[0], 1).first() {
            println!(
                "explanation of the best candidate of query 0 ({}, {}):\n{}",
                top.key, top.master, top.explanation
            );
        }
    }
    drop(linker);

    if args.ablation {
        let variants: Vec<(&str, LinkerConfig)> = vec![
            (
                "without graph",
                LinkerConfig {
                    graph: None,
                    ..base.clone()
                },
            ),
            (
                "without TF adjustment",
                LinkerConfig {
                    tf_adjust: false,
                    ..base.clone()
                },
            ),
            ("without cluster guard", {
                let mut c = base.clone();
                c.cluster.guard = false;
                c
            }),
        ];
        let mut rows = vec![("full model", full.precision, full.recall, full.f1, secs)];
        for (name, config) in variants {
            match run(name, config, &pop, false) {
                Ok((r, _)) => rows.push((name, r.precision, r.recall, r.f1, r.elapsed.as_secs_f64())),
                Err(e) => eprintln!("link_bench: {name}: {e}"),
            }
        }
        println!("\nablation                 precision   recall       F1     time");
        for (name, p, r, f, t) in rows {
            println!("{name:<24} {p:>9.5} {r:>8.5} {f:>8.5} {t:>7.2}s");
        }
    }
}

/// Prints missed true pairs and false links, with explanations, to see what the model gets wrong.
fn diagnose(linker: &Linker, truth: &[u32], n: usize) {
    use std::collections::HashMap;
    let labels = linker.labels();
    let mut by_person: HashMap<u32, Vec<u32>> = HashMap::new();
    for (i, &t) in truth.iter().enumerate() {
        by_person.entry(t).or_default().push(i as u32);
    }
    let mut people: Vec<_> = by_person.into_iter().collect();
    people.sort_unstable();
    let mut refusals: HashMap<String, usize> = HashMap::new();
    let mut missed = 0;
    for (_, m) in &people {
        for (i, &a) in m.iter().enumerate() {
            for &b in &m[i + 1..] {
                if labels[a as usize] == labels[b as usize] {
                    continue;
                }
                missed += 1;
                let (ka, kb) = (linker.key(a).cloned(), linker.key(b).cloned());
                let (Some(ka), Some(kb)) = (ka, kb) else { continue };
                let Ok(e) = linker.explain(&ka, &kb) else { continue };
                let why = match e.refusal {
                    Some(r) => format!("{r:?}"),
                    None if !linker.was_candidate(a, b) => "not a candidate".to_string(),
                    None if e.explanation.total < e.threshold_bits => "below threshold".to_string(),
                    None => "other".to_string(),
                };
                let seen = refusals.entry(why.clone()).or_default();
                *seen += 1;
                if *seen <= n {
                    let names = |r: u32| {
                        linker
                            .record(r)
                            .map(|n| format!("{} {} {:?}", n.given(), n.family(), n.birth))
                            .unwrap_or_default()
                    };
                    println!(
                        "\nMISSED {ka} / {kb}: {why} [{} | {}]\n{}",
                        names(a),
                        names(b),
                        e.explanation
                    );
                }
            }
        }
    }
    println!("\nmissed true pairs (different identities): {missed}; by reason: {refusals:?}");
    let mut members: HashMap<u64, Vec<u32>> = HashMap::new();
    for (i, &l) in labels.iter().enumerate() {
        members.entry(l).or_default().push(i as u32);
    }
    let mut clusters: Vec<_> = members.into_iter().collect();
    clusters.sort_unstable();
    let mut shown = 0;
    for (_, m) in clusters {
        for (i, &a) in m.iter().enumerate() {
            for &b in &m[i + 1..] {
                if truth[a as usize] != truth[b as usize] && shown < n {
                    shown += 1;
                    if let (Some(ka), Some(kb)) = (linker.key(a), linker.key(b)) {
                        if let Ok(e) = linker.explain(ka, kb) {
                            println!("\nFALSE LINK {ka} / {kb}\n{}", e.explanation);
                        }
                    }
                }
            }
        }
    }
}
