//! `plexus sim`: run the deterministic simulator for one seed or a range of seeds.
//!
//! Each seed runs a whole simulated cluster (see `plexus-simulations`) and prints one line (or
//! one JSON object with `--json`); a failing seed prints its violations and the exact command
//! that reproduces it. The exit status is non-zero when any seed has a violation. This module
//! only parses, loops and prints.

use plexus_raft::sim_hooks::Canary;
use plexus_simulations::{run_seed, SeedReport, SimOptions};

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B excluded).
    #[arg(long)]
    pub seeds: Option<String>,
    /// One JSON line per seed: seed, trace_hash, violations, simulated_secs, wall_secs, ...
    #[arg(long)]
    pub json: bool,
    /// Run the simulated nodes with a deliberate bug, to see the checkers catch it:
    /// ack-before-fsync, stale-read, double-apply, half-follow, lease-too-long,
    /// lease-ignores-handover, fanout-skips-shard or empi-skips-member-join. Simulation only: a
    /// production node has no way to switch one on.
    #[arg(long)]
    pub canary: Option<String>,
    /// Run without faults (a baseline; also for speed measurements).
    #[arg(long)]
    pub no_faults: bool,
    /// Pin the number of nodes instead of drawing it from the seed.
    #[arg(long)]
    pub nodes: Option<u64>,
    /// Pin the number of shards instead of drawing it from the seed.
    #[arg(long)]
    pub shards: Option<u32>,
    /// Length of the safety phase, in simulated seconds (default 15).
    #[arg(long)]
    pub safety_secs: Option<u64>,
    /// Print every trace line to stderr.
    #[arg(long)]
    pub verbose: bool,
}

/// Parses `A..B` into the seeds it names.
fn parse_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("--seeds {text}: expected A..B"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("--seeds {text}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("--seeds {text}: {e}"))?;
    if b <= a {
        return Err(format!("--seeds {text}: the range is empty"));
    }
    Ok(a..b)
}

/// The command line that reruns `seed` with the same options.
fn reproduce(seed: u64, args: &SimArgs) -> String {
    let mut cmd = format!("plexus sim --seed {seed}");
    if args.no_faults {
        cmd.push_str(" --no-faults");
    }
    if let Some(n) = args.nodes {
        cmd.push_str(&format!(" --nodes {n}"));
    }
    if let Some(s) = args.shards {
        cmd.push_str(&format!(" --shards {s}"));
    }
    if let Some(s) = args.safety_secs {
        cmd.push_str(&format!(" --safety-secs {s}"));
    }
    if let Some(c) = &args.canary {
        cmd.push_str(&format!(" --canary {c}"));
    }
    cmd
}

fn print_report(report: &SeedReport, args: &SimArgs) {
    if args.json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("error: cannot encode the report of seed {}: {e}", report.seed),
        }
        return;
    }
    let speed = report.simulated_secs / report.wall_secs.max(1e-9);
    let verdict = if report.violations.is_empty() { "ok" } else { "FAILED" };
    println!(
        "seed {} {verdict} trace={} nodes={} shards={} ops={}/{} faults={} quieted={} simulated={:.1}s wall={:.2}s ({speed:.0}x)",
        report.seed,
        report.trace_hash,
        report.nodes,
        report.shards,
        report.ops_ok,
        report.ops,
        report.faults,
        report.quieted,
        report.simulated_secs,
        report.wall_secs
    );
    if !report.unchecked_keys.is_empty() {
        println!(
            "  linearizability unchecked (search bound reached) for {:?}",
            report.unchecked_keys
        );
    }
    for v in &report.violations {
        println!("  violation: {v}");
    }
    if !report.violations.is_empty() {
        println!("  last trace lines:");
        for line in &report.trace_tail {
            println!("    {line}");
        }
        println!("  reproduce: {}", reproduce(report.seed, args));
    }
}

/// Runs `plexus sim`.
pub fn run(args: SimArgs) -> crate::cli::CliResult {
    let canary = match &args.canary {
        None => None,
        Some(name) => Some(Canary::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Canary::ALL.iter().map(|c| c.name()).collect();
            format!("--canary {name}: no such canary (known: {})", names.join(", "))
        })?),
    };
    let seeds = match (&args.seed, &args.seeds) {
        (Some(s), _) => *s..*s + 1,
        (None, Some(range)) => parse_range(range)?,
        (None, None) => return Err("give --seed N or --seeds A..B".into()),
    };
    let options = SimOptions {
        no_faults: args.no_faults,
        nodes: args.nodes,
        shards: args.shards,
        safety_secs: args.safety_secs,
        verbose: args.verbose,
        canary,
    };
    let started = std::time::Instant::now();
    let (mut runs, mut simulated) = (0u64, 0.0f64);
    let mut failed = Vec::new();
    for seed in seeds {
        let report = run_seed(seed, &options);
        runs += 1;
        simulated += report.simulated_secs;
        if !report.violations.is_empty() {
            failed.push(reproduce(seed, &args));
        }
        print_report(&report, &args);
    }
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    if !args.json {
        println!(
            "{runs} seeds, {} failed; {:.0} simulated s per wall s, {:.0} seeds per minute",
            failed.len(),
            simulated / wall,
            runs as f64 * 60.0 / wall
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {runs} seeds failed; reproduce with:\n  {}",
            failed.len(),
            failed.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reject_nonsense() {
        assert_eq!(parse_range("3..7"), Ok(3..7));
        assert!(parse_range("7..3").is_err());
        assert!(parse_range("7").is_err());
        assert!(parse_range("a..3").is_err());
    }
}
