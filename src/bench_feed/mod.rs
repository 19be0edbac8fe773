//! `plexus bench --workload feed`: the social feed under a realistic mix, on plexus or on the
//! classic Redis design (`--redis ADDR`), with the same seeded data and load.
//!
//! Phases: generate a power-law follow graph (`graph`); load it (plexus: one `FollowMany` per
//! user; Redis: follower sets); make `--readers` users active (plexus: a first home read
//! materialises their timelines; Redis: the `active` set); post `--posts-before` posts by random
//! authors so home feeds hold something; then measure for `--duration` seconds with
//! `--concurrency` requests in flight, one post per `--reads-per-post` (50) home reads (ranked,
//! 20 posts, of random readers). One post in ten by an author with active followers is followed by a lag probe that
//! polls up to three of those followers' home feeds until the post is in all of them: the
//! fan-out lag from the post's acknowledgement. Probe reads are not counted as home reads.
//! Progress goes to stderr; the figures to stdout (JSON with `--json`).

mod graph;
mod redis;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use plexus_client::{Client, ClientConfig, FeedCursor, PostRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

use crate::cli::{BenchArgs, CliResult};
use graph::FeedGraph;
use redis::{RedisFeed, Resp, LOAD_PIPELINE_MAX};

/// Posts on one measured home page.
const PAGE_POSTS: u32 = 20;
/// Bytes of a post's text.
const POST_BYTES: usize = 100;
/// One post in this many (of authors with active followers) gets a lag probe.
const PROBE_ONE_IN: u32 = 10;
/// Lag probes running at once; a post finding none free goes unprobed.
const PROBES_IN_FLIGHT_MAX: usize = 16;
/// Followers one probe watches.
const PROBE_FOLLOWERS_MAX: usize = 3;
/// How long a probe waits for a post before it counts it as lost.
const PROBE_GIVE_UP: Duration = Duration::from_secs(10);
/// Pause between a probe's reads.
const PROBE_POLL: Duration = Duration::from_millis(5);
/// Most users, edges and readers the generator accepts.
const USERS_MAX: u64 = 10_000_000;

fn new_hist() -> CliResult<Histogram<u64>> {
    Histogram::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())
}

/// Where the benchmark runs.
enum Target {
    Plexus(Client),
    Redis { addr: String, home_len_max: usize },
}

/// One worker's handle on the target.
enum Conn {
    Plexus(Client),
    Redis(Box<RedisFeed>),
}

impl Target {
    async fn conn(&self) -> CliResult<Conn> {
        Ok(match self {
            Target::Plexus(c) => Conn::Plexus(c.clone()),
            Target::Redis { addr, home_len_max } => Conn::Redis(Box::new(RedisFeed {
                conn: Resp::connect(addr).await?,
                home_len_max: *home_len_max,
                pulled_per_author: 100,
            })),
        })
    }
}

impl Conn {
    async fn post(&mut self, author: u64, text: &[u8], pulled: bool) -> Result<u64, String> {
        match self {
            Conn::Plexus(c) => c
                .feed_post(author, text.to_vec())
                .await
                .map(|p| p.id)
                .map_err(|e| e.to_string()),
            Conn::Redis(r) => r.post(author, text, pulled).await,
        }
    }

    async fn home(&mut self, user: u64, ranked: bool) -> Result<usize, String> {
        match self {
            Conn::Plexus(c) => c
                .feed_home(user, PAGE_POSTS, FeedCursor::Latest, ranked)
                .await
                .map(|p| p.posts.len())
                .map_err(|e| e.to_string()),
            Conn::Redis(r) => r.home(user, PAGE_POSTS as usize).await.map(|p| p.len()),
        }
    }

    async fn holds(&mut self, user: u64, post: PostRef) -> Result<bool, String> {
        match self {
            Conn::Plexus(c) => c
                .feed_home(user, 50, FeedCursor::Latest, false)
                .await
                .map(|p| p.posts.iter().any(|x| x.post.post == post))
                .map_err(|e| e.to_string()),
            Conn::Redis(r) => r.home_holds(user, post.id, 50).await,
        }
    }
}

/// Runs `f` for each item with `concurrency` at once, printing progress under `what`.
async fn for_each<T, F, Fut>(what: &str, items: Vec<T>, concurrency: usize, f: F) -> CliResult<u64>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let total = items.len();
    let items = Arc::new(Mutex::new(items.into_iter()));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let f = Arc::new(f);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (items, done, errors, f) = (items.clone(), done.clone(), errors.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(item) = items.lock().await.next() else { return };
                if let Err(e) = f(item).await {
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("{e}");
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let reporter = {
        let (done, what) = (done.clone(), what.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let d = done.load(Ordering::Relaxed);
                let rate = d as f64 / started.elapsed().as_secs_f64();
                eprintln!("{what}: {d}/{total} ({rate:.0}/s)");
            }
        })
    };
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    reporter.abort();
    let errors = errors.load(Ordering::Relaxed);
    eprintln!(
        "{what}: {total} in {:.1}s, {errors} errors",
        started.elapsed().as_secs_f64()
    );
    Ok(errors)
}

fn text(n: u64) -> Vec<u8> {
    let mut t = format!("post {n} ").into_bytes();
    t.resize(POST_BYTES, b'.');
    t
}

/// Loads the graph, the readers and the first posts.
async fn load(
    target: &Target,
    g: &Arc<FeedGraph>,
    readers: &[u64],
    pulled: &Arc<BTreeSet<u64>>,
    args: &BenchArgs,
) -> CliResult {
    let c = args.concurrency;
    match target {
        Target::Plexus(client) => {
            let (cl, gr) = (client.clone(), g.clone());
            let users: Vec<u64> = (1..=g.users).collect();
            for_each("follows", users, c, move |u| {
                let (cl, gr) = (cl.clone(), gr.clone());
                async move {
                    let dsts = gr.followees[(u - 1) as usize].clone();
                    cl.follow_many(u, dsts)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("follows of {u}: {e}"))
                }
            })
            .await?;
            // The in-halves travel through the outboxes: wait for the most followed authors.
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut top: Vec<(u64, u64)> = g.follower_counts.iter().map(|(a, n)| (*n, *a)).collect();
            top.sort_unstable_by(|a, b| b.cmp(a));
            for (n, a) in top.into_iter().take(20) {
                while client
                    .degree(a, plexus_client::Direction::In)
                    .await
                    .map_err(|e| e.to_string())?
                    < n
                {
                    if Instant::now() > deadline {
                        return Err(format!("in-edges of author {a} did not all arrive within 300 s"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let cl = client.clone();
            for_each("readers", readers.to_vec(), c, move |r| {
                let cl = cl.clone();
                async move {
                    cl.feed_home(r, PAGE_POSTS, FeedCursor::Latest, true)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("first read of {r}: {e}"))
                }
            })
            .await?;
        }
        Target::Redis { addr, .. } => {
            let mut followers: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for (i, fs) in g.followees.iter().enumerate() {
                for a in fs {
                    followers.entry(*a).or_default().push(i as u64 + 1);
                }
            }
            let mut cmds: Vec<Vec<Vec<u8>>> = vec![vec![b"FLUSHALL".to_vec()]];
            for (a, fs) in &followers {
                for chunk in fs.chunks(1_000) {
                    let mut cmd = vec![b"SADD".to_vec(), format!("followers:{a}").into_bytes()];
                    cmd.extend(chunk.iter().map(|f| f.to_string().into_bytes()));
                    cmds.push(cmd);
                }
            }
            for (i, fs) in g.followees.iter().enumerate() {
                let celebs: Vec<&u64> = fs.iter().filter(|a| pulled.contains(a)).collect();
                if !celebs.is_empty() {
                    let mut cmd = vec![b"SADD".to_vec(), format!("celebs:{}", i + 1).into_bytes()];
                    cmd.extend(celebs.iter().map(|a| a.to_string().into_bytes()));
                    cmds.push(cmd);
                }
            }
            for chunk in readers.chunks(1_000) {
                let mut cmd = vec![b"SADD".to_vec(), b"active".to_vec()];
                cmd.extend(chunk.iter().map(|r| r.to_string().into_bytes()));
                cmds.push(cmd);
            }
            let started = Instant::now();
            let mut conn = Resp::connect(addr).await?;
            let total = cmds.len();
            for (i, chunk) in cmds.chunks(LOAD_PIPELINE_MAX).enumerate() {
                conn.pipeline(chunk).await?;
                if i % 50 == 0 {
                    eprintln!("redis load: {}/{total} commands", (i + 1) * LOAD_PIPELINE_MAX);
                }
            }
            eprintln!(
                "redis load: {total} commands in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Some posts before the measurement, so home feeds hold something.
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x706f_7374);
    let posts: Vec<(u64, u64)> = (0..args.posts_before)
        .map(|n| (n, rng.gen_range(1..=g.users)))
        .collect();
    let conns = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..c.max(1) {
        conns.lock().await.push(target.conn().await?);
    }
    let pulled = pulled.clone();
    for_each("posts", posts, c, move |(n, author)| {
        let (conns, pulled) = (conns.clone(), pulled.clone());
        async move {
            let mut conn = conns.lock().await.pop().ok_or("no connection free")?;
            let r = conn.post(author, &text(n), pulled.contains(&author)).await.map(|_| ());
            conns.lock().await.push(conn);
            r
        }
    })
    .await?;
    Ok(())
}

/// What the measured phase found.
struct Measured {
    posts: Histogram<u64>,
    homes: Histogram<u64>,
    lag: Histogram<u64>,
    errors: u64,
    lost: u64,
    secs: f64,
}

async fn measure(
    target: &Target,
    g: &Arc<FeedGraph>,
    readers: &Arc<Vec<u64>>,
    pulled: &Arc<BTreeSet<u64>>,
    args: &BenchArgs,
) -> CliResult<Measured> {
    let reader_followers = Arc::new(g.reader_followers(readers));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let probes = Arc::new(Semaphore::new(PROBES_IN_FLIGHT_MAX));
    let lag = Arc::new(std::sync::Mutex::new(new_hist()?));
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut conn = target.conn().await?;
        let mut probe_conns = Vec::new();
        if w < PROBES_IN_FLIGHT_MAX {
            probe_conns.push(target.conn().await?);
        }
        let probe_pool = Arc::new(Mutex::new(probe_conns));
        let (g, readers, pulled, rf) = (g.clone(), readers.clone(), pulled.clone(), reader_followers.clone());
        let (probes, lag, lost) = (probes.clone(), lag.clone(), lost.clone());
        let (seed, ranked, reads_per_post) = (args.seed, !args.chronological, args.reads_per_post);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9e37_79b9));
            let (mut posts, mut homes) = (new_hist()?, new_hist()?);
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let t = Instant::now();
                if rng.gen_ratio(1, reads_per_post.saturating_add(1)) {
                    let author = rng.gen_range(1..=g.users);
                    let is_pulled = pulled.contains(&author);
                    match conn.post(author, &text(n), is_pulled).await {
                        Ok(id) => {
                            let acked = Instant::now();
                            let _ = posts.record(t.elapsed().as_micros().max(1) as u64);
                            let watchers = rf.get(&author).filter(|_| !is_pulled);
                            if let (Some(fs), true) = (watchers, rng.gen_ratio(1, PROBE_ONE_IN)) {
                                if let (Ok(permit), Some(pc)) =
                                    (probes.clone().try_acquire_owned(), probe_pool.lock().await.pop())
                                {
                                    let mut fs = fs.clone();
                                    fs.truncate(PROBE_FOLLOWERS_MAX);
                                    let (lag, lost, pool) = (lag.clone(), lost.clone(), probe_pool.clone());
                                    tokio::spawn(async move {
                                        let mut pc = pc;
                                        let post = PostRef { author, id };
                                        let mut waiting = fs;
                                        while !waiting.is_empty() && acked.elapsed() < PROBE_GIVE_UP {
                                            let mut still = Vec::new();
                                            for f in waiting {
                                                if !pc.holds(f, post).await.unwrap_or(false) {
                                                    still.push(f);
                                                }
                                            }
                                            waiting = still;
                                            if !waiting.is_empty() {
                                                tokio::time::sleep(PROBE_POLL).await;
                                            }
                                        }
                                        if waiting.is_empty() {
                                            let us = acked.elapsed().as_micros().max(1) as u64;
                                            let _ = lag.lock().map(|mut h| h.record(us));
                                        } else {
                                            lost.fetch_add(1, Ordering::Relaxed);
                                        }
                                        pool.lock().await.push(pc);
                                        drop(permit);
                                    });
                                }
                            }
                        }
                        Err(_) => errors += 1,
                    }
                } else {
                    let user = readers[rng.gen_range(0..readers.len())];
                    match conn.home(user, ranked).await {
                        Ok(_) => {
                            let _ = homes.record(t.elapsed().as_micros().max(1) as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            Ok::<_, String>((posts, homes, errors))
        }));
    }
    let (mut posts, mut homes, mut errors) = (new_hist()?, new_hist()?, 0);
    for t in tasks {
        let (p, h, e) = t.await.map_err(|e| e.to_string())??;
        posts.add(&p).map_err(|e| e.to_string())?;
        homes.add(&h).map_err(|e| e.to_string())?;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    // Let the probes still running finish (they give up after PROBE_GIVE_UP).
    let _all = probes
        .acquire_many(PROBES_IN_FLIGHT_MAX as u32)
        .await
        .map_err(|e| e.to_string())?;
    let lag = lag.lock().map_err(|_| "lag histogram poisoned")?.clone();
    Ok(Measured {
        posts,
        homes,
        lag,
        errors,
        lost: lost.load(Ordering::Relaxed),
        secs,
    })
}

/// `plexus bench --workload feed`.
pub fn run(args: &BenchArgs) -> CliResult {
    if args.users < 2 || args.users > USERS_MAX || args.readers == 0 || args.readers > args.users {
        return Err(format!(
            "--users must be in 2..={USERS_MAX} and --readers in 1..=--users"
        ));
    }
    if args.edges > args.users.saturating_mul(graph::OUT_DEGREE_MAX as u64) {
        return Err("--edges is more than the users can hold".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let t = Instant::now();
        let g = Arc::new(FeedGraph::generate(args.users, args.edges, args.seed));
        let pulled: Arc<BTreeSet<u64>> = Arc::new(
            g.follower_counts
                .iter()
                .filter(|(_, n)| **n > args.pulled_followers_min)
                .map(|(a, _)| *a)
                .collect(),
        );
        let readers = Arc::new(g.readers(args.readers, args.seed));
        eprintln!(
            "graph: {} users, {} edges, {} authors past {} followers, {} readers ({:.1}s)",
            g.users,
            g.edges(),
            pulled.len(),
            args.pulled_followers_min,
            readers.len(),
            t.elapsed().as_secs_f64()
        );
        let target = match &args.redis {
            Some(addr) => Target::Redis {
                addr: addr.clone(),
                home_len_max: args.home_len_max,
            },
            None => {
                let cfg = ClientConfig::load(&args.client.config)
                    .map_err(|e| format!("{}: {e}", args.client.config.display()))?;
                let cfg = ClientConfig {
                    in_flight_max: (args.concurrency + PROBES_IN_FLIGHT_MAX).max(cfg.in_flight_max),
                    ..cfg
                };
                Target::Plexus(Client::connect(cfg).await.map_err(|e| format!("connect: {e}"))?)
            }
        };
        let t = Instant::now();
        load(&target, &g, &readers, &pulled, args).await?;
        let load_secs = t.elapsed().as_secs_f64();
        let m = measure(&target, &g, &readers, &pulled, args).await?;
        if let Target::Plexus(c) = &target {
            c.close().await;
        }
        let system = if args.redis.is_some() { "redis" } else { "plexus" };
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
        let out = json!({
            "workload": "feed", "system": system, "users": g.users, "edges": g.edges(),
            "readers": readers.len(), "pulled_authors": pulled.len(), "concurrency": args.concurrency,
            "load_secs": load_secs, "duration_secs": m.secs,
            "posts_per_sec": m.posts.len() as f64 / m.secs, "home_reads_per_sec": m.homes.len() as f64 / m.secs,
            "post_p50_us": q(&m.posts, 0.5), "post_p99_us": q(&m.posts, 0.99),
            "home_p50_us": q(&m.homes, 0.5), "home_p99_us": q(&m.homes, 0.99),
            "fanout_lag_samples": m.lag.len(), "fanout_lag_p50_us": q(&m.lag, 0.5),
            "fanout_lag_p99_us": q(&m.lag, 0.99), "fanout_lost": m.lost, "errors": m.errors,
        });
        if args.client.json {
            println!("{out}");
        } else {
            println!(
                "feed on {system}: {:.0} home reads/s (p50 {} us, p99 {} us), {:.0} posts/s (p50 {} us, p99 {} us); \
                 fan-out lag p50 {} us, p99 {} us over {} probes ({} lost); {} errors",
                m.homes.len() as f64 / m.secs,
                q(&m.homes, 0.5),
                q(&m.homes, 0.99),
                m.posts.len() as f64 / m.secs,
                q(&m.posts, 0.5),
                q(&m.posts, 0.99),
                q(&m.lag, 0.5),
                q(&m.lag, 0.99),
                m.lag.len(),
                m.lost,
                m.errors
            );
        }
        Ok(())
    })
}
