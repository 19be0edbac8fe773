//! The social feed on three real node processes: follow, post, home feed (time-ordered and
//! ranked, paged by cursor), seen, pulled authors, the home cap, delete, unfollow and bad input;
//! then a node SIGKILLed while posts fan out, after which every follower's home feed holds each
//! acknowledged post exactly once; and a bulk import killed half-way and run again.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::workload::leader_of;
use plexus_client::{Client, ClientError, ErrorReply, FeedCursor, PostRef, ScoreMode};
use plexus_proto::{shard_for_key, ShardKey};

const SHARDS: u32 = 8;
/// The feed settings the test cluster runs with: a low pull threshold and a small cap, so both
/// are reached with a handful of users and posts.
const PULLED_FOLLOWERS_MIN: u64 = 3;
const HOME_LEN_MAX: usize = 30;

/// Rewrites every node's `[feed]` settings (the same on every node, as the cluster requires).
fn set_feed_config(dir: &Path) {
    for id in 1..=3 {
        let path = dir.join(format!("node-{id}/node.toml"));
        let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let feed = cfg
            .entry("feed")
            .or_insert(toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
        feed.insert("pulled_followers_min".into(), (PULLED_FOLLOWERS_MIN as i64).into());
        feed.insert("home_len_max".into(), (HOME_LEN_MAX as i64).into());
        feed.insert("follow_backfill_posts".into(), 10.into());
        let mut scoring = toml::Table::new();
        scoring.insert("model".into(), "../model.safetensors".into());
        cfg.insert("scoring".into(), toml::Value::Table(scoring));
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    }
    std::fs::write(dir.join("model.safetensors"), model_bytes()).unwrap();
}

/// Width of the feature vectors the test's ranking model takes.
const FEATURE_DIM: usize = 4;

/// A two-layer GraphSAGE model (4 -> 8 -> 4) with fixed, uneven weights, as safetensors bytes
/// named the way PyTorch Geometric names them.
fn model_bytes() -> Vec<u8> {
    use plexus_kernels::{AggOp, SageLayer, SageModel};
    let layer = |i: usize, o: usize, seed: usize, last: bool| SageLayer {
        in_dim: i,
        out_dim: o,
        agg: AggOp::Mean,
        w_neigh: (0..o * i).map(|k| (((k * 5 + seed) % 9) as f32 - 4.0) / 3.0).collect(),
        bias: (0..o).map(|k| (k % 3) as f32 / 10.0).collect(),
        w_self: (0..o * i)
            .map(|k| (((k * 7 + seed + 2) % 11) as f32 - 5.0) / 4.0)
            .collect(),
        relu: !last,
        l2_normalize: !last,
    };
    let model = SageModel {
        layers: vec![layer(FEATURE_DIM, 8, 1, false), layer(8, FEATURE_DIM, 4, true)],
    };
    plexus_kernels::weights::save_sage(&model, "convs.").unwrap()
}

/// Every post of `user`'s feed over all pages of `limit`, in page order.
async fn all_pages(c: &Client, user: u64, ranked: bool, limit: u32) -> Vec<PostRef> {
    let mut out = Vec::new();
    let mut cursor = FeedCursor::Latest;
    for _ in 0..1_000 {
        let page = c.feed_home(user, limit, cursor, ranked).await.unwrap();
        out.extend(page.posts.iter().map(|p| p.post.post));
        match page.next {
            Some(n) => cursor = FeedCursor::Before(n),
            None => return out,
        }
    }
    panic!("home feed of {user} did not end within 1000 pages");
}

/// Polls `user`'s time-ordered feed until `done` holds of it, for up to `within`.
async fn eventually(c: &Client, user: u64, within: Duration, done: impl Fn(&[PostRef]) -> bool) -> Vec<PostRef> {
    let deadline = Instant::now() + within;
    loop {
        let feed = all_pages(c, user, false, 50).await;
        if done(&feed) {
            return feed;
        }
        assert!(
            Instant::now() < deadline,
            "home feed of {user} never got there: {feed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn server_error(e: ClientError) -> ErrorReply {
    match e {
        ClientError::Server(e) => e,
        other => panic!("not a server error: {other}"),
    }
}

fn plexus(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(common::BIN)
        .args(args)
        .arg("--config")
        .arg(dir.join("client.toml"))
        .output()
        .expect("run plexus");
    assert!(
        out.status.success(),
        "plexus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_end_to_end_on_three_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let port = common::base_port(7).to_string();
    let shards = SHARDS.to_string();
    let args = ["--nodes", "3", "--shards", &shards, "--base-port", &port];
    common::up(&dir, &args, Duration::from_secs(180)).stop();
    set_feed_config(&dir);
    let up = common::up(&dir, &args, Duration::from_secs(180));
    let c = common::client(&dir).await;

    // Reader 1 follows an ordinary author (10), a popular one (20) and one who will delete (30).
    let (reader, author, star, deleter) = (1, 10, 20, 30);
    // Signing up registers a user at once; being followed does too, once the follow's in-edge
    // reaches the user's shard.
    for u in [author, star, deleter] {
        assert!(c.feed_user_add(u).await.unwrap());
    }
    for u in [author, star, deleter] {
        assert!(c.follow(reader, u).await.unwrap());
    }
    // Four more followers make the star a pulled author.
    for fan in 101..=104 {
        c.follow(fan, star).await.unwrap();
    }
    assert!(all_pages(&c, reader, false, 10).await.is_empty(), "a new feed is empty");
    let mut posts = Vec::new();
    for (u, n) in [(author, 3), (star, 2), (deleter, 2)] {
        for i in 0..n {
            posts.push(c.feed_post(u, format!("{u} says {i}")).await.unwrap());
        }
    }
    // The CLI posts too, and prints the id.
    let id: u64 = plexus(&dir, &["feed", "post", &author.to_string(), "from the cli"])
        .trim()
        .parse()
        .unwrap();
    posts.push(PostRef { author, id });
    let want: BTreeSet<PostRef> = posts.iter().copied().collect();
    let feed = eventually(&c, reader, Duration::from_secs(20), |f| {
        f.iter().copied().collect::<BTreeSet<_>>() == want
    })
    .await;
    let mut sorted = feed.clone();
    sorted.sort_by_key(|p| std::cmp::Reverse(*p));
    assert_eq!(feed, sorted, "time-ordered means newest first");
    // Ranked paging hands out the same posts, each once, however small the pages.
    let ranked = all_pages(&c, reader, true, 3).await;
    assert_eq!(ranked.len(), want.len());
    assert_eq!(ranked.iter().copied().collect::<BTreeSet<_>>(), want);
    // With feature vectors, the nodes' GraphSAGE model ranks: the reader's embedding over the
    // authors it follows against each author's. Posts a few seconds apart differ in recency by
    // far less than the authors differ in similarity, so a ranked page is the authors' posts in
    // the model's order of authors.
    for u in [reader, author, star, deleter] {
        let x: Vec<f32> = (0..FEATURE_DIM as u64)
            .map(|j| ((u * 31 + j * 17) % 13) as f32 - 6.0)
            .collect();
        c.set_features(u, x).await.unwrap();
    }
    // Scoring reads features stale (the nearest replica): wait until every author's arrived.
    let deadline = Instant::now() + Duration::from_secs(20);
    let by_model = loop {
        let s = c
            .score(reader, vec![author, star, deleter], 3, ScoreMode::Sage)
            .await
            .unwrap();
        if s.len() == 3 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(by_model.len(), 3, "{by_model:?}");
    for w in by_model.windows(2) {
        assert!(
            w[0].1 - w[1].1 > 0.01,
            "test data ranks authors too closely: {by_model:?}"
        );
    }
    let page = c.feed_home(reader, 50, FeedCursor::Latest, true).await.unwrap();
    let mut authors: Vec<u64> = page.posts.iter().map(|p| p.post.post.author).collect();
    authors.dedup();
    assert_eq!(
        authors,
        by_model.iter().map(|s| s.0).collect::<Vec<_>>(),
        "ranked by the model: {by_model:?}"
    );
    // The star's posts reached the reader by pull, not fan-out: every follower sees them.
    let fan_feed = all_pages(&c, 101, false, 50).await;
    assert!(posts.iter().filter(|p| p.author == star).all(|p| fan_feed.contains(p)));

    // Seen posts leave the feed.
    assert!(c.feed_seen(reader, vec![posts[0], posts[3]]).await.unwrap());
    let feed = all_pages(&c, reader, false, 50).await;
    assert!(!feed.contains(&posts[0]) && !feed.contains(&posts[3]), "{feed:?}");
    let json = plexus(
        &dir,
        &["feed", "seen", &reader.to_string(), &posts[1].to_string(), "--json"],
    );
    assert!(json.contains("\"any_new\":true"), "{json}");

    // A delete reaches the home feed; an unfollow takes the author's posts out.
    let gone = posts[5];
    assert!(c.feed_delete(deleter, gone.id).await.unwrap());
    eventually(&c, reader, Duration::from_secs(20), |f| !f.contains(&gone)).await;
    assert!(c.unfollow(reader, deleter).await.unwrap());
    eventually(&c, reader, Duration::from_secs(20), |f| {
        f.iter().all(|p| p.author != deleter)
    })
    .await;

    // The cap: the home timeline keeps the newest HOME_LEN_MAX fanned-out posts.
    let mut many = Vec::new();
    for i in 0..40 {
        many.push(c.feed_post(author, format!("burst {i}")).await.unwrap());
    }
    let newest: BTreeSet<PostRef> = many[many.len() - HOME_LEN_MAX..].iter().copied().collect();
    let feed = eventually(&c, reader, Duration::from_secs(20), |f| {
        f.iter()
            .filter(|p| p.author == author)
            .copied()
            .collect::<BTreeSet<_>>()
            == newest
    })
    .await;
    assert_eq!(feed.iter().filter(|p| p.author == author).count(), HOME_LEN_MAX);

    // The CLI's home page and its cursor.
    let page = plexus(&dir, &["feed", "home", &reader.to_string(), "--limit", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(page.trim()).unwrap();
    assert_eq!(v["posts"].as_array().unwrap().len(), 2);
    let next = v["next"].as_str().expect("more pages").to_string();
    let page2 = plexus(
        &dir,
        &[
            "feed",
            "home",
            &reader.to_string(),
            "--limit",
            "2",
            "--before",
            &next,
            "--json",
        ],
    );
    let v2: serde_json::Value = serde_json::from_str(page2.trim()).unwrap();
    assert_ne!(v["posts"][0]["post"], v2["posts"][0]["post"]);

    // Bad input: clear errors, and the node keeps serving.
    assert!(
        matches!(server_error(c.feed_home(999_999, 10, FeedCursor::Latest, true).await.unwrap_err()), ErrorReply::NotFound(m) if m.contains("999999"))
    );
    assert!(
        matches!(server_error(c.feed_home(reader, 0, FeedCursor::Latest, true).await.unwrap_err()), ErrorReply::BadRequest(m) if m.contains("limit"))
    );
    assert!(matches!(
        server_error(c.feed_home(reader, 500, FeedCursor::Latest, true).await.unwrap_err()),
        ErrorReply::BadRequest(_)
    ));
    assert!(
        matches!(server_error(c.feed_home(reader, 5, FeedCursor::Before("garbage".into()), true).await.unwrap_err()), ErrorReply::BadRequest(m) if m.contains("not a home-feed cursor"))
    );
    let other = c
        .feed_home(101, 1, FeedCursor::Latest, true)
        .await
        .unwrap()
        .next
        .expect("a next page");
    assert!(
        matches!(server_error(c.feed_home(reader, 5, FeedCursor::Before(other), true).await.unwrap_err()), ErrorReply::BadRequest(m) if m.contains("user 101"))
    );
    assert!(
        matches!(server_error(c.feed_post(author, vec![b'x'; 5_000]).await.unwrap_err()), ErrorReply::BadRequest(m) if m.contains("bytes"))
    );
    assert!(matches!(
        server_error(c.feed_post(888_888, "who?").await.unwrap_err()),
        ErrorReply::NotFound(_)
    ));
    assert!(!all_pages(&c, reader, true, 10).await.is_empty());

    let restarted = fan_out_survives_a_sigkill(&dir, &c).await;
    import_resumes_after_a_kill(&dir, &c).await;
    c.close().await;
    let _ = restarted.stop();
    up.stop();
}

/// Ten followers on several shards read their (materialised) feeds; posts by one author fan out
/// while the leader of the author's shard is SIGKILLed (and restarted after 3 s). Every acknowledged post
/// must reach every follower once.
async fn fan_out_survives_a_sigkill(dir: &Path, c: &Client) -> common::NodeProcess {
    let author = 5_000;
    let followers: Vec<u64> = (5_001..5_011).collect();
    c.feed_user_add(author).await.unwrap();
    for f in &followers {
        c.follow(*f, author).await.unwrap();
    }
    for f in &followers {
        all_pages(c, *f, false, 50).await;
    }
    let shard = shard_for_key(&ShardKey::Id(author), SHARDS);
    let (victim, pid) = leader_of(c, shard).await.expect("the author's shard has a leader");
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            // Fewer than the home cap, so every acknowledged post must stay in every feed.
            for i in 0..HOME_LEN_MAX - 2 {
                if let Ok(p) = c.feed_post(author, format!("through the crash {i}")).await {
                    acked.push(p);
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!("killing node {victim} (pid {pid}), leader of the author's shard {shard}");
    common::signal(pid, "KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = common::start_node(dir, victim);
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 10, "only {} posts were acknowledged", acked.len());
    for f in &followers {
        let feed = eventually(c, *f, Duration::from_secs(60), |feed| {
            acked.iter().all(|p| feed.contains(p))
        })
        .await;
        let mine: Vec<PostRef> = feed.iter().filter(|p| p.author == author).copied().collect();
        let distinct: BTreeSet<PostRef> = mine.iter().copied().collect();
        assert_eq!(mine.len(), distinct.len(), "follower {f} holds a post twice");
    }
    restarted
}

/// A bulk import of follows and posts, SIGKILLed part-way and run again: every post exactly once.
async fn import_resumes_after_a_kill(dir: &Path, c: &Client) {
    /// Posts imported, by 50 authors (below the 800-entry timeline cap each).
    const POSTS: u64 = 6_000;
    let files = dir.join("import");
    std::fs::create_dir_all(&files).unwrap();
    let follows = files.join("follows.csv");
    let posts = files.join("posts.ndjson");
    let mut f = String::from("src,dst\n");
    for u in 0..200u64 {
        f.push_str(&format!("{},{}\n", 7_000 + u, 7_000 + (u * 7 + 1) % 200));
    }
    f.push_str("not,a number\n");
    std::fs::write(&follows, f).unwrap();
    let mut p = String::new();
    for i in 0..POSTS {
        p.push_str(&format!(
            "{{\"author\": {}, \"text\": \"import {i}\"}}\n",
            7_000 + i % 50
        ));
    }
    std::fs::write(&posts, p).unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "feed".to_string(),
            "import".into(),
            "--follows".into(),
            follows.display().to_string(),
            "--posts".into(),
            posts.display().to_string(),
            "--config".into(),
            dir.join("client.toml").display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let first_log = files.join("first.log");
    let mut first = Command::new(common::BIN)
        .args(args(&["--concurrency", "4"]))
        .stderr(std::fs::File::create(&first_log).unwrap())
        .spawn()
        .unwrap();
    // Let it checkpoint some of the posts, then kill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let checkpoint = std::fs::read_dir(dir).unwrap().filter_map(Result::ok).find(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("feed-import-") && name.ends_with(".json")
        });
        let posts_line = checkpoint
            .and_then(|e| std::fs::read(e.path()).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["posts"][2]["line"].as_u64())
            .unwrap_or(0);
        if posts_line > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the import never checkpointed any post");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = first.kill();
    let _ = first.wait();
    let out = Command::new(common::BIN).args(args(&["--json"])).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first_err = std::fs::read_to_string(&first_log).unwrap();
    assert!(
        first_err.contains("line 202"),
        "the bad follows line is reported: {first_err}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("first import run:\n{first_err}\nsecond import run:\n{stderr}");
    // The first run was cut off in the posts, and the second went on from its checkpoint.
    assert!(
        !first_err
            .lines()
            .any(|l| l.starts_with("posts:") && l.ends_with("done")),
        "{first_err}"
    );
    assert!(stderr.contains("already imported"), "the follows were done: {stderr}");
    assert!(stderr.contains("posts: resuming"), "the posts went on: {stderr}");
    for a in 0..50u64 {
        let page = c
            .timeline_read(7_000 + a, plexus_proto::Cursor::Latest, 1_000)
            .await
            .unwrap();
        let texts: Vec<String> = page
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.item).to_string())
            .collect();
        let distinct: BTreeSet<&String> = texts.iter().collect();
        let want = (POSTS / 50) as usize;
        assert_eq!(
            texts.len(),
            want,
            "author {}: {} posts, want {want}",
            7_000 + a,
            texts.len()
        );
        assert_eq!(distinct.len(), want, "author {} has a post twice", 7_000 + a);
    }
    for u in 0..200u64 {
        assert!(c.has_edge(7_000 + u, 7_000 + (u * 7 + 1) % 200).await.unwrap());
    }
}
