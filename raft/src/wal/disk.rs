//! The disk seam: every file the WAL and the snapshot store touch goes through `Disk`.
//!
//! What it is: a small set of file and directory calls (list, read, create, append, sync,
//! truncate, rename, remove, directory sync) and `OsDisk`, which does exactly what the WAL did
//! before the seam existed (std::fs, fdatasync, flock). The simulator implements `Disk` with
//! in-memory files that remember what was synced, so a simulated crash keeps only durable bytes.
//!
//! What it is not: a general filesystem abstraction. It offers only what the WAL needs: files are
//! written by appending (never at an offset), and a directory is flat.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
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
    /// Opens an existing `path` for appending and returns it with its length in bytes.
    fn open_append(&self, path: &Path) -> std::io::Result<(Box<dyn DiskFile>, u64)>;
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
}

/// The operating system's file system: what the WAL always did.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsDisk;

struct OsFile {
    file: File,
}

impl DiskFile for OsFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

impl Disk for OsDisk {
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
        Ok(Box::new(OsFile { file }))
    }

    fn open_append(&self, path: &Path) -> std::io::Result<(Box<dyn DiskFile>, u64)> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        Ok((Box::new(OsFile { file }), size))
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
