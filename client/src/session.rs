//! The client side of exactly-once writes.
//!
//! Every write carries `Session{client_id, seq, ack_below}`. A sequence number
//! is taken once per logical write and reused by every retry of it, so the
//! server's session table can recognise a retry and answer it from its cache
//! instead of applying it twice. `ack_below` is the lowest sequence number
//! still in flight: the server may forget every answer below it.
//!
//! This module only hands out numbers; it does not send or retry anything.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use plexus_proto::Session;

/// Sequence numbers for one client, with the set of writes still in flight.
#[derive(Debug)]
pub(crate) struct SessionTracker {
    client_id: u64,
    state: Mutex<SeqState>,
}

#[derive(Debug)]
struct SeqState {
    /// The next sequence number to hand out. It lives under the same lock as
    /// `in_flight` (rather than in a lone atomic) so that taking a number and
    /// recording it as in flight is one step: otherwise a concurrent write
    /// could compute an `ack_below` above a number taken but not yet recorded,
    /// and the server would refuse that write as stale.
    next_seq: u64,
    /// Sequence numbers taken and not yet finished; its size is bounded by the
    /// client's `in_flight_max` semaphore, which every write holds while here.
    in_flight: BTreeSet<u64>,
}

impl SessionTracker {
    /// A tracker for `client_id`, numbering writes from 1.
    pub(crate) fn new(client_id: u64) -> Self {
        Self {
            client_id,
            state: Mutex::new(SeqState {
                next_seq: 1,
                in_flight: BTreeSet::new(),
            }),
        }
    }

    /// The client id carried by every session.
    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Takes the next sequence number for a new write; dropping the guard
    /// marks the write finished (answered, failed or abandoned).
    pub(crate) fn begin(&self) -> SeqGuard<'_> {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.in_flight.insert(seq);
        SeqGuard { tracker: self, seq }
    }

    /// The lowest sequence number still in flight, or the next one to be taken when none is.
    pub(crate) fn ack_below(&self) -> u64 {
        let st = self.lock();
        st.in_flight.first().copied().unwrap_or(st.next_seq)
    }

    fn lock(&self) -> MutexGuard<'_, SeqState> {
        // The state is two plain fields updated together; a panic elsewhere cannot leave them torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One write's sequence number, in flight for as long as the guard lives.
#[derive(Debug)]
pub(crate) struct SeqGuard<'a> {
    tracker: &'a SessionTracker,
    seq: u64,
}

impl SeqGuard<'_> {
    /// This write's sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The session to send with this attempt; `ack_below` is recomputed so a retry reports progress.
    pub(crate) fn session(&self) -> Session {
        Session {
            client_id: self.tracker.client_id,
            seq: self.seq,
            ack_below: self.tracker.ack_below(),
        }
    }
}

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        self.tracker.lock().in_flight.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_increases_and_ack_below_tracks_lowest_in_flight() {
        let t = SessionTracker::new(42);
        assert_eq!(t.ack_below(), 1);
        let a = t.begin();
        let b = t.begin();
        assert_eq!(
            a.session(),
            Session {
                client_id: 42,
                seq: 1,
                ack_below: 1
            }
        );
        assert_eq!(
            b.session(),
            Session {
                client_id: 42,
                seq: 2,
                ack_below: 1
            }
        );
        drop(a);
        // The retry of b reuses seq 2 and now reports that 1 is answered.
        assert_eq!(
            b.session(),
            Session {
                client_id: 42,
                seq: 2,
                ack_below: 2
            }
        );
        let c = t.begin();
        assert_eq!(
            c.session(),
            Session {
                client_id: 42,
                seq: 3,
                ack_below: 2
            }
        );
        drop(b);
        drop(c);
        assert_eq!(t.ack_below(), 4);
        assert_eq!(
            t.begin().session(),
            Session {
                client_id: 42,
                seq: 4,
                ack_below: 4
            }
        );
    }

    #[test]
    fn ack_below_never_passes_an_unfinished_write() {
        let t = SessionTracker::new(1);
        let held = t.begin();
        for _ in 0..100 {
            let g = t.begin();
            assert_eq!(g.session().ack_below, 1);
        }
        assert_eq!(
            held.session(),
            Session {
                client_id: 1,
                seq: 1,
                ack_below: 1
            }
        );
        drop(held);
        assert_eq!(t.ack_below(), 102);
    }
}
