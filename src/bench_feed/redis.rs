//! The reference for the feed benchmark: the classic Redis design of a home feed, as most
//! social products built it before they outgrew it.
//!
//! - `followers:{author}` and `celebs:{user}` are sets (the followed authors past the pull
//!   threshold); `active` is the set of readers whose home lists are kept.
//! - A post goes to `tl:{author}` (LPUSH + LTRIM to the cap) and, unless its author is a
//!   celebrity, to `home:{f}` for every active follower `f` and the author (LPUSH + LTRIM), all in
//!   one pipeline inside the post request: fan-out on write, so the post's ack covers it.
//! - A home read fetches `home:{u}` (LRANGE over the cap) and `celebs:{u}` in one round trip,
//!   then each followed celebrity's latest posts and `SMISMEMBER seen:{u}` over the candidates
//!   in a second, and the client merges, drops seen posts and orders by recency.
//!
//! Posts are `id:author:text` strings, ids from `INCR post:id`. A tiny RESP2 client (no crate):
//! commands out as arrays of bulk strings, replies parsed with bounded lengths.

use std::collections::BTreeSet;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest bulk reply accepted, in bytes.
const BULK_BYTES_MAX: usize = 64 << 20;
/// Most elements of one array reply.
const ARRAY_LEN_MAX: usize = 1 << 20;
/// Commands sent per pipeline while loading.
pub const LOAD_PIPELINE_MAX: usize = 1_000;

/// A RESP reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `$-1` or `*-1`.
    Nil,
    /// `:n`.
    Int(i64),
    /// `$n` bulk string or `+` simple string.
    Bytes(Vec<u8>),
    /// `*n`.
    Array(Vec<Value>),
}

/// One connection.
pub struct Resp {
    conn: BufReader<TcpStream>,
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl Resp {
    /// Connects to `addr`.
    pub async fn connect(addr: &str) -> Result<Resp, String> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("redis {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Resp {
            conn: BufReader::with_capacity(64 << 10, s),
        })
    }

    /// Sends every command, then reads every reply, in order (one round trip).
    pub async fn pipeline(&mut self, cmds: &[Vec<Vec<u8>>]) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for c in cmds {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            encode(&mut out, &args);
        }
        self.conn.get_mut().write_all(&out).await.map_err(|e| e.to_string())?;
        let mut replies = Vec::with_capacity(cmds.len());
        for _ in cmds {
            replies.push(self.read_value().await?);
        }
        Ok(replies)
    }

    /// One command.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Value, String> {
        let cmd: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        Ok(self.pipeline(&[cmd]).await?.remove(0))
    }

    async fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if !line.ends_with("\r\n") {
            return Err("redis closed the connection".into());
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read_value(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>> {
        Box::pin(async move {
            let line = self.line().await?;
            let (kind, rest) = line.split_at(1.min(line.len()));
            let n = || rest.parse::<i64>().map_err(|_| format!("bad RESP length {rest:?}"));
            match kind {
                "+" => Ok(Value::Bytes(rest.as_bytes().to_vec())),
                "-" => Err(format!("redis: {rest}")),
                ":" => Ok(Value::Int(n()?)),
                "$" => {
                    let len = n()?;
                    if len < 0 {
                        return Ok(Value::Nil);
                    }
                    let len = len as usize;
                    if len > BULK_BYTES_MAX {
                        return Err(format!("bulk reply of {len} bytes"));
                    }
                    let mut buf = vec![0u8; len + 2];
                    self.conn.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                    buf.truncate(len);
                    Ok(Value::Bytes(buf))
                }
                "*" => {
                    let len = n()?;
                    if len < 0 {
                        return Ok(Value::Nil);
                    }
                    if len as usize > ARRAY_LEN_MAX {
                        return Err(format!("array reply of {len} elements"));
                    }
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read_value().await?);
                    }
                    Ok(Value::Array(items))
                }
                _ => Err(format!("bad RESP line {line:?}")),
            }
        })
    }
}

fn cmd(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

/// The elements of an array reply as byte strings.
fn strings(v: Value) -> Vec<Vec<u8>> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| match i {
                Value::Bytes(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `(id, author)` of a stored post.
fn post_key(p: &[u8]) -> Option<(u64, u64)> {
    let mut it = p.splitn(3, |b| *b == b':');
    let id = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    let author = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    Some((id, author))
}

/// The classic feed on one connection.
pub struct RedisFeed {
    pub conn: Resp,
    /// Home list length kept (the plexus cap).
    pub home_len_max: usize,
    /// Posts read per followed celebrity.
    pub pulled_per_author: usize,
}

impl RedisFeed {
    /// Posts `text` as `author` (a celebrity when `pulled`), fanned out to its active
    /// followers before it returns; the post id.
    pub async fn post(&mut self, author: u64, text: &[u8], pulled: bool) -> Result<u64, String> {
        let id = match self.conn.cmd(&[b"INCR", b"post:id"]).await? {
            Value::Int(i) => i as u64,
            other => return Err(format!("INCR answered {other:?}")),
        };
        let mut payload = format!("{id}:{author}:").into_bytes();
        payload.extend_from_slice(text);
        let cap = (self.home_len_max - 1).to_string();
        let tl = format!("tl:{author}");
        let mut cmds = vec![
            cmd(&[b"LPUSH", tl.as_bytes(), &payload]),
            cmd(&[b"LTRIM", tl.as_bytes(), b"0", cap.as_bytes()]),
        ];
        if !pulled {
            let followers = strings(
                self.conn
                    .cmd(&[b"SMEMBERS", format!("followers:{author}").as_bytes()])
                    .await?,
            );
            let mut ask = vec![b"SMISMEMBER".to_vec(), b"active".to_vec()];
            ask.extend(followers.iter().cloned());
            ask.push(author.to_string().into_bytes());
            let active = match self.conn.pipeline(&[ask.clone()]).await?.remove(0) {
                Value::Array(a) => a,
                other => return Err(format!("SMISMEMBER answered {other:?}")),
            };
            for (who, yes) in ask[2..].iter().zip(active) {
                if yes == Value::Int(1) {
                    let home = [b"home:".as_slice(), who].concat();
                    cmds.push(cmd(&[b"LPUSH", &home, &payload]));
                    cmds.push(cmd(&[b"LTRIM", &home, b"0", cap.as_bytes()]));
                }
            }
        }
        self.conn.pipeline(&cmds).await?;
        Ok(id)
    }

    /// A home page of `limit` posts, newest first: `(id, author)`.
    pub async fn home(&mut self, user: u64, limit: usize) -> Result<Vec<(u64, u64)>, String> {
        let cap = (self.home_len_max - 1).to_string();
        let first = self
            .conn
            .pipeline(&[
                cmd(&[b"LRANGE", format!("home:{user}").as_bytes(), b"0", cap.as_bytes()]),
                cmd(&[b"SMEMBERS", format!("celebs:{user}").as_bytes()]),
            ])
            .await?;
        let mut it = first.into_iter();
        let home = strings(it.next().unwrap_or(Value::Nil));
        let celebs = strings(it.next().unwrap_or(Value::Nil));
        let per = (self.pulled_per_author - 1).to_string();
        let mut cmds: Vec<Vec<Vec<u8>>> = celebs
            .iter()
            .map(|c| cmd(&[b"LRANGE", &[b"tl:".as_slice(), c].concat(), b"0", per.as_bytes()]))
            .collect();
        let mut posts: BTreeSet<(u64, u64)> = home.iter().filter_map(|p| post_key(p)).collect();
        if !cmds.is_empty() {
            for v in self.conn.pipeline(&cmds).await? {
                posts.extend(strings(v).iter().filter_map(|p| post_key(p)));
            }
        }
        let candidates: Vec<(u64, u64)> = posts.into_iter().rev().take(2_000).collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut ask = vec![b"SMISMEMBER".to_vec(), format!("seen:{user}").into_bytes()];
        ask.extend(candidates.iter().map(|(id, a)| format!("{a}:{id}").into_bytes()));
        cmds = vec![ask];
        let seen = match self.conn.pipeline(&cmds).await?.remove(0) {
            Value::Array(a) => a,
            other => return Err(format!("SMISMEMBER answered {other:?}")),
        };
        Ok(candidates
            .into_iter()
            .zip(seen)
            .filter(|(_, s)| *s != Value::Int(1))
            .map(|(p, _)| p)
            .take(limit)
            .collect())
    }

    /// Whether `user`'s home list holds post `id` among its newest `within`.
    pub async fn home_holds(&mut self, user: u64, id: u64, within: usize) -> Result<bool, String> {
        let last = (within - 1).to_string();
        let v = self
            .conn
            .cmd(&[b"LRANGE", format!("home:{user}").as_bytes(), b"0", last.as_bytes()])
            .await?;
        Ok(strings(v).iter().filter_map(|p| post_key(p)).any(|(i, _)| i == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_resp_arrays_and_posts_parse_back() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b"v1"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n");
        assert_eq!(post_key(b"17:4:hello: there"), Some((17, 4)));
        assert_eq!(post_key(b"x:4:hello"), None);
        assert_eq!(
            strings(Value::Array(vec![Value::Bytes(b"a".to_vec()), Value::Nil])),
            vec![b"a".to_vec()]
        );
    }
}
