//! The disk seam: every file the WAL and the snapshot store touch goes through `Disk`.
//!
//! What it is: a small set of file and directory calls (list, read, create, append, sync,
//! truncate, rename, remove, directory sync) and `OsDisk`, which does exactly what the WAL did
//! before the seam existed (std::fs, fdatasync, flock). The simulator implements `Disk` with
//! in-memory files that remember what was synced, so a simulated crash keeps only durable bytes.
//!
//! What it is not: a general filesystem abstraction. It offers only what the WAL needs: files are
//! written by appending (never at an offset), and a directory is flat.
//!
//! Zero-ahead: a WAL segment asks its file to keep zeros written ahead of its end
//! (`DiskFile::set_zero_ahead`). An fdatasync that grows a file must also write the inode (its
//! size) in a second, serial IO; one that only overwrites zeros already on disk writes the data
//! alone. `OsFile` therefore writes zeros a chunk at a time ahead of its appends, and recovery
//! knows that the last segment may end in zeros (`recovery::scan`).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::WalError;

/// An open file the WAL appends to.
pub trait DiskFile: Send {
    /// Appends `bytes` at the end of the file.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&mut self) -> std::io::Result<()>;
    /// Makes the file's data and metadata durable (fsync).
    fn sync_all(&mut self) -> std::io::Result<()>;
    /// The OS file, for a task that makes its data durable on another thread (`syncer.rs`)
    /// instead of blocking the runtime in `sync_data`. `None` (the default) for files that are not
    /// OS files, which the writer then syncs in place.
    fn sync_handle(&self) -> Option<Arc<File>> {
        None
    }
    /// Asks the file to keep up to `bytes` of zeros written past its end, so that syncing later
    /// appends rarely changes its size (0: never). Files that gain nothing from it ignore it;
    /// whoever reads such a file back must accept a tail of zeros.
    fn set_zero_ahead(&mut self, bytes: u64) {
        let _ = bytes;
    }
}

/// The file system as the WAL and snapshot store use it.
pub trait Disk: Send + Sync + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()>;
    /// Names of the entries of `dir`, in no particular order; names that are not UTF-8 are skipped.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>>;
    /// The whole content of `path` (`ErrorKind::NotFound` when it does not exist).
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Creates `path` empty for appending; with `exclusive` it must not exist yet
    /// (`ErrorKind::AlreadyExists`), otherwise an existing file is truncated.
    fn create(&self, path: &Path, exclusive: bool) -> std::io::Result<Box<dyn DiskFile>>;
    /// Opens an existing `path` for appending at byte `at`, its end of data: the bytes from `at`
    /// on are zeros written ahead (`DiskFile::set_zero_ahead`), which appends overwrite.
    fn open_append(&self, path: &Path, at: u64) -> std::io::Result<Box<dyn DiskFile>>;
    /// Cuts `path` to `len` bytes, fsyncing it when `sync` is set.
    fn truncate(&self, path: &Path, len: u64, sync: bool) -> std::io::Result<()>;
    /// Removes `path` (`ErrorKind::NotFound` when it does not exist).
    fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Makes creations, renames and removals of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// Locks `dir` against a second WAL in another process; the lock lives as long as the
    /// returned value. Disks that are never shared between processes return `None`.
    fn lock_dir(&self, dir: &Path) -> Result<Option<File>, WalError>;
    /// How long a batch of `bytes` takes to become durable beyond the calls themselves. Only the
    /// task-mode writer waits for it (on the runtime's clock); `OsDisk` answers zero because its
    /// calls already take the real time.
    fn write_delay(&self, bytes: usize) -> Duration {
        let _ = bytes;
        Duration::ZERO
    }
    /// Whether long file work (a snapshot's encoding and writing) may run on a blocking thread
    /// (`tokio::task::spawn_blocking`) instead of the runtime. True for the OS's file system,
    /// where a large snapshot written in place would stall every task of a one-thread node;
    /// false (the default) for the simulator's disk, whose calls must stay on the runtime.
    fn offload_blocking(&self) -> bool {
        false
    }
}

/// The operating system's file system: what the WAL always did.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsDisk;

/// Zeros are written ahead in pieces of at most this many bytes (one allocation each).
const ZERO_PIECE_BYTES: usize = 1 << 20;

struct OsFile {
    /// Shared with the fsync thread while it syncs (`sync_handle`).
    file: Arc<File>,
    /// Where the next append goes: the end of the data.
    pos: u64,
    /// The file's length: `pos` plus the zeros written ahead of it.
    len: u64,
    /// Zeros to keep written past `pos` (0: append by growing the file).
    zero_ahead_bytes: u64,
}

impl OsFile {
    /// Makes sure zeros cover `[pos, end)`, writing a whole `zero_ahead_bytes` more when they do
    /// not, so the file grows once per `zero_ahead_bytes` rather than on every append.
    fn zero_fill_to(&mut self, end: u64) -> std::io::Result<()> {
        if self.zero_ahead_bytes == 0 || end <= self.len {
            return Ok(());
        }
        let target = end.saturating_add(self.zero_ahead_bytes);
        let zeros = vec![0u8; ZERO_PIECE_BYTES.min((target - self.len) as usize)];
        while self.len < target {
            let n = zeros.len().min((target - self.len) as usize);
            self.file.write_all_at(&zeros[..n], self.len)?;
            self.len += n as u64;
        }
        Ok(())
    }
}

impl DiskFile for OsFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let end = self.pos + bytes.len() as u64;
        self.zero_fill_to(end)?;
        self.file.write_all_at(bytes, self.pos)?;
        self.pos = end;
        self.len = self.len.max(end);
        Ok(())
    }

    fn set_zero_ahead(&mut self, bytes: u64) {
        self.zero_ahead_bytes = bytes;
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    fn sync_handle(&self) -> Option<Arc<File>> {
        Some(self.file.clone())
    }
}

impl Disk for OsDisk {
    fn offload_blocking(&self) -> bool {
        true
    }

    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn create(&self, path: &Path, exclusive: bool) -> std::io::Result<Box<dyn DiskFile>> {
        let file = if exclusive {
            OpenOptions::new().write(true).create_new(true).open(path)?
        } else {
            File::create(path)?
        };
        Ok(Box::new(OsFile {
            file: Arc::new(file),
            pos: 0,
            len: 0,
            zero_ahead_bytes: 0,
        }))
    }

    fn open_append(&self, path: &Path, at: u64) -> std::io::Result<Box<dyn DiskFile>> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        if at > len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: append position {at} is past the end ({len} bytes)", path.display()),
            ));
        }
        Ok(Box::new(OsFile {
            file: Arc::new(file),
            pos: at,
            len,
            zero_ahead_bytes: 0,
        }))
    }

    fn truncate(&self, path: &Path, len: u64, sync: bool) -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        if sync {
            file.sync_all()?;
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }

    fn lock_dir(&self, dir: &Path) -> Result<Option<File>, WalError> {
        super::writer::lock_dir(dir).map(Some)
    }
}
