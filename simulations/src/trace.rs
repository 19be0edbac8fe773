//! The event trace: one line per delivered message, fault, crash, restart and client operation,
//! hashed as it is written.
//!
//! What it is: a running FNV-1a 64 hash over every line (a fixed hash, so a trace hash means the
//! same on every machine and build) plus the last `tail_lines_max` lines for failure reports.
//! Two runs of one seed must produce the same hash; that is the determinism check.
//!
//! What it is not: a log. Lines are not kept beyond the tail, and nothing reads the wall clock.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

/// Lines kept for a failure report.
pub const TAIL_LINES_MAX: usize = 64;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over `bytes`, continuing from `hash`.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

#[derive(Debug)]
struct TraceState {
    hash: u64,
    lines: u64,
    tail: VecDeque<String>,
    line: String,
    /// Whether to print every line to stderr (`plexus sim --verbose`).
    echo: bool,
}

/// A shared, append-only event trace.
#[derive(Clone, Debug)]
pub struct Trace {
    state: Arc<Mutex<TraceState>>,
    start: tokio::time::Instant,
}

impl Trace {
    /// An empty trace whose timestamps count from now (the runtime's clock).
    pub fn new(echo: bool) -> Self {
        Self {
            state: Arc::new(Mutex::new(TraceState {
                hash: FNV_OFFSET,
                lines: 0,
                tail: VecDeque::with_capacity(TAIL_LINES_MAX),
                line: String::new(),
                echo,
            })),
            start: tokio::time::Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TraceState> {
        // Only ever appended to under the lock; a panicking holder leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Virtual microseconds since the trace started.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Appends one line: the virtual time, then `args`.
    pub fn event(&self, args: std::fmt::Arguments<'_>) {
        let now = self.now_us();
        let mut st = self.lock();
        let mut line = std::mem::take(&mut st.line);
        line.clear();
        let _ = writeln!(line, "{now} {args}");
        st.hash = fnv1a(st.hash, line.as_bytes());
        st.lines += 1;
        if st.echo {
            eprint!("{line}");
        }
        if st.tail.len() == TAIL_LINES_MAX {
            st.tail.pop_front();
        }
        st.tail.push_back(line.trim_end().to_string());
        st.line = line;
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.lock().hash
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lock().lines
    }

    /// The last lines written.
    pub fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }
}
