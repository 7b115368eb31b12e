//! The `engine` command: serve a node, make identities, ping a node, show a node's metrics.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use engine::config::{ConfigError, ConfigFile, ServeConfig, parse_duration};
use engine::{AppKind, Engine};
use shards::batch::BatchPolicy;
use shards::client::{Client, ClientConfig};
use shards::identity::Identity;
use shards::shard::Delivery;

mod status;

/// mimalloc instead of glibc's malloc: at saturation a shard frees and allocates a
/// QUIC stream buffer per sealed batch and per acknowledged range, too large for glibc's
/// per-thread cache (`_int_malloc`/`_int_free` were about 5 % of a saturated shard's
/// samples); with mimalloc the in-memory echo path (`scripts/instructions.sh`) runs 3.4 %
/// fewer instructions a message at batch 128.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// `engine serve` settings. Each flag (or its `ENGINE_*` variable) overrides the key of
/// the same name in the `--config` file; the defaults come from the engine library and are
/// shown by `--help` (see [`command`]).
#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML file of settings, keys named like the flags (batch_size = 64, keepalive = "5s").
    /// Precedence: defaults < this file < ENGINE_* variables < flags.
    #[arg(long, env = "ENGINE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML (loadable with --config) and exit.
    #[arg(long)]
    print_config: bool,
    /// UDP address to listen on.
    #[arg(long, env = "ENGINE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Number of shards (pinned executors); default: one per available core.
    #[arg(long, env = "ENGINE_SHARDS")]
    shards: Option<usize>,
    /// Flush a destination's batch when it holds this many messages.
    #[arg(long, env = "ENGINE_BATCH_SIZE")]
    batch_size: Option<usize>,
    /// Most bytes of records one batch takes (a batch always takes at least one).
    #[arg(long, env = "ENGINE_BATCH_BYTES")]
    batch_bytes: Option<usize>,
    /// Flush a batch this long after its oldest message was queued (e.g. 50ms, 2ms, 0; at
    /// most 1d). 0 flushes at the end of every processing turn.
    #[arg(long, env = "ENGINE_BATCH_TIMEOUT", value_parser = parse_duration)]
    batch_timeout: Option<Duration>,
    /// What to do with messages addressed to this node.
    #[arg(long, env = "ENGINE_APP", value_enum)]
    app: Option<AppArg>,
    /// Identity file (created with mode 0600 if missing); default: an ephemeral identity.
    #[arg(long, env = "ENGINE_IDENTITY")]
    identity: Option<PathBuf>,
    /// Largest payload accepted, in bytes; larger messages are refused with an error record.
    #[arg(long, env = "ENGINE_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// TLS certificate chain (PEM), with --key. Default: a self-signed certificate made at
    /// start. Peers are authenticated by their Noise static keys, not by this certificate.
    #[arg(long, env = "ENGINE_CERT")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM), with --cert.
    #[arg(long, env = "ENGINE_KEY")]
    key: Option<PathBuf>,
    /// Another node to dial at start (repeatable; ENGINE_PEERS takes a comma-separated list).
    #[arg(long = "peer", env = "ENGINE_PEERS", value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// Do not pin shards to cores (file key: pin = false).
    #[arg(long, env = "ENGINE_NO_PIN")]
    no_pin: bool,
    /// How long a shard keeps reading its empty socket after its last datagram before it
    /// waits through the executor (e.g. 200us, 0; at most 10ms). Polling between datagrams
    /// spares each one the cost of a wait and a wake-up; an idle shard polls this long
    /// after its last datagram, then sleeps. Lowers latency at low rates, at the cost of a
    /// busy core.
    #[arg(long, env = "ENGINE_BUSY_POLL", value_parser = parse_duration)]
    busy_poll: Option<Duration>,
    /// Send one datagram per sendmmsg slot instead of coalescing with UDP GSO (file key:
    /// gso = false). GSO is used only where the kernel supports it.
    #[arg(long, env = "ENGINE_NO_GSO")]
    no_gso: bool,
    /// Read one datagram per recvmmsg slot instead of receiving runs of same-size
    /// datagrams as one buffer with UDP GRO (file key: gro = false). GRO is used only
    /// where the kernel supports it.
    #[arg(long, env = "ENGINE_NO_GRO")]
    no_gro: bool,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (e.g. 127.0.0.1:9100),
    /// from unpinned threads (at most 8 connections at once, 4 s each). Off by default.
    /// Read them with `engine status`.
    #[arg(long, env = "ENGINE_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// How long a graceful drain may take on SIGINT/SIGTERM before connections are closed
    /// (at most 1d).
    #[arg(long, env = "ENGINE_DRAIN_TIMEOUT", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// Close a connection gracefully after this long without messages (at most 365d).
    #[arg(long, env = "ENGINE_POOL_TTL", value_parser = parse_duration)]
    pool_ttl: Option<Duration>,
    /// QUIC idle timeout: a peer silent this long (keep-alives unanswered) is gone (at most
    /// 1d).
    #[arg(long, env = "ENGINE_IDLE_TIMEOUT", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Send a keep-alive PING after this long without sending; must be below
    /// --idle-timeout. Default: a third of the idle timeout.
    #[arg(long, env = "ENGINE_KEEPALIVE", value_parser = parse_duration)]
    keepalive: Option<Duration>,
    /// Refuse connections (authenticated accepted peers, and dialed ones) beyond this many
    /// across all shards; refused peers are closed with application code 0x5
    /// (CONNECTION_LIMIT) once their Noise handshake completes. Default: no cap.
    #[arg(long, env = "ENGINE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Ceiling in bytes (at least 1 MiB) on what the node's connections hold, across all
    /// shards: batch queues, unsent sealed frames, received bytes. At it shards stop reading
    /// from peers (QUIC flow control slows them) and drop new peers' Initials until it
    /// falls below. Default: no ceiling beyond the per-connection bounds.
    #[arg(long, env = "ENGINE_MEMORY_LIMIT")]
    memory_limit: Option<u64>,
    /// First delay before re-dialing a lost --peer (doubles per attempt, with jitter; at
    /// most --reconnect-max).
    #[arg(long, env = "ENGINE_RECONNECT_INITIAL", value_parser = parse_duration)]
    reconnect_initial: Option<Duration>,
    /// Longest delay between re-dial attempts (at most 1d).
    #[arg(long, env = "ENGINE_RECONNECT_MAX", value_parser = parse_duration)]
    reconnect_max: Option<Duration>,
    /// Re-dial attempts before the peer is marked failed and its messages refused
    /// (0 = never give up).
    #[arg(long, env = "ENGINE_RECONNECT_ATTEMPTS")]
    reconnect_attempts: Option<u32>,
    /// Jitter of the re-dial delays as a fraction (0.2 = ±20 %), within 0.0..=1.0.
    #[arg(long, env = "ENGINE_RECONNECT_JITTER")]
    reconnect_jitter: Option<f64>,
    /// Bytes one destination may have queued (batch queue plus sealed bytes not yet taken
    /// by QUIC) before the node stops reading the senders feeding it; back-pressure then
    /// reaches them through QUIC flow control.
    #[arg(long, env = "ENGINE_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    /// Close a connection with code 0x7 (STALLED) when data has waited this long for the
    /// peer without the peer granting any flow-control credit (it stopped reading). Its
    /// queued messages are counted as dropped with reason "stalled". At most 1d.
    #[arg(long, env = "ENGINE_STALL_TIMEOUT", value_parser = parse_duration)]
    stall_timeout: Option<Duration>,
    /// Close a connection whose QUIC and Noise handshakes have not both finished this long
    /// after it was opened (code HANDSHAKE_FAILED), freeing its slot under the connection cap.
    /// At most 1d.
    #[arg(long, env = "ENGINE_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Close a connection (code PROTOCOL_VIOLATION) whose sealed frame is still incomplete
    /// this long after its first bytes arrived, so no peer holds a partial frame buffer open.
    /// At most 1d.
    #[arg(long, env = "ENGINE_FRAME_TIMEOUT", value_parser = parse_duration)]
    frame_timeout: Option<Duration>,
    /// Most handshakes in progress per shard; a new peer's Initial beyond it is dropped
    /// without state (counted in engine_handshake_budget_drops_total).
    #[arg(long, env = "ENGINE_MAX_HANDSHAKES")]
    max_handshakes: Option<usize>,
    /// Answer a new peer's first Initial with a QUIC Retry (stateless address validation,
    /// one extra round trip) while at least this many handshakes are in progress on its
    /// shard, so floods from spoofed addresses create no state. 0 = always.
    #[arg(long, env = "ENGINE_RETRY_THRESHOLD")]
    retry_threshold: Option<usize>,
    /// QUIC connection and stream receive window in bytes: how much a peer may have in
    /// flight towards this node. Bounds the standing queue in front of a saturated node
    /// (connections x window); raise it for paths with a large bandwidth-delay product.
    #[arg(long, env = "ENGINE_WINDOW")]
    window: Option<u64>,
    /// Largest UDP payload sent and received, in bytes (1200..=65527).
    #[arg(long, env = "ENGINE_MAX_UDP_PAYLOAD")]
    max_udp_payload: Option<usize>,
}

impl ServeArgs {
    /// The settings given by flags and `ENGINE_*` variables, as one layer over the file.
    fn overrides(&self) -> ConfigFile {
        ConfigFile {
            listen: self.listen,
            shards: self.shards,
            pin: self.no_pin.then_some(false),
            busy_poll: self.busy_poll,
            identity: self.identity.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            app: self.app.map(|a| match a {
                AppArg::Echo => AppKind::Echo,
                AppArg::Sink => AppKind::Sink,
            }),
            peers: (!self.peers.is_empty()).then(|| self.peers.clone()),
            metrics: self.metrics,
            drain_timeout: self.drain_timeout,
            batch_size: self.batch_size,
            batch_bytes: self.batch_bytes,
            batch_timeout: self.batch_timeout,
            max_message_size: self.max_message_size,
            queue_capacity: self.queue_capacity,
            idle_timeout: self.idle_timeout,
            window: self.window,
            max_udp_payload: self.max_udp_payload,
            gso: self.no_gso.then_some(false),
            gro: self.no_gro.then_some(false),
            keepalive: self.keepalive,
            pool_ttl: self.pool_ttl,
            stall_timeout: self.stall_timeout,
            handshake_timeout: self.handshake_timeout,
            frame_timeout: self.frame_timeout,
            max_handshakes: self.max_handshakes,
            retry_threshold: self.retry_threshold,
            max_connections: self.max_connections,
            memory_limit: self.memory_limit,
            reconnect_initial: self.reconnect_initial,
            reconnect_max: self.reconnect_max,
            reconnect_attempts: self.reconnect_attempts,
            reconnect_jitter: self.reconnect_jitter,
        }
    }
}

/// The `serve` argument that sets config key `key` (they share names, except `pin`, `gso`
/// and `gro`, set by `--no-pin`, `--no-gso` and `--no-gro`).
fn arg_id(key: &str) -> &str {
    match key {
        "pin" => "no_pin",
        "gso" => "no_gso",
        "gro" => "no_gro",
        _ => key,
    }
}

/// The command line, with each `serve` flag's help ending in its default as the engine
/// library defines it (the flags themselves have no clap defaults, so that an absent flag
/// does not override the config file).
fn command() -> clap::Command {
    let defaults =
        toml::Table::try_from(ConfigFile::from(&ServeConfig::default())).unwrap_or_default();
    Cli::command().mut_subcommand("serve", |mut serve| {
        for (key, value) in &defaults {
            // keepalive's default is derived; its help says so.
            if key == "keepalive" || !serve.get_arguments().any(|a| a.get_id() == arg_id(key)) {
                continue;
            }
            let shown = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Array(a) if a.is_empty() => continue,
                toml::Value::Boolean(_) => continue,
                other => other.to_string(),
            };
            serve = serve.mut_arg(arg_id(key), |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let long = a.get_long_help().map(|h| h.to_string());
                let a = a.help(format!("{help} [default: {shown}]"));
                match long {
                    Some(l) => a.long_help(format!("{l}\n[default: {shown}]")),
                    None => a,
                }
            });
        }
        serve
    })
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

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let serve_matches = matches.subcommand_matches("serve");
    let code = match run(cli, serve_matches) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli, serve_matches: Option<&clap::ArgMatches>) -> Result<i32> {
    match cli.command {
        Cmd::Serve(a) => serve(a, serve_matches),
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

/// Where a setting that broke a rule came from, for the error message: the flag or
/// variable that set it, the config file, or the default.
fn provenance(
    e: &ConfigError,
    file: Option<(&std::path::Path, &ConfigFile)>,
    cli: &ConfigFile,
    matches: Option<&clap::ArgMatches>,
) -> String {
    let cmd = command();
    let serve = cmd.find_subcommand("serve");
    let mut from = Vec::new();
    for key in engine::config::keys_for_field(e.field()) {
        let arg = serve.and_then(|s| s.get_arguments().find(|a| a.get_id() == arg_id(key)));
        if cli.sets(key) {
            let source = matches.and_then(|m| m.value_source(arg_id(key)));
            match (source, arg) {
                (Some(clap::parser::ValueSource::EnvVariable), Some(arg)) => {
                    if let Some(env) = arg.get_env() {
                        from.push(format!("${}", env.to_string_lossy()));
                    }
                }
                (_, Some(arg)) => {
                    if let Some(long) = arg.get_long() {
                        from.push(format!("--{long}"));
                    }
                }
                _ => {}
            }
        } else if let Some((path, layer)) = file
            && layer.sets(key)
        {
            from.push(format!("`{key}` in {}", path.display()));
        }
    }
    if from.is_empty() {
        String::new()
    } else {
        format!(" (set by {})", from.join(", "))
    }
}

fn serve(a: ServeArgs, matches: Option<&clap::ArgMatches>) -> Result<i32> {
    let file = match &a.config {
        Some(path) => Some((path.as_path(), ConfigFile::load(path)?)),
        None => None,
    };
    let cli = a.overrides();
    let layers = file.iter().map(|(_, f)| f).chain(std::iter::once(&cli));
    let provenance_of =
        |e: &ConfigError| provenance(e, file.as_ref().map(|(p, f)| (*p, f)), &cli, matches);
    let cfg = ServeConfig::layered(layers)
        .and_then(|c| c.validate().map(|()| c))
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}{}", provenance_of(&e)))?;
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(0);
    }
    let set = block_signals();
    let ServeConfig {
        engine: cfg,
        peers,
        metrics,
        drain_timeout,
    } = cfg;
    let engine = Engine::start(cfg)?;
    println!(
        "listening on {} with {} shard(s); peer id {}",
        engine.local_addr(),
        engine.shard_count(),
        engine.peer_id()
    );
    let metrics = match metrics {
        Some(addr) => {
            let server = engine::metrics::MetricsServer::start(addr, engine.metrics_source())
                .with_context(|| format!("starting the metrics server on {addr}"))?;
            println!("metrics on http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };
    for p in &peers {
        match engine.dial(*p, Duration::from_secs(10)) {
            Ok(id) => println!("connected to {p}: peer id {id}"),
            Err(e) => eprintln!("warning: could not connect to {p}: {e}"),
        }
    }
    let sig = wait_signal(&set);
    eprintln!(
        "signal {sig} received: draining (up to {:?})",
        drain_timeout
    );
    let stats = engine.shutdown(drain_timeout)?;
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
    fn cli_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn serve_help_shows_the_library_defaults() {
        let mut cmd = command();
        let help = cmd
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        let d = ServeConfig::default();
        for shown in [
            format!("[default: {}]", d.engine.batch.max_messages),
            format!("[default: {}]", d.engine.transport.window),
            format!("[default: {}]", d.engine.listen),
            format!(
                "[default: {}]",
                engine::config::format_duration(d.engine.pool.ttl)
            ),
            format!(
                "[default: {}]",
                engine::config::format_duration(d.drain_timeout)
            ),
        ] {
            assert!(help.contains(&shown), "{shown} missing from\n{help}");
        }
        assert!(help.contains("ENGINE_BATCH_SIZE"), "{help}");
    }

    #[test]
    fn status_timeout_is_bounded() {
        let status = |t: &str| {
            command().try_get_matches_from([
                "engine",
                "status",
                "--metrics",
                "127.0.0.1:9100",
                "--timeout",
                t,
            ])
        };
        status("1d").unwrap();
        let e = status("18446744073709551615s").unwrap_err().to_string();
        assert!(e.contains("--timeout"), "{e}");
        assert!(e.contains("must be at most 1d"), "{e}");
    }

    #[test]
    fn absent_flags_override_nothing() {
        let m = command()
            .try_get_matches_from(["engine", "serve", "--window", "65536"])
            .unwrap();
        let Cmd::Serve(a) = Cli::from_arg_matches(&m).unwrap().command else {
            panic!("not serve");
        };
        let layer = a.overrides();
        assert_eq!(
            layer,
            ConfigFile {
                window: Some(65_536),
                ..ConfigFile::default()
            }
        );
    }
}
