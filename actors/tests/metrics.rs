//! A real node's metrics listener: its counts follow the requests the node really served, and
//! bad scrapes (wrong path, wrong method, an endless head, too many connections) get a clear
//! HTTP answer while the listener goes on serving everyone else.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use plexus_actors::metrics::sample;
use plexus_actors::metrics_http::{METRICS_CONNS_MAX, METRICS_HEAD_BYTES_MAX};
use plexus_actors::start_node;
use plexus_proto::Cursor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` as is and returns the whole answer (the server closes after one).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the listener answers and closes within 10 s")
        .unwrap();
    String::from_utf8(out).unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("Content-Type: text/plain; version=0.0.4"), "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_counts_what_it_served_and_refuses_bad_scrapes_without_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::single_node_config(tmp.path(), 4, common::quick_timings());
    cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let node = start_node(cfg.clone()).await.unwrap();
    common::wait_for_leaders(&node).await;
    let addr = node.metrics_addr().expect("metrics_addr was set");

    let before = scrape(addr).await;
    assert_eq!(
        sample(&before, r#"plexus_requests_total{op="write",outcome="ok"}"#),
        Some(0.0)
    );

    let client = common::client(&cfg).await;
    for i in 0..5u64 {
        client.timeline_append(i, b"x".to_vec()).await.unwrap();
    }
    for i in 0..3u64 {
        client.timeline_read(i, Cursor::Latest, 10).await.unwrap();
    }
    let after = scrape(addr).await;
    assert_eq!(
        sample(&after, r#"plexus_requests_total{op="write",outcome="ok"}"#),
        Some(5.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, r#"plexus_request_duration_seconds_count{op="write"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"plexus_request_duration_seconds_bucket{op="write",le="+Inf"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(&after, r#"plexus_requests_total{op="read",outcome="ok"}"#),
        Some(3.0),
        "{after}"
    );
    assert!(sample(&after, r#"plexus_request_duration_seconds_sum{op="write"}"#).unwrap() > 0.0);
    // One node leads every group it hosts: the four shards and the meta group.
    for shard in ["0", "1", "2", "3", "meta"] {
        let series = format!("plexus_shard_leader{{shard=\"{shard}\"}}");
        assert_eq!(sample(&after, &series), Some(1.0), "{series}");
    }
    let fsyncs = sample(&after, "plexus_wal_fsyncs_total").unwrap();
    assert!(fsyncs >= 5.0, "every write was fsynced");
    assert_eq!(sample(&after, "plexus_wal_fsync_duration_seconds_count"), Some(fsyncs));
    assert!(sample(&after, "plexus_wal_fsync_duration_seconds_sum").unwrap() > 0.0);
    assert_eq!(sample(&after, "plexus_client_connections"), Some(1.0));
    assert!(sample(&after, "process_resident_memory_bytes").unwrap() > 0.0);

    // Bad scrapes: each gets its own clear answer.
    let not_found = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(not_found.starts_with("HTTP/1.1 404 Not Found\r\n"), "{not_found}");
    let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
    assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
    let garbage = exchange(addr, b"\x00\x01\x02 garbage\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{garbage}");
    let endless = vec![b'a'; METRICS_HEAD_BYTES_MAX + 100];
    let too_large = exchange(addr, &endless).await;
    assert!(too_large.starts_with("HTTP/1.1 431 "), "{too_large}");
    let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );

    // Connections that never send a request hold every slot: one more gets 503 at once, and
    // once they are gone the listener serves again.
    let mut idle = Vec::new();
    for _ in 0..METRICS_CONNS_MAX {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // The accept loop takes connections in order; a scrape after all of them finds no slot.
    let mut refused = String::new();
    for _ in 0..50 {
        refused = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        if refused.starts_with("HTTP/1.1 503 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{refused}");
    drop(idle);
    let mut served = false;
    for _ in 0..100 {
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        if answer.starts_with("HTTP/1.1 200 OK\r\n") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the listener serves again once the idle connections are closed");

    // The QUIC side never noticed: the client still writes.
    client.timeline_append(9, b"y".to_vec()).await.unwrap();
    client.close().await;
    node.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed by shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_fails_the_start_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = common::single_node_config(tmp.path(), 1, common::quick_timings());
    cfg.metrics_addr = Some(taken.local_addr().unwrap());
    let err = match start_node(cfg.clone()).await {
        Ok(_) => panic!("a node started on a metrics port that another socket holds"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("metrics listener on 127.0.0.1:"), "{err}");
    // Nothing was left holding the data directory: with the port free the same config starts.
    drop(taken);
    let node = start_node(cfg).await.expect("starts once the port is free");
    node.shutdown().await;
}
