//! `plexus empi`: identity matching's commands over the client library.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use plexus_client::{Client, EmpiEventKind, PersonRecord};
use serde_json::json;

use crate::cli::{runtime, CliResult, ClientOpts};
use crate::client_cmds::connect;

#[derive(Subcommand, Debug)]
pub enum EmpiCmd {
    /// Bulk-load person records (CSV, NDJSON, FHIR R4, HL7 v2), linked as they go in; resumable.
    Ingest(crate::empi_ingest::IngestArgs),
    /// Link one record (JSON, from FILE or stdin) and print its master id.
    Upsert {
        /// A JSON record with the canonical field names; `-` or nothing for stdin.
        file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The best candidates for one record (JSON, from FILE or stdin), without storing it.
    Match {
        /// A JSON record; `-` or nothing for stdin.
        file: Option<PathBuf>,
        /// Candidates to show.
        #[arg(long, default_value_t = 10)]
        k: u32,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Why two records (SOURCE:ID) are or are not linked: every field's level and weight.
    Explain {
        a: String,
        b: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A steward's link: the two records' identities become one and stay one.
    Link {
        a: String,
        b: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A steward's unlink: the records are separated and never joined again automatically.
    Unlink {
        a: String,
        b: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A steward's split: the record leaves its identity for one of its own, unlinked from
    /// every other member (so automatic matching never joins them again). To merge two
    /// identities, `link` one record of each.
    Split {
        key: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// One record as held: its fields, identity and steward constraints.
    Get {
        key: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Every master identity with its members' source and source record id.
    Clusters {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Write a seeded synthetic population (NDJSON, canonical fields) with its ground truth.
    Synth {
        /// Records to generate (about two per person).
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the records go.
        #[arg(long)]
        out: PathBuf,
        /// Where the ground truth goes: `SOURCE:ID,PERSON` per line.
        #[arg(long)]
        truth: Option<PathBuf>,
    },
    /// The change-event stream after a cursor; prints the cursor to continue from.
    Events {
        /// The cursor a previous call printed (nothing: from the beginning).
        #[arg(long, default_value = "")]
        from: String,
        /// Most events per page.
        #[arg(long, default_value_t = 1_000)]
        limit: u32,
        /// Keep polling for new events (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Reads one JSON record from `file` (or stdin).
fn read_record(file: Option<&Path>) -> CliResult<PersonRecord> {
    let mut text = String::new();
    match file {
        Some(p) if p != Path::new("-") => {
            text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("stdin: {e}"))?;
        }
    }
    serde_json::from_str(&text).map_err(|e| format!("not a person record (JSON with canonical field names): {e}"))
}

fn split_key(key: &str) -> (String, String) {
    match key.split_once(':') {
        Some((s, i)) => (s.to_string(), i.to_string()),
        None => (String::new(), key.to_string()),
    }
}

pub fn run(cmd: EmpiCmd) -> CliResult {
    match cmd {
        EmpiCmd::Ingest(args) => return crate::empi_ingest::run(args),
        EmpiCmd::Synth {
            records,
            seed,
            out,
            truth,
        } => return synth(records, seed, &out, truth.as_deref()),
        _ => {}
    }
    runtime()?.block_on(async move {
        let opts = match &cmd {
            EmpiCmd::Upsert { client, .. }
            | EmpiCmd::Match { client, .. }
            | EmpiCmd::Explain { client, .. }
            | EmpiCmd::Link { client, .. }
            | EmpiCmd::Unlink { client, .. }
            | EmpiCmd::Get { client, .. }
            | EmpiCmd::Split { client, .. }
            | EmpiCmd::Clusters { client }
            | EmpiCmd::Events { client, .. } => ClientOpts {
                config: client.config.clone(),
                json: client.json,
            },
            EmpiCmd::Ingest(_) | EmpiCmd::Synth { .. } => return Err("runs without a cluster".into()),
        };
        let c = connect(&opts).await?;
        let result = one(&c, &opts, cmd).await;
        c.close().await;
        result
    })
}

async fn one(c: &Client, opts: &ClientOpts, cmd: EmpiCmd) -> CliResult {
    let e = |e: plexus_client::ClientError| e.to_string();
    let link = matches!(cmd, EmpiCmd::Link { .. });
    match cmd {
        EmpiCmd::Upsert { file, .. } => {
            let u = c.empi_upsert(read_record(file.as_deref())?).await.map_err(e)?;
            if opts.json {
                println!(
                    "{}",
                    json!({"record": u.key, "master": u.master, "created": u.created, "merged": u.merged})
                );
            } else {
                let how = if u.created {
                    "a new identity"
                } else {
                    "an existing identity"
                };
                println!("{} -> master {} ({how})", u.key, u.master);
                for m in u.merged {
                    println!("  merged master {m} into it");
                }
            }
        }
        EmpiCmd::Match { file, k, .. } => {
            let matches = c.empi_match(read_record(file.as_deref())?, k).await.map_err(e)?;
            if opts.json {
                let m: Vec<_> = matches
                    .iter()
                    .map(|m| {
                        json!({"record": m.key, "master": m.master, "weight": m.weight,
                               "probability": m.probability, "linked": m.linked})
                    })
                    .collect();
                println!("{}", json!({ "matches": m }));
            } else if matches.is_empty() {
                println!("(no candidates)");
            } else {
                for m in matches {
                    println!(
                        "{:<32} master {:<20} weight {:>7.2}  p {:.4}{}",
                        m.key,
                        m.master,
                        m.weight,
                        m.probability,
                        if m.linked { "  linked" } else { "" }
                    );
                }
            }
        }
        EmpiCmd::Explain { a, b, .. } => {
            let x = c.empi_explain(&a, &b).await.map_err(e)?;
            if opts.json {
                let fields: Vec<_> = x
                    .fields
                    .iter()
                    .map(|f| json!({"field": f.field, "level": f.level, "weight": f.weight, "tf_adjustment": f.tf_adjustment}))
                    .collect();
                println!(
                    "{}",
                    json!({"a": x.a, "b": x.b, "fields": fields, "prior": x.prior, "total": x.total,
                           "probability": x.probability, "same_master": x.same_master, "reason": x.reason})
                );
            } else {
                println!("{}", x.text);
            }
        }
        EmpiCmd::Link { a, b, .. } | EmpiCmd::Unlink { a, b, .. } => {
            c.empi_steward(&a, &b, link).await.map_err(e)?;
            let what = if link { "linked" } else { "unlinked" };
            if opts.json {
                println!("{}", json!({"a": a, "b": b, "action": what}));
            } else {
                println!("{a} and {b} {what}");
            }
        }
        EmpiCmd::Split { key, .. } => {
            let (master, unlinked) = c.empi_split(&key).await.map_err(e)?;
            if opts.json {
                println!("{}", json!({"record": key, "master": master, "unlinked": unlinked}));
            } else if unlinked.is_empty() {
                println!("{key} -> master {master} (it was alone in its identity)");
            } else {
                println!(
                    "{key} -> master {master}, unlinked from {} record(s): {}",
                    unlinked.len(),
                    unlinked.join(" ")
                );
            }
        }
        EmpiCmd::Get { key, .. } => {
            let r = c.empi_get(&key).await.map_err(e)?;
            let record = serde_json::to_value(&r.record).map_err(|e| e.to_string())?;
            println!(
                "{}",
                json!({"record": record, "master": r.master, "links": r.links, "unlinks": r.unlinks,
                       "blocks": r.blocks, "updated_millis": r.updated_millis})
            );
        }
        EmpiCmd::Clusters { .. } => {
            let mut after = None;
            let mut all = Vec::new();
            loop {
                let (page, next) = c.empi_clusters(after, 1_000).await.map_err(e)?;
                all.extend(page);
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            if opts.json {
                let clusters: Vec<_> = all
                    .iter()
                    .map(|m| {
                        let members: Vec<_> = m
                            .members
                            .iter()
                            .map(|k| {
                                let (source, id) = split_key(k);
                                json!({"source": source, "source_id": id})
                            })
                            .collect();
                        json!({"master": m.id, "members": members})
                    })
                    .collect();
                println!("{}", json!({ "clusters": clusters }));
            } else {
                for m in &all {
                    println!("{}\t{}", m.id, m.members.join(" "));
                }
                println!("({} identities)", all.len());
            }
        }
        EmpiCmd::Events {
            from, limit, follow, ..
        } => {
            let mut cursor = from;
            loop {
                let (events, next) = c.empi_events(&cursor, limit).await.map_err(e)?;
                for ev in &events {
                    let kind = match &ev.kind {
                        EmpiEventKind::Created => "created".to_string(),
                        EmpiEventKind::Linked => "linked".to_string(),
                        EmpiEventKind::Unlinked => "unlinked".to_string(),
                        EmpiEventKind::Merged { into } => format!("merged into {into}"),
                    };
                    if opts.json {
                        println!(
                            "{}",
                            json!({"shard": ev.shard, "seq": ev.seq, "master": ev.master, "record": ev.record,
                                   "kind": kind, "millis": ev.millis})
                        );
                    } else {
                        println!(
                            "{}.{}\tmaster {}\t{kind}\t{}",
                            ev.shard,
                            ev.seq,
                            ev.master,
                            ev.record.as_deref().unwrap_or("")
                        );
                    }
                }
                cursor = next;
                if !follow {
                    break;
                }
                if events.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            if opts.json {
                println!("{}", json!({ "cursor": cursor }));
            } else {
                println!("cursor {cursor}");
            }
        }
        EmpiCmd::Ingest(_) | EmpiCmd::Synth { .. } => return Err("runs without a cluster".into()),
    }
    Ok(())
}

/// Most records `empi synth` writes.
const SYNTH_RECORDS_MAX: usize = plexus_empi::synth::SYNTH_RECORDS_MAX;

/// `plexus empi synth`: a population from `plexus-empi`'s generator, as NDJSON and truth CSV.
fn synth(records: usize, seed: u64, out: &Path, truth: Option<&Path>) -> CliResult {
    use std::io::Write as _;
    if records == 0 || records > SYNTH_RECORDS_MAX {
        return Err(format!("--records must be in 1..={SYNTH_RECORDS_MAX}"));
    }
    let pop = plexus_empi::synth::generate(&plexus_empi::synth::SynthConfig::new(records, seed));
    let create = |p: &Path| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut w = create(out)?;
    for r in &pop.records {
        let line = serde_json::to_string(r).map_err(|e| e.to_string())?;
        writeln!(w, "{line}").map_err(|e| format!("{}: {e}", out.display()))?;
    }
    w.flush().map_err(|e| format!("{}: {e}", out.display()))?;
    if let Some(t) = truth {
        let mut w = create(t)?;
        for (r, person) in pop.records.iter().zip(&pop.truth) {
            writeln!(w, "{},{person}", r.key_string()).map_err(|e| format!("{}: {e}", t.display()))?;
        }
        w.flush().map_err(|e| format!("{}: {e}", t.display()))?;
    }
    eprintln!(
        "wrote {} records of {} people to {}",
        pop.records.len(),
        pop.truth.iter().collect::<std::collections::BTreeSet<_>>().len(),
        out.display()
    );
    Ok(())
}
