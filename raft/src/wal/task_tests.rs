//! Tests of the task-mode writer on a real disk (what nodes run): syncing on the fsync thread,
//! group commit, `close_async`, and the yields that let a burst of appends share one batch.

use std::sync::Arc;

use super::tests::{append, append_concurrently, appended_concurrently, assert_group_commit, opts, reopen};
use super::*;

fn open_task(dir: &Path, options: WalOptions) -> (Wal, Recovered) {
    Wal::open_with(dir, options, Arc::new(OsDisk), WriterMode::Task).unwrap()
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_writer_syncs_on_its_fsync_thread_shares_fsyncs_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open_task(dir.path(), opts(true));
    append_concurrently(&wal).await;
    // The syncs ran on the writer's fsync thread, not on this (the runtime's only) thread.
    assert!(
        thread_names().iter().any(|name| name == "plexus-wal-sync"),
        "no fsync thread among {:?}",
        thread_names()
    );
    assert_group_commit(&wal.stats());
    // close_async returns only once the writer has released the directory: it opens again.
    wal.close_async().await;
    let recovered = reopen(dir.path(), opts(true));
    assert_eq!(recovered.groups, appended_concurrently());
}

/// Runs a chain of `links` tasks on this current-thread runtime, each submitting one append and
/// then waking the next (as a peer's message batch wakes one Raft group after another), and
/// returns how many batches the writer made of them.
async fn batches_for_a_chain(task_yields: u32, links: u32) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    // No fsync: the writer then never waits for the disk, so only the yields can batch.
    let (wal, _) = open_task(
        dir.path(),
        WalOptions {
            task_yields,
            ..opts(false)
        },
    );
    let (first_tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let mut done = Vec::new();
    for group in 0..links {
        let (next_tx, next_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let wal = wal.clone();
        let prev = std::mem::replace(&mut rx, next_rx);
        tokio::spawn(async move {
            prev.await.unwrap();
            let done: Done = Box::new(move |result| {
                let _ = done_tx.send(result);
            });
            wal.submit_async(vec![append(group, 1..=1, 0)], done).await.unwrap();
            let _ = next_tx.send(());
        });
        done.push(done_rx);
    }
    // Let every link (and the writer) run to its first wait before the chain starts, so that each
    // link is woken by the previous one rather than polled for the first time in spawn order.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    first_tx.send(()).unwrap();
    for done in done {
        done.await.unwrap().unwrap();
    }
    let batches = wal.stats().batches;
    wal.close_async().await;
    batches
}

#[tokio::test(flavor = "current_thread")]
async fn yields_let_a_chain_of_submitting_tasks_share_a_batch() {
    let without = batches_for_a_chain(0, 12).await;
    let with = batches_for_a_chain(4, 12).await;
    // Taken at once, the batch holds only the append that woke the writer; each yield lets one
    // more link of the chain submit first.
    assert_eq!(without, 12, "no yields: one batch per link");
    assert!(with * 3 <= without, "4 yields gave {with} batches for 12 links");
}

#[test]
fn too_many_yields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = WalOptions {
        task_yields: TASK_YIELDS_MAX + 1,
        ..WalOptions::default()
    };
    assert!(matches!(Wal::open(dir.path(), bad), Err(WalError::InvalidOptions(_))));
}
