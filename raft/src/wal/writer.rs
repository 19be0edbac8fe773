//! The WAL writer: group commit, segment rolling and deletion of dead segments.
//!
//! It runs on its own thread (`run`) or as a task on the runtime (`run_task`, what nodes and the
//! simulator use; an OS file is then synced on the fsync thread of `syncer.rs`).
//! It owns the active segment file and the directory lock. It is the only code that writes
//! segments after recovery, which is what makes a single fdatasync per batch enough. It does not
//! encode ops (callers did) and never reads segments back.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use super::disk::{Disk, DiskFile};
use super::format::{self, DiskOp, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX, VARINT_BYTES_MAX};
use super::recovery::Active;
use super::space::{OpNote, SegmentInfo, Space};
use super::syncer::Syncer;
use super::{sync_dir, Counters, Request, WalError, WalOptions, DEFERRED_BYTES_MAX};

/// Name of the lock file inside the WAL directory.
const LOCK_FILE: &str = "LOCK";

/// Takes an exclusive advisory lock on `dir`, so two `Wal`s never write one directory.
/// The lock lives as long as the returned file.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| WalError::io("open lock file", &path, e))?;
    // SAFETY: `flock` only operates on the descriptor, which `file` keeps open during the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            return Err(WalError::Locked(dir.to_path_buf()));
        }
        return Err(WalError::io("lock", &path, err));
    }
    Ok(file)
}

/// State of the writer thread.
pub(crate) struct Writer {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    opts: WalOptions,
    space: Space,
    /// The active segment (the last of `space.segments`).
    file: Box<dyn DiskFile>,
    /// Bytes in the active segment.
    size: u64,
    /// Bytes of the checkpoint this writer wrote at the start of the active segment; a segment
    /// holding nothing more is never rolled again.
    checkpoint_bytes: u64,
    /// Held only to keep the directory locked until the thread ends.
    _lock: Option<File>,
    counters: Arc<Counters>,
    /// Set after a write or fsync error; every later request fails with it.
    poisoned: Option<String>,
    /// Reused record buffer.
    buf: Vec<u8>,
    /// Ops of deferred requests taken but not yet written.
    deferred: Deferred,
    /// The task-mode writer's fsync thread, started at its first sync of an OS file.
    syncer: Option<Syncer>,
    /// Set once the fsync thread could not be started (so the warning is logged once).
    syncer_failed: bool,
    #[cfg(test)]
    gate: Arc<Gate>,
}

impl Writer {
    /// A writer continuing `active`, the last segment of `space`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        disk: Arc<dyn Disk>,
        dir: PathBuf,
        opts: WalOptions,
        space: Space,
        active: Active,
        lock: Option<File>,
        counters: Arc<Counters>,
        #[cfg(test)] gate: Arc<Gate>,
    ) -> Self {
        let mut file = active.file;
        file.set_zero_ahead(opts.zero_ahead_bytes);
        Self {
            disk,
            dir,
            opts,
            space,
            file,
            size: active.size,
            checkpoint_bytes: 0,
            _lock: lock,
            counters,
            poisoned: None,
            buf: Vec::new(),
            deferred: Deferred::default(),
            syncer: None,
            syncer_failed: false,
            #[cfg(test)]
            gate,
        }
    }

    /// Serves requests until every sender is gone and the channel is drained.
    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut pending: Option<Request> = None;
        let mut last_batch_len = 0usize;
        loop {
            let first = match pending.take() {
                Some(request) => request,
                None if self.deferred.is_empty() => match rx.recv() {
                    Ok(request) => request,
                    Err(mpsc::RecvError) => break,
                },
                None => match rx.recv_timeout(self.deferred_idle()) {
                    Ok(request) => request,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let _ = self.write_batch(&mut []);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            #[cfg(test)]
            self.gate.wait_open();
            // Linger only when the last batch showed concurrent writers: an
            // idle WAL answers a lone request with no added delay.
            let linger_until = (last_batch_len > 1 && self.opts.batch_linger_us > 0)
                .then(|| std::time::Instant::now() + std::time::Duration::from_micros(self.opts.batch_linger_us));
            let (mut batch, carry) = fill_batch(first, self.opts.batch_bytes_max, || match linger_until {
                Some(until) => match until.checked_duration_since(std::time::Instant::now()) {
                    Some(left) => rx.recv_timeout(left).ok(),
                    None => rx.try_recv().ok(),
                },
                None => rx.try_recv().ok(),
            });
            pending = carry;
            last_batch_len = batch.len();
            if self.hold_deferred(&mut batch) {
                if self.deferred_full() {
                    let _ = self.write_batch(&mut []);
                }
                continue;
            }
            let result = self.write_batch(&mut batch);
            self.complete(batch, result);
        }
        // Close: what was deferred is written and synced before the directory is released.
        if !self.deferred.is_empty() {
            let _ = self.write_batch(&mut []);
        }
    }

    /// Serves requests as a task on the tokio runtime until every sender is gone and the channel
    /// is drained. `wake` is notified after every send and when the senders go away. There is no
    /// timed linger: woken, the task yields `task_yields` times to every other ready task, and a
    /// batch is whatever is queued then. After writing, the task
    /// waits the disk's `write_delay` on the runtime clock before completing the batch, which is
    /// how a simulated disk is slow.
    pub async fn run_task(mut self, rx: mpsc::Receiver<Request>, wake: Arc<tokio::sync::Notify>) {
        let mut pending: Option<Request> = None;
        loop {
            let first = match pending.take() {
                Some(request) => request,
                None => loop {
                    match rx.try_recv() {
                        Ok(request) => break request,
                        Err(mpsc::TryRecvError::Empty) if self.deferred.is_empty() => wake.notified().await,
                        Err(mpsc::TryRecvError::Empty) => {
                            if tokio::time::timeout(self.deferred_idle(), wake.notified())
                                .await
                                .is_err()
                            {
                                let _ = self.write_batch_task(&mut []).await;
                            }
                        }
                        Err(mpsc::TryRecvError::Disconnected) => {
                            if !self.deferred.is_empty() {
                                let _ = self.write_batch_task(&mut []).await;
                            }
                            return;
                        }
                    }
                },
            };
            // Let the rest of the burst that woke us submit too (`WalOptions::task_yields`).
            for _ in 0..self.opts.task_yields {
                tokio::task::yield_now().await;
            }
            let (mut batch, carry) = fill_batch(first, self.opts.batch_bytes_max, || rx.try_recv().ok());
            pending = carry;
            if self.hold_deferred(&mut batch) {
                if self.deferred_full() {
                    let _ = self.write_batch_task(&mut []).await;
                }
                continue;
            }
            let result = self.write_batch_task(&mut batch).await;
            self.complete(batch, result);
        }
    }

    fn deferred_idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.opts.deferred_idle_ms)
    }

    /// `write_batch` for the task-mode writer: the record is written, then the disk takes its
    /// time, then the fsync. A crash in between finds the record unsynced, which is what a
    /// simulated crash must be able to lose or tear. An OS file is synced on the fsync thread
    /// (`syncer.rs`) while this task waits, so the runtime serves on during the device flush.
    async fn write_batch_task(&mut self, batch: &mut [Request]) -> Result<(), WalError> {
        // Counted before `append_batch` takes the held deferred ops, which it writes too.
        let bytes = self.deferred.bytes.len() + batch.iter().map(|r| r.op_bytes.len()).sum::<usize>();
        let written = self.guarded(|w| w.append_batch(batch));
        let delay = self.disk.write_delay(bytes);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let written = written?;
        if self.opts.fsync {
            let path = self.active_path();
            let started = std::time::Instant::now();
            let synced = self.sync_active().await;
            self.guarded(|_| synced.map_err(|e| WalError::io("fdatasync segment", &path, e)))?;
            self.counters.record_fsync(started.elapsed());
        }
        self.guarded(|w| w.finish_batch(written))
    }

    /// Makes the active segment's data durable: an OS file on the fsync thread, while this task
    /// waits; any other file (or with no fsync thread) in place.
    async fn sync_active(&mut self) -> std::io::Result<()> {
        if let Some(file) = self.file.sync_handle() {
            if let Some(syncer) = self.syncer() {
                return syncer.sync_data(file).await;
            }
        }
        self.file.sync_data()
    }

    /// The fsync thread, started if it is not running; `None` if it cannot be started (the
    /// writer then syncs in place, blocking the runtime for the flush, and says so once).
    fn syncer(&mut self) -> Option<&Syncer> {
        if self.syncer.is_none() && !self.syncer_failed {
            match Syncer::spawn() {
                Ok(syncer) => self.syncer = Some(syncer),
                Err(e) => {
                    tracing::warn!(error = %e, "wal: no fsync thread; syncing on the runtime");
                    self.syncer_failed = true;
                }
            }
        }
        self.syncer.as_ref()
    }

    /// If every request of `batch` is deferred, takes their ops into the in-memory buffer,
    /// acknowledges them and returns true; the caller writes the buffer at once if it has grown
    /// past `DEFERRED_BYTES_MAX` (`deferred_full`). A batch with any durable request is left
    /// alone: its deferred requests are written in place, in queue order, under the batch's fsync.
    fn hold_deferred(&mut self, batch: &mut Vec<Request>) -> bool {
        if !batch.iter().all(|r| r.deferred) {
            return false;
        }
        for request in batch.drain(..) {
            let Request {
                op_bytes,
                op_count,
                notes,
                done,
                permit,
                ..
            } = request;
            let result = match &self.poisoned {
                Some(reason) => Err(WalError::Poisoned(reason.clone())),
                None => {
                    self.deferred.bytes.extend_from_slice(&op_bytes);
                    self.deferred.op_count += op_count;
                    self.deferred.notes.extend(notes);
                    self.counters.requests.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            };
            drop(permit);
            done(result);
        }
        true
    }

    /// Whether the held deferred ops have grown past `DEFERRED_BYTES_MAX` and must be written
    /// (and synced, so no unsynced record is left on disk) on their own. Rare: it takes a long
    /// run of pointer-only batches.
    fn deferred_full(&self) -> bool {
        self.deferred.bytes.len() >= DEFERRED_BYTES_MAX
    }

    /// Completes every request of a written batch with `result`.
    fn complete(&self, batch: Vec<Request>, result: Result<(), WalError>) {
        for request in batch {
            let Request { done, permit, .. } = request;
            if result.is_ok() {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
            }
            // Free the slot first so that a caller woken by `done` sees it free.
            drop(permit);
            done(result.clone());
        }
    }

    /// Writes the held deferred ops and `batch` as one record (two if together they would be too
    /// large) and makes them durable, poisoning the writer on failure.
    fn write_batch(&mut self, batch: &mut [Request]) -> Result<(), WalError> {
        self.guarded(|w| {
            let written = w.append_batch(batch)?;
            w.sync_batch(written)
        })
    }

    /// Runs `step` unless the writer is poisoned, and poisons it if `step` fails.
    fn guarded<T>(&mut self, step: impl FnOnce(&mut Self) -> Result<T, WalError>) -> Result<T, WalError> {
        if let Some(reason) = &self.poisoned {
            return Err(WalError::Poisoned(reason.clone()));
        }
        let result = step(self);
        if let Err(e) = &result {
            tracing::error!(error = %e, "wal: write failed; refusing further writes until reopened");
            self.poisoned = Some(e.to_string());
        }
        result
    }

    /// Appends the held deferred ops and `batch` as one record, or as two when together they
    /// would pass the record size limit (rolling the segment first if it would grow too large),
    /// without syncing them.
    fn append_batch(&mut self, batch: &mut [Request]) -> Result<Written, WalError> {
        let held = std::mem::take(&mut self.deferred);
        let batch_ops: u64 = batch.iter().map(|r| r.op_count).sum();
        let batch_bytes: usize = batch.iter().map(|r| r.op_bytes.len()).sum();
        let op_count = held.op_count + batch_ops;
        let op_bytes = held.bytes.len() + batch_bytes;
        let split = !held.is_empty() && batch_ops > 0 && op_bytes > RECORD_PAYLOAD_BYTES_MAX - VARINT_BYTES_MAX;
        let headers = if split { 2 } else { 1 };
        let record_bytes = (headers * (RECORD_HEADER_BYTES + VARINT_BYTES_MAX) + op_bytes) as u64;
        let rolled = self.size + record_bytes > self.opts.segment_bytes_max && self.size > self.checkpoint_bytes;
        if rolled {
            self.roll()?;
        }
        self.buf.clear();
        let held_bytes = (!held.is_empty()).then_some(held.bytes.as_slice());
        let batch_slices = batch.iter().map(|r| r.op_bytes.as_slice());
        if split {
            format::push_record(&mut self.buf, held.op_count, held_bytes.into_iter());
            format::push_record(&mut self.buf, batch_ops, batch_slices);
        } else {
            format::push_record(&mut self.buf, op_count, held_bytes.into_iter().chain(batch_slices));
        }
        self.append_buf(headers as u64)?;
        let mut purged = false;
        for note in held.notes {
            purged |= matches!(note, OpNote::Purge { .. });
            self.space.note(note);
        }
        for request in batch.iter_mut() {
            for note in std::mem::take(&mut request.notes) {
                purged |= matches!(note, OpNote::Purge { .. });
                self.space.note(note);
            }
        }
        Ok(Written {
            op_count,
            purged,
            rolled,
        })
    }

    /// Makes the record `append_batch` wrote durable, then deletes segments it made dead.
    fn sync_batch(&mut self, written: Written) -> Result<(), WalError> {
        if self.opts.fsync {
            let path = self.active_path();
            // Wall time for the latency histogram only; nothing decides by it (in the simulator
            // the disk's delay is virtual and this measures next to nothing).
            let started = std::time::Instant::now();
            self.file
                .sync_data()
                .map_err(|e| WalError::io("fdatasync segment", &path, e))?;
            self.counters.record_fsync(started.elapsed());
        }
        self.finish_batch(written)
    }

    /// Counts a durable batch and deletes the segments it made dead.
    fn finish_batch(&mut self, written: Written) -> Result<(), WalError> {
        let Written {
            op_count,
            purged,
            rolled,
        } = written;
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.ops.fetch_add(op_count, Ordering::Relaxed);
        if purged || rolled {
            self.delete_dead_segments();
        }
        Ok(())
    }

    /// Writes `buf`, `records` complete records, at the end of the active segment.
    fn append_buf(&mut self, records: u64) -> Result<(), WalError> {
        let path = self.active_path();
        self.file
            .append(&self.buf)
            .map_err(|e| WalError::io("write segment", &path, e))?;
        self.size += self.buf.len() as u64;
        self.counters.bytes.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        if let Some(active) = self.space.segments.back_mut() {
            active.records += records;
        }
        Ok(())
    }

    /// Starts a new segment whose first record is a checkpoint of every group.
    fn roll(&mut self) -> Result<(), WalError> {
        let next_seq = self
            .space
            .segments
            .back()
            .map_or(0, |active| active.first_seq + active.records);
        // Recovery accepts zeros written ahead only at the end of the last segment: cut this one
        // to its data (made durable before the next segment can exist).
        let old = self.active_path();
        self.disk
            .truncate(&old, self.size, self.opts.fsync)
            .map_err(|e| WalError::io("truncate segment", &old, e))?;
        let path = self.dir.join(format::segment_file_name(next_seq));
        let mut file = self
            .disk
            .create(&path, true)
            .map_err(|e| WalError::io("create segment", &path, e))?;
        file.set_zero_ahead(self.opts.zero_ahead_bytes);
        if self.opts.fsync {
            sync_dir(self.disk.as_ref(), &self.dir)?;
        }
        let checkpoints = self.space.checkpoints();
        self.space.segments.push_back(SegmentInfo::new(next_seq, path));
        self.file = file;
        self.size = 0;
        self.checkpoint_bytes = 0;
        self.counters.segments_created.fetch_add(1, Ordering::Relaxed);
        if !checkpoints.is_empty() {
            let mut chunks = Vec::with_capacity(checkpoints.len());
            for checkpoint in checkpoints {
                chunks.push(postcard::to_allocvec(&DiskOp::Checkpoint(checkpoint))?);
            }
            self.buf.clear();
            format::push_record(&mut self.buf, chunks.len() as u64, chunks.iter().map(|c| c.as_slice()));
            self.append_buf(1)?;
            self.checkpoint_bytes = self.size;
        }
        Ok(())
    }

    /// Deletes the dead prefix of segments, oldest first, fsyncing the directory after each one:
    /// otherwise a crash could persist a later deletion but not an earlier one, leaving a gap that
    /// recovery must reject. Deletions are rare (one per `segment_bytes_max` written), so the extra
    /// fsyncs are cheap. Failures only delay reclaiming space, so they are logged and retried after
    /// the next purge rather than failing the batch.
    fn delete_dead_segments(&mut self) {
        for _ in 0..self.space.dead_prefix() {
            let Some(segment) = self.space.segments.front() else {
                break;
            };
            match self.disk.remove(&segment.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %segment.path.display(), error = %e, "wal: cannot delete dead segment");
                    break;
                }
            }
            if self.opts.fsync {
                if let Err(e) = sync_dir(self.disk.as_ref(), &self.dir) {
                    tracing::warn!(error = %e, "wal: cannot fsync the directory after deleting a segment");
                    break;
                }
            }
            self.space.segments.pop_front();
            self.counters.segments_deleted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn active_path(&self) -> PathBuf {
        self.space
            .segments
            .back()
            .map_or_else(|| self.dir.clone(), |segment| segment.path.clone())
    }
}

/// Ops of deferred requests, encoded back to back, waiting to be written in front of a batch.
#[derive(Default)]
struct Deferred {
    bytes: Vec<u8>,
    op_count: u64,
    notes: Vec<OpNote>,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.op_count == 0
    }
}

/// What `append_batch` wrote, for `sync_batch`.
#[derive(Clone, Copy, Debug)]
struct Written {
    op_count: u64,
    purged: bool,
    rolled: bool,
}

/// Test hook that holds the writer before it drains a batch.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Gate {
    closed: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

#[cfg(test)]
impl Gate {
    fn wait_open(&self) {
        let mut closed = super::lock(&self.closed);
        while *closed {
            closed = self.opened.wait(closed).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Keeps the writer paused while alive.
#[cfg(test)]
pub(crate) struct PauseGuard(Arc<Gate>);

#[cfg(test)]
impl PauseGuard {
    pub(crate) fn new(gate: Arc<Gate>) -> Self {
        *super::lock(&gate.closed) = true;
        Self(gate)
    }
}

#[cfg(test)]
impl Drop for PauseGuard {
    fn drop(&mut self) {
        *super::lock(&self.0.closed) = false;
        self.0.opened.notify_all();
    }
}

/// Starts a batch with `first` and adds what `next` yields until it runs dry or
/// the batch reaches `bytes_max` op bytes; a request that would overflow the
/// batch is handed back to start the next one.
fn fill_batch(
    first: Request,
    bytes_max: usize,
    mut next: impl FnMut() -> Option<Request>,
) -> (Vec<Request>, Option<Request>) {
    let mut bytes = first.op_bytes.len();
    let mut batch = vec![first];
    while bytes < bytes_max {
        match next() {
            Some(request) if bytes + request.op_bytes.len() > bytes_max => return (batch, Some(request)),
            Some(request) => {
                bytes += request.op_bytes.len();
                batch.push(request);
            }
            None => break,
        }
    }
    (batch, None)
}
