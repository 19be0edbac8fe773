//! The node's write-ahead log, shared by every Raft group on the node, and the snapshot files.
//!
//! What it is: one directory (`<data_dir>/wal/`) of segment files `wal-<16 hex digits>.log`
//! (the number is the sequence number of the segment's first record), written by one writer (a
//! thread, or on a node a task that hands each fdatasync to a thread of its own). Callers `submit` batches of `WalOp`s tagged with their group; the writer drains
//! everything queued (up to `batch_bytes_max`), writes it as ONE batch record, calls fdatasync
//! ONCE and only then runs each request's completion callback. That is group commit across Raft
//! groups: one fsync covers the log writes of every group in the batch.
//!
//! What it is not: it knows nothing of openraft (entries, votes and purge points are opaque
//! bytes; `log_store` adapts it) and it keeps no entries in memory after `open` returns them.
//!
//! Format (see `format`): a batch record is `[u32 LE payload_len][u32 LE crc32c(payload)]
//! [u32 LE crc32c(header bytes 0..8)][payload]`, the payload is postcard `Vec<Op>` with
//! `Op = Append{group, entries: Vec<(index, bytes)>} | Truncate{group, from_index} |
//! Purge{group, upto_index, meta} | Vote{group, bytes} | Committed{group, bytes} |
//! Checkpoint{group, vote, committed, purged_upto, purged_meta}`. Compared with the first design:
//! the header has its own checksum (so a damaged length is never mistaken for a torn tail),
//! `Purge` carries opaque `meta` bytes (the log store keeps the purged log id there, which
//! `GroupLog::purged_meta` gives back) and `Checkpoint` exists.
//!
//! Replay (at `open`): `Append` inserts or overwrites entries above the purge point (entries at
//! or below it are already compacted and are ignored), `Truncate` removes indexes `>= from_index`,
//! `Purge` removes indexes `<= upto_index` and moves the purge point if it is higher (a lower
//! purge is a no-op), `Vote`/`Committed` keep the latest, and a `Checkpoint` sets what it holds.
//!
//! Zeros ahead: the active segment keeps `zero_ahead_bytes` of zeros written past its data
//! (`DiskFile::set_zero_ahead`), so a batch's fdatasync overwrites bytes the file already has and
//! need not also write the file's new size: one IO per fsync instead of two, once per MiB aside.
//! Recovery reads a run of zeros at the end of the last segment as free space (no record starts
//! with a zero length) and continues writing where the data ends; the writer cuts a segment to
//! its data before it starts the next, so zeros ending any older segment are corruption.
//!
//! Torn tail: only the last record of the last segment may be damaged, and only if it ends at or
//! runs past the end of the data: a header cut short, a checksummed length running past EOF, a
//! payload CRC mismatch with only zeros (or nothing) after it, or a header whose own checksum
//! fails with no valid record anywhere after it (this covers the zero-filled tail a crash can
//! leave after the file grew).
//! Such a record was never acknowledged: `open` truncates the file at its start, warns and
//! reports `Recovered::torn_tail_bytes`. Any other damage is `WalError::Corrupt` and `open`
//! refuses to start; so is a segment missing between two others (each segment's number must
//! equal the previous one's plus its record count). Damage to the last record of the log is indistinguishable from a torn write
//! and drops that record, as it would for any WAL of this shape.
//!
//! Space: when the active segment would exceed `segment_bytes_max`, the writer starts a new one
//! whose first record is a checkpoint of every group's vote, committed pointer and purge point.
//! After a batch holding a `Purge` (or a roll), the oldest segments whose entries are all at or
//! below their group's purge point are deleted (see `space`). The directory is fsynced after
//! creating or deleting segment files.
//!
//! Deferred ops: `submit_deferred` is for ops whose loss in a crash is harmless (the committed
//! pointer). The writer acknowledges them as soon as it takes them and holds them in memory; the
//! next durable batch writes them first, in the same fdatasync (as a record of their own in front
//! of the batch's when the two together would be too large for one). An idle WAL writes them
//! after `deferred_idle_ms`, a full buffer after `DEFERRED_BYTES_MAX`, and `close` before it returns.
//! Nothing unsynced is ever left on disk by them, so the torn-tail rule above is unchanged.
//!
//! Backpressure: at most `queue_requests_max` requests are queued or being written. `submit`
//! never blocks: it returns `WalError::Busy` when the queue is full. `submit_async` and
//! `submit_wait` wait for room without blocking the async runtime.
//!
//! Failure: after a write or fsync error the file's state is unknown, so the WAL fails every
//! later request with `WalError::Poisoned`; reopening (after a restart) recovers from disk.
//!
//! Seams (for the simulator): every file call goes through a `Disk` (`OsDisk` is std::fs), and
//! `WriterMode::Task` runs the writer as a task on the caller's tokio runtime instead of a thread,
//! so that on a paused (virtual) clock nothing happens outside the runtime's control. Nodes use
//! the task too: with an OS file it syncs on its own fsync thread (`syncer.rs`), so submitting
//! and completing requests never cross threads. `Wal::open` is `Wal::open_with(dir, opts,
//! Arc::new(OsDisk), WriterMode::Thread)`.
//!
//! Lifetime: `close` drains the queue and joins a writer thread (`close_async` also waits for a
//! task writer, without blocking the runtime); dropping the last clone without
//! `close` lets the writer finish what is queued and exit on its own. A `LOCK` file (flock)
//! keeps a second `Wal` off the same directory until the writer has exited.

pub mod disk;
mod format;
mod recovery;
pub mod snapshot;
mod space;
mod syncer;
mod writer;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod task_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod zero_ahead_tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

pub use disk::{Disk, DiskFile, OsDisk};
pub use snapshot::{SnapshotBytes, SnapshotStore};

use format::{RECORD_PAYLOAD_BYTES_MAX, VARINT_BYTES_MAX};
use space::OpNote;

/// Deferred op bytes held in memory past which the writer writes them on their own.
pub const DEFERRED_BYTES_MAX: usize = 1 << 20;

/// Tuning of a `Wal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is started when a batch would take the active one past this size, in bytes.
    pub segment_bytes_max: u64,
    /// The writer stops draining the queue into one batch once it holds this many op bytes.
    /// A single request larger than this is written alone.
    pub batch_bytes_max: usize,
    /// Requests queued or being written at once; more are refused (`submit`) or wait.
    pub queue_requests_max: usize,
    /// Whether to fdatasync batches and fsync the directory. Only tests may turn it off.
    pub fsync: bool,
    /// Under load (the previous batch held more than one request) the writer
    /// waits up to this long, in microseconds, for more requests before the
    /// fsync, so one fsync covers more groups. 0 disables the wait; an idle
    /// WAL never waits.
    pub batch_linger_us: u64,
    /// The task-mode writer (`WriterMode::Task`), woken by a request, first lets the runtime run
    /// every other ready task this many times (`tokio::task::yield_now`) before it takes its
    /// batch, so the appends of one burst of work (a peer's message batch carrying many groups'
    /// entries, say) share one fsync. It costs no syscall and no timer, unlike a linger. 0: take
    /// the batch at once. At most `TASK_YIELDS_MAX`. The thread writer ignores it.
    pub task_yields: u32,
    /// How long the writer holds deferred ops (`Wal::submit_deferred`) while nothing else is
    /// written before it writes and syncs them on their own, in milliseconds.
    pub deferred_idle_ms: u64,
    /// Zeros the active segment keeps written ahead of its data, in bytes (0: none), so that an
    /// fdatasync rarely has to write the file's new size as well as the data.
    pub zero_ahead_bytes: u64,
}

/// Upper bound of `WalOptions::task_yields`: past a few yields a batch gains nothing and each
/// yield still polls the runtime's IO driver.
pub const TASK_YIELDS_MAX: u32 = 64;

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 << 20,
            batch_bytes_max: 8 << 20,
            queue_requests_max: 4096,
            fsync: true,
            // Measured on the 3-node local cluster: waiting did not raise throughput
            // (fdatasync is cheap next to the rest of a write), so it is off by default.
            batch_linger_us: 0,
            // Measured on the 3-node local cluster (benches/etcd/README.md): 4 yields halved the
            // fsyncs per write against 0; 2 left more fsyncs and 8 only added IO-driver polls.
            task_yields: 4,
            // Long enough that a busy WAL never pays for a pointer alone, short enough that an
            // idle group's pointer reaches disk soon after its last write.
            deferred_idle_ms: 100,
            // The file grows once per MiB of log: one extra IO per MiB instead of one per batch.
            zero_ahead_bytes: 1 << 20,
        }
    }
}

/// One log operation of one Raft group. Entry, vote and meta bytes are opaque to the WAL.
///
/// The variant order and fields are the on-disk format (see `format::DiskOp`): never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalOp {
    /// Insert or overwrite entries.
    Append {
        /// Raft group.
        group: u32,
        /// `(index, entry bytes)` pairs.
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// Remove every entry with index `>= from_index`.
    Truncate {
        /// Raft group.
        group: u32,
        /// First index removed.
        from_index: u64,
    },
    /// Remove every entry with index `<= upto_index` and remember the purge point with `meta`.
    Purge {
        /// Raft group.
        group: u32,
        /// Last index removed.
        upto_index: u64,
        /// Opaque bytes returned as `GroupLog::purged_meta` (the log store keeps the log id).
        meta: Vec<u8>,
    },
    /// Replace the group's vote.
    Vote {
        /// Raft group.
        group: u32,
        /// Opaque vote bytes.
        bytes: Vec<u8>,
    },
    /// Replace the group's committed pointer.
    Committed {
        /// Raft group.
        group: u32,
        /// Opaque committed bytes.
        bytes: Vec<u8>,
    },
}

/// What recovery found for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupLog {
    /// Latest vote bytes.
    pub vote: Option<Vec<u8>>,
    /// Latest committed bytes.
    pub committed: Option<Vec<u8>>,
    /// Highest purged index.
    pub purged_upto: Option<u64>,
    /// The `meta` of the purge that set `purged_upto` (empty when there was none).
    pub purged_meta: Vec<u8>,
    /// Live entries, all above `purged_upto`.
    pub entries: BTreeMap<u64, Vec<u8>>,
}

impl GroupLog {
    /// Whether the group holds no state at all.
    pub fn is_empty(&self) -> bool {
        self.vote.is_none() && self.committed.is_none() && self.purged_upto.is_none() && self.entries.is_empty()
    }
}

/// What `Wal::open` recovered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Every group that appears in the log.
    pub groups: BTreeMap<u32, GroupLog>,
    /// Bytes dropped from the tail of the last segment (a record that was never acknowledged).
    pub torn_tail_bytes: u64,
}

/// Upper bounds of the fdatasync latency histogram's buckets, in microseconds (`+Inf` follows).
pub const FSYNC_BUCKETS_US: [u64; 10] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000];

/// Counters since `open`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batch records written (checkpoint records not included).
    pub batches: u64,
    /// Requests completed successfully.
    pub requests: u64,
    /// Ops written.
    pub ops: u64,
    /// fdatasync calls on segment files.
    pub fsyncs: u64,
    /// Record bytes written, headers and checkpoints included.
    pub bytes: u64,
    /// Segments started by rolling (not the one `open` may create).
    pub segments_created: u64,
    /// Segments deleted after purges.
    pub segments_deleted: u64,
    /// Requests queued or being written right now.
    pub queued_requests: u64,
    /// fdatasync calls per latency bucket of `FSYNC_BUCKETS_US`, not cumulative; the last is
    /// `+Inf`. A disk whose syncs drift into the high buckets slows every write of the node.
    pub fsync_buckets: [u64; FSYNC_BUCKETS_US.len() + 1],
    /// Time spent in fdatasync, in microseconds.
    pub fsync_us: u64,
}

/// Errors of the WAL and the snapshot store.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WalError {
    /// A filesystem call failed.
    #[error("wal: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error, shared so every waiting request can receive it.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Damaged data that is not a torn tail; the WAL refuses to start rather than apply it.
    #[error("wal: corrupt {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment or snapshot file.
        segment: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The queue holds `queue_requests_max` requests; try again later or use `submit_async`.
    #[error("wal: queue full")]
    Busy,
    /// The WAL was closed.
    #[error("wal: closed")]
    Closed,
    /// An earlier write or fsync failed; nothing more is written until the WAL is reopened.
    #[error("wal: poisoned by an earlier failure: {0}")]
    Poisoned(String),
    /// One request encodes to more bytes than a record may hold.
    #[error("wal: request of {bytes} bytes exceeds the record limit of {max} bytes")]
    TooLarge {
        /// Encoded size of the request.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// `WalOptions` out of range.
    #[error("wal: invalid options: {0}")]
    InvalidOptions(String),
    /// An op could not be encoded.
    #[error("wal: encode: {0}")]
    Encode(#[from] postcard::Error),
    /// Another `Wal` holds this directory.
    #[error("wal: {0} is locked by another open wal")]
    Locked(PathBuf),
}

impl WalError {
    /// Wraps an IO error with what was being done and where.
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}

/// Fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), WalError> {
    disk.sync_dir(dir).map_err(|e| WalError::io("fsync dir", dir, e))
}

/// Where the WAL writer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriterMode {
    /// A dedicated OS thread doing blocking file IO.
    #[default]
    Thread,
    /// A task on the tokio runtime that calls `Wal::open_with`, which must be running. It writes
    /// each batch's record in place (into the page cache) and then, for an OS file, waits for the
    /// fsync thread (`syncer.rs`) to make it durable, so the runtime serves on during the flush;
    /// an in-memory disk (the simulator's) is synced in place, so there time passes only on the
    /// runtime's clock. Nodes use this: submitting and completing then never cross threads.
    /// Rolling a segment and deleting dead ones still block the runtime briefly (once per
    /// `segment_bytes_max`).
    Task,
}

/// Completion callback of a request: `Ok` once its batch is durable. It runs on the writer
/// thread (or task), so it must be quick and must not call `Wal::close`.
pub type Done = Box<dyn FnOnce(Result<(), WalError>) + Send>;

/// One queued request: its ops already encoded by the caller.
pub(crate) struct Request {
    /// Ops encoded back to back (postcard).
    pub op_bytes: Vec<u8>,
    /// How many ops `op_bytes` holds.
    pub op_count: u64,
    /// What the writer must track about the ops.
    pub notes: Vec<OpNote>,
    /// Completion callback.
    pub done: Done,
    /// Written with the next durable batch instead of being made durable itself (`submit_deferred`).
    pub deferred: bool,
    /// The queue slot, released once the request is completed.
    pub permit: OwnedSemaphorePermit,
}

/// Counters shared by the writer and `Wal::stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    pub ops: AtomicU64,
    /// fdatasync calls per latency bucket; their sum is the fsync count, so a snapshot's count
    /// and histogram always agree.
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len() + 1],
    pub fsync_us: AtomicU64,
    pub bytes: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_deleted: AtomicU64,
}

impl Counters {
    /// Counts one fdatasync that took `took`.
    pub fn record_fsync(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = FSYNC_BUCKETS_US
            .iter()
            .position(|&le| us <= le)
            .unwrap_or(FSYNC_BUCKETS_US.len());
        self.fsync_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.fsync_us.fetch_add(us, Ordering::Relaxed);
    }
}

struct Inner {
    /// Queue slots; closed by `close` so waiters fail fast.
    slots: Arc<Semaphore>,
    queue_requests_max: usize,
    /// `None` once closed.
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The task-mode writer, for `close_async` to wait on; `None` in thread mode.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Wakes a task-mode writer after a send or when the senders go away; `None` in thread mode.
    wake: Option<Arc<tokio::sync::Notify>>,
    counters: Arc<Counters>,
    #[cfg(test)]
    gate: Arc<writer::Gate>,
    /// Requests handed to the writer's channel (a slot is taken a moment before that).
    #[cfg(test)]
    sent: std::sync::atomic::AtomicU64,
}

/// The node's write-ahead log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (it is only swapped).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, recovers every group and starts the writer.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), WalError> {
        Self::open_with(dir, opts, Arc::new(OsDisk), WriterMode::Thread)
    }

    /// Opens the WAL in `dir` on `disk`, with the writer running as `mode` says.
    pub fn open_with(
        dir: &Path,
        opts: WalOptions,
        disk: Arc<dyn Disk>,
        mode: WriterMode,
    ) -> Result<(Wal, Recovered), WalError> {
        if opts.queue_requests_max == 0 || opts.queue_requests_max > Semaphore::MAX_PERMITS {
            return Err(WalError::InvalidOptions(format!(
                "queue_requests_max {} must be in 1..={}",
                opts.queue_requests_max,
                Semaphore::MAX_PERMITS
            )));
        }
        if opts.batch_bytes_max == 0 || opts.batch_bytes_max > RECORD_PAYLOAD_BYTES_MAX - VARINT_BYTES_MAX {
            return Err(WalError::InvalidOptions(format!(
                "batch_bytes_max {} must be in 1..={}",
                opts.batch_bytes_max,
                RECORD_PAYLOAD_BYTES_MAX - VARINT_BYTES_MAX
            )));
        }
        if opts.task_yields > TASK_YIELDS_MAX {
            return Err(WalError::InvalidOptions(format!(
                "task_yields {} must be at most {TASK_YIELDS_MAX}",
                opts.task_yields
            )));
        }
        if opts.segment_bytes_max == 0 {
            return Err(WalError::InvalidOptions("segment_bytes_max must be positive".into()));
        }
        disk.create_dir_all(dir)
            .map_err(|e| WalError::io("create dir", dir, e))?;
        let lock_file = disk.lock_dir(dir)?;
        let (space, active, recovered) = recovery::recover(disk.as_ref(), dir, opts.fsync)?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel();
        #[cfg(test)]
        let gate = Arc::new(writer::Gate::default());
        let writer = writer::Writer::new(
            disk,
            dir.to_path_buf(),
            opts.clone(),
            space,
            active,
            lock_file,
            counters.clone(),
            #[cfg(test)]
            gate.clone(),
        );
        let (thread, task, wake) = match mode {
            WriterMode::Thread => {
                let thread = std::thread::Builder::new()
                    .name("plexus-wal".into())
                    .spawn(move || writer.run(rx))
                    .map_err(|e| WalError::io("spawn writer thread", dir, e))?;
                (Some(thread), None, None)
            }
            WriterMode::Task => {
                let wake = Arc::new(tokio::sync::Notify::new());
                let handle = tokio::runtime::Handle::try_current()
                    .map_err(|e| WalError::InvalidOptions(format!("WriterMode::Task needs a tokio runtime: {e}")))?;
                let task = handle.spawn(writer.run_task(rx, wake.clone()));
                (None, Some(task), Some(wake))
            }
        };
        let inner = Inner {
            slots: Arc::new(Semaphore::new(opts.queue_requests_max)),
            queue_requests_max: opts.queue_requests_max,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
            task: Mutex::new(task),
            wake,
            counters,
            #[cfg(test)]
            gate,
            #[cfg(test)]
            sent: std::sync::atomic::AtomicU64::new(0),
        };
        Ok((Wal { inner: Arc::new(inner) }, recovered))
    }

    /// Queues `ops` without blocking; `done(Ok)` runs once they are durable. Returns `Busy` when
    /// the queue is full. `done` is called exactly once if and only if this returns `Ok`.
    pub fn submit(&self, ops: Vec<WalOp>, done: Done) -> Result<(), WalError> {
        let (op_bytes, notes) = encode(&ops)?;
        let permit = self.inner.slots.clone().try_acquire_owned().map_err(|e| match e {
            TryAcquireError::NoPermits => WalError::Busy,
            TryAcquireError::Closed => WalError::Closed,
        })?;
        self.enqueue(ops.len(), op_bytes, notes, done, permit, false)
    }

    /// Like `submit`, but waits (asynchronously) for room in the queue instead of returning
    /// `Busy`. Returns once queued; `done` reports durability.
    pub async fn submit_async(&self, ops: Vec<WalOp>, done: Done) -> Result<(), WalError> {
        self.submit_waiting(ops, done, false).await
    }

    /// Queues `ops` whose loss in a crash is harmless (openraft's committed pointer, a hint that
    /// may lag) without paying an fdatasync for them: the writer keeps them in memory and writes
    /// them in front of the next batch it makes durable anyway, on their own once the WAL has
    /// been idle for `deferred_idle_ms`, or at close. They still go to disk in queue order, so any
    /// op queued after them cannot become durable before them. Waits for room in the queue like
    /// `submit_async`; returns once queued.
    pub async fn submit_deferred(&self, ops: Vec<WalOp>) -> Result<(), WalError> {
        let done: Done = Box::new(|result| {
            if let Err(e) = result {
                tracing::warn!(error = %e, "wal: a deferred write was not taken");
            }
        });
        self.submit_waiting(ops, done, true).await
    }

    /// Encodes `ops`, waits for a queue slot and queues them.
    async fn submit_waiting(&self, ops: Vec<WalOp>, done: Done, deferred: bool) -> Result<(), WalError> {
        let (op_bytes, notes) = encode(&ops)?;
        let permit = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| WalError::Closed)?;
        self.enqueue(ops.len(), op_bytes, notes, done, permit, deferred)
    }

    /// Queues `ops` (waiting for room) and returns once they are durable.
    pub async fn submit_wait(&self, ops: Vec<WalOp>) -> Result<(), WalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_async(
            ops,
            Box::new(move |result| {
                // The waiter may have been cancelled; then nobody needs the result.
                let _ = tx.send(result);
            }),
        )
        .await?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Counters since `open`.
    pub fn stats(&self) -> WalStats {
        let c = &self.inner.counters;
        let free = self.inner.slots.available_permits();
        let fsync_buckets = c.fsync_buckets.each_ref().map(|b| b.load(Ordering::Relaxed));
        WalStats {
            batches: c.batches.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            fsyncs: fsync_buckets.iter().sum(),
            bytes: c.bytes.load(Ordering::Relaxed),
            segments_created: c.segments_created.load(Ordering::Relaxed),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            queued_requests: self.inner.queue_requests_max.saturating_sub(free) as u64,
            fsync_buckets,
            fsync_us: c.fsync_us.load(Ordering::Relaxed),
        }
    }

    /// Writes everything already queued, stops the writer thread and releases the directory.
    /// Later submits fail with `Closed`. Blocks the calling thread until a writer thread has
    /// finished, so async callers should use `close_async`; a task-mode writer is only told to
    /// finish (it drains the queue on its runtime). Idempotent.
    pub fn close(&self) {
        self.stop_taking();
        let handle = lock(&self.inner.thread).take();
        if let Some(handle) = handle {
            // A callback calling close would join its own thread; it is documented as forbidden,
            // and skipping the join keeps that mistake from hanging forever.
            if handle.thread().id() != std::thread::current().id() {
                // A panic in the writer has already failed its requests; nothing left to do.
                let _ = handle.join();
            }
        }
    }

    /// `close` for async callers: waits until the writer, thread or task, has written everything
    /// queued and released the directory, without blocking the runtime. Idempotent.
    pub async fn close_async(&self) {
        self.stop_taking();
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            // A panicked writer has already failed its requests; nothing left to do.
            let _ = task.await;
        }
        let thread = lock(&self.inner.thread).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Refuses further submits and lets the writer drain the queue and exit.
    fn stop_taking(&self) {
        self.inner.slots.close();
        // Dropping the only sender lets the writer drain the channel and then exit.
        drop(lock(&self.inner.tx).take());
        if let Some(wake) = &self.inner.wake {
            wake.notify_one();
        }
    }

    fn enqueue(
        &self,
        op_count: usize,
        op_bytes: Vec<u8>,
        notes: Vec<OpNote>,
        done: Done,
        permit: OwnedSemaphorePermit,
        deferred: bool,
    ) -> Result<(), WalError> {
        let request = Request {
            op_bytes,
            op_count: op_count as u64,
            notes,
            done,
            permit,
            deferred,
        };
        let tx = lock(&self.inner.tx);
        match tx.as_ref() {
            // If the writer thread is gone the request comes back inside the error and is dropped
            // without running `done`, matching the contract that an `Err` means no callback.
            Some(tx) => {
                tx.send(request).map_err(|_| WalError::Closed)?;
                #[cfg(test)]
                self.inner.sent.fetch_add(1, Ordering::Release);
                if let Some(wake) = &self.inner.wake {
                    wake.notify_one();
                }
                Ok(())
            }
            None => Err(WalError::Closed),
        }
    }

    /// Test hook: requests handed to the writer so far.
    #[cfg(test)]
    pub(crate) fn sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Acquire)
    }

    /// Test hook: holds the writer before it drains its next batch until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn pause(&self) -> writer::PauseGuard {
        writer::PauseGuard::new(self.inner.gate.clone())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last `Wal` clone is gone: a task-mode writer must wake to see the closed channel.
        drop(lock(&self.tx).take());
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }
}

/// Encodes `ops` back to back and extracts what the writer tracks.
fn encode(ops: &[WalOp]) -> Result<(Vec<u8>, Vec<OpNote>), WalError> {
    let mut bytes = Vec::new();
    let mut notes = Vec::with_capacity(ops.len());
    for op in ops {
        bytes = postcard::to_extend(op, bytes)?;
        if let Some(note) = note_of(op) {
            notes.push(note);
        }
    }
    let max = RECORD_PAYLOAD_BYTES_MAX - VARINT_BYTES_MAX;
    if bytes.len() > max {
        return Err(WalError::TooLarge {
            bytes: bytes.len(),
            max,
        });
    }
    Ok((bytes, notes))
}

/// What the space tracker needs to know about `op`; `None` for an append of no entries.
fn note_of(op: &WalOp) -> Option<OpNote> {
    Some(match op {
        WalOp::Append { group, entries } => {
            let min = entries.iter().map(|(index, _)| *index).min()?;
            let max = entries.iter().map(|(index, _)| *index).max()?;
            OpNote::Append {
                group: *group,
                min,
                max,
            }
        }
        WalOp::Truncate { group, from_index } => OpNote::Truncate {
            group: *group,
            from: *from_index,
        },
        WalOp::Purge {
            group,
            upto_index,
            meta,
        } => OpNote::Purge {
            group: *group,
            upto: *upto_index,
            meta: meta.clone(),
        },
        WalOp::Vote { group, bytes } => OpNote::Vote {
            group: *group,
            bytes: bytes.clone(),
        },
        WalOp::Committed { group, bytes } => OpNote::Committed {
            group: *group,
            bytes: bytes.clone(),
        },
    })
}
