//! The exactly-once session table: per client, the answers to its recent
//! writes, so a retried write gets its first answer instead of a second
//! application.
//!
//! A client numbers its writes (`seq`) and promises with `ack_below` that it
//! has every answer below that number; those answers are forgotten and the
//! numbers refused from then on. The table is bounded in clients and in
//! answers per client. It is not a lease: an evicted client's late retry is
//! applied again, which is why eviction picks the least recently active.

use std::collections::{BTreeMap, BTreeSet};

use plexus_proto::{ErrorReply, Response, Session};
use serde::{Deserialize, Serialize};

use crate::canary::Canary;

/// One client's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ClientSession {
    /// Sequences below this are refused: the largest `ack_below` seen, or
    /// past the last answer dropped to respect `session_responses_max`.
    floor: u64,
    /// Log index of the client's last applied write, for eviction.
    last_index: u64,
    /// Cached answers by sequence number.
    answers: BTreeMap<u64, Response>,
}

/// What to do with a session write.
#[derive(Debug, PartialEq)]
pub(crate) enum Admission {
    /// Answer this without applying.
    Answer(Response),
    /// Apply the write, then call `record`.
    Apply,
}

/// The table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sessions {
    clients: BTreeMap<u64, ClientSession>,
    /// `(last_index, client_id)` of every client: the eviction order.
    /// Derived from `clients`, so not serialised.
    #[serde(skip)]
    by_age: BTreeSet<(u64, u64)>,
}

impl Sessions {
    /// Decides whether a write under `s` is a retry, stale, or new. The `DoubleApply` canary
    /// (simulation only) ignores the cached answer, so a retry is applied again.
    pub(crate) fn admit(&self, s: &Session, canary: Option<Canary>) -> Admission {
        match self.clients.get(&s.client_id) {
            Some(c) => match c.answers.get(&s.seq) {
                Some(_) if canary == Some(Canary::DoubleApply) => Admission::Apply,
                Some(answer) => Admission::Answer(answer.clone()),
                None if s.seq < c.floor => Admission::Answer(Err(ErrorReply::StaleSession {
                    client_id: s.client_id,
                    seq: s.seq,
                })),
                None => Admission::Apply,
            },
            None => Admission::Apply,
        }
    }

    /// Records the answer of a write applied at log `index`, forgets what
    /// `ack_below` releases, and enforces both limits.
    ///
    /// Retryable errors (`Busy`) are not cached: the write did not apply, and
    /// caching would answer the client's retry with `Busy` forever.
    pub(crate) fn record(
        &mut self,
        s: &Session,
        index: u64,
        answer: &Response,
        sessions_max: usize,
        responses_max: usize,
    ) {
        if !self.clients.contains_key(&s.client_id) {
            while self.clients.len() >= sessions_max.max(1) {
                // The oldest by last applied index, ties broken by client id.
                let Some((_, oldest)) = self.by_age.pop_first() else {
                    break;
                };
                self.clients.remove(&oldest);
            }
        }
        let c = self.clients.entry(s.client_id).or_insert_with(|| ClientSession {
            floor: 0,
            last_index: index,
            answers: BTreeMap::new(),
        });
        self.by_age.remove(&(c.last_index, s.client_id));
        c.last_index = index;
        self.by_age.insert((index, s.client_id));
        c.floor = c.floor.max(s.ack_below);
        if !answer.as_ref().is_err_and(ErrorReply::is_retryable) {
            c.answers.insert(s.seq, answer.clone());
        }
        // Keep answers at or above the floor, and at most `responses_max`.
        let floor = c.floor;
        c.answers.retain(|seq, _| *seq >= floor);
        // An answer dropped for room raises the floor past it: a late retry
        // of that write is then refused as stale rather than applied twice.
        while c.answers.len() > responses_max {
            if let Some((seq, _)) = c.answers.pop_first() {
                c.floor = c.floor.max(seq.saturating_add(1));
            }
        }
        debug_assert!(self.clients.len() <= sessions_max.max(1));
        debug_assert_eq!(self.by_age.len(), self.clients.len());
    }

    /// Rebuilds the derived eviction order after decoding.
    pub(crate) fn restore(&mut self) {
        self.by_age = self.clients.iter().map(|(id, c)| (c.last_index, *id)).collect();
    }

    /// `admit` without a canary.
    #[cfg(test)]
    pub(crate) fn admit_now(&self, s: &Session) -> Admission {
        self.admit(s, None)
    }

    /// Clients in the table.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.clients.len()
    }

    /// Cached answers of one client.
    #[cfg(test)]
    pub(crate) fn answers_len(&self, client_id: u64) -> usize {
        self.clients.get(&client_id).map_or(0, |c| c.answers.len())
    }

    /// Test check: the derived order matches.
    #[cfg(test)]
    pub(crate) fn check(&self) -> bool {
        self.by_age.len() == self.clients.len()
            && self
                .clients
                .iter()
                .all(|(id, c)| self.by_age.contains(&(c.last_index, *id)))
    }
}

#[cfg(test)]
mod tests {
    use plexus_proto::Reply;

    use super::*;

    fn s(client_id: u64, seq: u64, ack_below: u64) -> Session {
        Session {
            client_id,
            seq,
            ack_below,
        }
    }

    #[test]
    fn retry_answers_cache_and_stale_is_refused() {
        let mut t = Sessions::default();
        assert_eq!(t.admit_now(&s(1, 1, 0)), Admission::Apply);
        t.record(&s(1, 1, 0), 10, &Ok(Reply::Appended(7)), 10, 10);
        assert_eq!(t.admit_now(&s(1, 1, 0)), Admission::Answer(Ok(Reply::Appended(7))));
        t.record(&s(1, 2, 2), 11, &Ok(Reply::Done), 10, 10);
        assert_eq!(t.answers_len(1), 1);
        assert_eq!(
            t.admit_now(&s(1, 1, 0)),
            Admission::Answer(Err(ErrorReply::StaleSession { client_id: 1, seq: 1 }))
        );
        assert_eq!(t.admit_now(&s(1, 2, 0)), Admission::Answer(Ok(Reply::Done)));
        assert_eq!(t.admit_now(&s(1, 3, 2)), Admission::Apply);
    }

    #[test]
    fn double_apply_canary_applies_a_retry_again() {
        let mut t = Sessions::default();
        t.record(&s(1, 1, 0), 10, &Ok(Reply::Appended(7)), 10, 10);
        assert_eq!(t.admit(&s(1, 1, 0), Some(Canary::DoubleApply)), Admission::Apply);
        assert_eq!(
            t.admit(&s(1, 1, 0), Some(Canary::StaleRead)),
            Admission::Answer(Ok(Reply::Appended(7)))
        );
    }

    #[test]
    fn busy_is_not_cached() {
        let mut t = Sessions::default();
        t.record(&s(1, 1, 0), 10, &Err(ErrorReply::Busy("full".into())), 10, 10);
        assert_eq!(t.admit_now(&s(1, 1, 0)), Admission::Apply);
    }

    #[test]
    fn eviction_by_oldest_index_then_client_id() {
        let mut t = Sessions::default();
        t.record(&s(5, 1, 0), 10, &Ok(Reply::Done), 2, 10);
        t.record(&s(3, 1, 0), 10, &Ok(Reply::Done), 2, 10);
        // Both at index 10: client 3 goes first.
        t.record(&s(9, 1, 0), 11, &Ok(Reply::Done), 2, 10);
        assert_eq!(t.len(), 2);
        assert_eq!(t.admit_now(&s(3, 1, 0)), Admission::Apply);
        assert_eq!(t.admit_now(&s(5, 1, 0)), Admission::Answer(Ok(Reply::Done)));
        // Client 5 writes again, so client 9 is now the oldest.
        t.record(&s(5, 2, 0), 12, &Ok(Reply::Done), 2, 10);
        t.record(&s(4, 1, 0), 13, &Ok(Reply::Done), 2, 10);
        assert_eq!(t.admit_now(&s(9, 1, 0)), Admission::Apply);
        assert_eq!(t.admit_now(&s(5, 2, 0)), Admission::Answer(Ok(Reply::Done)));
        assert!(t.check());
    }

    #[test]
    fn answers_per_client_are_bounded_lowest_first() {
        let mut t = Sessions::default();
        for seq in 1..=5 {
            t.record(&s(1, seq, 0), seq, &Ok(Reply::Count(seq)), 10, 3);
        }
        assert_eq!(t.answers_len(1), 3);
        assert_eq!(
            t.admit_now(&s(1, 2, 0)),
            Admission::Answer(Err(ErrorReply::StaleSession { client_id: 1, seq: 2 }))
        );
        assert_eq!(t.admit_now(&s(1, 3, 0)), Admission::Answer(Ok(Reply::Count(3))));
    }
}
