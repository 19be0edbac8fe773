//! Prometheus metrics: what a node counts and how it is written out.
//!
//! What it is: the request counters and latency histograms the gateway keeps
//! (`RequestMetrics`), a point-in-time `Snapshot` of everything else a node already counts
//! (replicas, WAL, peer links, scoring, the process), and `render`, which writes a snapshot in
//! Prometheus's text exposition format (version 0.0.4). `metrics_http.rs` serves it.
//!
//! What it is not: no push, no metrics library, and no label that grows with the data: the
//! labels are op kinds, outcomes and shard ids, so a node's series are bounded by its shard count.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use plexus_proto::{ErrorReply, Op, ReplicaStatus, Response};
use plexus_raft::wal::FSYNC_BUCKETS_US;

/// Kinds of client request, one label value each: the protocol's own list.
pub const OP_KINDS: [&str; Op::KINDS.len()] = Op::KINDS;

/// Outcomes of a client request, one label value each: `ok` or the error's kind.
pub const OUTCOMES: [&str; 11] = [
    "ok",
    "not_leader",
    "wrong_shard",
    "shard_unavailable",
    "unauthorized",
    "bad_request",
    "not_found",
    "busy",
    "timeout",
    "stale_session",
    "internal",
];

/// Upper bounds of the request latency histogram's buckets, in microseconds (`+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// The index of `op`'s kind in `OP_KINDS`.
pub fn op_kind(op: &Op) -> usize {
    op.kind()
}

/// The index of `resp`'s outcome in `OUTCOMES`.
pub fn outcome(resp: &Response) -> usize {
    match resp {
        Ok(_) => 0,
        Err(e) => match e {
            ErrorReply::NotLeader { .. } => 1,
            ErrorReply::WrongShard { .. } => 2,
            ErrorReply::ShardUnavailable(_) => 3,
            ErrorReply::Unauthorized(_) => 4,
            ErrorReply::BadRequest(_) => 5,
            ErrorReply::NotFound(_) => 6,
            ErrorReply::Busy(_) => 7,
            ErrorReply::Timeout(_) => 8,
            ErrorReply::StaleSession { .. } => 9,
            ErrorReply::Internal(_) => 10,
        },
    }
}

/// One op kind's latency histogram (every outcome counted).
#[derive(Default)]
struct Histogram {
    /// Per bucket of `LATENCY_BUCKETS_US` plus `+Inf`, not cumulative (cumulated when rendered).
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// Request counters and latency histograms, updated by the gateway for every request it answers,
/// admitted or not. Relaxed atomics: a scrape may see one request's count before its latency.
#[derive(Default)]
pub struct RequestMetrics {
    /// `[op kind][outcome]`.
    counts: [[AtomicU64; OUTCOMES.len()]; OP_KINDS.len()],
    latency: [Histogram; OP_KINDS.len()],
}

impl RequestMetrics {
    /// Counts one answered request of kind `kind` (`op_kind`) that took `took`.
    pub fn record(&self, kind: usize, outcome: usize, took: Duration) {
        self.counts[kind][outcome].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&le| us <= le)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        let h = &self.latency[kind];
        h.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        h.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The current values, for `render`.
    pub fn read(&self) -> RequestCounts {
        RequestCounts {
            counts: self
                .counts
                .each_ref()
                .map(|row| row.each_ref().map(|c| c.load(Ordering::Relaxed))),
            buckets: self
                .latency
                .each_ref()
                .map(|h| h.buckets.each_ref().map(|b| b.load(Ordering::Relaxed))),
            sum_us: self.latency.each_ref().map(|h| h.sum_us.load(Ordering::Relaxed)),
        }
    }
}

/// A copy of `RequestMetrics`' values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `[op kind][outcome]`: requests answered.
    pub counts: [[u64; OUTCOMES.len()]; OP_KINDS.len()],
    /// `[op kind][bucket]`: requests per latency bucket, not cumulative; the last is `+Inf`.
    pub buckets: [[u64; LATENCY_BUCKETS_US.len() + 1]; OP_KINDS.len()],
    /// `[op kind]`: summed latency in microseconds.
    pub sum_us: [u64; OP_KINDS.len()],
}

/// The process's own figures, read from `/proc/self` (`None` where it cannot be read).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, in bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
}

impl ProcessFigures {
    /// Reads this process's figures; a field is `None` where `/proc` does not answer (not Linux).
    pub fn read() -> Self {
        // SAFETY: sysconf only reads a configuration value.
        let (tick, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let cpu_seconds = stat.as_deref().and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (utime, stime) = (f.get(11)?.parse::<u64>().ok()?, f.get(12)?.parse::<u64>().ok()?);
            (tick > 0).then(|| (utime + stime) as f64 / tick as f64)
        });
        let resident_bytes = std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| {
            let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
            (page > 0).then(|| pages * page as u64)
        });
        let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        Self {
            cpu_seconds,
            resident_bytes,
            open_fds,
        }
    }
}

/// Everything one scrape writes out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// This node's id.
    pub node_id: u64,
    /// Every hosted replica's Raft state (`ReplicaStatus::shard` is `u32::MAX` for the meta group).
    pub replicas: Vec<ReplicaStatus>,
    /// Quiescence of idle groups.
    pub quiet: crate::quiesce::QuietStats,
    /// Requests answered so far.
    pub requests: RequestCounts,
    /// Requests admitted and not yet answered.
    pub requests_in_flight: u64,
    /// Client connections open.
    pub client_connections: u64,
    /// WAL figures.
    pub wal: plexus_raft::wal::WalStats,
    /// Peer-link figures.
    pub peers: plexus_net::PeerStats,
    /// Scoring `(batches, requests)`, when the node runs a scoring pool.
    pub scoring: Option<(u64, u64)>,
    /// The workloads' counters.
    pub workloads: Vec<crate::workload::Counter>,
    /// The process.
    pub process: ProcessFigures,
}

/// The shard label's value: the shard id, or `meta` for the meta group.
fn shard_label(shard: u32) -> String {
    if shard == u32::MAX {
        "meta".to_string()
    } else {
        shard.to_string()
    }
}

/// Writes `# HELP` and `# TYPE` for one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One family with a single unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A duration in microseconds as seconds, exactly (Prometheus's base unit).
fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// Writes one histogram's samples: `counts` per bucket of `bounds_us` (not cumulative, the last
/// one `+Inf`) and the summed microseconds. `labels` is empty or ends with a comma.
fn histogram(out: &mut String, name: &str, labels: &str, bounds_us: &[u64], counts: &[u64], sum_us: u64) {
    let mut cumulative = 0u64;
    for (b, count) in counts.iter().enumerate() {
        cumulative += count;
        let le = bounds_us.get(b).map_or_else(|| "+Inf".to_string(), |&us| seconds(us));
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
    }
    let labels = labels.trim_end_matches(',');
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", seconds(sum_us));
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

/// Writes `snap` in Prometheus's text exposition format 0.0.4. Families are in a fixed order and
/// samples within a family in label order, so equal snapshots render to equal bytes.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::with_capacity(8 * 1024 + snap.replicas.len() * 200);
    let o = &mut out;
    family(o, "plexus_node_info", "gauge", "The node's id (always 1).");
    let _ = writeln!(o, "plexus_node_info{{node=\"{}\"}} 1", snap.node_id);

    family(
        o,
        "plexus_requests_total",
        "counter",
        "Client requests answered, by op kind and outcome.",
    );
    for (k, kind) in OP_KINDS.iter().enumerate() {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let n = snap.requests.counts[k][i];
            if n > 0 || i == 0 {
                let _ = writeln!(o, "plexus_requests_total{{op=\"{kind}\",outcome=\"{outcome}\"}} {n}");
            }
        }
    }
    family(
        o,
        "plexus_request_duration_seconds",
        "histogram",
        "Time from a request's arrival at the gateway to its answer, by op kind.",
    );
    for (k, kind) in OP_KINDS.iter().enumerate() {
        histogram(
            o,
            "plexus_request_duration_seconds",
            &format!("op=\"{kind}\","),
            &LATENCY_BUCKETS_US,
            &snap.requests.buckets[k],
            snap.requests.sum_us[k],
        );
    }
    single(
        o,
        "plexus_requests_in_flight",
        "gauge",
        "Client requests admitted and not yet answered.",
        snap.requests_in_flight,
    );
    single(
        o,
        "plexus_client_connections",
        "gauge",
        "Client connections open.",
        snap.client_connections,
    );

    let mut replicas: Vec<&ReplicaStatus> = snap.replicas.iter().collect();
    replicas.sort_by_key(|r| r.shard);
    family(
        o,
        "plexus_shard_leader",
        "gauge",
        "1 if this node leads the shard's Raft group, else 0.",
    );
    for r in &replicas {
        let led = u8::from(r.leader == Some(snap.node_id));
        let _ = writeln!(o, "plexus_shard_leader{{shard=\"{}\"}} {led}", shard_label(r.shard));
    }
    family(
        o,
        "plexus_shard_has_leader",
        "gauge",
        "1 if this node knows a leader of the shard's group, else 0.",
    );
    for r in &replicas {
        let known = u8::from(r.leader.is_some());
        let _ = writeln!(
            o,
            "plexus_shard_has_leader{{shard=\"{}\"}} {known}",
            shard_label(r.shard)
        );
    }
    family(
        o,
        "plexus_shard_term",
        "gauge",
        "The Raft term this node's replica of the shard is in.",
    );
    for r in &replicas {
        let _ = writeln!(o, "plexus_shard_term{{shard=\"{}\"}} {}", shard_label(r.shard), r.term);
    }
    family(
        o,
        "plexus_shard_applied_index",
        "gauge",
        "The last log index this node's replica of the shard applied.",
    );
    for r in &replicas {
        let _ = writeln!(
            o,
            "plexus_shard_applied_index{{shard=\"{}\"}} {}",
            shard_label(r.shard),
            r.applied_index
        );
    }
    single(
        o,
        "plexus_quiet_groups_leading",
        "gauge",
        "Groups this node leads that are quiet: idle, no heartbeats, vouched for by node pings.",
        snap.quiet.leading,
    );
    single(
        o,
        "plexus_quiet_groups_following",
        "gauge",
        "Groups this node follows whose election timer is off while their leader's node vouches for them.",
        snap.quiet.following,
    );
    single(
        o,
        "plexus_quiet_transitions_total",
        "counter",
        "Times a group this node leads went quiet.",
        snap.quiet.quieted_total,
    );

    let w = &snap.wal;
    single(
        o,
        "plexus_wal_batches_total",
        "counter",
        "WAL batch records written.",
        w.batches,
    );
    single(
        o,
        "plexus_wal_ops_total",
        "counter",
        "Log operations written to the WAL.",
        w.ops,
    );
    single(
        o,
        "plexus_wal_fsyncs_total",
        "counter",
        "fdatasync calls on WAL segments.",
        w.fsyncs,
    );
    family(
        o,
        "plexus_wal_fsync_duration_seconds",
        "histogram",
        "Time one fdatasync of a WAL segment took.",
    );
    histogram(
        o,
        "plexus_wal_fsync_duration_seconds",
        "",
        &FSYNC_BUCKETS_US,
        &w.fsync_buckets,
        w.fsync_us,
    );
    single(
        o,
        "plexus_wal_written_bytes_total",
        "counter",
        "Bytes written to the WAL, headers included.",
        w.bytes,
    );
    single(
        o,
        "plexus_wal_segments_created_total",
        "counter",
        "WAL segments started by rolling.",
        w.segments_created,
    );
    single(
        o,
        "plexus_wal_segments_deleted_total",
        "counter",
        "WAL segments deleted after purges.",
        w.segments_deleted,
    );
    single(
        o,
        "plexus_wal_queued_requests",
        "gauge",
        "Requests waiting in the WAL's queue.",
        w.queued_requests,
    );

    let p = &snap.peers;
    single(
        o,
        "plexus_peer_messages_sent_total",
        "counter",
        "Messages sent to peers in batches.",
        p.msgs_sent,
    );
    single(
        o,
        "plexus_peer_batches_sent_total",
        "counter",
        "Message batches sent to peers.",
        p.batches_sent,
    );
    single(
        o,
        "plexus_peer_batches_failed_total",
        "counter",
        "Peer batches that failed after being sent.",
        p.batches_failed,
    );

    if let Some((batches, requests)) = snap.scoring {
        single(
            o,
            "plexus_scoring_batches_total",
            "counter",
            "Kernel batches the scoring pool ran.",
            batches,
        );
        single(
            o,
            "plexus_scoring_requests_total",
            "counter",
            "Score requests those batches answered.",
            requests,
        );
    }

    let mut counters = snap.workloads.clone();
    counters.sort_unstable();
    for (name, help, value) in counters {
        single(o, name, "counter", help, value);
    }

    let pr = &snap.process;
    if let Some(cpu) = pr.cpu_seconds {
        single(
            o,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            cpu,
        );
    }
    if let Some(rss) = pr.resident_bytes {
        single(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
    }
    if let Some(fds) = pr.open_fds {
        single(o, "process_open_fds", "gauge", "Open file descriptors.", fds);
    }
    out
}

/// The value of the sample named exactly `series` (metric name and labels as `render` writes
/// them) in rendered metrics text, if present: for tests and tools that read a scrape back.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let m = RequestMetrics::default();
        m.record(0, 0, Duration::from_micros(100));
        m.record(0, 0, Duration::from_micros(3_000));
        m.record(0, 1, Duration::from_micros(600));
        m.record(1, 7, Duration::from_secs(6));
        Snapshot {
            node_id: 2,
            replicas: vec![
                ReplicaStatus {
                    shard: u32::MAX,
                    leader: Some(1),
                    term: 2,
                    replicas: vec![1, 2, 3],
                    applied_index: 4,
                },
                ReplicaStatus {
                    shard: 1,
                    leader: Some(2),
                    term: 3,
                    replicas: vec![1, 2, 3],
                    applied_index: 7,
                },
                ReplicaStatus {
                    shard: 0,
                    leader: None,
                    term: 1,
                    replicas: vec![1, 2, 3],
                    applied_index: 0,
                },
            ],
            quiet: crate::quiesce::QuietStats {
                leading: 40,
                following: 41,
                quieted_total: 42,
            },
            requests: m.read(),
            requests_in_flight: 5,
            client_connections: 6,
            wal: plexus_raft::wal::WalStats {
                batches: 10,
                requests: 11,
                ops: 12,
                fsyncs: 13,
                bytes: 14,
                segments_created: 15,
                segments_deleted: 16,
                queued_requests: 17,
                fsync_buckets: [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                fsync_us: 2_000_350,
            },
            peers: plexus_net::PeerStats {
                msgs_sent: 20,
                batches_sent: 21,
                batches_failed: 22,
            },
            scoring: Some((30, 31)),
            workloads: vec![("plexus_z_total", "Last.", 2), ("plexus_a_total", "First.", 1)],
            process: ProcessFigures {
                cpu_seconds: Some(1.5),
                resident_bytes: Some(4096),
                open_fds: Some(9),
            },
        }
    }

    #[test]
    fn latencies_land_in_the_first_bucket_that_holds_them() {
        let m = RequestMetrics::default();
        for us in [0, 250, 251, 5_000_000, 5_000_001] {
            m.record(2, 0, Duration::from_micros(us));
        }
        let c = m.read();
        let mut want = [0u64; LATENCY_BUCKETS_US.len() + 1];
        want[0] = 2; // 0 and 250 (bounds are inclusive, as Prometheus's `le` says)
        want[1] = 1; // 251
        want[LATENCY_BUCKETS_US.len() - 1] = 1; // exactly 5 s
        want[LATENCY_BUCKETS_US.len()] = 1; // +Inf
        assert_eq!(c.buckets[2], want);
        assert_eq!(c.sum_us[2], 250 + 251 + 5_000_000 + 5_000_001);
        assert_eq!(c.counts[2][0], 5);
        assert_eq!(c.counts[0], [0; OUTCOMES.len()], "other op kinds untouched");
    }

    #[test]
    fn every_error_kind_has_its_own_outcome_label() {
        let errors = [
            ErrorReply::NotLeader {
                shard: 0,
                leader: None,
                leader_addr: None,
            },
            ErrorReply::WrongShard { got: 0, expected: 1 },
            ErrorReply::ShardUnavailable(0),
            ErrorReply::Unauthorized(String::new()),
            ErrorReply::BadRequest(String::new()),
            ErrorReply::NotFound(String::new()),
            ErrorReply::Busy(String::new()),
            ErrorReply::Timeout(String::new()),
            ErrorReply::StaleSession { client_id: 0, seq: 0 },
            ErrorReply::Internal(String::new()),
        ];
        let got: Vec<&str> = errors.into_iter().map(|e| OUTCOMES[outcome(&Err(e))]).collect();
        assert_eq!(got, OUTCOMES[1..].to_vec());
    }

    #[test]
    fn a_snapshot_renders_to_exactly_this_text() {
        let text = render(&snapshot());
        // `PLEXUS_BLESS=1 cargo test -p plexus-actors metrics` rewrites the expected text after a
        // deliberate change; review its diff before committing it.
        if std::env::var_os("PLEXUS_BLESS").is_some() {
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics_golden.txt"), &text).unwrap();
            return;
        }
        let want = include_str!("metrics_golden.txt");
        if text != want {
            for (i, (a, b)) in text.lines().zip(want.lines()).enumerate() {
                assert_eq!(a, b, "first difference at line {}", i + 1);
            }
            assert_eq!(text.lines().count(), want.lines().count(), "line counts differ");
        }
        assert_eq!(text, want);
    }
}
