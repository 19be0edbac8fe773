//! Small deterministic hashing helpers shared by the pipeline.
//!
//! Blocking keys, attribute nodes, term frequencies and token ids are all 64-bit hashes of normalised
//! strings. They must be the same on every node and in every run (replicas rebuild indexes from the same
//! records), so nothing here uses a randomly seeded hasher. Hash maps keyed by such hashes use
//! [`IdHasher`], which only mixes the already-uniform key.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over bytes: stable across platforms and releases, which `std`'s hasher is not.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl Fnv {
    /// A hasher seeded with a small tag, so that equal strings of different kinds hash apart.
    pub fn with_tag(tag: u8) -> Self {
        let mut h = Fnv::default();
        h.bytes(&[tag, 0xff]);
        h
    }

    /// Feeds bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// Feeds a separator that cannot occur in UTF-8 text, so ("ab","c") and ("a","bc") differ.
    pub fn sep(&mut self) -> &mut Self {
        self.bytes(&[0xfe])
    }

    /// The final hash, with an avalanche step so low bits are usable for bucketing.
    pub fn finish(&self) -> u64 {
        mix64(self.0)
    }
}

/// FNV-1a of `bytes`, finalised.
pub fn fnv64(bytes: &[u8]) -> u64 {
    Fnv::default().bytes(bytes).finish()
}

/// The SplitMix64 finaliser: a bijection that spreads every input bit over the output.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hasher for keys that are already hashes: it mixes once instead of running SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix64(self.0 ^ n);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// A map keyed by pre-hashed `u64` values; iteration order is fixed by the insertion sequence.
pub type U64Map<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// An empty [`U64Map`] with room for `n` entries.
pub fn u64_map<V>(n: usize) -> U64Map<V> {
    HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default())
}

/// The number of worker threads for the parallel steps: the machine's cores, at most `THREADS_MAX`.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, THREADS_MAX)
}

/// Most worker threads any step of the pipeline starts.
pub const THREADS_MAX: usize = 16;

/// Runs `f` over `items` split into contiguous chunks on up to [`threads`] scoped threads and returns
/// the per-chunk results in order. Deterministic: the split depends only on the lengths.
pub fn par_chunks<T: Sync, R: Send>(items: &[T], f: impl Fn(usize, &[T]) -> R + Sync) -> Vec<R> {
    let n = threads();
    let chunk = items.len().div_ceil(n).max(1);
    if n == 1 || items.len() < 2 * PAR_ITEMS_MIN {
        return vec![f(0, items)];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| {
                let f = &f;
                s.spawn(move || f(i * chunk, c))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Runs `f` over contiguous mutable chunks of `items` on up to [`threads`] scoped threads; `f` gets each
/// chunk's offset.
pub fn par_chunks_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    let n = threads();
    let chunk = items.len().div_ceil(n).max(1);
    if n == 1 || items.len() < 2 * PAR_ITEMS_MIN {
        f(0, items);
        return;
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, c)| {
                let f = &f;
                s.spawn(move || f(i * chunk, c))
            })
            .collect();
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// Fewest items per thread worth a thread start.
const PAR_ITEMS_MIN: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable_and_separates_fields() {
        // FNV-1a of "a" before finalisation is the published test vector.
        let mut h = Fnv::default();
        h.bytes(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let ab_c = Fnv::default().bytes(b"ab").sep().bytes(b"c").finish();
        let a_bc = Fnv::default().bytes(b"a").sep().bytes(b"bc").finish();
        assert_ne!(ab_c, a_bc);
        assert_ne!(
            Fnv::with_tag(1).bytes(b"x").finish(),
            Fnv::with_tag(2).bytes(b"x").finish()
        );
    }

    #[test]
    fn par_chunks_keeps_order_and_offsets() {
        let items: Vec<u32> = (0..10_000).collect();
        let parts = par_chunks(&items, |start, c| (start, c.iter().map(|&x| u64::from(x)).sum::<u64>()));
        let total: u64 = parts.iter().map(|p| p.1).sum();
        assert_eq!(total, 49_995_000);
        assert_eq!(parts[0].0, 0);
        let mut expect = 0;
        for (start, _) in &parts {
            assert_eq!(*start, expect);
            expect += items.len().div_ceil(parts.len());
        }
    }
}
