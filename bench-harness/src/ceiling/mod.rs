//! `bench-harness ceiling`: the raw UDP echo rate on the engine's socket setup, measured in
//! the same run as a speed claim about the engine, so the claim can be set against what the
//! machine's loopback and kernel allow at all.
//!
//! An in-process echo server (one thread, pinned to the first core as shard 0 is, on a
//! socket from [`shards::steering::bind_group`], so non-blocking with the engine's buffer
//! sizes) sends every datagram back to where it came from, in one of three ways
//! ([`IoMode`]): one `recvfrom` and one `sendto` per datagram; `recvmmsg`/`sendmmsg` bursts
//! of up to [`BURST`] ([`shards::udp_batch`], the shards' calls); or those bursts with UDP
//! GRO on receive and GSO on send, as the shards move datagrams (their generators then use
//! GSO and GRO too). All wait in `poll(2)` when idle and read until the socket is empty when
//! woken.
//!
//! Generator threads (pinned from the last core down, each with its own socket made the
//! same way, batched I/O so they out-run the server) drive it open loop. Datagram `k` of
//! thread `t` (of `n`) is due at `(k + t / n) / thread_rate` after the run's origin and
//! carries its sequence number and that intended time in the harness's payload layout
//! ([`crate::load::write_payload`]). Its latency counts from the intended time, so a stall
//! anywhere shows in the histogram (no coordinated omission); a generator that falls behind
//! sends late rather than skipping, and its lag is recorded apart. A datagram that has not
//! come back by the end of the drain is lost: raw UDP saturates by the kernel dropping what
//! a full socket buffer cannot take.
//!
//! A run yields a [`LoadResult`], so its run directory, summary, verdict and knee search are
//! those of `run` and `knee` ([`crate::knee::search_config`]).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use shards::steering::{self, SteeringError};
use shards::udp_batch::{RecvBatch, SendBatch, enable_gro, gso_supported};

use crate::knee::{self, Outcome, SearchParams};
use crate::load::{self, LoadConfig, LoadResult, Mode, PAYLOAD_HEADER};
use crate::output::{self, OutputError, RunMeta};
use crate::summary::Summary;

/// Datagrams per `recvmmsg` and per `sendmmsg`, in the batched server and in the
/// generators (the shards send up to 64 per `sendmmsg` too).
pub const BURST: usize = 64;
/// Largest datagram payload over IPv4 UDP.
pub const MAX_MESSAGE_SIZE: usize = 65_507;
/// How long the idle server waits in `poll(2)` before it checks whether the run is over.
const SERVER_POLL: Duration = Duration::from_millis(20);
/// How long the server waits for room in its send buffer before it drops a reply.
const SEND_WAIT: Duration = Duration::from_millis(10);
/// Datagrams a generator sends per pass before it reads replies again, so a generator far
/// behind its schedule still reads (and its socket does not overflow).
const SENDS_PER_PASS: usize = 1024;
/// `recvmmsg` calls per pass, so a flood of replies cannot starve the schedule.
const RECV_CALLS_PER_PASS: usize = 64;
/// Delay from setting up to the schedule's origin (threads started and pinned).
const START_DELAY: Duration = Duration::from_millis(50);

/// How the echo server moves datagrams.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum IoMode {
    /// One `recvfrom` and one `sendto` per datagram.
    PerDatagram,
    /// `recvmmsg`/`sendmmsg` bursts of up to 64 datagrams (`BURST`).
    Batched,
    /// Batched, with UDP GRO on receive (a burst of up to 64 runs) and GSO on send, on the
    /// server and the generators, where the kernel has them: the shards' I/O.
    Offload,
}

impl IoMode {
    /// `per-datagram`, `batched` or `offload`, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            IoMode::PerDatagram => "per-datagram",
            IoMode::Batched => "batched",
            IoMode::Offload => "offload",
        }
    }
}

impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a ceiling run could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeilingError {
    /// Bad configuration.
    #[error("invalid ceiling configuration: {0}")]
    Config(String),
    /// A socket could not be created.
    #[error("UDP socket: {0}")]
    Socket(#[from] SteeringError),
    /// A thread could not be started, or a socket queried.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A server or generator thread panicked.
    #[error("a ceiling thread panicked")]
    Panicked,
    /// Writing a run directory failed.
    #[error("writing results: {0}")]
    Output(#[from] OutputError),
    /// Writing the report failed.
    #[error("writing {0}: {1}")]
    Report(PathBuf, io::Error),
}

/// What the echo server did in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Datagrams received.
    pub received: u64,
    /// Receive system calls, the ones that found the socket empty included.
    pub receive_calls: u64,
    /// Datagrams sent back.
    pub sent: u64,
    /// Send system calls.
    pub send_calls: u64,
    /// Replies dropped because the send buffer stayed full (or the send failed).
    pub send_dropped: u64,
    /// Times `poll(2)` woke the server with datagrams to read.
    pub wakeups: u64,
}

impl ServerStats {
    /// Datagrams per receive system call.
    pub fn per_receive_call(&self) -> f64 {
        self.received as f64 / (self.receive_calls.max(1)) as f64
    }
}

/// One finished ceiling run.
#[derive(Debug)]
pub struct CeilingRun {
    /// The server's I/O mode.
    pub io: IoMode,
    /// What the generators measured.
    pub result: LoadResult,
    /// What the server did.
    pub server: ServerStats,
    /// The load as run (its target is the server's address).
    pub load: LoadConfig,
    /// Replies that came back twice (never expected on loopback).
    pub duplicates: u64,
    /// The server socket's receive and send buffers as the kernel reports them.
    pub server_buffers: (usize, usize),
    /// Generator send and receive system calls.
    pub generator_calls: (u64, u64),
    /// Datagrams the generators sent and read back, warm-up and drain included (set against
    /// the server's counts, they tell at which socket datagrams were dropped).
    pub generator_datagrams: (u64, u64),
}

/// Checks a ceiling load before anything starts.
pub fn check(cfg: &LoadConfig) -> Result<(), CeilingError> {
    if cfg.threads == 0 {
        return Err(CeilingError::Config("threads must be at least 1".into()));
    }
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        return Err(CeilingError::Config("rate must be above zero".into()));
    }
    if !(PAYLOAD_HEADER..=MAX_MESSAGE_SIZE).contains(&cfg.message_size) {
        return Err(CeilingError::Config(format!(
            "message size must be {PAYLOAD_HEADER}..={MAX_MESSAGE_SIZE} bytes (sequence and send time first)"
        )));
    }
    if cfg.duration.is_zero() {
        return Err(CeilingError::Config("duration must be above zero".into()));
    }
    if [cfg.warmup, cfg.duration, cfg.drain]
        .iter()
        .any(|d| *d > load::MAX_PHASE)
    {
        return Err(CeilingError::Config(format!(
            "warm-up, duration and drain must be at most {:?} each",
            load::MAX_PHASE
        )));
    }
    Ok(())
}

/// Runs one ceiling measurement: a fresh echo server in `io` mode, `cfg.threads` generators
/// at `cfg.rate` in total (`cfg.target`, `connections` and `mode` are ignored).
pub fn run_once(cfg: &LoadConfig, io: IoMode) -> Result<CeilingRun, CeilingError> {
    check(cfg)?;
    let wall_start = Instant::now();
    let steal = crate::steal::StealClock::start();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (mut socks, server_addr) = steering::bind_group(loopback, 1)?;
    let server_sock = socks
        .pop()
        .ok_or_else(|| CeilingError::Config("no server socket".into()))?;
    let server_buffers = steering::buffer_sizes(&server_sock)?;
    let cores: Vec<core_affinity::CoreId> = core_affinity::get_core_ids().unwrap_or_default();
    let pin = cfg.pin;
    let stop = Arc::new(AtomicBool::new(false));
    // Slots hold any datagram the generators send, and one byte more, so a longer one
    // shows as truncated.
    let slot = cfg.message_size + 1;
    let server = {
        let stop = stop.clone();
        let core = cores.first().copied();
        std::thread::Builder::new()
            .name("ceiling-echo".into())
            .spawn(move || {
                pin_to(pin, core);
                serve(&server_sock, io, &stop, slot)
            })?
    };
    let origin = Instant::now() + START_DELAY;
    let started_at = std::time::SystemTime::now() + START_DELAY + cfg.warmup;
    let hard_deadline = origin + cfg.warmup + cfg.duration + cfg.drain;
    let per_thread = cfg.rate / cfg.threads as f64;
    let mut generators = Vec::with_capacity(cfg.threads);
    let mut spawn_err = None;
    for t in 0..cfg.threads {
        let sock = match steering::bind_group(loopback, 1).map(|(mut s, _)| s.pop()) {
            Ok(Some(s)) => s,
            Ok(None) => {
                spawn_err = Some(CeilingError::Config("no generator socket".into()));
                break;
            }
            Err(e) => {
                spawn_err = Some(e.into());
                break;
            }
        };
        let tally = Tally::new(
            per_thread,
            t as f64 / cfg.threads as f64,
            cfg.message_size,
            cfg.warmup,
            cfg.duration,
        );
        // Generators take cores from the end of the list, away from the server on core 0.
        let core = cores
            .len()
            .checked_sub(1 + t % cores.len().max(1))
            .and_then(|i| cores.get(i))
            .copied();
        let size = cfg.message_size;
        match std::thread::Builder::new()
            .name(format!("ceiling-gen-{t}"))
            .spawn(move || {
                pin_to(pin, core);
                generate(&sock, io, server_addr, tally, size, origin, hard_deadline)
            }) {
            Ok(h) => generators.push(h),
            Err(e) => {
                spawn_err = Some(e.into());
                break;
            }
        }
    }
    let mut outs = Vec::with_capacity(generators.len());
    let mut panicked = false;
    for g in generators {
        match g.join() {
            Ok(o) => outs.push(o),
            Err(_) => panicked = true,
        }
    }
    stop.store(true, Ordering::Release);
    let server = server.join().map_err(|_| CeilingError::Panicked)?;
    if let Some(e) = spawn_err {
        return Err(e);
    }
    if panicked {
        return Err(CeilingError::Panicked);
    }
    let mut latency = load::new_hist();
    let mut lag = load::new_hist();
    let mut arrivals = load::new_hist();
    let mut intervals: Vec<Histogram<u64>> = Vec::new();
    let (mut offered, mut sent, mut received, mut corrupted, mut duplicates) = (0, 0, 0, 0, 0);
    let mut measured_corrupted = 0;
    let mut generator_calls = (0, 0);
    let mut generator_datagrams = (0, 0);
    for o in &mut outs {
        let t = &mut o.tally;
        let _ = latency.add(&t.latency);
        let _ = lag.add(&t.lag);
        let _ = arrivals.add(&t.arrivals);
        load::merge_intervals(&mut intervals, std::mem::take(&mut t.intervals));
        offered += t.offered();
        sent += t.sent;
        received += t.received;
        corrupted += t.corrupted;
        measured_corrupted += t.measured_corrupted;
        duplicates += t.duplicates;
        generator_calls.0 += o.send_calls;
        generator_calls.1 += o.recv_calls;
        generator_datagrams.0 += o.datagrams_sent;
        generator_datagrams.1 += o.datagrams_read;
    }
    // As in `load`: the window ends when 99 % of the measured replies had arrived.
    let p99_arrival = if arrivals.is_empty() {
        Duration::ZERO
    } else {
        Duration::from_nanos(arrivals.value_at_quantile(0.99))
    };
    let result = LoadResult {
        latency,
        intervals,
        interval: load::interval_length(cfg.duration),
        lag,
        offered,
        sent,
        deferred: 0,
        // Measured datagrams a generator had not sent by the deadline: it fell behind (the
        // kernel's send path is the back-pressure of raw UDP).
        refused: offered.saturating_sub(sent),
        connection_errors: 0,
        received,
        corrupted,
        measured_corrupted,
        duplicates,
        errors: Default::default(),
        elapsed: cfg.duration,
        receive_window: cfg.duration.max(p99_arrival),
        wall_time: wall_start.elapsed(),
        steal: steal.stolen(),
        started_at,
        // Raw UDP: no QUIC connections.
        quic: Default::default(),
    };
    Ok(CeilingRun {
        io,
        result,
        server,
        load: LoadConfig {
            target: server_addr,
            connections: cfg.threads,
            mode: Mode::Echo,
            ..cfg.clone()
        },
        duplicates,
        server_buffers,
        generator_calls,
        generator_datagrams,
    })
}

mod generator;
mod report;
mod server;
mod tally;

pub use report::*;
pub use tally::{Reply, Tally};

use generator::generate;
use server::{pin_to, serve};

#[cfg(test)]
mod tests;
