//! Exact-input, exact-output tests of per-vertex features: `SetFeatures`,
//! `ReadOp::Features`, their limits, and features in snapshots.

use super::tests::{ids_on, Harness, HERE, SHARDS};
use super::*;

fn set(vertex: u64, features: &[f32]) -> WriteOp {
    WriteOp::SetFeatures {
        vertex,
        features: features.to_vec(),
    }
}

fn read(h: &Harness, vertices: &[u64]) -> Response {
    h.s.read(&ReadOp::Features {
        vertices: vertices.to_vec(),
    })
}

#[test]
fn set_replace_and_remove_features() {
    let mut h = Harness::new(StateLimits::default());
    let v = ids_on(HERE, 3);
    assert_eq!(h.write(set(v[0], &[1.0, 2.0])), Ok(Reply::Changed(true)));
    assert_eq!(h.write(set(v[0], &[1.0, 2.0])), Ok(Reply::Changed(false)));
    assert_eq!(h.write(set(v[1], &[0.5])), Ok(Reply::Changed(true)));
    assert_eq!(
        read(&h, &[v[1], v[2], v[0], v[1]]),
        Ok(Reply::Features(vec![
            Some(vec![0.5]),
            None,
            Some(vec![1.0, 2.0]),
            Some(vec![0.5])
        ]))
    );
    // A new width replaces the old vector; -0.0 differs from 0.0 in its bytes.
    assert_eq!(h.write(set(v[0], &[0.0, 3.0, 4.0])), Ok(Reply::Changed(true)));
    assert_eq!(h.write(set(v[0], &[-0.0, 3.0, 4.0])), Ok(Reply::Changed(true)));
    assert_eq!(read(&h, &[v[0]]), Ok(Reply::Features(vec![Some(vec![-0.0, 3.0, 4.0])])));
    // An empty vector removes, once.
    assert_eq!(h.write(set(v[0], &[])), Ok(Reply::Changed(true)));
    assert_eq!(h.write(set(v[0], &[])), Ok(Reply::Changed(false)));
    assert_eq!(
        read(&h, &[v[0], v[1]]),
        Ok(Reply::Features(vec![None, Some(vec![0.5])]))
    );
    assert_eq!(h.s.features.len(), 1);
    assert_eq!(read(&h, &[]), read_empty_expected());
}

/// An empty read routes by vertex 0, so it answers here only if 0 lives here.
fn read_empty_expected() -> Response {
    let zero = shard_for_key(&ShardKey::Id(0), SHARDS);
    if zero == HERE {
        Ok(Reply::Features(vec![]))
    } else {
        Err(ErrorReply::WrongShard {
            got: HERE,
            expected: zero,
        })
    }
}

#[test]
fn invalid_features_are_refused_without_applying() {
    let mut h = Harness::new(StateLimits::default());
    let v = ids_on(HERE, 1)[0];
    h.write(set(v, &[1.0])).unwrap();
    let before = h.s.clone();
    assert_eq!(
        h.write(set(v, &[1.0, f32::NAN])),
        Err(ErrorReply::BadRequest(format!(
            "vertex {v}: feature value 1 is not finite (NaN)"
        )))
    );
    assert_eq!(
        h.write(set(v, &[f32::NEG_INFINITY])),
        Err(ErrorReply::BadRequest(format!(
            "vertex {v}: feature value 0 is not finite (-inf)"
        )))
    );
    assert_eq!(
        h.write(set(v, &vec![0.25; FEATURES_DIM_MAX + 1])),
        Err(ErrorReply::BadRequest(format!(
            "vertex {v}: feature vector of 1025 values exceeds 1024"
        )))
    );
    // Refused writes changed nothing but the applied index.
    assert_eq!(h.s.features, before.features);
    assert_eq!(h.write(set(v, &vec![0.25; FEATURES_DIM_MAX])), Ok(Reply::Changed(true)));
    assert_eq!(
        read(&h, &[v]),
        Ok(Reply::Features(vec![Some(vec![0.25; FEATURES_DIM_MAX])]))
    );
}

#[test]
fn features_of_another_shard_are_refused() {
    let mut h = Harness::new(StateLimits::default());
    let here = ids_on(HERE, 1)[0];
    let there = ids_on(2, 1)[0];
    assert_eq!(
        h.write(set(there, &[1.0])),
        Err(ErrorReply::WrongShard { got: HERE, expected: 2 })
    );
    // Routed by the first vertex, every other one is checked too.
    assert_eq!(
        read(&h, &[here, there]),
        Err(ErrorReply::WrongShard { got: HERE, expected: 2 })
    );
    assert_eq!(
        read(&h, &[there, here]),
        Err(ErrorReply::WrongShard { got: HERE, expected: 2 })
    );
    let many = ids_on(HERE, FEATURES_READ_VERTICES_MAX + 1);
    assert_eq!(
        read(&h, &many),
        Err(ErrorReply::BadRequest(
            "257 vertices exceed the features read limit of 256".into()
        ))
    );
    assert_eq!(
        read(&h, &many[..FEATURES_READ_VERTICES_MAX]),
        Ok(Reply::Features(vec![None; FEATURES_READ_VERTICES_MAX]))
    );
}

/// The body of snapshot bytes: after the 20-byte header, before the 4-byte checksum (see `snapshot`).
fn body_of(snapshot: &[u8]) -> Vec<u8> {
    snapshot[20..snapshot.len() - 4].to_vec()
}

#[test]
fn features_survive_snapshots_and_change_the_hash() {
    let mut h = Harness::new(StateLimits::default());
    let v = ids_on(HERE, 2);
    let empty_hash = h.s.state_hash();
    h.write(set(v[0], &[1.5, -2.0])).unwrap();
    h.write(set(v[1], &[3.0])).unwrap();
    let bytes = h.s.to_snapshot();
    let back = ShardState::from_snapshot(&bytes, StateLimits::default()).unwrap();
    assert_eq!(back, h.s);
    assert_eq!(back.to_snapshot(), bytes);
    assert_eq!(
        read(
            &Harness {
                s: back,
                index: h.index
            },
            &[v[1], v[0]]
        ),
        Ok(Reply::Features(vec![Some(vec![3.0]), Some(vec![1.5, -2.0])]))
    );
    let mut other = Harness::new(StateLimits::default());
    other.write(set(v[0], &[1.5, -2.0])).unwrap();
    other.write(set(v[1], &[3.5])).unwrap();
    assert_ne!(other.s.state_hash(), h.s.state_hash());
    assert_ne!(empty_hash, h.s.state_hash());
}

#[test]
fn a_version_one_snapshot_loads_without_features() {
    let mut h = Harness::new(StateLimits::default());
    let owner = ids_on(HERE, 1)[0];
    h.write(WriteOp::TimelineAppend {
        owner,
        item: b"old".to_vec(),
    })
    .unwrap();
    // A version-1 body is today's body without the trailing (empty) feature list, feed and
    // identity-matching state.
    let mut body = body_of(&h.s.to_snapshot());
    let tail = [snapshot::empty_feed(), snapshot::empty_empi()].concat();
    assert!(body.ends_with(&tail));
    body.truncate(body.len() - tail.len());
    assert_eq!(body.pop(), Some(0));
    let v1 = snapshot::frame_version_for_test(1, &body);
    assert_eq!(ShardState::from_snapshot(&v1, StateLimits::default()).unwrap(), h.s);
    // The same body framed as the current version lacks its feature list.
    assert!(matches!(
        ShardState::from_snapshot(&snapshot::frame_for_test(&body), StateLimits::default()),
        Err(StateError::Decode(_))
    ));
}

#[test]
fn decoded_features_are_checked() {
    let base = {
        let mut body = body_of(&ShardState::new(HERE, SHARDS, StateLimits::default()).to_snapshot());
        body.truncate(body.len() - snapshot::empty_feed().len() - snapshot::empty_empi().len());
        assert_eq!(body.pop(), Some(0));
        body
    };
    let load = |features: Vec<(u64, Vec<f32>)>| {
        let mut body = base.clone();
        body.extend(postcard::to_stdvec(&features).unwrap());
        body.extend(snapshot::empty_feed());
        body.extend(snapshot::empty_empi());
        ShardState::from_snapshot(&snapshot::frame_for_test(&body), StateLimits::default())
    };
    let loaded = load(vec![(1, vec![1.0]), (9, vec![2.0, 3.0])]).unwrap();
    assert_eq!(loaded.features.get(9), Some(&[2.0, 3.0][..]));
    let invalid = |features| matches!(load(features), Err(StateError::Invalid(_)));
    assert!(invalid(vec![(9, vec![1.0]), (1, vec![2.0])]));
    assert!(invalid(vec![(1, vec![1.0]), (1, vec![2.0])]));
    assert!(invalid(vec![(1, vec![])]));
    assert!(invalid(vec![(1, vec![f32::NAN])]));
    assert!(invalid(vec![(1, vec![f32::INFINITY])]));
    assert!(invalid(vec![(1, vec![0.0; FEATURES_DIM_MAX + 1])]));
}
