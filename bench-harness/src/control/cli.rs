//! `bench-harness control-server`: its options, the signals and the banner.

use super::*;

/// `bench-harness control-server`: the tokio + quinn control node. The options that also
/// exist on `engine serve` have its names, defaults and limits (checked with the engine's
/// own rules at start).
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// UDP address to listen on (port 0 picks a free one; the banner names it).
    #[arg(long, default_value_t = engine::config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Static Noise key pair (the node's peer id), created (mode 0600) if missing, the
    /// same file format as `engine serve --identity`; ephemeral when not given.
    #[arg(long, visible_alias = "identity", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Flush a connection's batch at this many records.
    #[arg(long, default_value_t = BatchPolicy::default().max_messages)]
    pub batch_size: usize,
    /// Flush this long after the oldest queued record; 0 = at the end of each turn (at most
    /// 1d).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub batch_timeout: Duration,
    /// Most bytes of records one batch takes.
    #[arg(long, default_value_t = BatchPolicy::default().max_bytes)]
    pub batch_bytes: usize,
    /// Threads: 1 = a current-thread runtime (matched to one engine shard), N = a
    /// multi-thread runtime with N workers (matched to `--shards N`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Do not pin the runtime's threads to cores 0 and up (as `engine serve --no-pin`).
    #[arg(long)]
    pub no_pin: bool,
    /// QUIC connection and stream receive window, bytes (the engine's `--window`).
    #[arg(long, default_value_t = shards::session::DEFAULT_WINDOW)]
    pub window: u64,
    /// Bytes one connection may have queued before the senders feeding it are not read (at
    /// least 4096, as the engine). A record is admitted while the queue is below it and may
    /// take it over, as in the engine.
    #[arg(long, default_value_t = engine::config::DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,
    /// Larger payloads are refused with a `MessageTooLarge` ERROR record (at least 1, at
    /// most what one 16 MiB sealed frame holds, as the engine).
    #[arg(long, default_value_t = engine::config::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,
    /// Close a connection whose QUIC and Noise handshakes have not finished this long
    /// after it arrived (`HANDSHAKE_FAILED`). At most 1d.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Close a connection whose sealed frame is still incomplete this long after its
    /// first bytes arrived (`PROTOCOL_VIOLATION`). At most 1d.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub frame_timeout: Duration,
    /// Send one datagram per packet instead of coalescing with UDP GSO (the engine's
    /// `--no-gso`).
    #[arg(long)]
    pub no_gso: bool,
    /// How long SIGINT/SIGTERM may spend draining (at most 1d).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl ControlArgs {
    /// The configuration these arguments describe.
    pub fn config(&self) -> ControlConfig {
        let mut cfg = ControlConfig {
            listen: self.listen,
            threads: self.threads as usize,
            pin: !self.no_pin,
            batch: BatchPolicy {
                max_messages: self.batch_size,
                max_bytes: self.batch_bytes,
                timeout: self.batch_timeout,
            },
            queue_capacity: self.queue_capacity,
            max_message_size: self.max_message_size,
            handshake_timeout: self.handshake_timeout,
            frame_timeout: self.frame_timeout,
            drain_timeout: self.drain_timeout,
            ..ControlConfig::default()
        };
        cfg.transport.window = self.window;
        cfg.transport.gso = !self.no_gso;
        cfg
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later, the control
/// thread among them) so they can be taken synchronously with `sigwait`.
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

fn wait_signal(set: &libc::sigset_t) -> &'static str {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid signal set and `sig` a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}

/// Runs `bench-harness control-server` until SIGINT or SIGTERM; prints the banner
/// `engine serve` prints (`listening on ADDR with N thread(s); peer id HEX`) and, after the
/// drain, what it counted.
pub fn serve_cmd(a: &ControlArgs) -> anyhow::Result<i32> {
    let identity = Identity::load_or_generate(a.key.as_deref())?;
    let cfg = a.config();
    let threads = cfg.threads;
    let drain = cfg.drain_timeout;
    // Before the control thread starts, so it inherits the mask: a signal right after the
    // banner must drain, not kill.
    let set = block_signals();
    let server = ControlServer::start(cfg, identity)?;
    println!(
        "listening on {} with {} thread(s); peer id {}",
        server.local_addr(),
        threads,
        server.peer_id()
    );
    let sig = wait_signal(&set);
    eprintln!("signal {sig} received: draining (up to {drain:?})");
    let c = server.shutdown();
    eprintln!(
        "stopped: {} messages in, {} delivered locally, {} relayed, {} dropped",
        c.messages_in, c.delivered_local, c.relayed, c.dropped
    );
    Ok(0)
}
