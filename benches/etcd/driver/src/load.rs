//! The measured put loops and the readiness probe that precedes them.
//!
//! This module only generates load and records latencies; it does not format
//! the report (see `main.rs`) and it does not manage etcd processes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::KvClient;
use hdrhistogram::Histogram;

use crate::DriverError;

/// Largest latency the histogram tracks, in microseconds (60 s, as `plexus bench`);
/// slower puts are clamped to it rather than dropped.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits the histogram keeps, as `plexus bench`.
const LATENCY_SIGFIGS: u8 = 3;
/// Pause between readiness probes, in milliseconds.
const READY_RETRY_MS: u64 = 200;
/// Key the readiness probe writes; outside the `owner/` range the load uses.
const READY_KEY: &str = "bench/ready";

/// What to run: how many loops, for how long, over which keys and values.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Put loops running at once.
    pub concurrency: usize,
    /// Time the loops keep starting new puts.
    pub duration: Duration,
    /// Distinct owners the keys are spread over.
    pub owners: u64,
    /// Size of every value, in bytes.
    pub value_bytes: usize,
}

/// What the loops measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Latencies of the successful puts, in microseconds.
    pub hist: Histogram<u64>,
    /// Puts that returned an error (including per-request timeouts).
    pub errors: u64,
    /// Wall time from the start of the loops until the last one finished.
    pub elapsed: Duration,
}

/// A latency histogram with the same bounds as `plexus bench`, so percentiles compare.
pub fn new_hist() -> Result<Histogram<u64>, DriverError> {
    Ok(Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIGS)?)
}

/// The key of the `seq`-th put overall, for `owner`.
pub fn key_for(owner: u64, seq: u64) -> String {
    format!("owner/{owner}/{seq}")
}

/// SplitMix64: a tiny, well-mixed generator that is plenty for picking owners and
/// keeps the driver free of a `rand` dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`; equal seeds give equal sequences.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound`; `bound` must be non-zero (callers validate `owners`).
    /// The modulo bias is below 2^-50 for the bounds used here, far under noise.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// Puts a probe key through `kv` until one succeeds or `timeout` passes. A member
/// answers puts only once it has joined the cluster and a leader exists, so this is
/// the readiness that matters for the measurement.
pub async fn wait_ready(endpoint: &str, mut kv: KvClient, timeout: Duration) -> Result<(), DriverError> {
    let start = Instant::now();
    loop {
        let last_error = match kv.put(READY_KEY, Vec::new(), None).await {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(DriverError::NotReady {
                endpoint: endpoint.to_string(),
                waited_secs: timeout.as_secs(),
                last_error,
            });
        }
        tokio::time::sleep(Duration::from_millis(READY_RETRY_MS)).await;
    }
}

/// Runs `spec.concurrency` put loops, worker `w` on `kvs[w % kvs.len()]`, each
/// starting puts until `spec.duration` has passed, and merges their histograms.
/// `kvs` must not be empty (the command line requires at least one endpoint).
pub async fn run_load(kvs: Vec<KvClient>, spec: &LoadSpec) -> Result<LoadResult, DriverError> {
    if kvs.is_empty() {
        return Err(DriverError::BadArgs("no endpoints".into()));
    }
    let seq = Arc::new(AtomicU64::new(0));
    let value = vec![b'x'; spec.value_bytes];
    let start = Instant::now();
    let deadline = start + spec.duration;
    let mut tasks = Vec::with_capacity(spec.concurrency);
    for worker in 0..spec.concurrency {
        let mut kv = kvs[worker % kvs.len()].clone();
        let (seq, value, owners) = (seq.clone(), value.clone(), spec.owners);
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(worker as u64);
            let mut hist = new_hist()?;
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let key = key_for(rng.below(owners), seq.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                match kv.put(key, value.clone(), None).await {
                    Ok(_) => hist.saturating_record(t.elapsed().as_micros().max(1) as u64),
                    Err(_) => errors += 1,
                }
            }
            Ok::<_, DriverError>((hist, errors))
        }));
    }
    let mut hist = new_hist()?;
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await??;
        hist.add(&h)?;
        errors += e;
    }
    Ok(LoadResult {
        hist,
        errors,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spread_by_owner_then_sequence() {
        assert_eq!(key_for(0, 0), "owner/0/0");
        assert_eq!(key_for(999, 123_456), "owner/999/123456");
    }

    #[test]
    fn splitmix_matches_reference_sequence() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_owner() {
        let mut rng = SplitMix64::new(7);
        let mut seen = [false; 10];
        for _ in 0..1_000 {
            let v = rng.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert_eq!(seen, [true; 10]);
    }

    #[test]
    fn histogram_clamps_instead_of_dropping() {
        let mut h = new_hist().expect("fixed bounds are valid");
        h.saturating_record(LATENCY_US_MAX * 10);
        assert_eq!(h.len(), 1);
        assert!(h.max() >= LATENCY_US_MAX);
    }
}
