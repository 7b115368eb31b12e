//! The metrics HTTP server: a minimal HTTP/1.x server for `GET /metrics` on plain
//! (unpinned) threads, with slow-client protection: a size limit on each request head, one
//! deadline for each connection (reading, writing and the linger on close together), and a
//! cap on the connections served at once.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::MetricsSource;
use super::encode::{CONTENT_TYPE, EngineCollector, encode_text};

/// Longest request head the server reads.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection may hold a handler in all: its request head, the response and
/// the linger on close. A client that reads the response a few bytes at a time is cut off
/// here, however often each write makes progress.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(4);
/// Connections served at once. One more is answered 503 at once and counted, so idle
/// clients cannot make the server hold threads or sockets without bound.
const MAX_IN_FLIGHT: usize = 8;
/// Longest a handler blocks in one read or write before it checks for a stop request, so
/// dropping the server does not wait for a slow client's deadline.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// How often the accept loop checks for connections and a stop request.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long, and how many bytes, a close waits for and discards from the client (within
/// the connection's deadline).
const LINGER: Duration = Duration::from_millis(200);
const LINGER_BYTES: usize = 256 * 1024;
/// How often the server thread samples the message rate.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// The family counting connections refused at the in-flight cap (`_total` is appended).
const REJECTED_NAME: &str = "engine_metrics_rejected_connections";
const REJECTED_HELP: &str =
    "Connections to the metrics endpoint answered 503 at once because 8 were already being served.";

/// A minimal HTTP/1.x server for `GET /metrics`. One plain (unpinned) thread accepts and
/// samples the message rate every second; each connection is served on its own short-lived
/// thread, at most 8 at once, and a connection beyond that is answered 503 at once and
/// counted in `engine_metrics_rejected_connections_total`. Each connection is bounded by a
/// size limit on its request head, 2 s to send it and 4 s in all (request, response and
/// close), so an idle or slow client delays no other scrape unless 8 of them hold every
/// handler, and then by at most 4 s; it cannot grow memory either. Each scrape encodes a
/// `prometheus-client` registry holding an [`EngineCollector`]. Dropping the server stops
/// it within about 0.1 s, cutting off connections still being served.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    rejected: Counter,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving `src`.
    pub fn start(addr: SocketAddr, src: MetricsSource) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let rejected = Counter::default();
        let collector = Arc::new(EngineCollector::new(src));
        let mut registry = Registry::default();
        registry.register(REJECTED_NAME, REJECTED_HELP, rejected.clone());
        registry.register_collector(Box::new(collector.clone()));
        let server = Server {
            registry: Arc::new(registry),
            collector,
            stop: stop.clone(),
            rejected: rejected.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("engine-metrics".into())
            .spawn(move || server.serve(listener))?;
        Ok(MetricsServer {
            addr,
            stop,
            rejected,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections answered 503 because 8 were already being served (the count
    /// `engine_metrics_rejected_connections_total` exports).
    pub fn rejected_connections(&self) -> u64 {
        self.rejected.get()
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

/// What the accept thread and the handlers share.
struct Server {
    registry: Arc<Registry>,
    collector: Arc<EngineCollector>,
    stop: Arc<AtomicBool>,
    rejected: Counter,
}

impl Server {
    /// Accepts until stopped, handing each connection to a handler thread while fewer than
    /// [`MAX_IN_FLIGHT`] are busy; then waits for the handlers, which notice the stop
    /// within [`STOP_CHECK`].
    fn serve(self, listener: TcpListener) {
        let mut handlers: Vec<JoinHandle<()>> = Vec::with_capacity(MAX_IN_FLIGHT);
        let mut next_sample = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_sample {
                self.collector.sample_rate(now);
                next_sample = now + SAMPLE_PERIOD;
            }
            // A finished handler's handle is dropped; its thread is already gone.
            handlers.retain(|h| !h.is_finished());
            match listener.accept() {
                Ok((stream, peer)) => {
                    if handlers.len() >= MAX_IN_FLIGHT {
                        self.rejected.inc();
                        tracing::debug!(%peer, "metrics connection refused: {MAX_IN_FLIGHT} in flight");
                        refuse(stream);
                        continue;
                    }
                    let accepted = Instant::now();
                    let registry = self.registry.clone();
                    let stop = self.stop.clone();
                    let spawned = std::thread::Builder::new()
                        .name("engine-metrics-conn".into())
                        .spawn(move || {
                            if let Err(e) = handle(stream, &registry, accepted, &stop) {
                                tracing::debug!(%peer, "metrics request failed: {e}");
                            }
                        });
                    match spawned {
                        Ok(h) => handlers.push(h),
                        // The stream went with the closure: the connection is closed.
                        Err(e) => tracing::warn!("metrics handler thread not started: {e}"),
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
        for h in handlers {
            let _ = h.join();
        }
    }
}

/// Answers a connection over the in-flight cap with 503 without waiting on the client (the
/// socket is non-blocking, the response fits its send buffer) and closes it.
fn refuse(stream: TcpStream) {
    let response = Response::text(503, "Service Unavailable", "busy; try again");
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&stream).write(&response.to_bytes());
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Why a connection's handler stops waiting on it.
#[derive(Debug, PartialEq, Eq)]
enum Cut {
    /// The deadline passed.
    Late,
    /// The server is stopping.
    Stopped,
}

/// How long the next blocking call may wait: what is left before `deadline`, at most
/// [`STOP_CHECK`].
fn slice(deadline: Instant, stop: &AtomicBool) -> Result<Duration, Cut> {
    if stop.load(Ordering::Acquire) {
        return Err(Cut::Stopped);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Cut::Late);
    }
    Ok(left.min(STOP_CHECK))
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The client closed the connection before sending anything.
    Closed,
    /// The head exceeded [`MAX_REQUEST_BYTES`], or the connection ended mid-head.
    Malformed,
    /// The client did not finish its request before the deadline.
    Timeout,
    /// The server is stopping.
    Stopped,
}

/// Reads a request head (through the blank line) within the size limit and `deadline`.
fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let wait = slice(deadline, stop).map_err(|c| match c {
            Cut::Late => ReadError::Timeout,
            Cut::Stopped => ReadError::Stopped,
        })?;
        stream
            .set_read_timeout(Some(wait))
            .map_err(|_| ReadError::Closed)?;
        let room = (MAX_REQUEST_BYTES + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Malformed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // The slice ran out: check the deadline and the stop request, then wait on.
            Err(e) if timed_out(&e) => continue,
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

/// Serves one connection within [`CONNECTION_TIMEOUT`] of `accepted`: reads the head (at
/// most [`REQUEST_TIMEOUT`] of that), writes the response and lingers, giving up at the
/// deadline or when the server stops.
fn handle(
    mut stream: TcpStream,
    registry: &Registry,
    accepted: Instant,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let deadline = accepted + CONNECTION_TIMEOUT;
    stream.set_nonblocking(false)?;
    let response = match read_head(&mut stream, accepted + REQUEST_TIMEOUT, stop) {
        Ok(head) => respond(&head, || match encode_text(registry) {
            Ok(text) => Some(text),
            Err(e) => {
                tracing::warn!("encoding metrics failed: {e}");
                None
            }
        }),
        Err(ReadError::Closed | ReadError::Stopped) => return Ok(()),
        Err(ReadError::Malformed) => Response::text(400, "Bad Request", "bad request"),
        Err(ReadError::Timeout) => Response::text(408, "Request Timeout", "request timeout"),
    };
    write_all(&mut stream, &response.to_bytes(), deadline, stop)?;
    linger(stream, deadline.min(Instant::now() + LINGER), stop);
    Ok(())
}

/// Writes all of `bytes` before `deadline`. Each `write` waits at most a [`slice`], so the
/// deadline bounds the whole response, not each call.
fn write_all(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let wait = slice(deadline, stop).map_err(|c| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                match c {
                    Cut::Late => "response not taken before the connection's deadline",
                    Cut::Stopped => "server stopping",
                },
            )
        })?;
        stream.set_write_timeout(Some(wait))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if timed_out(&e) || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Closes gracefully: ends our side, then discards whatever the client still sends until
/// `until`, so closing with unread input does not reset the connection before the client
/// has read the response. Bounded in time and bytes.
fn linger(mut stream: TcpStream, until: Instant, stop: &AtomicBool) {
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 {
        let Ok(wait) = slice(until, stop) else {
            return;
        };
        if stream.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if timed_out(&e) || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
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

    /// Connects and waits until the server has accepted (its handler holds the socket), so
    /// connections are accepted in the order the test opens them.
    fn idle(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        // The accept loop polls every 20 ms.
        std::thread::sleep(POLL_INTERVAL * 3);
        s
    }

    #[test]
    fn idle_clients_do_not_delay_a_scrape_or_the_shutdown() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), busy_source()).unwrap();
        let addr = server.local_addr();
        // Served one at a time, these would hold each scrape back by 2 s apiece.
        let idle: Vec<TcpStream> = (0..MAX_IN_FLIGHT - 1).map(|_| idle(addr)).collect();
        let t = Instant::now();
        let ok = raw(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        // The idle clients' handlers are cut off at once, not at their deadlines.
        let t = Instant::now();
        drop(server);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        drop(idle);
    }

    #[test]
    fn connections_over_the_cap_are_refused_at_once_and_counted() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), busy_source()).unwrap();
        let addr = server.local_addr();
        let idle: Vec<TcpStream> = (0..MAX_IN_FLIGHT).map(|_| idle(addr)).collect();
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may have closed already: the write's outcome does not matter.
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut busy = String::new();
        let _ = s.read_to_string(&mut busy);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // The 503 may be lost to the reset of a close with the request unread; the count
        // is not.
        assert!(
            busy.is_empty() || busy.starts_with("HTTP/1.1 503 "),
            "{busy}"
        );
        assert_eq!(server.rejected_connections(), 1);
        // Clients that go away free their handlers at once.
        drop(idle);
        let mut ok = String::new();
        for _ in 0..50 {
            ok = raw(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
            if ok.starts_with("HTTP/1.1 200 OK\r\n") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\nengine_metrics_rejected_connections_total 1\n"),
            "{ok}"
        );
    }

    #[test]
    fn a_slow_reader_is_cut_off_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, _) = listener.accept().unwrap();
        // The client takes a little every 50 ms: every write makes progress, but the
        // response would take far longer than the deadline to go out.
        let stop_reading = Arc::new(AtomicBool::new(false));
        let reader = std::thread::spawn({
            let stop_reading = stop_reading.clone();
            move || {
                let mut buf = vec![0u8; 16 * 1024];
                client
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                while !stop_reading.load(Ordering::Acquire) {
                    match client.read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                        Err(e) if timed_out(&e) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        let response = vec![b'x'; 64 * 1024 * 1024];
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        let deadline = t + Duration::from_millis(500);
        let err = write_all(&mut server_side, &response, deadline, &stop).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        // A stop request ends a write in progress as well.
        stop.store(true, Ordering::Release);
        let t = Instant::now();
        let far = t + Duration::from_secs(60);
        assert!(write_all(&mut server_side, &response, far, &stop).is_err());
        assert!(t.elapsed() < Duration::from_millis(500));
        stop_reading.store(true, Ordering::Release);
        drop(server_side);
        reader.join().unwrap();
    }
}
