//! `plexus features ...` and `plexus score ...`: per-vertex feature vectors
//! and scoring through the client library.
//!
//! Feature values are given as one comma-separated list (`0.5,-1,2e-3`).
//! This module only parses, calls and prints; scoring runs in the nodes.

use clap::{Args, Subcommand, ValueEnum};
use plexus_client::{Client, ClientConfig, ScoreMode};
use serde_json::json;

use crate::cli::{runtime, CliResult, ClientOpts};

/// Feature vector operations.
#[derive(Subcommand, Debug)]
pub enum FeaturesCmd {
    /// Replace VERTEX's feature vector with VALUES (comma-separated floats).
    Set {
        vertex: u64,
        /// Comma-separated values, for example `0.5,-1,2e-3`.
        #[arg(allow_hyphen_values = true)]
        values: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print the feature vectors of VERTICES.
    Get {
        #[arg(required = true)]
        vertices: Vec<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove VERTEX's feature vector.
    Clear {
        vertex: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// How the query vector of `plexus score` is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The vertex's own features.
    Cosine,
    /// The mean of the vertex's own and its out-neighbours' features.
    NeighborMean,
    /// The nodes' GraphSAGE model (`[scoring] model`) over the vertex's out-neighbours.
    Sage,
}

impl From<ModeArg> for ScoreMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Cosine => ScoreMode::Cosine,
            ModeArg::NeighborMean => ScoreMode::NeighborMean,
            ModeArg::Sage => ScoreMode::Sage,
        }
    }
}

/// `plexus score VERTEX --candidates 1,2,3 [--k 10] [--mode cosine|neighbor-mean|sage]`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The vertex whose features form the query.
    pub vertex: u64,
    /// Comma-separated candidate vertex ids.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub candidates: Vec<u64>,
    /// How many of the best candidates to print.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// How the query vector is built.
    #[arg(long, value_enum, default_value = "cosine")]
    pub mode: ModeArg,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Parses `0.5,-1,2e-3` into values; an empty string is the empty vector.
/// Non-finite values are refused here, before the server refuses them.
pub fn parse_values(text: &str) -> CliResult<Vec<f32>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|part| {
            let part = part.trim();
            match part.parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(v),
                Ok(_) => Err(format!("feature value {part:?} is not finite")),
                Err(_) => Err(format!("feature value {part:?} is not a number")),
            }
        })
        .collect()
}

async fn connect(opts: &ClientOpts) -> CliResult<Client> {
    let cfg = ClientConfig::load(&opts.config).map_err(|e| format!("{}: {e}", opts.config.display()))?;
    Client::connect(cfg).await.map_err(|e| format!("connect: {e}"))
}

fn block<F: std::future::Future<Output = CliResult>>(f: F) -> CliResult {
    runtime()?.block_on(f)
}

fn join(values: &[f32]) -> String {
    values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
}

/// Runs a `plexus features` subcommand.
pub fn features(cmd: FeaturesCmd) -> CliResult {
    block(async move {
        match cmd {
            FeaturesCmd::Set {
                vertex,
                values,
                client: opts,
            } => {
                let values = parse_values(&values)?;
                if values.is_empty() {
                    return Err("no values given (use `plexus features clear` to remove a vector)".into());
                }
                let c = connect(&opts).await?;
                let dim = values.len();
                let changed = c.set_features(vertex, values).await.map_err(|e| e.to_string())?;
                if opts.json {
                    println!("{}", json!({"vertex": vertex, "dim": dim, "changed": changed}));
                } else {
                    println!(
                        "vertex {vertex}: {dim} values {}",
                        if changed { "set" } else { "unchanged" }
                    );
                }
                c.close().await;
            }
            FeaturesCmd::Get { vertices, client: opts } => {
                let c = connect(&opts).await?;
                let got = c.features(&vertices).await.map_err(|e| e.to_string())?;
                if opts.json {
                    let rows: Vec<_> = vertices
                        .iter()
                        .zip(&got)
                        .map(|(v, x)| json!({"vertex": v, "features": x}))
                        .collect();
                    println!("{}", json!({ "features": rows }));
                } else {
                    for (v, x) in vertices.iter().zip(&got) {
                        match x {
                            Some(x) => println!("{v}\t{}", join(x)),
                            None => println!("{v}\t(none)"),
                        }
                    }
                }
                c.close().await;
            }
            FeaturesCmd::Clear { vertex, client: opts } => {
                let c = connect(&opts).await?;
                let changed = c.set_features(vertex, Vec::new()).await.map_err(|e| e.to_string())?;
                if opts.json {
                    println!("{}", json!({"vertex": vertex, "changed": changed}));
                } else {
                    println!(
                        "vertex {vertex}: {}",
                        if changed { "cleared" } else { "had no features" }
                    );
                }
                c.close().await;
            }
        }
        Ok(())
    })
}

/// Runs `plexus score`.
pub fn score(args: ScoreArgs) -> CliResult {
    block(async move {
        let c = connect(&args.client).await?;
        let mode = ScoreMode::from(args.mode);
        let scores = c
            .score(args.vertex, args.candidates, args.k, mode)
            .await
            .map_err(|e| e.to_string())?;
        if args.client.json {
            let rows: Vec<_> = scores.iter().map(|(id, s)| json!({"vertex": id, "score": s})).collect();
            let mode = match mode {
                ScoreMode::Cosine => "cosine",
                ScoreMode::NeighborMean => "neighbor-mean",
                ScoreMode::Sage => "sage",
            };
            println!("{}", json!({"vertex": args.vertex, "mode": mode, "scores": rows}));
        } else {
            for (id, s) in &scores {
                println!("{id}\t{s:.6}");
            }
        }
        c.close().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Cmd};

    #[test]
    fn values_parse_exactly() {
        assert_eq!(parse_values("0.5,-1, 2e-3 "), Ok(vec![0.5, -1.0, 2e-3]));
        assert_eq!(parse_values(""), Ok(vec![]));
        assert_eq!(parse_values("1,x"), Err("feature value \"x\" is not a number".into()));
        assert_eq!(parse_values("1,,2"), Err("feature value \"\" is not a number".into()));
        assert_eq!(parse_values("inf"), Err("feature value \"inf\" is not finite".into()));
        assert_eq!(parse_values("NaN"), Err("feature value \"NaN\" is not finite".into()));
    }

    #[test]
    fn score_command_line_parses() {
        let cli = Cli::try_parse_from([
            "plexus",
            "score",
            "7",
            "--candidates",
            "1,2,3",
            "--k",
            "2",
            "--mode",
            "neighbor-mean",
            "--json",
        ])
        .unwrap();
        let Cmd::Score(a) = cli.cmd else { panic!("not score") };
        assert_eq!(
            (a.vertex, a.candidates, a.k, a.mode, a.client.json),
            (7, vec![1, 2, 3], 2, ModeArg::NeighborMean, true)
        );
        let cli = Cli::try_parse_from(["plexus", "features", "set", "4", "-0.5,1"]).unwrap();
        let Cmd::Features(FeaturesCmd::Set { vertex, values, .. }) = cli.cmd else {
            panic!("not features set")
        };
        assert_eq!((vertex, values.as_str()), (4, "-0.5,1"));
        assert!(Cli::try_parse_from(["plexus", "score", "7"]).is_err());
    }
}
