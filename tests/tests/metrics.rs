//! Metrics export end to end: real traffic through an in-process engine, `/metrics` fetched
//! over TCP and checked with an independent parser (`prometheus-parse`), and the
//! `engine status` command run against the same server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use engine::metrics::MetricsServer;
use engine::metrics::families::{BATCH_SIZE_BUCKETS, SECONDS_BUCKETS};
use engine::{Engine, EngineConfig};
use prometheus_parse::{HistogramCount, Sample, Scrape, Value};
use shards::client::{Client, ClientConfig};
use shards::identity::Identity;
use shards::shard::Delivery;

use crate::common::engine_bin as bin;
const MESSAGES: usize = 100;

/// A plain HTTP/1.0 GET; returns the status line, the header block and the body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The one sample named `name` carrying every label of `labels`.
fn one<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let hits: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(hits.len(), 1, "{name} {labels:?}: {hits:?}");
    hits[0]
}

/// The value of a counter, gauge or untyped sample (histograms' `_sum` / `_count` lines are
/// untyped).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match &one(scrape, name, labels).value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is not a single value: {other:?}"),
    }
}

fn counter(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match &one(scrape, name, labels).value {
        Value::Counter(v) => *v,
        other => panic!("{name} {labels:?} is not a counter: {other:?}"),
    }
}

fn gauge(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match &one(scrape, name, labels).value {
        Value::Gauge(v) => *v,
        other => panic!("{name} {labels:?} is not a gauge: {other:?}"),
    }
}

fn sum_of(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name} is not a single value"),
        })
        .sum()
}

#[test]
fn metrics_count_exactly_the_traffic_sent() {
    let engine = Engine::start(EngineConfig::loopback(2)).expect("engine starts");
    let me = Identity::generate().unwrap();
    let mut cfg = ClientConfig::default();
    cfg.batch.timeout = Duration::from_millis(1);
    let mut client = Client::connect(engine.local_addr(), &me, cfg).expect("client connects");
    // The client finishes its handshake one flight before the engine registers it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.peers().get(&me.peer_id()).is_none() {
        assert!(Instant::now() < deadline, "engine registered the client");
        client.poll(Duration::from_millis(5)).unwrap();
    }

    let node = engine.peer_id();
    for i in 0..MESSAGES {
        client.send(node, format!("echo {i}").into_bytes()).unwrap();
    }
    client.flush().unwrap();
    let mut replies = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while replies < MESSAGES {
        assert!(Instant::now() < deadline, "only {replies} replies");
        match client.recv(Duration::from_millis(50)).unwrap() {
            Some(Delivery::Message { from, payload, .. }) => {
                assert_eq!(from, node);
                assert!(payload.starts_with(b"echo "));
                replies += 1;
            }
            Some(Delivery::Error(e)) => panic!("error record: {e:?}"),
            None => {}
        }
    }
    // Shards publish their histograms every 250 ms.
    std::thread::sleep(Duration::from_millis(400));
    assert!(client.recv(Duration::from_millis(10)).unwrap().is_none());

    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), engine.metrics_source())
        .expect("metrics server starts");
    let addr = server.local_addr();
    let (status, headers, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.lines().any(|h| h
            .to_ascii_lowercase()
            .starts_with("content-type: text/plain; version=0.0.4")),
        "{headers}"
    );
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses");

    // Messages: exactly what was sent, and nothing lost.
    let n = MESSAGES as f64;
    let msgs = |d, o| {
        counter(
            &scrape,
            "engine_messages_total",
            &[("direction", d), ("outcome", o)],
        )
    };
    assert_eq!(msgs("in", "received"), n);
    assert_eq!(msgs("in", "delivered"), n);
    assert_eq!(msgs("in", "relayed"), 0.0);
    assert_eq!(msgs("out", "sealed"), n);
    for reason in engine::metrics::DROP_REASONS {
        assert_eq!(
            counter(
                &scrape,
                "engine_messages_total",
                &[("outcome", "dropped"), ("reason", reason)]
            ),
            0.0,
            "{reason}"
        );
    }
    let batches = counter(&scrape, "engine_batches_total", &[]);
    assert!(batches >= 1.0);
    assert_eq!(
        sum_of(
            &scrape,
            "engine_shard_messages_total",
            &[("outcome", "received")]
        ),
        n
    );
    assert_eq!(
        sum_of(
            &scrape,
            "engine_shard_messages_total",
            &[("outcome", "sealed")]
        ),
        n
    );
    assert_eq!(sum_of(&scrape, "engine_shard_batches_total", &[]), batches);

    // Connections.
    assert_eq!(
        gauge(&scrape, "engine_connections", &[("state", "connected")]),
        1.0
    );
    for state in ["new", "connecting", "disconnected", "failed"] {
        assert_eq!(
            gauge(&scrape, "engine_connections", &[("state", state)]),
            0.0
        );
    }
    assert_eq!(sum_of(&scrape, "engine_shard_connections", &[]), 1.0);
    assert_eq!(gauge(&scrape, "engine_shards", &[]), 2.0);
    assert_eq!(
        counter(
            &scrape,
            "engine_connections_opened_total",
            &[("origin", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        counter(&scrape, "engine_connection_refusals_total", &[]),
        0.0
    );
    assert_eq!(
        counter(&scrape, "engine_handshake_failures_total", &[]),
        0.0
    );
    assert_eq!(counter(&scrape, "engine_seal_failures_total", &[]), 0.0);
    assert_eq!(
        counter(&scrape, "engine_misrouted_datagrams_total", &[]),
        0.0
    );
    assert!(counter(&scrape, "engine_datagrams_total", &[("direction", "in")]) >= 1.0);
    assert!(counter(&scrape, "engine_datagrams_total", &[("direction", "out")]) >= 1.0);

    // Histograms: the documented buckets, and counts that match the counters.
    let buckets = |name: &str| -> Vec<HistogramCount> {
        let Value::Histogram(b) = &one(&scrape, name, &[]).value else {
            panic!("{name} is not a histogram");
        };
        b.clone()
    };
    for (name, bounds) in [
        ("engine_batch_size", &BATCH_SIZE_BUCKETS[..]),
        ("engine_queue_delay_seconds", &SECONDS_BUCKETS[..]),
        ("engine_relay_delay_seconds", &SECONDS_BUCKETS[..]),
        ("engine_handshake_seconds", &SECONDS_BUCKETS[..]),
        ("engine_receive_delay_seconds", &SECONDS_BUCKETS[..]),
    ] {
        let b = buckets(name);
        let mut want = bounds.to_vec();
        want.push(f64::INFINITY);
        let got: Vec<f64> = b.iter().map(|c| c.less_than).collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(
            b.last().map(|c| c.count),
            Some(value(&scrape, &format!("{name}_count"), &[])),
            "{name}: +Inf is the count"
        );
        assert!(scrape.docs.contains_key(name), "HELP for {name}");
    }
    assert_eq!(value(&scrape, "engine_batch_size_count", &[]), batches);
    assert_eq!(value(&scrape, "engine_batch_size_sum", &[]), n);
    assert_eq!(value(&scrape, "engine_queue_delay_seconds_count", &[]), n);
    assert_eq!(value(&scrape, "engine_relay_delay_seconds_count", &[]), 0.0);
    assert_eq!(value(&scrape, "engine_handshake_seconds_count", &[]), 1.0);
    // Batches flush after 1 ms here; no message waited anywhere near a second.
    let le_one_second = buckets("engine_queue_delay_seconds")
        .iter()
        .find(|c| c.less_than == 1.0)
        .map(|c| c.count);
    assert_eq!(le_one_second, Some(n));

    // The kernel's view of each shard socket: found by inode, nothing dropped, and the
    // sampled receive delay (one datagram in 64; the first sample only turns timestamps on).
    for shard in ["0", "1"] {
        assert_eq!(
            counter(
                &scrape,
                "engine_socket_receive_drops_total",
                &[("shard", shard)]
            ),
            0.0
        );
        assert!(
            gauge(
                &scrape,
                "engine_socket_receive_queue_bytes",
                &[("shard", shard)]
            ) >= 0.0
        );
    }
    let datagrams_in = counter(&scrape, "engine_datagrams_total", &[("direction", "in")]);
    let delays = value(&scrape, "engine_receive_delay_seconds_count", &[]);
    assert!(
        delays <= (datagrams_in / 64.0).ceil(),
        "{delays} of {datagrams_in}"
    );

    // Process-level gauges.
    assert!(gauge(&scrape, "engine_resident_memory_bytes", &[]) > 1024.0 * 1024.0);
    assert_eq!(gauge(&scrape, "engine_queued_bytes", &[]), 0.0);
    assert!(gauge(&scrape, "engine_messages_per_second", &[]) >= 0.0);
    for name in [
        "engine_messages_total",
        "engine_connections",
        "engine_resident_memory_bytes",
    ] {
        assert!(scrape.docs.contains_key(name), "HELP for {name}");
    }

    // Other paths are not found.
    let (status, _, _) = http_get(addr, "/");
    assert!(status.starts_with("HTTP/1.1 404 "), "{status}");
    let (status, _, _) = http_get(addr, "/metrics/extra");
    assert!(status.starts_with("HTTP/1.1 404 "), "{status}");

    // `engine status` shows the same totals.
    let out = Command::new(bin())
        .args(["status", "--metrics", &addr.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let header: Vec<&str> = stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[0], "shard");
    let shard_rows = stdout
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|c| c.parse::<u32>().is_ok())
        })
        .count();
    assert_eq!(shard_rows, 2, "{stdout}");
    let total: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total row:\n{stdout}"))
        .split_whitespace()
        .collect();
    let batches = format!("{batches}");
    // total, connections, msgs in, msgs out, relayed, delivered, dropped, batches
    assert_eq!(
        total,
        [
            "total",
            "1",
            "100",
            "100",
            "0",
            "100",
            "0",
            batches.as_str()
        ],
        "{stdout}"
    );
    assert!(stdout.contains("connected 1"), "{stdout}");
    assert!(stdout.contains("queue delay:"), "{stdout}");
    assert!(stdout.contains("resident memory:"), "{stdout}");

    // Once the server is gone, `engine status` says so clearly.
    drop(server);
    let out = Command::new(bin())
        .args(["status", "--metrics", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach metrics at"), "{stderr}");

    let _ = client.close(Duration::from_secs(2));
    engine.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn serve_prints_and_serves_the_metrics_address() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // Reserve a free port for the metrics server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
        ])
        .args(["--metrics", &metrics])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening on "), "{first}");
    let second = lines.next().unwrap().unwrap();
    assert_eq!(second, format!("metrics on http://{metrics}/metrics"));
    let (status, _, body) = http_get(metrics.parse().unwrap(), "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("engine_shards 1\n"));
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// One datagram in 64 has its wait in the kernel's receive queue measured (the kernel's
/// receive timestamp against the time the shard read it): after a few hundred datagrams the
/// histogram has samples, each far below a second on an idle loopback.
#[test]
fn receive_delay_is_sampled_from_kernel_timestamps() {
    let engine = Engine::start(EngineConfig::loopback(1)).expect("engine starts");
    let me = Identity::generate().unwrap();
    let mut cfg = ClientConfig::default();
    cfg.batch.timeout = Duration::ZERO;
    let mut client = Client::connect(engine.local_addr(), &me, cfg).expect("client connects");
    let node = client.node_id();
    // One message per datagram: send, flush, wait for the echo.
    for i in 0..400u64 {
        client.send_with_seq(node, i, vec![7; 32]).unwrap();
        client.flush().unwrap();
        let d = client.recv(Duration::from_secs(5)).unwrap();
        assert!(matches!(d, Some(Delivery::Message { .. })), "{d:?}");
    }
    let src = engine.metrics_source();
    let deadline = Instant::now() + Duration::from_secs(5);
    let hist = loop {
        let h = src.histograms();
        if h.receive_delay_ns.len() >= 3 || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let datagrams = engine.stats().datagrams_in;
    assert!(datagrams >= 400, "{datagrams}");
    let n = hist.receive_delay_ns.len();
    assert!(
        n >= 3 && n <= datagrams.div_ceil(64),
        "{n} samples of {datagrams}"
    );
    assert!(
        hist.receive_delay_ns.max() < 1_000_000_000,
        "{}",
        hist.receive_delay_ns.max()
    );
    let queues = src.socket_queues();
    assert_eq!(queues.len(), 1);
    let q = queues[0].expect("the shard socket is listed in /proc/net/udp");
    assert_eq!(q.drops, 0, "{q:?}");
}

/// Echoes one 200 KB message (a reply of ~150 full-size QUIC packets) and returns the
/// engine's GSO counters (sends, datagrams) and datagrams sent.
fn gso_counters_after_a_large_echo(gso: bool) -> (u64, u64, u64) {
    let mut cfg = EngineConfig::loopback(1);
    cfg.transport.gso = gso;
    cfg.max_message_size = 256 * 1024;
    let engine = Engine::start(cfg).expect("engine starts");
    let me = Identity::generate().unwrap();
    let mut client = Client::connect(engine.local_addr(), &me, ClientConfig::default())
        .expect("client connects");
    let node = client.node_id();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    client.send(node, payload.clone()).unwrap();
    client.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no echo of the large message");
        match client.recv(Duration::from_millis(50)).unwrap() {
            Some(Delivery::Message { payload: got, .. }) => {
                assert_eq!(got, payload);
                break;
            }
            Some(Delivery::Error(e)) => panic!("error record: {e:?}"),
            None => {}
        }
    }
    let s = engine.stats();
    (s.gso_sends, s.gso_datagrams, s.datagrams_out)
}

#[test]
fn large_replies_leave_in_gso_sends_unless_turned_off() {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let supported = {
        use std::os::fd::AsRawFd;
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                probe.as_raw_fd(),
                libc::SOL_UDP,
                103, // UDP_SEGMENT
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        rc == 0
    };
    let (sends, datagrams, out) = gso_counters_after_a_large_echo(true);
    if supported {
        assert!(sends > 0, "no GSO send among {out} datagrams");
        // Each GSO send carries at least two datagrams, all counted in datagrams_out.
        assert!(
            datagrams >= 2 * sends && datagrams <= out,
            "{sends} {datagrams} {out}"
        );
        assert!(
            datagrams * 2 > out,
            "most of the reply coalesced: {datagrams} of {out}"
        );
    } else {
        assert_eq!((sends, datagrams), (0, 0));
    }
    let (sends, datagrams, out) = gso_counters_after_a_large_echo(false);
    assert_eq!((sends, datagrams), (0, 0), "GSO off, {out} datagrams");
    assert!(out > 100, "{out}");
}
