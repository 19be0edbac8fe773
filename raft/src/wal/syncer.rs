//! The fsync thread of the task-mode WAL writer on a real disk.
//!
//! What it is: one OS thread that calls `fdatasync` on a segment file while the writer task
//! awaits the answer, so the runtime the writer shares with every Raft group keeps serving while
//! the disk flushes. The writer writes a batch's record itself (a write into the page cache is
//! quick), hands the sync here and takes the next batch only after the answer, so at most one
//! sync is ever in flight and the channel holds at most one job.
//!
//! Why: with the writer on a thread of its own, every batch crossed threads twice (the
//! submitter woke the writer, and the writer's completions woke the runtime from outside it),
//! and each crossing is a context switch on a busy machine. Measured on a 2-core VM, 3 nodes,
//! fsync off to isolate it: a runtime-task writer gave 15-18k replicated writes/s against 10k for
//! the writer thread (benches/etcd/README.md). With fsync on, the sync must still leave the
//! runtime (it blocks for the whole device flush), and this thread is that one crossing.
//!
//! What it is not: a pool. It does not write, roll or delete segments; those stay in the writer.

use std::fs::File;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// One sync to run: the file, and where to send its result.
struct Job {
    file: Arc<File>,
    done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
}

/// The fsync thread. Dropping it lets the thread finish its job (if any) and exit, and joins it.
pub(crate) struct Syncer {
    tx: Option<mpsc::SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread.
    pub(crate) fn spawn() -> std::io::Result<Self> {
        // One job at a time: the writer awaits each answer before it sends the next.
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let thread = std::thread::Builder::new()
            .name("plexus-wal-sync".into())
            .spawn(move || {
                while let Ok(Job { file, done }) = rx.recv() {
                    // The writer may be gone (its runtime shut down); nothing waits then.
                    let _ = done.send(file.sync_data());
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Makes `file`'s data durable on the thread and waits for it without blocking the runtime.
    pub(crate) async fn sync_data(&self, file: Arc<File>) -> std::io::Result<()> {
        let gone = || std::io::Error::other("the WAL fsync thread has stopped");
        let (done, answer) = tokio::sync::oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        tx.send(Job { file, done }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test(flavor = "current_thread")]
    async fn syncs_on_its_thread_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"abc").unwrap();
        let syncer = Syncer::spawn().unwrap();
        syncer.sync_data(Arc::new(file)).await.unwrap();
        // A failed sync comes back as the error the thread got: fdatasync on a pipe is EINVAL.
        let (reader, _writer) = std::io::pipe().unwrap();
        let pipe = File::from(std::os::fd::OwnedFd::from(reader));
        let err = syncer.sync_data(Arc::new(pipe)).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        drop(syncer);
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }
}
