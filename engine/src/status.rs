//! `engine status` (part of the `engine` binary, not the library): fetch a node's
//! `/metrics` with a plain HTTP/1.0 GET, parse the exposition ([`parse`]) and print a
//! human-readable summary. Latency quantiles are estimated from the histograms' buckets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

mod parse;

use parse::{Sample, parse_exposition, quantile};

/// Largest response accepted.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// The node's metrics address, as given to `engine serve --metrics` (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    metrics: SocketAddr,
    /// Give up if the node has not answered completely within this long (above zero, at
    /// most 1d).
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
}

/// Parses `--timeout`: a duration above zero and at most
/// [`shards::config::MAX_TIMEOUT`] (one day), since the fetch's deadline is `Instant + it`.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = super::parse_duration(s)?;
    if d.is_zero() {
        return Err("the timeout must be above zero".to_string());
    }
    shards::config::validate_timeout("timeout", d).map_err(|e| e.to_string())?;
    Ok(d)
}

pub(crate) fn run(a: StatusArgs) -> Result<i32> {
    let body = fetch(a.metrics, a.timeout)?;
    let samples = parse_exposition(&body)
        .map_err(|e| anyhow::anyhow!("{} sent malformed metrics: {e}", a.metrics))?;
    if !samples.iter().any(|s| s.name.starts_with("engine_")) {
        bail!("{} serves no engine metrics", a.metrics);
    }
    print!("{}", render(&samples));
    Ok(0)
}

/// `GET /metrics` over HTTP/1.0; the body of a 200 response.
fn fetch(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let deadline = Instant::now()
        .checked_add(timeout)
        .with_context(|| format!("timeout {timeout:?} is too long"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).with_context(|| {
        format!("cannot reach metrics at {addr} (is `engine serve --metrics {addr}` running?)")
    })?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(
        format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n").as_bytes(),
    )
    .with_context(|| format!("sending the request to {addr}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no complete answer from {addr} within {timeout:?}");
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("no complete answer from {addr} within {timeout:?}")
            }
            Err(e) => return Err(e).with_context(|| format!("reading the answer from {addr}")),
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            bail!("answer from {addr} is over {MAX_RESPONSE_BYTES} bytes");
        }
    }
    let text = String::from_utf8(buf).with_context(|| format!("{addr} answered non-UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} did not answer with HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/") {
        bail!("{addr} did not answer with HTTP");
    }
    if status.split(' ').nth(1) != Some("200") {
        bail!("{addr} answered {status:?} for /metrics");
    }
    Ok(body.to_string())
}

/// Sums the samples named `name` that carry every label of `labels`; `None` if none does.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

fn count(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{}", v.round() as i64),
        _ => "-".to_string(),
    }
}

fn seconds(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v < 1e-3 => format!("{:.1} us", v * 1e6),
        Some(v) if v.is_finite() && v < 1.0 => format!("{:.2} ms", v * 1e3),
        Some(v) if v.is_finite() => format!("{v:.3} s"),
        _ => "-".to_string(),
    }
}

fn bytes(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let mut v = v;
            let mut unit = 0;
            while v >= 1024.0 && unit + 1 < units.len() {
                v /= 1024.0;
                unit += 1;
            }
            if unit == 0 {
                format!("{v:.0} B")
            } else {
                format!("{v:.1} {}", units[unit])
            }
        }
        _ => "-".to_string(),
    }
}

/// The summary `engine status` prints.
pub(crate) fn render(samples: &[Sample]) -> String {
    let mut shards: Vec<String> = samples
        .iter()
        .filter(|s| s.name.starts_with("engine_shard_"))
        .filter_map(|s| s.label("shard").map(str::to_string))
        .collect();
    shards.sort_by_key(|s| (s.parse::<u64>().unwrap_or(u64::MAX), s.clone()));
    shards.dedup();

    let header = [
        "shard",
        "connections",
        "msgs in",
        "msgs out",
        "relayed",
        "delivered",
        "dropped",
        "batches",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for shard in &shards {
        let m = |outcome| {
            count(sum(
                samples,
                "engine_shard_messages_total",
                &[("shard", shard), ("outcome", outcome)],
            ))
        };
        rows.push(vec![
            shard.clone(),
            count(sum(
                samples,
                "engine_shard_connections",
                &[("shard", shard)],
            )),
            m("received"),
            m("sealed"),
            m("relayed"),
            m("delivered"),
            m("dropped"),
            count(sum(
                samples,
                "engine_shard_batches_total",
                &[("shard", shard)],
            )),
        ]);
    }
    let m = |outcome| {
        count(sum(
            samples,
            "engine_messages_total",
            &[("outcome", outcome)],
        ))
    };
    rows.push(vec![
        "total".to_string(),
        count(sum(samples, "engine_shard_connections", &[])),
        m("received"),
        m("sealed"),
        m("relayed"),
        m("delivered"),
        m("dropped"),
        count(sum(samples, "engine_batches_total", &[])),
    ]);

    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c == 0 {
                l.push_str(&format!("{cell:<w$}", w = widths[c]));
            } else {
                l.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        l.push('\n');
        l
    };
    let mut out = line(&header);
    for r in &rows {
        out.push_str(&line(&r.iter().map(String::as_str).collect::<Vec<_>>()));
    }

    let states: Vec<String> = samples
        .iter()
        .filter(|s| s.name == "engine_connections")
        .filter_map(|s| Some(format!("{} {}", s.label("state")?, count(Some(s.value)))))
        .collect();
    let q = |q| seconds(quantile(samples, "engine_queue_delay_seconds", q));
    let delayed = count(sum(samples, "engine_queue_delay_seconds_count", &[]));
    let rate = sum(samples, "engine_messages_per_second", &[])
        .map_or_else(|| "-".to_string(), |r| format!("{r:.1}"));
    out.push('\n');
    out.push_str(&format!(
        "connection states: {}\n",
        if states.is_empty() {
            "-".to_string()
        } else {
            states.join(", ")
        }
    ));
    out.push_str(&format!(
        "queue delay:       p50 {}, p99 {} (over {delayed} messages)\n",
        q(0.5),
        q(0.99)
    ));
    out.push_str(&format!(
        "messages/s:        {rate} (received, moving average over 10 s)\n"
    ));
    out.push_str(&format!(
        "resident memory:   {}\n",
        bytes(sum(samples, "engine_resident_memory_bytes", &[]))
    ));
    out.push_str(&format!(
        "queued:            {}\n",
        bytes(sum(samples, "engine_queued_bytes", &[]))
    ));
    let rq = |q| seconds(quantile(samples, "engine_receive_delay_seconds", q));
    // A saturated engine shows here first: datagrams wait in (and fall out of) the kernel's
    // socket queues before the shards read them.
    out.push_str(&format!(
        "socket receive:    delay p50 {}, p99 {}; queued {}; kernel drops {}\n",
        rq(0.5),
        rq(0.99),
        bytes(sum(samples, "engine_socket_receive_queue_bytes", &[])),
        count(sum(samples, "engine_socket_receive_drops_total", &[]))
    ));
    out.push_str(&format!(
        "stalled closes:    {} (peers that stopped reading, code 0x7)\n",
        count(sum(samples, "engine_connections_stalled_closed_total", &[]))
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::metrics::{MetricsSource, RateMeter, render_prometheus};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[test]
    fn table_has_a_row_per_shard_and_the_totals() {
        let stats: Vec<_> = (0..2)
            .map(|_| Arc::new(shards::shard::ShardStats::default()))
            .collect();
        stats[0].messages_in.store(7, Ordering::Relaxed);
        stats[0].delivered_local.store(5, Ordering::Relaxed);
        stats[0].dropped_unreachable.store(2, Ordering::Relaxed);
        stats[1].messages_in.store(3, Ordering::Relaxed);
        stats[1].relayed.store(3, Ordering::Relaxed);
        stats[1].messages_out.store(8, Ordering::Relaxed);
        stats[1].batches_out.store(2, Ordering::Relaxed);
        stats[1].connections.store(4, Ordering::Relaxed);
        let hist: Vec<shards::hist::SharedHistograms> = (0..2)
            .map(|_| Arc::new(parking_lot::Mutex::new(shards::hist::Histograms::new())))
            .collect();
        hist[0].lock().queue_delay_ns.saturating_record(2_000_000);
        let src = MetricsSource::new(stats, hist, Arc::new(engine::index::PeerIndex::new()));
        let doc = render_prometheus(&src, &mut RateMeter::default());
        let table = render(&parse_exposition(&doc).unwrap());
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0][0], "shard");
        assert_eq!(rows[1], ["0", "0", "7", "0", "0", "5", "2", "0"]);
        assert_eq!(rows[2], ["1", "4", "3", "8", "3", "0", "0", "2"]);
        assert_eq!(rows[3], ["total", "4", "10", "8", "3", "5", "2", "2"]);
        assert!(table.contains("connection states: new 0, connecting 0, connected 0"));
        // One 2 ms delay, in the (1 ms, 2.5 ms] bucket: p50 is interpolated halfway in.
        assert!(
            table.contains("queue delay:       p50 1.75 ms, p99 2.49 ms (over 1 messages)"),
            "{table}"
        );
        assert!(table.contains("messages/s:        0.0"));
        assert!(table.contains("resident memory:   "));
        assert!(!table.contains("resident memory:   -"));
    }

    #[test]
    fn units_are_readable() {
        assert_eq!(seconds(Some(12.34e-6)), "12.3 us");
        assert_eq!(seconds(Some(0.25)), "250.00 ms");
        assert_eq!(seconds(Some(f64::NAN)), "-");
        assert_eq!(bytes(Some(512.0)), "512 B");
        assert_eq!(bytes(Some(3.5 * 1024.0 * 1024.0)), "3.5 MiB");
        assert_eq!(count(None), "-");
    }

    #[test]
    fn timeout_is_bounded() {
        let day = shards::config::MAX_TIMEOUT;
        assert_eq!(parse_timeout("1d"), Ok(day));
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        let e = parse_timeout("1d 1ns").unwrap_err();
        assert_eq!(e, "timeout (86400.000000001s) must be at most 1d");
        let e = parse_timeout("18446744073709551615s").unwrap_err();
        assert!(e.starts_with("timeout ("), "{e}");
        assert!(parse_timeout("0").unwrap_err().contains("above zero"));
        // A caller that skips the parser gets an error, not a panic.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = fetch(l.local_addr().unwrap(), Duration::MAX).unwrap_err();
        assert!(format!("{e:#}").contains("too long"), "{e:#}");
    }

    #[test]
    fn unreachable_node_is_a_clear_error() {
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = fetch(addr, Duration::from_secs(1)).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot reach metrics at"),
            "{e:#}"
        );
    }
}
