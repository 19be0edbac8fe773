//! `plexus feed`: the social feed's commands over the client library.

use clap::Subcommand;
use plexus_client::{Client, FeedCursor, FeedPage, PostRef};
use serde_json::json;

use crate::cli::{runtime, CliResult, ClientOpts};
use crate::client_cmds::connect;

#[derive(Subcommand, Debug)]
pub enum FeedCmd {
    /// Post TEXT as AUTHOR and print the post id (fan-out to followers follows).
    Post {
        author: u64,
        text: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A page of USER's home feed: ranked, or newest first with --chronological.
    Home {
        user: u64,
        /// Posts on the page (at most 200).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after a page: the cursor it printed.
        #[arg(long, conflicts_with = "after")]
        before: Option<String>,
        /// Only posts newer than this post id (a refresh).
        #[arg(long)]
        after: Option<u64>,
        /// Newest first instead of ranked.
        #[arg(long)]
        chronological: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Mark posts (AUTHOR:ID) seen by USER: they leave USER's home feed.
    Seen {
        user: u64,
        #[arg(required = true)]
        posts: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete AUTHOR's post POST_ID from the author's timeline and every home feed.
    Delete {
        author: u64,
        post_id: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Feed users.
    #[command(subcommand)]
    User(UserCmd),
    /// Bulk-load a follow graph and posts from files (CSV or NDJSON), resumable.
    Import(crate::feed_import::ImportArgs),
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Register users (following or being followed registers one too).
    Add {
        #[arg(required = true)]
        users: Vec<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

fn page_json(user: u64, page: &FeedPage) -> serde_json::Value {
    let posts: Vec<_> = page
        .posts
        .iter()
        .map(|p| {
            json!({"post": p.post.post.to_string(), "author": p.post.post.author, "id": p.post.post.id,
                   "score": p.score, "text": String::from_utf8_lossy(&p.post.text)})
        })
        .collect();
    json!({"user": user, "posts": posts, "next": page.next, "newest": page.newest})
}

pub fn run(cmd: FeedCmd) -> CliResult {
    if let FeedCmd::Import(args) = cmd {
        return crate::feed_import::run(args);
    }
    runtime()?.block_on(async move {
        let opts = match &cmd {
            FeedCmd::Post { client, .. }
            | FeedCmd::Home { client, .. }
            | FeedCmd::Seen { client, .. }
            | FeedCmd::Delete { client, .. }
            | FeedCmd::User(UserCmd::Add { client, .. }) => ClientOpts {
                config: client.config.clone(),
                json: client.json,
            },
            FeedCmd::Import(_) => return Err("feed import runs on its own runtime".into()),
        };
        let c = connect(&opts).await?;
        let result = one(&c, &opts, cmd).await;
        c.close().await;
        result
    })
}

async fn one(c: &Client, opts: &ClientOpts, cmd: FeedCmd) -> CliResult {
    let e = |e: plexus_client::ClientError| e.to_string();
    match cmd {
        FeedCmd::Post { author, text, .. } => {
            let post = c.feed_post(author, text.into_bytes()).await.map_err(e)?;
            if opts.json {
                println!("{}", json!({"author": author, "id": post.id, "post": post.to_string()}));
            } else {
                println!("{}", post.id);
            }
        }
        FeedCmd::Home {
            user,
            limit,
            before,
            after,
            chronological,
            ..
        } => {
            let cursor = match (before, after) {
                (Some(b), _) => FeedCursor::Before(b),
                (None, Some(a)) => FeedCursor::After(a),
                _ => FeedCursor::Latest,
            };
            let page = c.feed_home(user, limit, cursor, !chronological).await.map_err(e)?;
            if opts.json {
                println!("{}", page_json(user, &page));
            } else {
                for p in &page.posts {
                    println!(
                        "{:<28} {:>8.4}  {}",
                        p.post.post.to_string(),
                        p.score,
                        String::from_utf8_lossy(&p.post.text)
                    );
                }
                if page.posts.is_empty() {
                    println!("(no posts)");
                }
                if let Some(next) = &page.next {
                    println!("(more: --before {next})");
                }
            }
        }
        FeedCmd::Seen { user, posts, .. } => {
            let refs = posts
                .iter()
                .map(|p| p.parse::<PostRef>())
                .collect::<Result<Vec<_>, _>>()?;
            let n = refs.len();
            let new = c.feed_seen(user, refs).await.map_err(e)?;
            if opts.json {
                println!("{}", json!({"user": user, "posts": n, "any_new": new}));
            } else {
                println!("marked {n} posts seen{}", if new { "" } else { " (all were already)" });
            }
        }
        FeedCmd::Delete { author, post_id, .. } => {
            let existed = c.feed_delete(author, post_id).await.map_err(e)?;
            if opts.json {
                println!("{}", json!({"author": author, "id": post_id, "deleted": existed}));
            } else {
                println!("{author}:{post_id} {}", if existed { "deleted" } else { "not found" });
            }
        }
        FeedCmd::User(UserCmd::Add { users, .. }) => {
            let mut added = Vec::new();
            for u in &users {
                added.push(c.feed_user_add(*u).await.map_err(e)?);
            }
            if opts.json {
                let m: Vec<_> = users
                    .iter()
                    .zip(&added)
                    .map(|(u, a)| json!({"user": u, "new": a}))
                    .collect();
                println!("{}", json!({"users": m}));
            } else {
                for (u, a) in users.iter().zip(&added) {
                    println!("user {u} {}", if *a { "added" } else { "already registered" });
                }
            }
        }
        FeedCmd::Import(_) => return Err("feed import runs on its own runtime".into()),
    }
    Ok(())
}
