//! The metrics HTTP server: a minimal HTTP/1.x server for `GET /metrics` on one plain
//! (unpinned) thread, with slow-client protection (a size limit and a deadline for each
//! request head, bounded writes and a bounded linger on close).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use super::MetricsSource;
use super::encode::{CONTENT_TYPE, EngineCollector, encode_text};

/// Longest request head the server reads.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long writing a response may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop checks for a stop request.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long, and how many bytes, a close waits for and discards from the client.
const LINGER: Duration = Duration::from_millis(200);
const LINGER_BYTES: usize = 256 * 1024;
/// How often the server thread samples the message rate.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// A minimal HTTP/1.x server for `GET /metrics` on one plain (unpinned) thread. Requests
/// are served one at a time, each bounded by a size limit and a deadline, so a slow or
/// hostile client delays scrapes by at most the request timeout (2 s) and cannot grow memory.
/// The thread also samples the message rate every second. Each scrape encodes a
/// `prometheus-client` registry holding an [`EngineCollector`]. Dropping the server stops it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving `src`.
    pub fn start(addr: SocketAddr, src: MetricsSource) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("engine-metrics".into())
            .spawn({
                let stop = stop.clone();
                move || serve(listener, src, &stop)
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, src: MetricsSource, stop: &AtomicBool) {
    let collector = Arc::new(EngineCollector::new(src));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector.clone()));
    let mut next_sample = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_sample {
            collector.sample_rate(now);
            next_sample = now + SAMPLE_PERIOD;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle(stream, &registry) {
                    tracing::debug!(%peer, "metrics request failed: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!("metrics accept failed: {e}");
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The client closed the connection before sending anything.
    Closed,
    /// The head exceeded [`MAX_REQUEST_BYTES`], or the connection ended mid-head.
    Malformed,
    /// The client did not finish its request within [`REQUEST_TIMEOUT`].
    Timeout,
}

/// Reads a request head (through the blank line) within the size limit and deadline.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| ReadError::Closed)?;
        let room = (MAX_REQUEST_BYTES + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Malformed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Closed),
        }
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Err(ReadError::Malformed);
        }
    }
}

/// Length of the head through its terminating blank line, if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A response to send.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// HEAD: headers only.
    head_only: bool,
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
            allow: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// Decides the response to a request head; `metrics` renders the body when it is needed
/// (`None` if encoding failed).
fn respond(head: &[u8], metrics: impl FnOnce() -> Option<String>) -> Response {
    let bad = || Response::text(400, "Bad Request", "bad request");
    let Ok(head) = std::str::from_utf8(head) else {
        return bad();
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return bad();
    };
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return bad();
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return bad();
    }
    // Header lines must at least look like headers.
    if lines.any(|l| !l.is_empty() && !l.contains(':')) {
        return bad();
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return Response::text(404, "Not Found", "not found; metrics are at /metrics");
    }
    match method {
        "GET" | "HEAD" => match metrics() {
            Some(body) => Response {
                status: 200,
                reason: "OK",
                content_type: CONTENT_TYPE,
                body,
                head_only: method == "HEAD",
                allow: false,
            },
            None => Response::text(500, "Internal Server Error", "metrics could not be encoded"),
        },
        _ => Response {
            allow: true,
            ..Response::text(405, "Method Not Allowed", "method not allowed")
        },
    }
}

fn handle(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let response = match read_head(&mut stream, Instant::now() + REQUEST_TIMEOUT) {
        Ok(head) => respond(&head, || match encode_text(registry) {
            Ok(text) => Some(text),
            Err(e) => {
                tracing::warn!("encoding metrics failed: {e}");
                None
            }
        }),
        Err(ReadError::Closed) => return Ok(()),
        Err(ReadError::Malformed) => Response::text(400, "Bad Request", "bad request"),
        Err(ReadError::Timeout) => Response::text(408, "Request Timeout", "request timeout"),
    };
    stream.write_all(&response.to_bytes())?;
    stream.flush()?;
    linger(stream);
    Ok(())
}

/// Closes gracefully: ends our side, then briefly discards whatever the client still sends,
/// so closing with unread input does not reset the connection before the client has read
/// the response. Bounded in time and bytes.
fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::busy_source;

    #[test]
    fn requests_are_routed_and_validated() {
        let body = || Some("m 1\n".to_string());
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", body);
        assert_eq!((ok.status, ok.content_type), (200, CONTENT_TYPE));
        assert_eq!(ok.body, "m 1\n");
        assert_eq!(respond(b"GET /metrics?x=1 HTTP/1.0\n\n", body).status, 200);
        let head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", body);
        assert!(head.head_only && !String::from_utf8(head.to_bytes()).unwrap().contains("m 1"));
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", body).status, 404);
        assert_eq!(respond(b"GET /metricsx HTTP/1.1\r\n\r\n", body).status, 404);
        assert_eq!(respond(b"POST /metrics HTTP/1.1\r\n\r\n", body).status, 405);
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"G3T /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(respond(bad, body).status, 400, "{:?}", bad);
        }
        let bytes = respond(b"GET /metrics HTTP/1.1\r\n\r\n", body).to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.contains("\r\nContent-Length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\nm 1\n"));
    }

    fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn server_survives_slow_oversized_and_bad_clients() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), busy_source()).unwrap();
        let addr = server.local_addr();
        // Oversized head: refused without reading it all.
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(big.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        // A client that never finishes its request is cut off after the timeout...
        let t = Instant::now();
        let slow = raw(addr, b"GET /metr");
        assert!(slow.starts_with("HTTP/1.1 408 "), "{slow}");
        assert!(t.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(2));
        // ... a client that connects and closes is ignored, and the server still answers.
        drop(TcpStream::connect(addr).unwrap());
        assert!(raw(addr, b"garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
        assert!(raw(addr, b"GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let ok = raw(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.contains("engine_messages_total{direction=\"in\",outcome=\"received\"} 100\n"));
        // Dropping the server stops the thread and frees the port promptly.
        let t = Instant::now();
        drop(server);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(TcpStream::connect(addr).is_err());
    }
}
