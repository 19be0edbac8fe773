//! Snapshot files: one durable, checksummed file per Raft group in `<data_dir>/snapshots/`.
//!
//! What it is: `save` writes `group-<8 hex>.snap` atomically (temporary file, fsync, rename,
//! directory fsync), so a crash leaves either the old snapshot or the new one. `load` verifies
//! the checksum and returns `WalError::Corrupt` on any damage; it never silently ignores a bad
//! file. What it is not: it does not interpret `meta` or `data` (openraft's snapshot meta and the
//! state machine image are opaque bytes), does not stream, and keeps only the latest snapshot.
//!
//! File format: `[8 bytes magic "PXSNAP01"][u64 LE meta_len][u64 LE data_len]
//! [u32 LE crc32c(meta_len, data_len, meta, data)][meta][data]`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::disk::{Disk, OsDisk};
use super::{sync_dir, WalError};

/// First bytes of every snapshot file (the last two are the format version).
const MAGIC: &[u8; 8] = b"PXSNAP01";
/// Bytes before `meta`: magic, two lengths and the checksum.
const HEADER_BYTES: usize = 8 + 8 + 8 + 4;
/// Marker in the name of a temporary file being written.
const TMP_MARKER: &str = ".snap.tmp";

/// A snapshot as stored: `(meta, data)`.
pub type SnapshotBytes = (Vec<u8>, Vec<u8>);

/// The snapshot files of every group on a node.
pub struct SnapshotStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// Makes temporary names unique so concurrent saves never share a file.
    tmp_counter: AtomicU64,
}

impl SnapshotStore {
    /// Opens (creating if needed) the snapshot directory and removes temporary files that a crash
    /// left behind (they were never renamed, so nothing refers to them).
    pub fn open(dir: &Path) -> Result<Self, WalError> {
        Self::open_with(dir, Arc::new(OsDisk))
    }

    /// `open` on `disk` (the simulator's seam).
    pub fn open_with(dir: &Path, disk: Arc<dyn Disk>) -> Result<Self, WalError> {
        disk.create_dir_all(dir)
            .map_err(|e| WalError::io("create dir", dir, e))?;
        let mut names = disk.list(dir).map_err(|e| WalError::io("list dir", dir, e))?;
        // Listing order is the file system's; removing in name order keeps the sequence of calls
        // the same on every run (which the simulator's trace relies on).
        names.sort();
        let mut removed = false;
        for name in names {
            if name.contains(TMP_MARKER) {
                let path = dir.join(&name);
                disk.remove(&path)
                    .map_err(|e| WalError::io("remove temporary snapshot", &path, e))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(disk.as_ref(), dir)?;
        }
        Ok(Self {
            disk,
            dir: dir.to_path_buf(),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// Whether saving may run on a blocking thread rather than the runtime
    /// (`Disk::offload_blocking`).
    pub fn offload_blocking(&self) -> bool {
        self.disk.offload_blocking()
    }

    /// Durably replaces `group`'s snapshot with `meta` and `data`.
    pub fn save(&self, group: u32, meta: &[u8], data: &[u8]) -> Result<(), WalError> {
        let path = self.path(group);
        let tmp_id = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("group-{group:08x}{TMP_MARKER}-{tmp_id}"));
        let header = header(meta, data);
        let written = self.disk.create(&tmp, false).and_then(|mut file| {
            file.append(&header)?;
            file.append(meta)?;
            file.append(data)?;
            file.sync_all()
        });
        if let Err(e) = written {
            // Best effort: a leftover temporary file is also removed at the next open.
            let _ = self.disk.remove(&tmp);
            return Err(WalError::io("write snapshot", &tmp, e));
        }
        self.disk
            .rename(&tmp, &path)
            .map_err(|e| WalError::io("rename snapshot", &path, e))?;
        sync_dir(self.disk.as_ref(), &self.dir)
    }

    /// `group`'s latest snapshot as `(meta, data)`, or `None` if it has none.
    pub fn load(&self, group: u32) -> Result<Option<SnapshotBytes>, WalError> {
        let path = self.path(group);
        let bytes = match self.disk.read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io("read snapshot", &path, e)),
        };
        let corrupt = |offset: u64, reason: String| WalError::Corrupt {
            segment: path.clone(),
            offset,
            reason,
        };
        if bytes.len() < HEADER_BYTES {
            return Err(corrupt(
                0,
                format!("file of {} bytes is shorter than the header", bytes.len()),
            ));
        }
        if &bytes[0..8] != MAGIC {
            return Err(corrupt(0, "bad magic".into()));
        }
        let meta_len = u64_at(&bytes, 8);
        let data_len = u64_at(&bytes, 16);
        let crc = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        let expected = meta_len
            .checked_add(data_len)
            .and_then(|body| body.checked_add(HEADER_BYTES as u64));
        if expected != Some(bytes.len() as u64) {
            return Err(corrupt(
                8,
                format!(
                    "lengths {meta_len} + {data_len} do not match the file size {}",
                    bytes.len()
                ),
            ));
        }
        let body = &bytes[HEADER_BYTES..];
        let actual = crc32c::crc32c_append(crc32c::crc32c(&bytes[8..24]), body);
        if actual != crc {
            return Err(corrupt(24, "checksum mismatch".into()));
        }
        // The lengths were just checked against the file size, so both fit in memory.
        let (meta, data) = body.split_at(meta_len as usize);
        Ok(Some((meta.to_vec(), data.to_vec())))
    }

    fn path(&self, group: u32) -> PathBuf {
        self.dir.join(format!("group-{group:08x}.snap"))
    }
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The file header for `meta` and `data`.
fn header(meta: &[u8], data: &[u8]) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&(meta.len() as u64).to_le_bytes());
    header[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&header[8..24]), meta), data);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The little-endian `u64` at `at` (the caller checked the length).
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.load(3).unwrap(), None);
        store.save(3, b"meta-1", b"data-1").unwrap();
        store.save(4, b"", b"").unwrap();
        store.save(3, b"meta-2", &[7u8; 10_000]).unwrap();
        assert_eq!(store.load(3).unwrap(), Some((b"meta-2".to_vec(), vec![7u8; 10_000])));
        assert_eq!(store.load(4).unwrap(), Some((Vec::new(), Vec::new())));
        let reopened = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(reopened.load(3).unwrap(), Some((b"meta-2".to_vec(), vec![7u8; 10_000])));
    }

    #[test]
    fn every_flipped_byte_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        store.save(9, b"mm", b"dddd").unwrap();
        let path = dir.path().join("group-00000009.snap");
        let good = std::fs::read(&path).unwrap();
        assert_eq!(good.len(), HEADER_BYTES + 6);
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            match store.load(9) {
                Err(WalError::Corrupt { .. }) => {}
                other => panic!("flip at {at}: expected Corrupt, got {other:?}"),
            }
        }
        for len in 0..good.len() {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(matches!(store.load(9), Err(WalError::Corrupt { .. })), "cut at {len}");
        }
    }

    #[test]
    fn open_removes_leftover_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("group-00000001.snap.tmp-0"), b"half").unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.load(1).unwrap(), None);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, Vec::<String>::new());
    }
}
