//! `SimDisk`: an in-memory disk behind the WAL's `Disk` seam, with crash semantics.
//!
//! What it is: files kept in memory with the length that was last synced, and two name tables:
//! the names as the running node sees them and the names that a directory sync made durable. A
//! crash keeps only durable names and synced bytes (optionally tearing the unsynced tail of one
//! file, keeping a random prefix of it), exactly the guarantees POSIX gives a careful program.
//! `corrupt` flips one byte inside synced data, which the WAL must detect (never apply). A disk
//! can be slow: `write_delay` draws how long each WAL batch takes to become durable (at least
//! `sync_ms_min` on some seeds' disks), and now and then stalls a batch much longer.
//!
//! What it is not: a file system. Directories are implicit (a name's parent), files are only
//! appended, and a truncation is treated as durable at once.
//!
//! Every node incarnation gets its own handle (`SimDisk::handle`); a crash fences the old handle,
//! so tasks of a crashed node that are still winding down can never write to the next one's disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use plexus_raft::wal::{Disk, DiskFile, WalError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Disk fault settings of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskFaults {
    /// Whether a crash may keep a torn prefix of a file's unsynced tail.
    pub torn_writes: bool,
    /// Largest extra delay of one WAL batch, in milliseconds (0: a fast disk).
    pub slow_ms_max: u64,
    /// Largest stall of one WAL batch, in milliseconds (0: the disk never stalls): a batch now
    /// and then waits this long between its write and its fsync, as real disks sometimes do.
    pub stall_ms_max: u64,
    /// One batch in this many stalls (when `stall_ms_max` > 0).
    pub stall_one_in: u32,
    /// Least time any WAL batch takes from its write to its fsync, in milliseconds (a disk
    /// whose every fsync is slow); added to the drawn delay.
    pub sync_ms_min: u64,
}

#[derive(Debug, Default)]
struct FileData {
    data: Vec<u8>,
    /// Bytes that survive a crash.
    synced: usize,
}

#[derive(Debug)]
struct DiskState {
    /// Incarnation whose handle may use the disk; older handles are fenced.
    generation: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    files: BTreeMap<u64, FileData>,
    next_file: u64,
    faults: DiskFaults,
    rng: StdRng,
}

/// One node's simulated disk; survives the node's crashes.
#[derive(Clone, Debug)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

/// What a crash did to a disk, for the trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced bytes dropped over all files.
    pub lost_bytes: u64,
    /// Unsynced bytes kept as a torn tail.
    pub torn_bytes: u64,
    /// Files whose name was never made durable and so vanished.
    pub lost_files: u64,
}

/// Bytes at the end of a segment's synced data that `corrupt` never touches.
const CORRUPT_MARGIN_BYTES: usize = 1024;

fn lock(state: &Mutex<DiskState>) -> MutexGuard<'_, DiskState> {
    // The state stays consistent even if a holder panicked: every change is a single assignment.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn fenced() -> Error {
    Error::other("simulated disk: this node incarnation crashed")
}

fn not_found(path: &Path) -> Error {
    Error::new(ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl SimDisk {
    /// An empty disk whose random choices come from `seed`.
    pub fn new(seed: u64, faults: DiskFaults) -> Self {
        Self {
            state: Arc::new(Mutex::new(DiskState {
                generation: 0,
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                files: BTreeMap::new(),
                next_file: 0,
                faults,
                rng: StdRng::seed_from_u64(seed),
            })),
        }
    }

    /// The handle a new node incarnation uses.
    pub fn handle(&self) -> Arc<dyn Disk> {
        let generation = lock(&self.state).generation;
        Arc::new(DiskHandle {
            state: self.state.clone(),
            generation,
        })
    }

    /// Crashes the disk: fences the current handle and keeps only what was durable.
    pub fn crash(&self) -> CrashReport {
        let mut st = lock(&self.state);
        st.generation += 1;
        let mut report = CrashReport {
            lost_files: st.names.keys().filter(|n| !st.durable_names.contains_key(*n)).count() as u64,
            ..CrashReport::default()
        };
        st.names = st.durable_names.clone();
        let live: Vec<u64> = st.names.values().copied().collect();
        let torn_writes = st.faults.torn_writes;
        let mut tore = false;
        for id in live {
            let tear = torn_writes && !tore && st.rng.gen_bool(0.5);
            let cut = {
                let file = st.files.get(&id).map(|f| (f.synced, f.data.len()));
                let Some((synced, len)) = file else { continue };
                if len > synced && tear {
                    tore = true;
                    let keep = st.rng.gen_range(0..len - synced);
                    report.torn_bytes += keep as u64;
                    synced + keep
                } else {
                    synced
                }
            };
            if let Some(file) = st.files.get_mut(&id) {
                report.lost_bytes += (file.data.len() - cut) as u64;
                file.data.truncate(cut);
                file.synced = cut;
            }
        }
        let keep: std::collections::BTreeSet<u64> = st.names.values().copied().collect();
        st.files.retain(|id, _| keep.contains(id));
        report
    }

    /// Flips one byte in the synced part of a WAL segment, away from its last KiB (damage to the
    /// last record is indistinguishable from a torn write, which the WAL drops by design; the
    /// simulator's records are far smaller than that margin).
    /// Returns the file and offset, or `None` if no segment is long enough.
    pub fn corrupt(&self) -> Option<(PathBuf, usize)> {
        let mut st = lock(&self.state);
        let candidates: Vec<(PathBuf, u64)> = st
            .names
            .iter()
            .filter(|(p, id)| {
                p.extension().is_some_and(|e| e == "log")
                    && st.files.get(id).is_some_and(|f| f.synced > 2 * CORRUPT_MARGIN_BYTES)
            })
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (path, id) = candidates[st.rng.gen_range(0..candidates.len())].clone();
        let synced = st.files.get(&id).map_or(0, |f| f.synced);
        let offset = st.rng.gen_range(0..synced - CORRUPT_MARGIN_BYTES);
        let bit = 1u8 << st.rng.gen_range(0..8);
        let file = st.files.get_mut(&id)?;
        file.data[offset] ^= bit;
        Some((path, offset))
    }

    /// Bytes written under a live name but not yet synced: what a crash now would lose or tear.
    pub fn unsynced_bytes(&self) -> u64 {
        let st = lock(&self.state);
        st.names
            .values()
            .filter_map(|id| st.files.get(id))
            .map(|f| (f.data.len() - f.synced) as u64)
            .sum()
    }

    /// Total bytes stored (for reports).
    pub fn bytes(&self) -> u64 {
        lock(&self.state).files.values().map(|f| f.data.len() as u64).sum()
    }
}

/// The `Disk` one node incarnation sees.
struct DiskHandle {
    state: Arc<Mutex<DiskState>>,
    generation: u64,
}

impl DiskHandle {
    fn live(&self) -> Result<MutexGuard<'_, DiskState>, Error> {
        let st = lock(&self.state);
        if st.generation != self.generation {
            return Err(fenced());
        }
        Ok(st)
    }
}

struct SimFile {
    state: Arc<Mutex<DiskState>>,
    generation: u64,
    id: u64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut FileData) -> T) -> Result<T, Error> {
        let mut st = lock(&self.state);
        if st.generation != self.generation {
            return Err(fenced());
        }
        let file = st
            .files
            .get_mut(&self.id)
            .ok_or_else(|| Error::other("file was removed"))?;
        Ok(f(file))
    }
}

impl DiskFile for SimFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.with(|f| f.data.extend_from_slice(bytes))
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        self.with(|f| f.synced = f.data.len())
    }

    fn sync_all(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

impl Disk for DiskHandle {
    fn create_dir_all(&self, _dir: &Path) -> std::io::Result<()> {
        self.live().map(|_| ())
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let st = self.live()?;
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect())
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let st = self.live()?;
        let id = st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(st.files.get(id).map(|f| f.data.clone()).unwrap_or_default())
    }

    fn create(&self, path: &Path, exclusive: bool) -> std::io::Result<Box<dyn DiskFile>> {
        let mut st = self.live()?;
        if exclusive && st.names.contains_key(path) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let id = st.next_file;
        st.next_file += 1;
        st.files.insert(id, FileData::default());
        st.names.insert(path.to_path_buf(), id);
        Ok(Box::new(SimFile {
            state: self.state.clone(),
            generation: self.generation,
            id,
        }))
    }

    fn open_append(&self, path: &Path, at: u64) -> std::io::Result<Box<dyn DiskFile>> {
        let st = self.live()?;
        let id = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let len = st.files.get(&id).map_or(0, |f| f.data.len() as u64);
        // Simulated files never keep zeros ahead (`set_zero_ahead` is ignored), so their data
        // always ends at their end.
        if at != len {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{}: append position {at} is not the end ({len} bytes)", path.display()),
            ));
        }
        Ok(Box::new(SimFile {
            state: self.state.clone(),
            generation: self.generation,
            id,
        }))
    }

    fn truncate(&self, path: &Path, len: u64, _sync: bool) -> std::io::Result<()> {
        let mut st = self.live()?;
        let id = *st.names.get(path).ok_or_else(|| not_found(path))?;
        if let Some(f) = st.files.get_mut(&id) {
            let len = (len as usize).min(f.data.len());
            f.data.truncate(len);
            f.synced = f.synced.min(len);
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        let mut st = self.live()?;
        st.names.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let mut st = self.live()?;
        let id = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let mut st = self.live()?;
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        let now: Vec<(PathBuf, u64)> = st
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        st.durable_names.extend(now);
        Ok(())
    }

    fn lock_dir(&self, _dir: &Path) -> Result<Option<File>, WalError> {
        // One process, one incarnation at a time: fencing replaces the lock.
        Ok(None)
    }

    fn write_delay(&self, _bytes: usize) -> Duration {
        let mut st = lock(&self.state);
        let floor = st.faults.sync_ms_min;
        let (stall_max, stall_one_in) = (st.faults.stall_ms_max, st.faults.stall_one_in.max(1));
        if stall_max > 0 && st.rng.gen_range(0..stall_one_in) == 0 {
            return Duration::from_millis(floor + st.rng.gen_range(0..=stall_max));
        }
        let max = st.faults.slow_ms_max;
        if max == 0 {
            return Duration::from_millis(floor);
        }
        Duration::from_millis(floor + st.rng.gen_range(0..=max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_bytes_and_durable_names_only() {
        let disk = SimDisk::new(1, DiskFaults::default());
        let h = disk.handle();
        let dir = Path::new("/n/wal");
        let mut a = h.create(&dir.join("a.log"), true).unwrap();
        a.append(b"hello").unwrap();
        a.sync_data().unwrap();
        a.append(b" world").unwrap();
        h.sync_dir(dir).unwrap();
        let mut b = h.create(&dir.join("b.log"), true).unwrap();
        b.append(b"gone").unwrap();
        b.sync_data().unwrap();
        assert_eq!(disk.unsynced_bytes(), 6);
        let report = disk.crash();
        assert_eq!(
            report,
            CrashReport {
                lost_bytes: 6,
                torn_bytes: 0,
                lost_files: 1
            }
        );
        assert!(a.append(b"x").is_err(), "the crashed incarnation is fenced");
        let h2 = disk.handle();
        assert_eq!(h2.read(&dir.join("a.log")).unwrap(), b"hello");
        assert_eq!(h2.list(dir).unwrap(), vec!["a.log".to_string()]);
        assert_eq!(h2.read(&dir.join("b.log")).unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn rename_is_durable_only_after_a_directory_sync() {
        let disk = SimDisk::new(2, DiskFaults::default());
        let h = disk.handle();
        let dir = Path::new("/n/snapshots");
        let mut f = h.create(&dir.join("s.tmp"), false).unwrap();
        f.append(b"v1").unwrap();
        f.sync_all().unwrap();
        h.rename(&dir.join("s.tmp"), &dir.join("s.snap")).unwrap();
        h.sync_dir(dir).unwrap();
        let mut g = h.create(&dir.join("s.tmp"), false).unwrap();
        g.append(b"v2").unwrap();
        g.sync_all().unwrap();
        h.rename(&dir.join("s.tmp"), &dir.join("s.snap")).unwrap();
        disk.crash();
        assert_eq!(disk.handle().read(&dir.join("s.snap")).unwrap(), b"v1");
    }
}
