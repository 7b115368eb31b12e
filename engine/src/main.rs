//! The `engine` command: serve a node, make identities, ping a node, show a node's metrics.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use engine::{AppKind, Engine, EngineConfig};
use shards::batch::BatchPolicy;
use shards::client::{Client, ClientConfig};
use shards::identity::Identity;
use shards::shard::Delivery;

mod status;

/// Thread-per-core QUIC message engine.
///
/// One UDP port, one pinned executor per core, peers steered to shards by connection ID,
/// messages batched per destination and sealed with ChaCha20-Poly1305 under Noise keys.
#[derive(Parser, Debug)]
#[command(name = "engine", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once at start, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node until SIGINT or SIGTERM, then drain gracefully.
    Serve(ServeArgs),
    /// Create a static identity (Noise key pair) file with mode 0600 and print its peer id.
    Keygen(KeygenArgs),
    /// Connect as a client, send messages to the node's echo handler, report round trips.
    /// Exits 0 only if every reply came back intact.
    Ping(PingArgs),
    /// Show a running node's metrics as a table (needs `serve --metrics ADDR`).
    ///
    /// Fetches http://ADDR/metrics and prints, per shard and in total, connections, messages
    /// in and out, relayed, delivered, dropped and batches; then connection states, queue
    /// delay p50/p99, messages per second and resident memory.
    Status(status::StatusArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Number of shards (pinned executors); default: one per available core.
    #[arg(long)]
    shards: Option<usize>,
    /// Flush a destination's batch when it holds this many messages.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    batch_size: u32,
    /// Flush a batch this long after its oldest message was queued (e.g. 50ms, 2ms, 0).
    /// 0 flushes at the end of every processing turn.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    batch_timeout: Duration,
    /// What to do with messages addressed to this node.
    #[arg(long, value_enum, default_value_t = AppArg::Echo)]
    app: AppArg,
    /// Identity file (created with mode 0600 if missing); default: an ephemeral identity.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Largest payload accepted, in bytes; larger messages are refused with an error record.
    #[arg(long, default_value_t = engine::config::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// TLS certificate chain (PEM). Default: a self-signed certificate made at start.
    /// Peers are authenticated by their Noise static keys, not by this certificate.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM), with --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Another node to dial at start (repeatable).
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Do not pin shards to cores.
    #[arg(long)]
    no_pin: bool,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (e.g. 127.0.0.1:9100),
    /// from one unpinned thread. Off by default. Read them with `engine status`.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// How long a graceful drain may take on SIGINT/SIGTERM before connections are closed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Close a connection gracefully after this long without messages.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pool_ttl: Duration,
    /// QUIC idle timeout: a peer silent this long (keep-alives unanswered) is gone.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Send a keep-alive PING after this long without sending; must be below
    /// --idle-timeout. Default: a third of the idle timeout.
    #[arg(long, value_parser = parse_duration)]
    keepalive: Option<Duration>,
    /// Refuse connections (accepted or dialed) beyond this many across all shards; refused
    /// peers are closed with application code 0x5 (CONNECTION_LIMIT).
    #[arg(long)]
    max_connections: Option<usize>,
    /// First delay before re-dialing a lost --peer (doubles per attempt, with ±20% jitter).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    reconnect_initial: Duration,
    /// Longest delay between re-dial attempts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    reconnect_max: Duration,
    /// Re-dial attempts before the peer is marked failed and its messages refused
    /// (0 = never give up).
    #[arg(long, default_value_t = 10)]
    reconnect_attempts: u32,
    /// Bytes one destination may have queued (batch queue plus sealed bytes not yet taken
    /// by QUIC) before the node stops reading the senders feeding it; back-pressure then
    /// reaches them through QUIC flow control.
    #[arg(long, default_value_t = engine::config::DEFAULT_QUEUE_CAPACITY)]
    queue_capacity: usize,
    /// Close a connection with code 0x7 (STALLED) when data has waited this long for the
    /// peer without the peer granting any flow-control credit (it stopped reading). Its
    /// queued messages are counted as dropped with reason "stalled".
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// QUIC connection and stream receive window in bytes: how much a peer may have in
    /// flight towards this node. Bounds the standing queue in front of a saturated node
    /// (connections x window); raise it for paths with a large bandwidth-delay product.
    #[arg(long, default_value_t = shards::session::DEFAULT_WINDOW)]
    window: u64,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum AppArg {
    /// Send each message back to its sender.
    Echo,
    /// Count and discard.
    Sink,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Where to write the identity (mode 0600).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct PingArgs {
    /// The node to ping.
    #[arg(long)]
    target: SocketAddr,
    /// How many messages to send.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages in flight at once (1 measures pure round trips).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,
    /// Give up on a reply after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Identity file to connect with; default: an ephemeral identity.
    #[arg(long)]
    identity: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 0, 500us, 50ms, 2s)"))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Cmd::Serve(a) => serve(a),
        Cmd::Keygen(a) => keygen(a),
        Cmd::Ping(a) => ping(a),
        Cmd::Status(a) => status::run(a),
    }
}

fn keygen(a: KeygenArgs) -> Result<i32> {
    let id = Identity::generate().context("generating a key pair")?;
    if a.force {
        id.save(&a.out)
    } else {
        id.save_new(&a.out)
    }
    .with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", id.peer_id());
    Ok(0)
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later) so they can
/// be taken synchronously with `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid signal set and `sig` a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn serve(a: ServeArgs) -> Result<i32> {
    let set = block_signals();
    let keepalive = a.keepalive.unwrap_or(a.idle_timeout / 3);
    if a.idle_timeout.is_zero() || keepalive.is_zero() || keepalive >= a.idle_timeout {
        bail!(
            "--keepalive ({keepalive:?}) must be above zero and below --idle-timeout ({:?})",
            a.idle_timeout
        );
    }
    if a.pool_ttl.is_zero() {
        bail!("--pool-ttl must be above zero");
    }
    if a.window < 16 * 1024 {
        bail!("--window ({}) must be at least 16384 bytes", a.window);
    }
    if a.stall_timeout.is_zero() {
        bail!("--stall-timeout must be above zero");
    }
    if a.queue_capacity < 4096 {
        bail!(
            "--queue-capacity ({}) must be at least 4096 bytes",
            a.queue_capacity
        );
    }
    let reconnect = shards::lifecycle::BackoffPolicy {
        initial: a.reconnect_initial,
        max: a.reconnect_max,
        attempts: a.reconnect_attempts,
        ..Default::default()
    };
    reconnect
        .validate()
        .map_err(|e| anyhow::anyhow!("--reconnect-initial/--reconnect-max: {e}"))?;
    let cfg = EngineConfig {
        transport: shards::session::TransportConfig {
            idle_timeout: a.idle_timeout,
            window: a.window,
            ..Default::default()
        },
        pool: shards::shard::PoolConfig {
            ttl: a.pool_ttl,
            keepalive,
            max_connections: a.max_connections,
            stall_timeout: a.stall_timeout,
        },
        reconnect,
        listen: a.listen,
        shards: a.shards,
        pin: !a.no_pin,
        identity: a.identity,
        tls: a.cert.zip(a.key),
        batch: BatchPolicy {
            max_messages: a.batch_size as usize,
            timeout: a.batch_timeout,
            ..BatchPolicy::default()
        },
        max_message_size: a.max_message_size,
        queue_capacity: a.queue_capacity,
        app: match a.app {
            AppArg::Echo => AppKind::Echo,
            AppArg::Sink => AppKind::Sink,
        },
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg)?;
    println!(
        "listening on {} with {} shard(s); peer id {}",
        engine.local_addr(),
        engine.shard_count(),
        engine.peer_id()
    );
    let metrics = match a.metrics {
        Some(addr) => {
            let server = engine::metrics::MetricsServer::start(addr, engine.metrics_source())
                .with_context(|| format!("starting the metrics server on {addr}"))?;
            println!("metrics on http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };
    for p in &a.peers {
        match engine.dial(*p, Duration::from_secs(10)) {
            Ok(id) => println!("connected to {p}: peer id {id}"),
            Err(e) => eprintln!("warning: could not connect to {p}: {e}"),
        }
    }
    let sig = wait_signal(&set);
    eprintln!(
        "signal {sig} received: draining (up to {:?})",
        a.drain_timeout
    );
    let stats = engine.shutdown(a.drain_timeout)?;
    eprintln!(
        "stopped: {} messages in, {} delivered locally, {} relayed, {} dropped",
        stats.messages_in,
        stats.delivered_local,
        stats.relayed,
        stats.dropped()
    );
    drop(metrics);
    Ok(0)
}

/// The payload for message `seq`: a recognisable pattern, so corruption is detected.
fn ping_payload(seq: u64, size: usize) -> Vec<u8> {
    let seed = seq.to_le_bytes();
    (0..size)
        .map(|i| seed[i % 8] ^ (i as u8).wrapping_mul(31))
        .collect()
}

fn ping(a: PingArgs) -> Result<i32> {
    let id = Identity::load_or_generate(a.identity.as_deref())?;
    let cfg = ClientConfig {
        batch: BatchPolicy {
            timeout: Duration::ZERO,
            ..BatchPolicy::default()
        },
        ..ClientConfig::default()
    };
    let mut c = Client::connect(a.target, &id, cfg)
        .with_context(|| format!("connecting to {}", a.target))?;
    let node = c.node_id();
    println!("connected to {} (peer id {node})", a.target);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut sent_at = std::collections::HashMap::new();
    let (mut next, mut ok, mut bad, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut last_progress = Instant::now();
    while ok + bad + errors < a.count {
        while next < a.count && (sent_at.len() as u64) < a.window {
            sent_at.insert(next, Instant::now());
            c.send_with_seq(node, next, ping_payload(next, a.size))?;
            next += 1;
        }
        c.flush()?;
        match c.recv(Duration::from_millis(100))? {
            Some(Delivery::Message { seq, payload, .. }) => {
                last_progress = Instant::now();
                match sent_at.remove(&seq) {
                    Some(t) if payload == ping_payload(seq, a.size) => {
                        ok += 1;
                        hist.saturating_record(t.elapsed().as_nanos() as u64);
                    }
                    Some(_) => {
                        bad += 1;
                        eprintln!("reply {seq} corrupted");
                    }
                    None => {
                        bad += 1;
                        eprintln!("unexpected reply {seq}");
                    }
                }
            }
            Some(Delivery::Error(e)) => {
                last_progress = Instant::now();
                sent_at.remove(&e.seq);
                errors += 1;
                eprintln!("message {} refused: {:?}: {}", e.seq, e.code, e.reason);
            }
            None => {
                if last_progress.elapsed() > a.timeout {
                    eprintln!(
                        "no reply for {:?}; {} outstanding",
                        a.timeout,
                        sent_at.len()
                    );
                    break;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let lost = a.count - ok - bad - errors;
    let _ = c.close(Duration::from_secs(2));
    let us = |v: u64| v as f64 / 1000.0;
    println!(
        "{} sent, {ok} intact, {bad} corrupted, {errors} refused, {lost} lost in {:.2?} ({:.0} msg/s)",
        a.count,
        elapsed,
        ok as f64 / elapsed.as_secs_f64()
    );
    if ok > 0 {
        println!(
            "round trip (us): min {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            us(hist.min()),
            us(hist.value_at_quantile(0.5)),
            us(hist.value_at_quantile(0.9)),
            us(hist.value_at_quantile(0.99)),
            us(hist.value_at_quantile(0.999)),
            us(hist.max())
        );
    }
    if ok != a.count {
        bail!(
            "{} of {} replies did not come back intact",
            a.count - ok,
            a.count
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_zero_and_units() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
