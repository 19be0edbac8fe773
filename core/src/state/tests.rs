//! Exact-input, exact-output tests of `ShardState::apply` and `read`.

use plexus_proto::{Cursor, FilterSpec, NodeInfo, Page, Session, ShardPlacement, TimelineEntry, ENTRY_SEQ_BITS};

use super::*;

/// Shards in the test cluster; the state under test is shard `HERE`.
pub(super) const SHARDS: u32 = 4;
pub(super) const HERE: ShardId = 0;
const MS: u64 = 1 << ENTRY_SEQ_BITS;

/// The first `n` vertex ids (from 1) that live on `shard`.
pub(super) fn ids_on(shard: ShardId, n: usize) -> Vec<u64> {
    (1u64..)
        .filter(|v| shard_for_key(&ShardKey::Id(*v), SHARDS) == shard)
        .take(n)
        .collect()
}

/// A filter name that lives on `shard`.
pub(super) fn name_on(shard: ShardId, prefix: &str) -> String {
    (0u32..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|n| shard_for_key(&ShardKey::Name(n.clone()), SHARDS) == shard)
        .unwrap()
}

/// A state plus the next log index to apply at.
pub(super) struct Harness {
    pub(super) s: ShardState,
    pub(super) index: u64,
}

impl Harness {
    pub(super) fn new(limits: StateLimits) -> Self {
        Self {
            s: ShardState::new(HERE, SHARDS, limits),
            index: 0,
        }
    }

    pub(super) fn cmd(&mut self, cmd: Command) -> Response {
        self.index += 1;
        self.s.apply(self.index, &cmd)
    }

    fn write_at(&mut self, op: WriteOp, now_millis: u64) -> Response {
        self.cmd(Command::Client {
            session: None,
            op,
            now_millis,
        })
    }

    pub(super) fn write(&mut self, op: WriteOp) -> Response {
        self.write_at(op, 1_000)
    }

    pub(super) fn session_write(&mut self, session: Session, op: WriteOp) -> Response {
        self.cmd(Command::Client {
            session: Some(session),
            op,
            now_millis: 1_000,
        })
    }
}

fn append(owner: u64, item: &[u8]) -> WriteOp {
    WriteOp::TimelineAppend {
        owner,
        item: item.to_vec(),
    }
}

fn page(h: &Harness, owner: u64, cursor: Cursor, limit: u32) -> Response {
    h.s.read(&ReadOp::TimelineRead { owner, cursor, limit })
}

fn entry(id: u64, item: &[u8]) -> TimelineEntry {
    TimelineEntry {
        id,
        item: item.to_vec(),
    }
}

pub(super) fn is_bad(r: &Response) -> bool {
    matches!(r, Err(ErrorReply::BadRequest(_)))
}

#[test]
fn timeline_ops_through_the_state() {
    let limits = StateLimits {
        page_entries_max: 2,
        item_bytes_max: 4,
        ..StateLimits::default()
    };
    let mut h = Harness::new(limits);
    let owner = ids_on(HERE, 1)[0];
    assert_eq!(h.write_at(append(owner, b"a"), 50), Ok(Reply::Appended(50 * MS)));
    assert_eq!(h.write_at(append(owner, b"b"), 50), Ok(Reply::Appended(50 * MS + 1)));
    assert_eq!(h.write_at(append(owner, b"c"), 49), Ok(Reply::Appended(50 * MS + 2)));
    assert!(is_bad(&h.write(append(owner, b"12345"))));
    // The page limit is capped at page_entries_max.
    assert_eq!(
        page(&h, owner, Cursor::Latest, 100),
        Ok(Reply::Page(Page {
            entries: vec![entry(50 * MS + 2, b"c"), entry(50 * MS + 1, b"b")],
            has_more: true
        }))
    );
    assert_eq!(
        page(&h, owner, Cursor::Before(50 * MS + 1), 2),
        Ok(Reply::Page(Page {
            entries: vec![entry(50 * MS, b"a")],
            has_more: false
        }))
    );
    assert_eq!(
        page(&h, owner, Cursor::After(50 * MS), 1),
        Ok(Reply::Page(Page {
            entries: vec![entry(50 * MS + 1, b"b")],
            has_more: true
        }))
    );
    assert!(is_bad(&page(&h, owner, Cursor::Latest, 0)));
    assert_eq!(
        h.write(WriteOp::TimelineDelete { owner, id: 50 * MS + 1 }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(
        h.write(WriteOp::TimelineDelete { owner, id: 50 * MS + 1 }),
        Ok(Reply::Changed(false))
    );
    assert_eq!(
        page(&h, owner, Cursor::Latest, 2),
        Ok(Reply::Page(Page {
            entries: vec![entry(50 * MS + 2, b"c"), entry(50 * MS, b"a")],
            has_more: false
        }))
    );
}

#[test]
fn timeline_cap_drops_oldest() {
    let mut h = Harness::new(StateLimits::default());
    let owner = ids_on(HERE, 1)[0];
    for i in 0..801u32 {
        h.write_at(append(owner, &i.to_le_bytes()), 7).unwrap();
    }
    let Ok(Reply::Page(p)) = page(&h, owner, Cursor::After(0), 1_000) else {
        panic!("not a page")
    };
    assert_eq!(p.entries.len(), 800);
    assert_eq!(p.entries[0], entry(7 * MS + 1, &1u32.to_le_bytes()));
    assert_eq!(p.entries[799], entry(7 * MS + 800, &800u32.to_le_bytes()));
}

#[test]
fn wrong_shard_is_refused() {
    let mut h = Harness::new(StateLimits::default());
    let elsewhere = ids_on(1, 1)[0];
    assert_eq!(
        h.write(append(elsewhere, b"x")),
        Err(ErrorReply::WrongShard { got: HERE, expected: 1 })
    );
    assert_eq!(
        h.s.read(&ReadOp::HasEdge { src: elsewhere, dst: 1 }),
        Err(ErrorReply::WrongShard { got: HERE, expected: 1 })
    );
}

#[test]
fn retried_session_write_applies_once() {
    let mut h = Harness::new(StateLimits::default());
    let owner = ids_on(HERE, 1)[0];
    let s1 = Session {
        client_id: 42,
        seq: 1,
        ack_below: 0,
    };
    let first = h.session_write(s1, append(owner, b"post"));
    assert_eq!(first, Ok(Reply::Appended(1_000 * MS)));
    assert_eq!(h.session_write(s1, append(owner, b"post")), first);
    assert_eq!(
        page(&h, owner, Cursor::Latest, 10),
        Ok(Reply::Page(Page {
            entries: vec![entry(1_000 * MS, b"post")],
            has_more: false
        }))
    );
    // seq 2 acknowledges seq 1, which is then stale.
    let s2 = Session {
        client_id: 42,
        seq: 2,
        ack_below: 2,
    };
    assert_eq!(
        h.session_write(s2, append(owner, b"again")),
        Ok(Reply::Appended(1_000 * MS + 1))
    );
    assert_eq!(
        h.session_write(s1, append(owner, b"post")),
        Err(ErrorReply::StaleSession { client_id: 42, seq: 1 })
    );
    // Without a session every copy applies.
    assert_eq!(h.write(append(owner, b"x")), Ok(Reply::Appended(1_000 * MS + 2)));
    assert_eq!(h.write(append(owner, b"x")), Ok(Reply::Appended(1_000 * MS + 3)));
    assert_eq!(h.s.last_applied(), 6);
}

#[test]
fn session_eviction_and_busy_retry() {
    let limits = StateLimits {
        sessions_max: 2,
        outbox_entries_max: 1,
        ..StateLimits::default()
    };
    let mut h = Harness::new(limits);
    let owner = ids_on(HERE, 1)[0];
    let s = |client_id: u64| Session {
        client_id,
        seq: 1,
        ack_below: 0,
    };
    assert_eq!(
        h.session_write(s(1), append(owner, b"a")),
        Ok(Reply::Appended(1_000 * MS))
    );
    assert_eq!(
        h.session_write(s(2), append(owner, b"b")),
        Ok(Reply::Appended(1_000 * MS + 1))
    );
    assert_eq!(
        h.session_write(s(3), append(owner, b"c")),
        Ok(Reply::Appended(1_000 * MS + 2))
    );
    // Client 1 was the oldest and is forgotten, so its retry applies again.
    assert_eq!(
        h.session_write(s(1), append(owner, b"a")),
        Ok(Reply::Appended(1_000 * MS + 3))
    );
    assert_eq!(
        h.session_write(s(3), append(owner, b"c")),
        Ok(Reply::Appended(1_000 * MS + 2))
    );

    // A Busy answer is not cached: the retry after room is made applies.
    let src = ids_on(HERE, 1)[0];
    let dst = ids_on(1, 2);
    h.write(WriteOp::Follow { src, dst: dst[0] }).unwrap();
    let s9 = Session {
        client_id: 3,
        seq: 2,
        ack_below: 0,
    };
    assert!(matches!(
        h.session_write(s9, WriteOp::Follow { src, dst: dst[1] }),
        Err(ErrorReply::Busy(_))
    ));
    assert_eq!(
        h.cmd(Command::OutboxTrim {
            to_shard: 1,
            upto_seq: 1
        }),
        Ok(Reply::Count(1))
    );
    assert_eq!(
        h.session_write(s9, WriteOp::Follow { src, dst: dst[1] }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(
        h.session_write(s9, WriteOp::Follow { src, dst: dst[1] }),
        Ok(Reply::Changed(true))
    );
}

#[test]
fn filter_ops_through_the_state() {
    let limits = StateLimits {
        filter_batch_keys_max: 3,
        item_bytes_max: 8,
        ..StateLimits::default()
    };
    let mut h = Harness::new(limits);
    let name = name_on(HERE, "seen");
    let spec = FilterSpec {
        expected_items: 1_000,
        fp_rate_ppm: 5_000,
    };
    let keys = |ks: &[&str]| ks.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
    let contains = |h: &Harness, ks: &[&str]| {
        h.s.read(&ReadOp::FilterContains {
            name: name.clone(),
            keys: keys(ks),
        })
    };

    assert_eq!(contains(&h, &["a", "b"]), Ok(Reply::Bools(vec![false, false])));
    assert_eq!(
        h.write(WriteOp::FilterSeal { name: name.clone() }),
        Err(ErrorReply::NotFound(format!("filter {name:?}")))
    );
    assert_eq!(
        h.write(WriteOp::FilterCreate {
            name: name.clone(),
            spec
        }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(
        h.write(WriteOp::FilterCreate {
            name: name.clone(),
            spec
        }),
        Ok(Reply::Changed(false))
    );
    let other = FilterSpec {
        expected_items: 10,
        ..spec
    };
    assert!(is_bad(&h.write(WriteOp::FilterCreate {
        name: name.clone(),
        spec: other
    })));
    assert_eq!(
        h.write(WriteOp::FilterAdd {
            name: name.clone(),
            keys: keys(&["a", "b"])
        }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(
        h.write(WriteOp::FilterAdd {
            name: name.clone(),
            keys: keys(&["b"])
        }),
        Ok(Reply::Changed(false))
    );
    assert!(is_bad(&h.write(WriteOp::FilterAdd {
        name: name.clone(),
        keys: keys(&["a", "b", "c", "d"])
    })));
    assert!(is_bad(&h.write(WriteOp::FilterAdd {
        name: name.clone(),
        keys: keys(&["123456789"])
    })));
    assert!(is_bad(&contains(&h, &["a", "b", "c", "d"])));
    assert_eq!(contains(&h, &["a", "b"]), Ok(Reply::Bools(vec![true, true])));
    assert_eq!(
        h.write(WriteOp::FilterSeal { name: name.clone() }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(
        h.write(WriteOp::FilterSeal { name: name.clone() }),
        Ok(Reply::Changed(false))
    );
    assert_eq!(contains(&h, &["a", "b"]), Ok(Reply::Bools(vec![true, true])));

    // Adding to a missing filter creates it with the default spec.
    let fresh = name_on(HERE, "fresh");
    assert_eq!(
        h.write(WriteOp::FilterAdd {
            name: fresh.clone(),
            keys: keys(&["k"])
        }),
        Ok(Reply::Changed(true))
    );
    assert_eq!(h.s.filters[&fresh].spec(), &FilterSpec::default());
    assert!(is_bad(&h.write(WriteOp::FilterCreate {
        name: name_on(HERE, "tiny"),
        spec: FilterSpec {
            expected_items: 0,
            fp_rate_ppm: 5_000
        }
    })));
}

#[test]
fn meta_commands_and_index_order() {
    let mut meta = ShardState::new(crate::META_GROUP, SHARDS, StateLimits::default());
    let map = ShardMap {
        shard_count: SHARDS,
        nodes: vec![NodeInfo {
            id: 1,
            client_addr: "127.0.0.1:7000".into(),
        }],
        shards: vec![ShardPlacement {
            shard: 0,
            replicas: vec![1],
            leader: Some(1),
        }],
    };
    assert_eq!(meta.shard_map(), None);
    assert_eq!(meta.apply(1, &Command::SetShardMap(map.clone())), Ok(Reply::Done));
    assert_eq!(meta.shard_map(), Some(&map));
    assert_eq!(meta.apply(2, &Command::Noop), Ok(Reply::Done));
    assert_eq!(meta.last_applied(), 2);
    assert!(matches!(meta.apply(2, &Command::Noop), Err(ErrorReply::Internal(_))));
    assert_eq!(meta.last_applied(), 2);
    // The meta group owns no key.
    let op = WriteOp::TimelineAppend { owner: 1, item: vec![] };
    let cmd = Command::Client {
        session: None,
        op,
        now_millis: 1,
    };
    assert!(matches!(meta.apply(3, &cmd), Err(ErrorReply::WrongShard { .. })));
}
