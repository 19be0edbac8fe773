//! `plexus feed import`: bulk-load a follow graph and posts into a running cluster.
//!
//! Input files hold one record per line, CSV or NDJSON (told apart by the first character of the
//! first record): follows as `src,dst` or `{"src": 1, "dst": 2}` (also `follower`/`followee`),
//! posts as `author,text` (text may be quoted, `""` for a quote) or `{"author": 1, "text": "..."}`.
//! A first CSV line that does not parse as a record is taken for a header. A bad line is
//! reported with its number and skipped; it never stops the import.
//!
//! Follows go first, so posts fan out to the followers they find. Up to `--concurrency` writes
//! are in flight at once (the cluster's full write throughput from one client), progress goes
//! to stderr, and a checkpoint file next to the client config records, about once a second, how
//! far every write has been acknowledged. Run the same command again after a crash and it goes
//! on from there. Follows are idempotent; posts are sent under a session whose client id and
//! sequence numbers (the line numbers) live in the checkpoint, so a post that was in flight at
//! the crash is answered from the cluster's session table on the rerun, not posted twice.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_client::{Client, ClientConfig, ClientError, ErrorReply, Reply};
use plexus_proto::{Session, WriteOp, FOLLOW_BATCH_MAX};
use serde::{Deserialize, Serialize};

use crate::cli::{CliResult, ClientOpts};

/// Most writes in flight the import accepts.
const CONCURRENCY_MAX: usize = 4_096;
/// Longest input line, in bytes: a longer one is reported and skipped.
const LINE_BYTES_MAX: usize = 1 << 20;
/// How often the checkpoint and the progress line are written.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Bad lines reported one by one; past this only their count.
const BAD_LINES_REPORTED_MAX: u64 = 20;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Follow edges: `src,dst` per line, or NDJSON `{"src":..,"dst":..}`.
    #[arg(long)]
    pub follows: Option<PathBuf>,
    /// Posts: `author,text` per line, or NDJSON `{"author":..,"text":".."}`.
    #[arg(long)]
    pub posts: Option<PathBuf>,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Ignore saved progress and start both files from their beginning.
    #[arg(long)]
    pub restart: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// What a checkpoint remembers of one file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    /// Byte offset of the first line not yet acknowledged (every line before it is done).
    offset: u64,
    /// Its line number (0-based).
    line: u64,
    /// Whether the whole file is done.
    done: bool,
}

/// The checkpoint of one import (one pair of files).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Checkpoint {
    /// The client id posts are sent under, kept across reruns.
    client_id: u64,
    follows: Option<(PathBuf, u64, Progress)>,
    posts: Option<(PathBuf, u64, Progress)>,
}

/// One parsed record (or, `Follows`, a batch of them).
#[derive(Debug)]
enum Record {
    Follow(u64, u64),
    Follows(u64, Vec<u64>),
    Post(u64, Vec<u8>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Follows,
    Posts,
}

fn parse_u64(s: &str, what: &str) -> Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{what} {:?} is not a user id", s.trim()))
}

/// Splits a CSV line into exactly two fields, the second possibly quoted.
fn csv_two(line: &str) -> Result<(&str, String), String> {
    let (a, rest) = line.split_once(',').ok_or("expected two comma-separated fields")?;
    let rest = rest.trim_end_matches(['\r', '\n']);
    let b = match rest.strip_prefix('"') {
        Some(q) => {
            let inner = q.strip_suffix('"').ok_or("unterminated quoted field")?;
            if inner.replace("\"\"", "").contains('"') {
                return Err("a quote inside a quoted field must be doubled".into());
            }
            inner.replace("\"\"", "\"")
        }
        None => rest.to_string(),
    };
    Ok((a, b))
}

fn parse(kind: Kind, line: &str) -> Result<Record, String> {
    let t = line.trim_start();
    if t.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(t).map_err(|e| format!("bad JSON: {e}"))?;
        let id = |names: &[&str]| -> Result<u64, String> {
            names
                .iter()
                .find_map(|n| v.get(*n))
                .ok_or_else(|| format!("missing field {:?}", names[0]))?
                .as_u64()
                .ok_or_else(|| format!("field {:?} is not a user id", names[0]))
        };
        return match kind {
            Kind::Follows => Ok(Record::Follow(id(&["src", "follower"])?, id(&["dst", "followee"])?)),
            Kind::Posts => {
                let text = v
                    .get("text")
                    .and_then(|t| t.as_str())
                    .ok_or("missing string field \"text\"")?;
                Ok(Record::Post(id(&["author"])?, text.as_bytes().to_vec()))
            }
        };
    }
    let (a, b) = csv_two(line)?;
    match kind {
        Kind::Follows => Ok(Record::Follow(parse_u64(a, "src")?, parse_u64(&b, "dst")?)),
        Kind::Posts => Ok(Record::Post(parse_u64(a, "author")?, b.into_bytes())),
    }
}

/// Where the checkpoint of an import of these files lives: beside the client config.
fn checkpoint_path(client_config: &Path, follows: Option<&Path>, posts: Option<&Path>) -> PathBuf {
    let mut key = String::new();
    for p in [follows, posts].into_iter().flatten() {
        let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        key.push_str(&abs.to_string_lossy());
        key.push('\n');
    }
    let hash = plexus_proto::shard::fnv1a64(key.as_bytes());
    let dir = client_config.parent().unwrap_or(Path::new("."));
    dir.join(format!("feed-import-{hash:016x}.json"))
}

fn save(path: &Path, cp: &Checkpoint) -> CliResult {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(cp).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn file_len(p: &Path) -> CliResult<u64> {
    std::fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", p.display()))
}

pub fn run(args: ImportArgs) -> CliResult {
    if args.follows.is_none() && args.posts.is_none() {
        return Err("give --follows FILE, --posts FILE or both".into());
    }
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        return Err(format!("--concurrency must be in 1..={CONCURRENCY_MAX}"));
    }
    let cp_path = checkpoint_path(&args.client.config, args.follows.as_deref(), args.posts.as_deref());
    let mut cp = match std::fs::read(&cp_path) {
        Ok(bytes) if !args.restart => serde_json::from_slice::<Checkpoint>(&bytes).map_err(|e| {
            format!(
                "{}: unreadable checkpoint ({e}); rerun with --restart",
                cp_path.display()
            )
        })?,
        _ => Checkpoint {
            client_id: rand::random::<u64>() | 1,
            follows: None,
            posts: None,
        },
    };
    for (slot, file) in [(&mut cp.follows, &args.follows), (&mut cp.posts, &args.posts)] {
        if let Some(f) = file {
            let len = file_len(f)?;
            // A file that changed size since the checkpoint is another file: start it over.
            match slot {
                Some((p, l, _)) if p == f && *l == len => {}
                _ => *slot = Some((f.clone(), len, Progress::default())),
            }
        }
    }
    // One thread: a loader that shares the machine with the nodes should not take two cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let cfg =
            ClientConfig::load(&args.client.config).map_err(|e| format!("{}: {e}", args.client.config.display()))?;
        let cfg = ClientConfig {
            in_flight_max: args.concurrency.max(cfg.in_flight_max),
            ..cfg
        };
        let client = Client::connect(cfg).await.map_err(|e| format!("connect: {e}"))?;
        let cp = Arc::new(Mutex::new(cp));
        let mut summary = serde_json::Map::new();
        for kind in [Kind::Follows, Kind::Posts] {
            let job = {
                let c = cp.lock().unwrap_or_else(|e| e.into_inner());
                match kind {
                    Kind::Follows => c.follows.clone(),
                    Kind::Posts => c.posts.clone(),
                }
            };
            let Some((path, len, progress)) = job else { continue };
            let stats = import_file(&client, kind, &path, len, progress, args.concurrency, &cp, &cp_path).await?;
            summary.insert(format!("{kind:?}").to_lowercase(), stats);
        }
        client.close().await;
        let _ = std::fs::remove_file(&cp_path);
        if args.client.json {
            println!("{}", serde_json::Value::Object(summary));
        }
        Ok(())
    })
}

/// Progress of one file while it is being imported.
struct Tracker {
    /// Line numbers dispatched and not yet acknowledged, with their byte offsets.
    in_flight: BTreeSet<(u64, u64)>,
    /// The line and offset the next read starts at.
    next: (u64, u64),
    ok: u64,
    bad: u64,
    /// Writes the cluster refused (bad post, unknown user...), reported and skipped.
    refused: u64,
}

impl Tracker {
    /// Everything before this line (and offset) is acknowledged.
    fn done_prefix(&self) -> (u64, u64) {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

#[allow(clippy::too_many_arguments)]
async fn import_file(
    client: &Client,
    kind: Kind,
    path: &Path,
    len: u64,
    from: Progress,
    concurrency: usize,
    cp: &Arc<Mutex<Checkpoint>>,
    cp_path: &Path,
) -> CliResult<serde_json::Value> {
    let name = match kind {
        Kind::Follows => "follows",
        Kind::Posts => "posts",
    };
    if from.done {
        eprintln!("{name}: {} already imported", path.display());
        return Ok(serde_json::json!({"file": path, "skipped": "already imported"}));
    }
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(from.offset))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    if from.line > 0 {
        eprintln!(
            "{name}: resuming {} at line {} (byte {})",
            path.display(),
            from.line + 1,
            from.offset
        );
    }
    let client_id = cp.lock().unwrap_or_else(|e| e.into_inner()).client_id;
    let tracker = Arc::new(Mutex::new(Tracker {
        in_flight: BTreeSet::new(),
        next: (from.line, from.offset),
        ok: 0,
        bad: 0,
        refused: 0,
    }));
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut buf = String::new();
    let (mut line_no, mut offset) = (from.line, from.offset);
    let mut batch: Option<Batch> = None;
    let ctx = Dispatch {
        client: client.clone(),
        tracker: tracker.clone(),
        permits: permits.clone(),
        client_id,
        name: name.to_string(),
        path: path.display().to_string(),
    };
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .map_err(|e| format!("{}: line {}: {e}", path.display(), line_no + 1))?;
        if n == 0 {
            break;
        }
        let this = (line_no, offset);
        line_no += 1;
        offset += n as u64;
        let line = buf.trim_end_matches(['\n', '\r']);
        let record = if line.trim().is_empty() {
            None
        } else if n > LINE_BYTES_MAX {
            Some(Err(format!("line of {n} bytes exceeds {LINE_BYTES_MAX}")))
        } else {
            Some(parse(kind, line))
        };
        let record = match record {
            None => {
                tracker.lock().unwrap_or_else(|e| e.into_inner()).next = (line_no, offset);
                continue;
            }
            // A first line that is not a record is a header.
            Some(Err(_)) if this.0 == 0 && !line.trim_start().starts_with('{') => None,
            Some(Err(e)) => {
                let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                t.bad += 1;
                if t.bad <= BAD_LINES_REPORTED_MAX {
                    eprintln!("{name}: {}: line {}: {e}; skipped", path.display(), this.0 + 1);
                }
                t.next = (line_no, offset);
                continue;
            }
            Some(Ok(r)) => Some(r),
        };
        let Some(record) = record else {
            tracker.lock().unwrap_or_else(|e| e.into_inner()).next = (line_no, offset);
            continue;
        };
        // Consecutive follows of one follower go as one `FollowMany` (edge lists are usually
        // sorted by follower). A batch counts as in flight from its first line on, so no
        // checkpoint can pass it before it is acknowledged.
        let record = match (record, batch.take()) {
            (Record::Follow(src, dst), Some(mut b)) if b.src == src && b.dsts.len() < FOLLOW_BATCH_MAX => {
                b.dsts.push(dst);
                batch = Some(b);
                None
            }
            (Record::Follow(src, dst), open) => {
                tracker.lock().unwrap_or_else(|e| e.into_inner()).in_flight.insert(this);
                batch = Some(Batch {
                    at: this,
                    src,
                    dsts: vec![dst],
                });
                open.map(|b| (b.at, Record::Follows(b.src, b.dsts)))
            }
            (post, open) => {
                if let Some(b) = open {
                    dispatch(&ctx, b.at, Record::Follows(b.src, b.dsts)).await?;
                }
                tracker.lock().unwrap_or_else(|e| e.into_inner()).in_flight.insert(this);
                Some((this, post))
            }
        };
        tracker.lock().unwrap_or_else(|e| e.into_inner()).next = (line_no, offset);
        if let Some((at, record)) = record {
            dispatch(&ctx, at, record).await?;
        }
        if last_report.elapsed() >= CHECKPOINT_EVERY {
            last_report = Instant::now();
            report(name, kind, &tracker, cp, cp_path, len, started, false)?;
        }
    }
    if let Some(b) = batch.take() {
        dispatch(&ctx, b.at, Record::Follows(b.src, b.dsts)).await?;
    }
    // Wait for the writes still in flight.
    let _all = permits
        .acquire_many(concurrency as u32)
        .await
        .map_err(|_| "import stopped".to_string())?;
    report(name, kind, &tracker, cp, cp_path, len, started, true)?;
    let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Ok(
        serde_json::json!({"file": path, "written": t.ok, "bad_lines": t.bad, "refused": t.refused,
        "seconds": secs, "per_second": t.ok as f64 / secs}),
    )
}

/// Follows of one follower, gathered from consecutive lines.
struct Batch {
    /// The first line's number and byte offset.
    at: (u64, u64),
    src: u64,
    dsts: Vec<u64>,
}

/// What sending a record needs.
struct Dispatch {
    client: Client,
    tracker: Arc<Mutex<Tracker>>,
    permits: Arc<tokio::sync::Semaphore>,
    client_id: u64,
    name: String,
    path: String,
}

/// Sends `record` (already counted in flight at `at`) once a slot is free, in the background.
async fn dispatch(ctx: &Dispatch, at: (u64, u64), record: Record) -> CliResult {
    let permit = ctx
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "import stopped".to_string())?;
    let records = match &record {
        Record::Follows(_, dsts) => dsts.len() as u64,
        _ => 1,
    };
    let ack_below = ctx.tracker.lock().unwrap_or_else(|e| e.into_inner()).done_prefix().0 + 1;
    let (c, tracker, client_id) = (ctx.client.clone(), ctx.tracker.clone(), ctx.client_id);
    let (name, path) = (ctx.name.clone(), ctx.path.clone());
    tokio::spawn(async move {
        let result = write_one(&c, record, client_id, at.0 + 1, ack_below).await;
        let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => t.ok += records,
            Err(e) => {
                t.refused += records;
                if t.refused <= BAD_LINES_REPORTED_MAX {
                    eprintln!("{name}: {path}: line {}: {e}; skipped", at.0 + 1);
                }
            }
        }
        t.in_flight.remove(&at);
        drop(permit);
    });
    Ok(())
}

/// Sends one record. A post whose author is not registered yet registers it and tries again.
async fn write_one(c: &Client, record: Record, client_id: u64, seq: u64, ack_below: u64) -> Result<(), String> {
    match record {
        Record::Follow(src, dst) => c.follow(src, dst).await.map(|_| ()).map_err(|e| e.to_string()),
        Record::Follows(src, dsts) => c.follow_many(src, dsts).await.map(|_| ()).map_err(|e| e.to_string()),
        Record::Post(author, text) => {
            let session = Session {
                client_id,
                seq,
                ack_below,
            };
            let op = WriteOp::FeedPost { author, text };
            let mut registered = false;
            loop {
                match c.call_in_session(op.clone(), session).await {
                    Ok(Reply::Appended(_)) => return Ok(()),
                    // The post was applied and this loader (an earlier run of it) already had the
                    // answer, so the cluster forgot it: nothing to do.
                    Err(ClientError::Server(ErrorReply::StaleSession { .. })) => return Ok(()),
                    Ok(other) => return Err(format!("unexpected answer {other:?}")),
                    Err(ClientError::Server(ErrorReply::NotFound(_))) if !registered => {
                        registered = true;
                        c.feed_user_add(author).await.map_err(|e| e.to_string())?;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
}

/// Writes the checkpoint and a progress line.
#[allow(clippy::too_many_arguments)]
fn report(
    name: &str,
    kind: Kind,
    tracker: &Mutex<Tracker>,
    cp: &Mutex<Checkpoint>,
    cp_path: &Path,
    len: u64,
    started: Instant,
    finished: bool,
) -> CliResult {
    let (line, offset, ok, bad, refused) = {
        let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        let (line, offset) = t.done_prefix();
        (line, offset, t.ok, t.bad, t.refused)
    };
    let snapshot = {
        let mut c = cp.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match kind {
            Kind::Follows => &mut c.follows,
            Kind::Posts => &mut c.posts,
        };
        if let Some((_, _, p)) = slot {
            *p = Progress {
                offset,
                line,
                done: finished,
            };
        }
        c.clone()
    };
    save(cp_path, &snapshot)?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let rate = ok as f64 / secs;
    let pct = if len == 0 {
        100.0
    } else {
        offset as f64 * 100.0 / len as f64
    };
    let eta = if rate > 0.0 && offset > 0 && !finished {
        let left = (len.saturating_sub(offset)) as f64 * (secs / offset as f64);
        format!(", about {:.0}s left", left)
    } else {
        String::new()
    };
    eprintln!(
        "{name}: {pct:5.1}% ({ok} written, {bad} bad lines, {refused} refused), {rate:.0}/s{eta}{}",
        if finished { ", done" } else { "" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_csv_or_ndjson_with_reasons() {
        assert!(matches!(parse(Kind::Follows, "1,2"), Ok(Record::Follow(1, 2))));
        assert!(matches!(parse(Kind::Follows, " 3 , 4 "), Ok(Record::Follow(3, 4))));
        assert!(matches!(
            parse(Kind::Follows, r#"{"follower": 5, "followee": 6}"#),
            Ok(Record::Follow(5, 6))
        ));
        assert!(parse(Kind::Follows, "src,dst").unwrap_err().contains("not a user id"));
        assert!(parse(Kind::Follows, "7").unwrap_err().contains("two"));
        assert!(parse(Kind::Follows, r#"{"src": 1}"#).unwrap_err().contains("dst"));
        match parse(Kind::Posts, r#"9,"hello, ""world""""#) {
            Ok(Record::Post(9, t)) => assert_eq!(t, br#"hello, "world""#),
            _ => panic!("quoted CSV text"),
        }
        match parse(Kind::Posts, r#"{"author": 2, "text": "hi\nthere"}"#) {
            Ok(Record::Post(2, t)) => assert_eq!(t, b"hi\nthere"),
            _ => panic!("NDJSON post"),
        }
        assert!(parse(Kind::Posts, r#"9,"open"#).unwrap_err().contains("unterminated"));
        assert!(parse(Kind::Posts, "{bad").unwrap_err().contains("JSON"));
    }

    #[test]
    fn the_done_prefix_waits_for_the_oldest_write_in_flight() {
        let mut t = Tracker {
            in_flight: BTreeSet::from([(3, 30), (5, 50)]),
            next: (7, 70),
            ok: 0,
            bad: 0,
            refused: 0,
        };
        assert_eq!(t.done_prefix(), (3, 30));
        t.in_flight.remove(&(3, 30));
        assert_eq!(t.done_prefix(), (5, 50));
        t.in_flight.clear();
        assert_eq!(t.done_prefix(), (7, 70));
    }
}
