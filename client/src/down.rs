//! Which nodes failed at the transport level, and for how long to pass them over.
//!
//! A node that refused, dropped or did not answer an attempt is passed over wherever another
//! replica can be asked instead. A node that keeps failing is passed over for longer each time
//! (doubling from `NODE_DOWN_MS` up to `NODE_DOWN_MS_MAX`): a node that has stopped would
//! otherwise be tried again every `NODE_DOWN_MS`, and each try of a stopped node can cost a
//! whole attempt timeout (a QUIC dial to a closed port is not refused, it goes unanswered). Any
//! answer from the node, even an error of its own, clears its record.
//!
//! Only a failure after a pass-over period has ended (a try of the node once it may be back)
//! doubles the next one. Failures while a period runs are attempts that were already in flight
//! when the node went away, or that raced the first failure: one outage of a node with many
//! requests in flight is one strike, not one per request. Counting each had one crash pass a
//! node over for the full 16 s, so a client ignored every redirect to it long after it had
//! restarted and been elected leader again.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// How long a node is passed over after its first transport failure, in milliseconds.
pub const NODE_DOWN_MS: u64 = 1_000;
/// The longest a node is passed over after repeated failures, in milliseconds.
pub const NODE_DOWN_MS_MAX: u64 = 16_000;

/// One node's record: passed over until `until`, after `strikes` failures in a row.
#[derive(Debug, Clone, Copy)]
struct Mark {
    until: Instant,
    strikes: u32,
}

/// The nodes that failed lately, at most `marks_max` of them.
#[derive(Debug)]
pub struct DownMarks {
    marks: BTreeMap<String, Mark>,
    marks_max: usize,
}

impl DownMarks {
    /// An empty table that holds at most `marks_max` nodes.
    pub fn new(marks_max: usize) -> Self {
        Self {
            marks: BTreeMap::new(),
            marks_max,
        }
    }

    /// Notes a transport failure of `addr` at `now`. A failure while the node's pass-over period
    /// is running changes nothing (the same outage); one within `NODE_DOWN_MS_MAX` after the
    /// period ended doubles the period. Records idle that long are forgotten.
    pub fn mark(&mut self, addr: &str, now: Instant) {
        let forget_after = Duration::from_millis(NODE_DOWN_MS_MAX);
        self.marks.retain(|_, m| m.until + forget_after > now);
        if self.is_down(addr, now) {
            return;
        }
        let strikes = self.marks.get(addr).map_or(1, |m| m.strikes.saturating_add(1));
        if strikes == 1 && self.marks.len() >= self.marks_max {
            return;
        }
        let period_ms = NODE_DOWN_MS
            .saturating_mul(1u64 << (strikes - 1).min(16))
            .min(NODE_DOWN_MS_MAX);
        let until = now + Duration::from_millis(period_ms);
        self.marks.insert(addr.to_string(), Mark { until, strikes });
    }

    /// Whether `addr` is being passed over at `now`.
    pub fn is_down(&self, addr: &str, now: Instant) -> bool {
        self.marks.get(addr).is_some_and(|m| m.until > now)
    }

    /// Forgets `addr`'s failures: it answered.
    pub fn clear(&mut self, addr: &str) {
        self.marks.remove(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "10.0.0.1:7400";

    #[test]
    fn repeated_failures_double_the_pass_over_up_to_the_cap() {
        let mut marks = DownMarks::new(8);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        marks.mark(A, t0);
        assert!(marks.is_down(A, t0 + ms(NODE_DOWN_MS - 1)));
        assert!(!marks.is_down(A, t0 + ms(NODE_DOWN_MS)));
        // Tried again once the first second is over, and failed again: two seconds now.
        let t1 = t0 + ms(NODE_DOWN_MS);
        marks.mark(A, t1);
        assert!(marks.is_down(A, t1 + ms(2 * NODE_DOWN_MS - 1)));
        assert!(!marks.is_down(A, t1 + ms(2 * NODE_DOWN_MS)));
        let mut t = t1;
        for _ in 0..10 {
            t += ms(NODE_DOWN_MS_MAX);
            marks.mark(A, t);
        }
        assert!(marks.is_down(A, t + ms(NODE_DOWN_MS_MAX - 1)));
        assert!(!marks.is_down(A, t + ms(NODE_DOWN_MS_MAX)), "the period is capped");
    }

    #[test]
    fn an_answer_or_a_long_quiet_spell_resets_the_count() {
        let mut marks = DownMarks::new(8);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        marks.mark(A, t0);
        marks.mark(A, t0 + ms(NODE_DOWN_MS));
        marks.clear(A);
        assert!(!marks.is_down(A, t0));
        marks.mark(A, t0);
        assert!(
            !marks.is_down(A, t0 + ms(NODE_DOWN_MS)),
            "cleared: back to the first period"
        );
        // A failure long after the last period ended starts from the first period again.
        let late = t0 + ms(NODE_DOWN_MS + NODE_DOWN_MS_MAX);
        marks.mark(A, late);
        assert!(!marks.is_down(A, late + ms(NODE_DOWN_MS)));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut marks = DownMarks::new(2);
        let t0 = Instant::now();
        marks.mark("a:1", t0);
        marks.mark("b:1", t0);
        marks.mark("c:1", t0);
        assert!(!marks.is_down("c:1", t0), "a third node is not recorded");
        // A node already recorded still counts its strikes.
        let t1 = t0 + Duration::from_millis(NODE_DOWN_MS);
        marks.mark("a:1", t1);
        assert!(marks.is_down("a:1", t1 + Duration::from_millis(NODE_DOWN_MS)));
        assert_eq!(marks.marks.len(), 2);
    }

    #[test]
    fn failures_during_a_pass_over_are_one_outage() {
        let mut marks = DownMarks::new(8);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Sixty-four requests in flight to a node that crashed all fail within a few ms.
        for i in 0..64 {
            marks.mark(A, t0 + ms(i / 8));
        }
        assert!(
            !marks.is_down(A, t0 + ms(NODE_DOWN_MS)),
            "one outage is one strike: tried again after the first period"
        );
        // The try after the period fails too: now it doubles.
        let t1 = t0 + ms(NODE_DOWN_MS);
        marks.mark(A, t1);
        assert!(marks.is_down(A, t1 + ms(2 * NODE_DOWN_MS - 1)));
        assert!(!marks.is_down(A, t1 + ms(2 * NODE_DOWN_MS)));
    }
}
