//! Identity matching's reads and refusals: Bloom rejections and cut block lists, event numbering
//! and retention, master pages, and every request refused with its reason.

use plexus_proto::{
    shard_for_key, EmpiBlocks, EmpiEventKind, EmpiEventPage, EmpiRead, EmpiState, ErrorReply, ReadOp, Reply, Response,
};

use super::tests::{blocks_on, masters_on, person, put, records_on, sorted, Cluster, NOW, SHARDS};
use super::EmpiStore;
use crate::command::{Command, EmpiBatch, EmpiMsg, EmpiPut};
use crate::state::EmpiLimits;

fn is_bad(r: &Response, needle: &str) -> bool {
    matches!(r, Err(ErrorReply::BadRequest(m)) if m.contains(needle))
}

#[test]
fn blocks_reads_ask_the_bloom_filter_first_and_cut_long_lists() {
    let mut c = Cluster::new(EmpiLimits {
        block_records_max: 3,
        blocks_read_records_max: 4,
        ..EmpiLimits::default()
    });
    let [big, small, gone] = [&blocks_on(1, 3)[0], &blocks_on(1, 3)[1], &blocks_on(1, 3)[2]];
    let keys = records_on(0, 5);
    for k in &keys {
        c.put(vec![put(k, 7, &[big])]).unwrap();
    }
    c.put(vec![put(&keys[0], 7, &[big, small, gone])]).unwrap();
    c.put(vec![put(&keys[0], 7, &[big, small])]).unwrap();
    c.pump();
    let absent: Vec<String> = (0..50).map(|i| format!("never-{i}")).collect();
    let absent_here: Vec<&String> = absent
        .iter()
        .filter(|b| shard_for_key(&plexus_proto::block_shard_key(b), SHARDS) == 1)
        .collect();
    assert!(absent_here.len() > 5, "{} absent keys of shard 1", absent_here.len());
    let mut ask = vec![big, small, gone];
    ask.extend(&absent_here);
    let mut expected_big = sorted(&keys.iter().collect::<Vec<_>>());
    expected_big.truncate(3);
    // `gone` passes the filter (its bits stay) but holds nothing; the absent keys are all
    // rejected; `big` is cut to 3 records and `small` to what the answer's budget of 4 leaves.
    assert_eq!(
        c.blocks(&ask),
        EmpiBlocks {
            found: vec![(big.clone(), expected_big), (small.clone(), vec![keys[0].clone()])],
            oversize: vec![big.clone()],
            rejected: absent_here.len() as u32,
        }
    );
    let cut = c.blocks(&[big, big, small]);
    assert_eq!(
        cut.found.iter().map(|(_, k)| k.len()).collect::<Vec<_>>(),
        vec![3, 1, 0]
    );
    assert_eq!(cut.oversize, vec![big.clone(), big.clone(), small.clone()]);
    // Every key must be this shard's, and a read is bounded.
    let elsewhere = &blocks_on(2, 1)[0];
    let mixed = EmpiRead::Blocks {
        blocks: vec![big.clone(), elsewhere.clone()],
    };
    assert_eq!(c.read(mixed), Err(ErrorReply::WrongShard { got: 1, expected: 2 }));
    let many = EmpiRead::Blocks {
        blocks: vec![big.clone(); EmpiLimits::default().blocks_read_max + 1],
    };
    assert!(is_bad(&c.read(many), "read limit"));
}

#[test]
fn events_are_numbered_without_gaps_and_the_oldest_dropped() {
    let mut c = Cluster::new(EmpiLimits {
        events_retained_max: 3,
        events_page_max: 2,
        ..EmpiLimits::default()
    });
    let m = masters_on(2, 1)[0];
    let keys = records_on(2, 5);
    for k in &keys {
        c.put(vec![put(k, m, &[])]).unwrap();
    }
    let events = |from_seq, limit| {
        let read = EmpiRead::Events {
            shard: 2,
            from_seq,
            limit,
        };
        match c.read(read) {
            Ok(Reply::EmpiState(EmpiState::Events(page))) => page,
            other => panic!("{other:?}"),
        }
    };
    // Five events were logged; the first two are gone. A reader asking from 1 gets 3 and sees
    // the gap by comparing; the page is capped at 2.
    let page = events(1, 10);
    assert_eq!((page.first_retained, page.next_seq), (3, 6));
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    let e = &page.events[0];
    assert_eq!(
        (e.shard, e.master, e.record.as_deref(), &e.kind, e.millis),
        (2, m, Some(keys[2].as_str()), &EmpiEventKind::Linked, NOW + 3)
    );
    assert_eq!(events(5, 1).events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);
    assert_eq!(
        events(6, 5),
        EmpiEventPage {
            events: vec![],
            next_seq: 6,
            first_retained: 3
        }
    );
    assert_eq!(events(u64::MAX, 5).events, vec![]);
    let zero = EmpiRead::Events {
        shard: 2,
        from_seq: 1,
        limit: 0,
    };
    assert!(is_bad(&c.read(zero), "at least 1"));
    // Another shard's log is empty and numbered from 1.
    let empty = c.read(EmpiRead::Events {
        shard: 0,
        from_seq: 1,
        limit: 5,
    });
    assert_eq!(
        empty,
        Ok(Reply::EmpiState(EmpiState::Events(EmpiEventPage {
            events: vec![],
            next_seq: 1,
            first_retained: 1
        })))
    );
}

#[test]
fn master_pages_walk_a_shard_in_id_order_within_the_member_budget() {
    let mut c = Cluster::new(EmpiLimits {
        masters_page_max: 3,
        page_members_max: 2,
        ..EmpiLimits::default()
    });
    let ids = masters_on(1, 4);
    let keys = records_on(1, 5);
    // ids[0] gets two members, the others one each.
    for (k, m) in keys.iter().zip([ids[0], ids[0], ids[1], ids[2], ids[3]]) {
        c.put(vec![put(k, m, &[])]).unwrap();
    }
    let page = |after, limit| {
        let read = EmpiRead::MasterPage { shard: 1, after, limit };
        match c.read(read) {
            Ok(Reply::EmpiState(EmpiState::MasterPage(p))) => p.into_iter().map(|m| m.id).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    // The first master alone fills the member budget; the page ends after it.
    assert_eq!(page(None, 10), vec![ids[0]]);
    assert_eq!(page(Some(ids[0]), 10), vec![ids[1], ids[2]]);
    assert_eq!(page(Some(ids[2]), 10), vec![ids[3]]);
    assert_eq!(page(Some(ids[3]), 10), Vec::<u64>::new());
    assert_eq!(page(Some(u64::MAX), 10), Vec::<u64>::new());
    assert_eq!(page(Some(ids[0]), 1), vec![ids[1]]);
    let wrong = ReadOp::Empi(EmpiRead::MasterPage {
        shard: 2,
        after: None,
        limit: 1,
    });
    assert_eq!(
        c.shards[1].0.read(&wrong),
        Err(ErrorReply::WrongShard { got: 1, expected: 2 })
    );
    // Masters and records reads: unknown ones are `None`, foreign ones refused.
    let unknown = masters_on(1, 5)[4];
    let masters = c.read(EmpiRead::Masters {
        ids: vec![ids[1], unknown],
    });
    let Ok(Reply::EmpiState(EmpiState::Masters(found))) = masters else {
        panic!("{masters:?}")
    };
    assert_eq!(found.iter().map(Option::is_some).collect::<Vec<_>>(), vec![true, false]);
    let foreign = c.read(EmpiRead::Masters {
        ids: vec![ids[1], masters_on(3, 1)[0]],
    });
    assert_eq!(foreign, Err(ErrorReply::WrongShard { got: 1, expected: 3 }));
    let records = c.read(EmpiRead::Records {
        keys: vec![keys[0].clone(), records_on(2, 1)[0].clone()],
    });
    assert_eq!(records, Err(ErrorReply::WrongShard { got: 1, expected: 2 }));
    let many = EmpiRead::Records {
        keys: vec![keys[0].clone(); EmpiLimits::default().records_read_max + 1],
    };
    assert!(is_bad(&c.read(many), "read limit"));
}

#[test]
fn bad_puts_are_refused_whole_with_a_reason() {
    let mut c = Cluster::new(EmpiLimits {
        put_records_max: 2,
        record_blocks_max: 2,
        field_bytes_max: 8,
        ..EmpiLimits::default()
    });
    let [a, b] = [&records_on(0, 2)[0], &records_on(0, 2)[1]];
    let foreign = &records_on(1, 1)[0];
    let put_on_0 = |c: &mut Cluster, puts: Vec<EmpiPut>| c.apply(0, &Command::EmpiPut { puts, now_millis: NOW });
    // A record of another shard refuses the entry, even after a good one.
    assert_eq!(
        put_on_0(&mut c, vec![put(a, 1, &[]), put(foreign, 1, &[])]),
        Err(ErrorReply::WrongShard { got: 0, expected: 1 })
    );
    assert!(is_bad(
        &put_on_0(&mut c, vec![put(a, 1, &[]), put(b, 1, &[]), put(a, 2, &[])]),
        "put limit"
    ));
    let bs = blocks_on(0, 3);
    assert!(is_bad(
        &put_on_0(&mut c, vec![put(a, 1, &[&bs[0], &bs[1], &bs[2]])]),
        "3 blocking keys"
    ));
    let empty_block = String::new();
    assert!(is_bad(
        &put_on_0(&mut c, vec![put(a, 1, &[&empty_block])]),
        "blocking key"
    ));
    let mut long = put(a, 1, &[]);
    long.record.city = Some("x".repeat(9));
    assert!(is_bad(&put_on_0(&mut c, vec![long]), "field city"));
    let mut colon = put(a, 1, &[]);
    colon.record = person("S:x:y", "ann");
    colon.record.source = "S:x".into();
    assert!(is_bad(&put_on_0(&mut c, vec![colon]), "source"));
    let mut no_id = put(a, 1, &[]);
    no_id.record.source_id.clear();
    assert!(is_bad(&put_on_0(&mut c, vec![no_id]), "source id"));
    // Nothing of the refused entries was applied.
    assert_eq!(c.shards[0].0.empi, EmpiStore::default());
}

#[test]
fn stray_deliveries_are_refused_whole() {
    let mut c = Cluster::new(EmpiLimits::default());
    let here = &records_on(1, 1)[0];
    let there = &records_on(2, 1)[0];
    let block_here = &blocks_on(1, 1)[0];
    let deliver = |c: &mut Cluster, from_shard, items: Vec<EmpiMsg>| {
        let cmd = Command::EmpiDeliveries {
            batches: vec![EmpiBatch {
                from_shard,
                first_seq: 1,
                items,
            }],
            now_millis: NOW,
        };
        c.apply(1, &cmd)
    };
    let add = |block: &String, key: &String| EmpiMsg::IndexAdd {
        block: block.clone(),
        key: key.clone(),
    };
    // Addressed to another shard (the blocking key is shard 0's).
    assert!(is_bad(
        &deliver(&mut c, 2, vec![add(&blocks_on(0, 1)[0], there)]),
        "does not belong here"
    ));
    // Naming a record that is not the source shard's: shard 3 cannot index shard 2's record.
    assert!(is_bad(
        &deliver(&mut c, 3, vec![add(block_here, there)]),
        "names record"
    ));
    let reassign = EmpiMsg::Reassign {
        key: here.clone(),
        from: 8,
        master: 9,
    };
    assert!(is_bad(&deliver(&mut c, SHARDS, vec![reassign.clone()]), "of 4"));
    // A gap, and one source named twice, refuse the entry.
    let batch = |first_seq| EmpiBatch {
        from_shard: 2,
        first_seq,
        items: vec![add(block_here, there)],
    };
    let cmd = |batches| Command::EmpiDeliveries {
        batches,
        now_millis: NOW,
    };
    assert!(is_bad(&c.apply(1, &cmd(vec![batch(2)])), "gap"));
    assert!(is_bad(&c.apply(1, &cmd(vec![batch(1), batch(1)])), "twice"));
    assert_eq!(c.shards[1].0.empi.index.len(), 0);
    assert_eq!(c.apply(1, &cmd(vec![batch(1)])), Ok(Reply::Counts(vec![1])));
    assert_eq!(
        c.apply(1, &cmd(vec![batch(1)])),
        Ok(Reply::Counts(vec![1])),
        "applied once"
    );
    // A reassign may come from any shard (a merged identity's).
    assert_eq!(deliver(&mut c, 3, vec![reassign]), Ok(Reply::Counts(vec![1])));
    assert_eq!(
        c.apply(1, &Command::EmpiOutboxTrims { trims: vec![(2, 5)] }),
        Ok(Reply::Count(0))
    );
}

#[test]
fn a_full_outbox_refuses_client_writes_until_delivered() {
    let mut c = Cluster::new(EmpiLimits {
        outbox_bytes_max: 40,
        ..EmpiLimits::default()
    });
    let [r, r2] = [&records_on(0, 2)[0], &records_on(0, 2)[1]];
    let far_block = &blocks_on(1, 1)[0];
    let far_master = masters_on(2, 1)[0];
    let local_master = masters_on(0, 1)[0];
    c.put(vec![put(r, far_master, &[far_block])]).unwrap();
    // 32 bytes queued, below the cap of 40: one more put is admitted and takes it past.
    c.put(vec![put(r2, far_master, &[])]).unwrap();
    assert_eq!(c.shards[0].0.empi_outbox_len(), 3);
    let busy = |reply: Response| matches!(reply, Err(ErrorReply::Busy(m)) if m.contains("empi outbox"));
    assert!(busy(c.put(vec![put(r2, local_master, &[])])));
    assert!(busy(c.constrain(r, r2, true)));
    assert!(busy(c.merge(local_master, far_master)));
    let reassign = Command::EmpiReassign {
        key: r.clone(),
        master: 5,
        now_millis: NOW,
    };
    assert!(busy(c.apply(0, &reassign)));
    // Deliveries still apply while it is full, and once delivered, writes go in again.
    c.pump();
    assert_eq!(
        c.put(vec![put(r2, far_master, &[])]),
        Ok(Reply::Counts(vec![far_master]))
    );
    assert_eq!(c.apply(0, &reassign), Ok(Reply::Changed(true)));
    c.pump();
    assert_eq!(c.record(r).map(|r| r.master), Some(5));
    assert_eq!(c.violations(), Vec::<String>::new());
}
