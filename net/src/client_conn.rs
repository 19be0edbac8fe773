//! Serving one client connection.
//!
//! The first bidirectional stream must carry a `Hello` with the cluster token;
//! after a `HelloAck`, every further stream carries one `Request` frame and gets
//! one `Response` frame, many streams at once. Client input is hostile: every
//! malformed, oversized or unexpected frame is answered with
//! `ErrorReply::BadRequest` on its own stream, and the connection keeps serving.
//! This module knows nothing about what requests do; `ClientHandler` does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus_proto::frame::{decode_body, encode, read_frame, read_msg};
use plexus_proto::{ErrorReply, FrameError, FrameKind, Hello, HelloAck, Op, Request, Response};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tracing::{debug, info, warn, Instrument};

use crate::endpoint::{
    ClientHandler, NetLimits, CLOSE_BAD_HELLO, CLOSE_CONN_DROPPED, CLOSE_TOO_MANY_CONNS, CLOSE_UNAUTHORIZED,
};

/// Largest `Hello` frame body, in bytes: a token and a client name, read before the client is trusted.
pub const HELLO_BYTES_MAX: usize = 64 * 1024;
/// How long a new client connection may take to send its `Hello`, in milliseconds.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// How long a refused client connection waits for its `HelloAck` to be acknowledged before closing, in milliseconds.
pub const CLOSE_LINGER_MS: u64 = 1_000;
/// Stream stop code: the request frame exceeded `client_frame_bytes_max`.
pub const STREAM_FRAME_TOO_LARGE: u32 = 1;
/// Stream stop code: the request frame was malformed; the rest of the stream is not read.
pub const STREAM_BAD_REQUEST: u32 = 2;

/// What every client connection of an endpoint shares.
pub(crate) struct ClientCtx {
    pub token: Arc<str>,
    pub limits: NetLimits,
    pub handler: Arc<dyn ClientHandler>,
    pub conns: Arc<AtomicUsize>,
}

/// Decrements the live client connection count when a connection's task ends, however it ends.
struct ConnSlot(Arc<AtomicUsize>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Compares tokens in time independent of where they differ, so timing does not leak a prefix.
/// Closes the connection when its serving ends while the client is still there: the future was
/// dropped because the gateway actor running it stopped or failed. A connection that is already
/// closed (the client left, it was refused, the node is shutting down) keeps its first reason.
struct CloseOnDrop(Connection);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if self.0.close_reason().is_none() {
            self.0.close(
                VarInt::from_u32(CLOSE_CONN_DROPPED),
                b"connection no longer served; redial",
            );
        }
    }
}

fn token_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves one client connection until it closes.
pub(crate) async fn serve_client(ctx: Arc<ClientCtx>, conn: Connection) {
    let _slot = ConnSlot(ctx.conns.clone());
    let _close = CloseOnDrop(conn.clone());
    if ctx.conns.fetch_add(1, Ordering::AcqRel) >= ctx.limits.client_conns_max {
        warn!(
            conns_max = ctx.limits.client_conns_max,
            "client connection refused: too many connections"
        );
        conn.close(VarInt::from_u32(CLOSE_TOO_MANY_CONNS), b"too many client connections");
        return;
    }
    if !handshake(&ctx, &conn).await {
        return;
    }
    info!("client connected");
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(ctx.limits.client_streams_max));
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let span = tracing::debug_span!("request", stream = %send.id());
                tokio::spawn(serve_request(ctx.clone(), send, recv).instrument(span));
            }
            Err(e) => {
                info!(reason = %e, "client disconnected");
                return;
            }
        }
    }
}

/// Reads the `Hello` and answers it; false when the connection was refused (and closed).
async fn handshake(ctx: &ClientCtx, conn: &Connection) -> bool {
    let timeout = Duration::from_millis(HELLO_TIMEOUT_MS);
    let (mut send, mut recv) = match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(reason = %e, "client left before hello");
            return false;
        }
        Err(_) => {
            conn.close(VarInt::from_u32(CLOSE_BAD_HELLO), b"hello timed out");
            return false;
        }
    };
    let max = ctx.limits.client_frame_bytes_max;
    let hello_max = HELLO_BYTES_MAX.min(max);
    let hello = tokio::time::timeout(timeout, read_msg::<_, Hello>(&mut recv, FrameKind::Hello, hello_max)).await;
    let (ack, close): (HelloAck, Option<(u32, &[u8])>) = match hello {
        Ok(Ok(h)) if token_eq(&h.token, &ctx.token) => {
            info!(client = %h.client_name, "hello accepted");
            (Ok(ctx.handler.hello()), None)
        }
        Ok(Ok(h)) => {
            warn!(client = %h.client_name, "hello refused: wrong token");
            (
                Err(ErrorReply::Unauthorized("wrong token".into())),
                Some((CLOSE_UNAUTHORIZED, b"unauthorized")),
            )
        }
        Ok(Err(e)) => {
            warn!(error = %e, "hello refused: malformed");
            let reason = format!("expected a hello frame: {e}");
            (
                Err(ErrorReply::BadRequest(reason)),
                Some((CLOSE_BAD_HELLO, b"bad hello")),
            )
        }
        Err(_) => {
            conn.close(VarInt::from_u32(CLOSE_BAD_HELLO), b"hello timed out");
            return false;
        }
    };
    let delivered = write_frame(&mut send, FrameKind::HelloAck, &ack, max).await;
    match close {
        None => delivered,
        Some((code, reason)) => {
            // Closing at once would discard the unsent ack; wait (bounded) until the client has it.
            let _ = recv.stop(VarInt::from_u32(code));
            let _ = tokio::time::timeout(Duration::from_millis(CLOSE_LINGER_MS), send.stopped()).await;
            conn.close(VarInt::from_u32(code), reason);
            false
        }
    }
}

/// Answers one request stream.
async fn serve_request(ctx: Arc<ClientCtx>, mut send: SendStream, mut recv: RecvStream) {
    let max = ctx.limits.client_frame_bytes_max;
    let stop = |recv: &mut RecvStream, code: u32| {
        // The stream may already be finished by the client; then there is nothing left to refuse.
        let _ = recv.stop(VarInt::from_u32(code));
    };
    let response: Response = match read_frame(&mut recv, max).await {
        Ok((FrameKind::Request, body)) => match decode_body::<Request>(&body) {
            Ok(req) => ctx.handler.handle(req).await,
            Err(e) => {
                let reason = describe_malformed(&body, e);
                debug!(%reason, "malformed request");
                Err(ErrorReply::BadRequest(format!("malformed request: {reason}")))
            }
        },
        Ok((kind, _)) => {
            stop(&mut recv, STREAM_BAD_REQUEST);
            Err(ErrorReply::BadRequest(format!(
                "expected a request frame, got {kind:?}"
            )))
        }
        Err(FrameError::Closed) => return,
        Err(e @ FrameError::TooLarge { .. }) => {
            debug!(error = %e, "oversized request");
            stop(&mut recv, STREAM_FRAME_TOO_LARGE);
            Err(ErrorReply::BadRequest(e.to_string()))
        }
        Err(FrameError::Io(e)) => {
            debug!(error = %e, "request stream failed");
            return;
        }
        Err(e) => {
            debug!(error = %e, "bad request frame");
            stop(&mut recv, STREAM_BAD_REQUEST);
            Err(ErrorReply::BadRequest(e.to_string()))
        }
    };
    write_frame(&mut send, FrameKind::Response, &response, max).await;
}

/// Says why a request body did not decode, naming an unknown operation when that is the cause.
///
/// postcard's own errors are terse ("Serde Deserialization Error"), so the body is probed for the
/// fields before the operation and the operation's enum tag (postcard writes enum tags as varints).
fn describe_malformed(body: &[u8], err: FrameError) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        _shard: u32,
        consistency: u32,
        _session: Option<(u64, u64, u64)>,
        op: u32,
    }
    let detail = match err {
        FrameError::Malformed(m) => m,
        other => other.to_string(),
    };
    match postcard::take_from_bytes::<Probe>(body) {
        Ok((p, _)) if p.consistency > 1 => format!("unknown consistency tag {}", p.consistency),
        Ok((p, _)) => match Op::KINDS.get(p.op as usize) {
            None => format!("unknown operation tag {}", p.op),
            Some(kind) => format!("malformed {kind} operation (unknown operation or bad field): {detail}"),
        },
        Err(_) => format!("malformed request header fields: {detail}"),
    }
}

/// Writes one frame and finishes the stream; a reply too large for a frame becomes an `Internal` error.
async fn write_frame<T: serde::Serialize>(send: &mut SendStream, kind: FrameKind, msg: &T, max: usize) -> bool {
    let bytes = match encode(kind, msg, max) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "reply does not fit a frame");
            let err: Result<(), ErrorReply> = Err(ErrorReply::Internal(format!("reply: {e}")));
            match encode(kind, &err, max) {
                Ok(b) => b,
                Err(_) => return false,
            }
        }
    };
    // Handed over whole: quinn queues the buffer itself instead of copying it.
    if let Err(e) = send.write_chunk(bytes.into()).await {
        debug!(error = %e, "reply not delivered");
        return false;
    }
    send.finish().is_ok()
}

#[cfg(test)]
mod tests {
    use super::{describe_malformed, token_eq};
    use plexus_proto::{FrameError, Op};

    fn describe(body: &[u8]) -> String {
        describe_malformed(body, FrameError::Malformed("postcard says no".into()))
    }

    #[test]
    fn malformed_bodies_are_described() {
        // shard 0, linearizable, no session, then the operation tag.
        // The first tag past the known kinds (one varint byte while there are fewer than 128).
        let next = u8::try_from(Op::KINDS.len()).expect("fewer than 128 operation kinds");
        assert_eq!(describe(&[0, 0, 0, next]), format!("unknown operation tag {next}"));
        assert_eq!(
            describe(&[0, 0, 0, 5, 99]),
            "malformed empi operation (unknown operation or bad field): postcard says no"
        );
        assert_eq!(
            describe(&[0, 0, 0, 3, 9]),
            "malformed score operation (unknown operation or bad field): postcard says no"
        );
        assert_eq!(describe(&[0, 0, 0, 200, 1]), "unknown operation tag 200");
        assert_eq!(describe(&[0, 7, 0, 0]), "unknown consistency tag 7");
        assert_eq!(
            describe(&[0, 0, 0, 0, 99]),
            "malformed write operation (unknown operation or bad field): postcard says no"
        );
        assert_eq!(
            describe(&[0, 0, 0, 2, 9]),
            "malformed admin operation (unknown operation or bad field): postcard says no"
        );
        assert_eq!(describe(&[]), "malformed request header fields: postcard says no");
    }

    #[test]
    fn token_comparison() {
        assert!(token_eq("secret", "secret"));
        assert!(!token_eq("secret", "secreT"));
        assert!(!token_eq("secret", "secret2"));
        assert!(!token_eq("", "x"));
        assert!(token_eq("", ""));
    }
}
