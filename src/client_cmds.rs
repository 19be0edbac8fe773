//! Subcommands that wrap the client library: status, graph, timeline, filter.

use std::collections::BTreeMap;

use plexus_client::{Client, ClientConfig};
use plexus_proto::{Cursor, Direction, NodeStatus};
use serde_json::json;

use crate::cli::{runtime, CliResult, ClientOpts, DirectionArg, FilterCmd, GraphCmd, TimelineCmd};

pub async fn connect(opts: &ClientOpts) -> CliResult<Client> {
    let cfg = ClientConfig::load(&opts.config).map_err(|e| format!("{}: {e}", opts.config.display()))?;
    Client::connect(cfg).await.map_err(|e| format!("connect: {e}"))
}

fn dir(d: DirectionArg) -> Direction {
    match d {
        DirectionArg::Out => Direction::Out,
        DirectionArg::In => Direction::In,
    }
}

fn block<F: std::future::Future<Output = CliResult>>(f: F) -> CliResult {
    runtime()?.block_on(f)
}

fn print_json(v: serde_json::Value) {
    println!("{v}");
}

pub fn status(opts: &ClientOpts) -> CliResult {
    block(async {
        let client = connect(opts).await?;
        let map = client.shard_map();
        let mut nodes: Vec<(u64, String, Option<NodeStatus>, Option<String>)> = Vec::new();
        for n in &map.nodes {
            match client.node_status(&n.client_addr).await {
                Ok(s) => nodes.push((n.id, n.client_addr.clone(), Some(s), None)),
                Err(e) => nodes.push((n.id, n.client_addr.clone(), None, Some(e.to_string()))),
            }
        }
        // For each group, prefer the report of the replica that believes it leads.
        let mut groups: BTreeMap<u32, plexus_proto::ReplicaStatus> = BTreeMap::new();
        for (id, _, st, _) in &nodes {
            for r in st.iter().flat_map(|s| s.shards.iter()) {
                let leads = r.leader == Some(*id);
                match groups.get(&r.shard) {
                    Some(cur) if cur.leader == Some(*id) || !leads && cur.term >= r.term => {}
                    _ => {
                        groups.insert(r.shard, r.clone());
                    }
                }
            }
        }
        if opts.json {
            let nodes_json: Vec<_> = nodes
                .iter()
                .map(|(id, addr, st, err)| {
                    json!({"id": id, "addr": addr, "up": st.is_some(), "pid": st.as_ref().map(|s| s.pid),
                           "scoring_backend": st.as_ref().and_then(|s| s.scoring_backend.clone()), "error": err})
                })
                .collect();
            let shards_json: Vec<_> = groups
                .values()
                .map(|g| {
                    json!({"shard": if g.shard == u32::MAX { json!("meta") } else { json!(g.shard) },
                    "leader": g.leader, "term": g.term, "replicas": g.replicas, "applied_index": g.applied_index})
                })
                .collect();
            print_json(json!({"shard_count": map.shard_count, "nodes": nodes_json, "shards": shards_json}));
        } else {
            println!("nodes:");
            println!("  {:>4}  {:>8}  {:<22} state", "id", "pid", "addr");
            for (id, addr, st, err) in &nodes {
                match st {
                    Some(s) => println!(
                        "  {id:>4}  {:>8}  {addr:<22} up, {} replicas, scoring on {}",
                        s.pid,
                        s.shards.len(),
                        s.scoring_backend.as_deref().unwrap_or("-")
                    ),
                    None => println!(
                        "  {id:>4}  {:>8}  {addr:<22} down ({})",
                        "-",
                        err.clone().unwrap_or_default()
                    ),
                }
            }
            println!("shards ({}):", map.shard_count);
            println!(
                "  {:>5}  {:>6}  {:>6}  {:<12} {:>10}",
                "shard", "leader", "term", "replicas", "applied"
            );
            for g in groups.values() {
                let name = if g.shard == u32::MAX {
                    "meta".to_string()
                } else {
                    g.shard.to_string()
                };
                let leader = g.leader.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
                let reps = g.replicas.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
                println!(
                    "  {name:>5}  {leader:>6}  {:>6}  {reps:<12} {:>10}",
                    g.term, g.applied_index
                );
            }
        }
        client.close().await;
        Ok(())
    })
}

pub fn graph(cmd: GraphCmd) -> CliResult {
    block(async move {
        match cmd {
            GraphCmd::Follow { a, b, client: opts } => {
                let c = connect(&opts).await?;
                let changed = c.follow(a, b).await.map_err(|e| e.to_string())?;
                if opts.json {
                    print_json(json!({"src": a, "dst": b, "changed": changed}));
                } else {
                    println!("{a} -> {b} {}", if changed { "added" } else { "already present" });
                }
                c.close().await;
            }
            GraphCmd::Unfollow { a, b, client: opts } => {
                let c = connect(&opts).await?;
                let changed = c.unfollow(a, b).await.map_err(|e| e.to_string())?;
                if opts.json {
                    print_json(json!({"src": a, "dst": b, "changed": changed}));
                } else {
                    println!("{a} -> {b} {}", if changed { "removed" } else { "was absent" });
                }
                c.close().await;
            }
            GraphCmd::Neighbors {
                a,
                direction,
                limit,
                after,
                client: opts,
            } => {
                let c = connect(&opts).await?;
                let (ids, next) = c
                    .neighbors(a, dir(direction), after, limit)
                    .await
                    .map_err(|e| e.to_string())?;
                if opts.json {
                    print_json(json!({"vertex": a, "neighbors": ids, "next_after": next}));
                } else {
                    for id in &ids {
                        println!("{id}");
                    }
                    if let Some(n) = next {
                        println!("(more: --after {n})");
                    }
                }
                c.close().await;
            }
        }
        Ok(())
    })
}

pub fn timeline(cmd: TimelineCmd) -> CliResult {
    block(async move {
        match cmd {
            TimelineCmd::Append {
                owner,
                item,
                client: opts,
            } => {
                let c = connect(&opts).await?;
                let id = c
                    .timeline_append(owner, item.into_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                if opts.json {
                    print_json(json!({"owner": owner, "id": id}));
                } else {
                    println!("{id}");
                }
                c.close().await;
            }
            TimelineCmd::Read {
                owner,
                limit,
                before,
                after,
                client: opts,
            } => {
                let c = connect(&opts).await?;
                let cursor = match (before, after) {
                    (Some(b), _) => Cursor::Before(b),
                    (None, Some(a)) => Cursor::After(a),
                    _ => Cursor::Latest,
                };
                let page = c.timeline_read(owner, cursor, limit).await.map_err(|e| e.to_string())?;
                if opts.json {
                    let entries: Vec<_> = page
                        .entries
                        .iter()
                        .map(|e| json!({"id": e.id, "item": String::from_utf8_lossy(&e.item)}))
                        .collect();
                    print_json(json!({"owner": owner, "entries": entries, "has_more": page.has_more}));
                } else {
                    for e in &page.entries {
                        println!("{}\t{}", e.id, String::from_utf8_lossy(&e.item));
                    }
                    if page.has_more {
                        println!("(more entries beyond this page)");
                    }
                }
                c.close().await;
            }
        }
        Ok(())
    })
}

pub fn filter(cmd: FilterCmd) -> CliResult {
    block(async move {
        match cmd {
            FilterCmd::Add {
                name,
                keys,
                client: opts,
            } => {
                let c = connect(&opts).await?;
                let n = keys.len();
                let new = c
                    .filter_add(&name, keys.into_iter().map(String::into_bytes).collect())
                    .await
                    .map_err(|e| e.to_string())?;
                if opts.json {
                    print_json(json!({"filter": name, "keys": n, "any_new": new}));
                } else {
                    println!(
                        "added {n} keys to {name}{}",
                        if new { "" } else { " (all were already present)" }
                    );
                }
                c.close().await;
            }
            FilterCmd::Contains {
                name,
                keys,
                client: opts,
            } => {
                let c = connect(&opts).await?;
                let found = c
                    .filter_contains(&name, keys.iter().map(|k| k.clone().into_bytes()).collect())
                    .await
                    .map_err(|e| e.to_string())?;
                if opts.json {
                    let m: serde_json::Map<String, serde_json::Value> =
                        keys.iter().zip(&found).map(|(k, f)| (k.clone(), json!(f))).collect();
                    print_json(json!({"filter": name, "contains": m}));
                } else {
                    for (k, f) in keys.iter().zip(&found) {
                        println!("{k}\t{}", if *f { "maybe present" } else { "absent" });
                    }
                }
                c.close().await;
            }
        }
        Ok(())
    })
}
