//! `plexus empi ingest`: bulk-load person records into a running cluster, linked as they go in.
//!
//! Files are CSV (any column names, through `--mapping`), NDJSON (canonical field names, or a
//! mapping), FHIR R4 (one `Patient`, a `Bundle`, or bulk-export NDJSON) or HL7 v2 ADT messages.
//! `plexus-empi`'s readers turn each into records; a record that cannot be read (bad date, wrong
//! type, missing source id) is reported with its line or entry and the reason and skipped, and a
//! record the cluster refuses is reported with its key and reason: neither stops the import.
//!
//! Records go in batches of `--batch` (each one `EmpiRequest::Ingest`, linked together and against
//! what the cluster holds), up to `--concurrency` batches in flight. Progress goes to stderr once
//! a second, and a checkpoint beside the client config records how many items of each file are
//! acknowledged. Run the same command again after a crash and it goes on from there: a batch
//! that was in flight is sent again, which is harmless, since a record re-sent under the same
//! `SOURCE:SOURCE_ID` is an update of itself.

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_client::{Client, ClientConfig, EmpiIngested, PersonRecord};
use plexus_empi::ingest::fhir::FhirOptions;
use plexus_empi::ingest::{records, Format};
use plexus_empi::mapping::Mapping;
use plexus_empi::schema::{Field, RecordExt};
use plexus_proto::EMPI_INGEST_RECORDS_MAX;
use serde::{Deserialize, Serialize};

use crate::cli::{CliResult, ClientOpts};

/// Most batches in flight the import accepts.
const CONCURRENCY_MAX: usize = 64;
/// How often the checkpoint and the progress line are written.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Bad records reported one by one; past this only their count.
const BAD_REPORTED_MAX: u64 = 20;
/// The least time one batch may take before the client gives up on an attempt: linking a batch,
/// and training the model on the first one, takes seconds, not the default attempt's two.
const BATCH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// The input format: csv, ndjson, fhir or hl7v2.
    #[arg(long)]
    pub format: String,
    /// A mapping (TOML or JSON) from input columns or paths to the canonical fields: required
    /// for CSV, optional for NDJSON.
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// A source system name for every record, in place of the one the input carries.
    #[arg(long)]
    pub source: Option<String>,
    /// Records per batch.
    #[arg(long, default_value_t = 2_000)]
    pub batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Ignore saved progress and start every file from its beginning.
    #[arg(long)]
    pub restart: bool,
    /// The files, in order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// What a checkpoint remembers of one file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    path: PathBuf,
    /// The file's length when the import began: a file of another length is another file.
    len: u64,
    /// Items (records and unreadable records) at the start of the file that are done.
    items: u64,
    done: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    files: Vec<Progress>,
}

/// Counts of one import.
#[derive(Default)]
struct Tracker {
    /// First item index of each batch in flight.
    in_flight: BTreeSet<u64>,
    /// Index of the next item to be read.
    next: u64,
    linked: u64,
    /// Unreadable records (reported by the reader).
    bad: u64,
    /// Records the cluster refused.
    refused: u64,
    /// Batches that failed as a whole (the import stops at the first).
    failed: Option<String>,
}

impl Tracker {
    fn done_prefix(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// A reader that counts the bytes read through it, for the progress bar.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn checkpoint_path(client_config: &Path, format: &str, files: &[PathBuf]) -> PathBuf {
    let mut key = format!("{format}\n");
    for p in files {
        let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        key.push_str(&abs.to_string_lossy());
        key.push('\n');
    }
    let hash = plexus_proto::shard::fnv1a64(key.as_bytes());
    let dir = client_config.parent().unwrap_or(Path::new("."));
    dir.join(format!("empi-ingest-{hash:016x}.json"))
}

fn save(path: &Path, cp: &Checkpoint) -> CliResult {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(cp).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks the arguments and loads the mapping, before anything is sent.
fn prepare(args: &IngestArgs) -> CliResult<(Format, Option<Mapping>)> {
    let format = Format::parse(&args.format)
        .ok_or_else(|| format!("--format {:?}: expected csv, ndjson, fhir or hl7v2", args.format))?;
    if args.batch == 0 || args.batch > EMPI_INGEST_RECORDS_MAX {
        return Err(format!("--batch must be in 1..={EMPI_INGEST_RECORDS_MAX}"));
    }
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        return Err(format!("--concurrency must be in 1..={CONCURRENCY_MAX}"));
    }
    if let Some(s) = &args.source {
        PersonRecord::new(s.clone(), "x")
            .key()
            .map_err(|e| format!("--source {s:?}: {e}"))?;
    }
    let mapping = match &args.mapping {
        None if format == Format::Csv => {
            return Err("CSV input needs --mapping FILE (its column names are arbitrary)".into())
        }
        None => None,
        Some(_) if matches!(format, Format::Fhir | Format::Hl7v2) => {
            return Err(format!(
                "--mapping does not apply to {} input (its mapping is fixed)",
                args.format
            ))
        }
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(Mapping::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?)
        }
    };
    for f in &args.files {
        std::fs::metadata(f).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok((format, mapping))
}

pub fn run(args: IngestArgs) -> CliResult {
    let (format, mapping) = prepare(&args)?;
    let cp_path = checkpoint_path(&args.client.config, &args.format, &args.files);
    let saved = match std::fs::read(&cp_path) {
        Ok(bytes) if !args.restart => serde_json::from_slice::<Checkpoint>(&bytes).map_err(|e| {
            format!(
                "{}: unreadable checkpoint ({e}); rerun with --restart",
                cp_path.display()
            )
        })?,
        _ => Checkpoint::default(),
    };
    let mut cp = Checkpoint::default();
    for f in &args.files {
        let len = std::fs::metadata(f).map_err(|e| format!("{}: {e}", f.display()))?.len();
        let kept = saved.files.iter().find(|p| &p.path == f && p.len == len).cloned();
        cp.files.push(kept.unwrap_or(Progress {
            path: f.clone(),
            len,
            ..Progress::default()
        }));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let cfg =
            ClientConfig::load(&args.client.config).map_err(|e| format!("{}: {e}", args.client.config.display()))?;
        let cfg = ClientConfig {
            attempt_timeout: cfg.attempt_timeout.max(BATCH_ATTEMPT_TIMEOUT),
            request_timeout: cfg.request_timeout.max(BATCH_ATTEMPT_TIMEOUT * 2),
            ..cfg
        };
        let client = Client::connect(cfg).await.map_err(|e| format!("connect: {e}"))?;
        let fhir = FhirOptions {
            source: args.source.clone(),
            ..FhirOptions::default()
        };
        let cp = Arc::new(Mutex::new(cp));
        let job = Job {
            client: client.clone(),
            format,
            mapping,
            fhir,
            source: args.source.clone(),
            batch: args.batch,
            concurrency: args.concurrency,
            cp: cp.clone(),
            cp_path: cp_path.clone(),
        };
        let mut summary = Vec::new();
        let files = cp.lock().unwrap_or_else(|e| e.into_inner()).files.len();
        for i in 0..files {
            summary.push(job.file(i).await?);
        }
        client.close().await;
        let _ = std::fs::remove_file(&cp_path);
        if args.client.json {
            println!("{}", serde_json::json!({ "files": summary }));
        }
        Ok(())
    })
}

/// One import's settings.
struct Job {
    client: Client,
    format: Format,
    mapping: Option<Mapping>,
    fhir: FhirOptions,
    source: Option<String>,
    batch: usize,
    concurrency: usize,
    cp: Arc<Mutex<Checkpoint>>,
    cp_path: PathBuf,
}

/// A batch being gathered: each record with its item index in the file.
type Pending = Vec<(u64, PersonRecord)>;

impl Job {
    /// Imports file `i` of the checkpoint from where it stopped.
    async fn file(&self, i: usize) -> CliResult<serde_json::Value> {
        let progress = self.cp.lock().unwrap_or_else(|e| e.into_inner()).files[i].clone();
        let path = progress.path.clone();
        let name = path.display().to_string();
        if progress.done {
            eprintln!("{name}: already imported");
            return Ok(serde_json::json!({"file": path, "skipped": "already imported"}));
        }
        let file = std::fs::File::open(&path).map_err(|e| format!("{name}: {e}"))?;
        let read = Arc::new(AtomicU64::new(0));
        let counting = Counting {
            inner: file,
            read: read.clone(),
        };
        let reader = BufReader::with_capacity(1 << 20, counting);
        let items =
            records(self.format, reader, self.mapping.as_ref(), &self.fhir).map_err(|e| format!("{name}: {e}"))?;
        if progress.items > 0 {
            eprintln!("{name}: resuming after {} records", progress.items);
        }
        let tracker = Arc::new(Mutex::new(Tracker {
            next: progress.items,
            ..Tracker::default()
        }));
        let permits = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut pending: Pending = Vec::with_capacity(self.batch);
        let mut index = 0u64;
        for item in items {
            let this = index;
            index += 1;
            if this < progress.items {
                continue;
            }
            match item {
                Ok(mut r) => {
                    if let Some(s) = &self.source {
                        r.set(Field::Source, s.clone());
                    }
                    pending.push((this, r));
                }
                Err(e) => {
                    let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                    t.bad += 1;
                    if t.bad <= BAD_REPORTED_MAX {
                        eprintln!("{name}: {e}; skipped");
                    }
                }
            }
            if pending.len() >= self.batch {
                self.dispatch(&name, std::mem::take(&mut pending), index, &tracker, &permits)
                    .await?;
                if tracker.lock().unwrap_or_else(|e| e.into_inner()).failed.is_some() {
                    break;
                }
            } else if pending.is_empty() {
                tracker.lock().unwrap_or_else(|e| e.into_inner()).next = index;
            }
            if last_report.elapsed() >= CHECKPOINT_EVERY {
                last_report = Instant::now();
                self.report(i, &name, &tracker, &read, progress.len, started, false)?;
            }
        }
        if !pending.is_empty() {
            self.dispatch(&name, std::mem::take(&mut pending), index, &tracker, &permits)
                .await?;
        }
        let _all = permits
            .acquire_many(self.concurrency as u32)
            .await
            .map_err(|_| "import stopped".to_string())?;
        let failed = tracker.lock().unwrap_or_else(|e| e.into_inner()).failed.clone();
        self.report(i, &name, &tracker, &read, progress.len, started, failed.is_none())?;
        if let Some(f) = failed {
            return Err(format!(
                "{name}: {f}; run the same command again to go on from the last checkpoint"
            ));
        }
        let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        Ok(
            serde_json::json!({"file": path, "linked": t.linked, "bad_records": t.bad, "refused": t.refused,
            "seconds": secs, "per_second": t.linked as f64 / secs}),
        )
    }

    /// Sends one batch (its records read up to item `next`) once a slot is free; nothing once a
    /// batch has failed.
    async fn dispatch(
        &self,
        name: &str,
        batch: Pending,
        next: u64,
        tracker: &Arc<Mutex<Tracker>>,
        permits: &Arc<tokio::sync::Semaphore>,
    ) -> CliResult {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "import stopped".to_string())?;
        let first = batch.first().map(|(i, _)| *i).unwrap_or(next);
        {
            let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            if t.failed.is_some() {
                // The import is stopping: this batch is not sent, and the checkpoint stays before it.
                return Ok(());
            }
            t.in_flight.insert(first);
            t.next = next;
        }
        let (client, tracker, name) = (self.client.clone(), tracker.clone(), name.to_string());
        tokio::spawn(async move {
            let (indices, records): (Vec<u64>, Vec<PersonRecord>) = batch.into_iter().unzip();
            let result = client.empi_ingest(records).await;
            let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(outcomes) => {
                    for (item, outcome) in indices.iter().zip(outcomes) {
                        match outcome {
                            EmpiIngested::Linked { .. } => t.linked += 1,
                            EmpiIngested::Refused { key, reason } => {
                                t.refused += 1;
                                if t.refused <= BAD_REPORTED_MAX {
                                    eprintln!("{name}: record {} ({key}) refused: {reason}", item + 1);
                                }
                            }
                        }
                    }
                    t.in_flight.remove(&first);
                }
                // The batch stays in flight, so the checkpoint never passes it.
                Err(e) => {
                    t.failed
                        .get_or_insert_with(|| format!("a batch from record {} failed: {e}", first + 1));
                }
            }
            drop(permit);
        });
        Ok(())
    }

    /// Writes the checkpoint and a progress line.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        i: usize,
        name: &str,
        tracker: &Mutex<Tracker>,
        read: &AtomicU64,
        len: u64,
        started: Instant,
        finished: bool,
    ) -> CliResult {
        let (items, linked, bad, refused) = {
            let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            (t.done_prefix(), t.linked, t.bad, t.refused)
        };
        let snapshot = {
            let mut c = self.cp.lock().unwrap_or_else(|e| e.into_inner());
            let p = &mut c.files[i];
            p.items = items;
            p.done = finished;
            c.clone()
        };
        save(&self.cp_path, &snapshot)?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let fraction = if finished || len == 0 {
            1.0
        } else {
            (read.load(Ordering::Relaxed) as f64 / len as f64).min(1.0)
        };
        let width = 30;
        let filled = (fraction * width as f64) as usize;
        eprintln!(
            "{name}: [{}{}] {:>5.1}%  {linked} linked  {:.0}/s  {bad} unreadable  {refused} refused{}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            fraction * 100.0,
            linked as f64 / secs,
            if finished { "  done" } else { "" }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(format: &str, mapping: Option<PathBuf>) -> IngestArgs {
        IngestArgs {
            format: format.into(),
            mapping,
            source: None,
            batch: 100,
            concurrency: 1,
            restart: false,
            files: vec![PathBuf::from("Cargo.toml")],
            client: ClientOpts {
                config: PathBuf::from("client.toml"),
                json: false,
            },
        }
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_is_sent() {
        assert!(prepare(&args("xml", None)).unwrap_err().contains("--format"));
        assert!(prepare(&args("csv", None)).unwrap_err().contains("--mapping"));
        let mut a = args("ndjson", None);
        a.batch = EMPI_INGEST_RECORDS_MAX + 1;
        assert!(prepare(&a).unwrap_err().contains("--batch"));
        let mut a = args("ndjson", None);
        a.source = Some("a:b".into());
        assert!(prepare(&a).unwrap_err().contains("--source"));
        let mut a = args("ndjson", None);
        a.files = vec![PathBuf::from("/no/such/file")];
        assert!(prepare(&a).unwrap_err().contains("/no/such/file"));
        assert!(prepare(&args("fhir", Some(PathBuf::from("m.toml"))))
            .unwrap_err()
            .contains("does not apply"));
        assert!(prepare(&args("ndjson", None)).is_ok());
    }

    #[test]
    fn the_checkpoint_names_the_format_and_files() {
        let c = Path::new("/tmp/x/client.toml");
        let a = checkpoint_path(c, "csv", &[PathBuf::from("a.csv")]);
        assert_eq!(a.parent(), Some(Path::new("/tmp/x")));
        assert_ne!(a, checkpoint_path(c, "ndjson", &[PathBuf::from("a.csv")]));
        assert_ne!(a, checkpoint_path(c, "csv", &[PathBuf::from("b.csv")]));
    }

    #[test]
    fn the_done_prefix_never_passes_a_batch_in_flight() {
        let mut t = Tracker {
            next: 50,
            ..Tracker::default()
        };
        assert_eq!(t.done_prefix(), 50);
        t.in_flight.insert(10);
        t.in_flight.insert(30);
        assert_eq!(t.done_prefix(), 10);
        t.in_flight.remove(&10);
        assert_eq!(t.done_prefix(), 30);
    }
}
