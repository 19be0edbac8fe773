//! The metrics listener: `GET /metrics` over plain HTTP/1.1, for Prometheus to scrape.
//!
//! What it is: a deliberately small server on its own TCP port (`metrics_addr` in the node
//! config). Every connection gets one answer and is closed (`Connection: close`); a request head
//! is read with a deadline and a size cap, and at most `METRICS_CONNS_MAX` connections are served
//! at once, so a slow or hostile scraper costs a bounded amount and never touches the QUIC
//! endpoint, the gateway or any replica.
//!
//! What it is not: a general HTTP server. No keep-alive, no request bodies, no TLS (bind it to a
//! private interface, as is usual for Prometheus targets); only `GET` (and `HEAD`) of `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections served at once; more are closed at once with `503`.
pub const METRICS_CONNS_MAX: usize = 16;
/// Largest request head read, in bytes; a longer one gets `431`.
pub const METRICS_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a connection may take to send its request head, in milliseconds.
pub const METRICS_HEAD_TIMEOUT_MS: u64 = 5_000;
/// How long writing one answer may take, in milliseconds.
pub const METRICS_WRITE_TIMEOUT_MS: u64 = 10_000;

/// Renders the current metrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` and says where it is bound (the real port when `addr`'s was 0). A node does this
/// before it starts anything else, so a taken port fails the start cleanly.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `render`'s text on `listener` until the returned task is aborted.
pub fn serve(listener: TcpListener, render: Render) -> tokio::task::JoinHandle<()> {
    tokio::spawn(accept_loop(listener, render))
}

async fn accept_loop(listener: TcpListener, render: Render) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = answer(stream, &render).await {
                        tracing::debug!(%peer, error = %e, "metrics connection ended early");
                    }
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let _ = reply(stream, 503, "too many metrics connections\n", false).await;
                });
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// `GET` or `HEAD` (`head_only`) of `/metrics` (query strings ignored).
    Metrics {
        /// `HEAD`: headers only.
        head_only: bool,
    },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    Bad,
}

/// Parses a request head's first line.
fn parse_request_line(head: &[u8]) -> Parsed {
    let line_end = head
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Parsed::Bad;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Parsed::Bad;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Parsed::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Parsed::Metrics { head_only }
    } else {
        Parsed::NotFound
    }
}

/// Reads one request head (bounded in size and time) and answers it.
async fn answer(mut stream: TcpStream, render: &Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let deadline = Duration::from_millis(METRICS_HEAD_TIMEOUT_MS);
    let read_head = async {
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() >= METRICS_HEAD_BYTES_MAX {
                return Ok(false);
            }
            let want = buf.len().min(METRICS_HEAD_BYTES_MAX - head.len());
            let n = stream.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the request head ended",
                ));
            }
            head.extend_from_slice(&buf[..n]);
        }
    };
    let complete = match tokio::time::timeout(deadline, read_head).await {
        Ok(r) => r?,
        Err(_) => return reply(stream, 408, "request head not received in time\n", false).await,
    };
    if !complete {
        return reply(stream, 431, "request head too large\n", false).await;
    }
    match parse_request_line(&head) {
        Parsed::Metrics { head_only } => reply(stream, 200, &render(), head_only).await,
        Parsed::NotFound => reply(stream, 404, "not found: metrics are at /metrics\n", false).await,
        Parsed::MethodNotAllowed => reply(stream, 405, "only GET and HEAD are served\n", false).await,
        Parsed::Bad => reply(stream, 400, "not an HTTP/1.x request\n", false).await,
    }
}

/// Writes one complete answer and closes the connection.
async fn reply(mut stream: TcpStream, status: u16, body: &str, head_only: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let content_type = if status == 200 {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    let write = async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(Duration::from_millis(METRICS_WRITE_TIMEOUT_MS), write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "writing the answer took too long"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_told_apart() {
        let m = |s: &str| parse_request_line(s.as_bytes());
        assert_eq!(
            m("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Metrics { head_only: false }
        );
        assert_eq!(m("HEAD /metrics HTTP/1.0\r\n\r\n"), Parsed::Metrics { head_only: true });
        assert_eq!(
            m("GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Parsed::Metrics { head_only: false }
        );
        assert_eq!(m("GET / HTTP/1.1\r\n\r\n"), Parsed::NotFound);
        assert_eq!(m("GET /metricsx HTTP/1.1\r\n\r\n"), Parsed::NotFound);
        assert_eq!(m("POST /metrics HTTP/1.1\r\n\r\n"), Parsed::MethodNotAllowed);
        assert_eq!(m("GET /metrics\r\n\r\n"), Parsed::Bad);
        assert_eq!(m("GET /metrics HTTP/2\r\n\r\n"), Parsed::Bad);
        assert_eq!(m("GET metrics HTTP/1.1\r\n\r\n"), Parsed::Bad);
        assert_eq!(m("GET  /metrics HTTP/1.1\r\n\r\n"), Parsed::Bad);
        assert_eq!(parse_request_line(&[0xff, 0xfe, b' ', b'/']), Parsed::Bad);
    }
}
