//! `bench-harness ceiling`: the raw UDP echo rate on the engine's socket setup, measured in
//! the same run as a speed claim about the engine, so the claim can be set against what the
//! machine's loopback and kernel allow at all.
//!
//! An in-process echo server (one thread, pinned to the first core as shard 0 is, on a
//! socket from [`shards::steering::bind_group`], so non-blocking with the engine's buffer
//! sizes) sends every datagram back to where it came from, in one of two ways ([`IoMode`]):
//! one `recvfrom` and one `sendto` per datagram, or `recvmmsg`/`sendmmsg` bursts of up to
//! [`BURST`] ([`shards::udp_batch`], the shards' calls). Both wait in `poll(2)` when idle and
//! read until the socket is empty when woken.
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
use shards::udp_batch::{RecvBatch, SendBatch};

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
}

impl IoMode {
    /// `per-datagram` or `batched`, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            IoMode::PerDatagram => "per-datagram",
            IoMode::Batched => "batched",
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

/// One generator thread's bookkeeping: its schedule, what it sent, and what came back.
/// Sequence numbers count from 0 per thread and are sent in order.
#[derive(Debug)]
pub struct Tally {
    rate: f64,
    phase: f64,
    message_size: usize,
    warm_end: Duration,
    measure_end: Duration,
    next_seq: u64,
    /// One bit per sequence number sent: set when its reply arrived.
    seen: Vec<u64>,
    /// Latency from intended send time, ns, measured phase.
    pub latency: Histogram<u64>,
    /// The same per second of the measured phase (by intended time).
    pub intervals: Vec<Histogram<u64>>,
    /// How late each measured datagram left against its schedule, ns.
    pub lag: Histogram<u64>,
    /// When each measured reply arrived, ns after the measured phase began.
    pub arrivals: Histogram<u64>,
    /// Measured-phase datagrams sent.
    pub sent: u64,
    /// Of those, come back intact.
    pub received: u64,
    /// Replies that are not an intact echo of a datagram this thread sent.
    pub corrupted: u64,
    /// Second (or later) replies to the same datagram, ignored otherwise.
    pub duplicates: u64,
}

/// What [`Tally::on_reply`] made of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A measured datagram came back after this latency.
    Measured(Duration),
    /// A warm-up datagram came back (not recorded).
    WarmUp,
    /// A datagram came back again.
    Duplicate,
    /// Not an intact echo of a datagram this thread sent.
    Corrupted,
}

impl Tally {
    /// A thread sending `rate` datagrams per second of `message_size` bytes, its schedule
    /// offset by `phase` (0..1) of an interval, measured from `warmup` for `duration`.
    pub fn new(
        rate: f64,
        phase: f64,
        message_size: usize,
        warmup: Duration,
        duration: Duration,
    ) -> Tally {
        Tally {
            rate,
            phase,
            message_size,
            warm_end: warmup,
            measure_end: warmup + duration,
            next_seq: 0,
            seen: Vec::new(),
            latency: load::new_hist(),
            intervals: Vec::new(),
            lag: load::new_hist(),
            arrivals: load::new_hist(),
            sent: 0,
            received: 0,
            corrupted: 0,
            duplicates: 0,
        }
    }

    /// When datagram `seq` is due, after the run's origin (whole nanoseconds, as carried in
    /// the payload).
    pub fn intended(&self, seq: u64) -> Duration {
        Duration::from_nanos(((seq as f64 + self.phase) / self.rate * 1e9) as u64)
    }

    /// The next datagram to send.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether datagram `seq` is due by `elapsed` and inside the schedule.
    pub fn is_due(&self, seq: u64, elapsed: Duration) -> bool {
        let at = self.intended(seq);
        at <= elapsed && at < self.measure_end
    }

    /// The first datagram due at or after `t`.
    fn first_due_from(&self, t: Duration) -> u64 {
        let guess = (t.as_secs_f64() * self.rate - self.phase).floor() - 2.0;
        let mut k = if guess > 0.0 { guess as u64 } else { 0 };
        while self.intended(k) < t {
            k += 1;
        }
        k
    }

    /// Datagrams the schedule calls for in the measured phase.
    pub fn offered(&self) -> u64 {
        self.first_due_from(self.measure_end) - self.first_due_from(self.warm_end)
    }

    /// Measured datagrams not sent (yet): the generator is that far behind its schedule.
    pub fn unsent(&self) -> u64 {
        self.offered().saturating_sub(self.sent)
    }

    /// Whether every datagram of the schedule was sent.
    pub fn schedule_done(&self) -> bool {
        self.intended(self.next_seq) >= self.measure_end
    }

    /// Writes datagram `seq` into `buf` (`message_size` bytes).
    pub fn fill(&self, seq: u64, buf: &mut [u8]) {
        load::write_payload(buf, seq, self.intended(seq).as_nanos() as u64);
    }

    /// The next datagram left at `elapsed` after the origin.
    pub fn on_sent(&mut self, elapsed: Duration) {
        let due = self.intended(self.next_seq);
        if due >= self.warm_end && due < self.measure_end {
            self.sent += 1;
            self.lag
                .saturating_record(elapsed.saturating_sub(due).as_nanos() as u64);
        }
        self.next_seq += 1;
    }

    /// A reply (`bytes`) arrived `at` after the origin.
    pub fn on_reply(&mut self, bytes: &[u8], at: Duration) -> Reply {
        let Some((seq, intended_ns)) = load::parse_payload(bytes, self.message_size) else {
            self.corrupted += 1;
            return Reply::Corrupted;
        };
        let intended = self.intended(seq);
        if seq >= self.next_seq || intended.as_nanos() as u64 != intended_ns {
            self.corrupted += 1;
            return Reply::Corrupted;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        match self.seen.get_mut(word) {
            Some(w) if *w & (1 << bit) != 0 => {
                self.duplicates += 1;
                return Reply::Duplicate;
            }
            Some(w) => *w |= 1 << bit,
            None => {
                self.corrupted += 1;
                return Reply::Corrupted;
            }
        }
        if intended < self.warm_end || intended >= self.measure_end {
            return Reply::WarmUp;
        }
        self.received += 1;
        self.arrivals
            .saturating_record(at.saturating_sub(self.warm_end).as_nanos() as u64);
        let lat = at.saturating_sub(intended);
        let ns = lat.as_nanos() as u64;
        self.latency.saturating_record(ns);
        let sec = (intended - self.warm_end).as_secs() as usize;
        while self.intervals.len() <= sec {
            self.intervals.push(load::new_hist());
        }
        if let Some(h) = self.intervals.get_mut(sec) {
            h.saturating_record(ns);
        }
        Reply::Measured(lat)
    }

    /// A reply that did not fit its receive slot (longer than any datagram sent).
    pub fn on_oversized(&mut self) {
        self.corrupted += 1;
    }

    /// Measured datagrams not accounted for yet.
    pub fn outstanding(&self) -> u64 {
        self.sent.saturating_sub(self.received + self.corrupted)
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
    Ok(())
}

/// Runs one ceiling measurement: a fresh echo server in `io` mode, `cfg.threads` generators
/// at `cfg.rate` in total (`cfg.target`, `connections` and `mode` are ignored).
pub fn run_once(cfg: &LoadConfig, io: IoMode) -> Result<CeilingRun, CeilingError> {
    check(cfg)?;
    let wall_start = Instant::now();
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
                generate(&sock, server_addr, tally, size, origin, hard_deadline)
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
    let mut generator_calls = (0, 0);
    let mut generator_datagrams = (0, 0);
    for o in &outs {
        let t = &o.tally;
        let _ = latency.add(&t.latency);
        let _ = lag.add(&t.lag);
        let _ = arrivals.add(&t.arrivals);
        for (i, iv) in t.intervals.iter().enumerate() {
            if intervals.len() <= i {
                intervals.push(load::new_hist());
            }
            if let Some(h) = intervals.get_mut(i) {
                let _ = h.add(iv);
            }
        }
        offered += t.offered();
        sent += t.sent;
        received += t.received;
        corrupted += t.corrupted;
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
        lag,
        offered,
        sent,
        // Measured datagrams a generator had not sent by the deadline: it fell behind (the
        // kernel's send path is the back-pressure of raw UDP).
        refused: offered.saturating_sub(sent),
        connection_errors: 0,
        received,
        corrupted,
        errors: Default::default(),
        elapsed: cfg.duration,
        receive_window: cfg.duration.max(p99_arrival),
        wall_time: wall_start.elapsed(),
        started_at,
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

fn pin_to(pin: bool, core: Option<core_affinity::CoreId>) {
    if let (true, Some(c)) = (pin, core) {
        core_affinity::set_for_current(c);
    }
}

/// Waits up to `wait` for `events` on `fd`; whether any arrived.
fn wait_for(fd: RawFd, events: libc::c_short, wait: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    n > 0 && pfd.revents & events != 0
}

/// The echo server's loop, until `stop`.
fn serve(sock: &UdpSocket, io: IoMode, stop: &AtomicBool, slot: usize) -> ServerStats {
    let fd = sock.as_raw_fd();
    let mut st = ServerStats::default();
    let mut buf = vec![0u8; slot];
    let mut rx = RecvBatch::new(BURST, slot);
    let mut tx = SendBatch::default();
    while !stop.load(Ordering::Acquire) {
        if !wait_for(fd, libc::POLLIN, SERVER_POLL) {
            continue;
        }
        st.wakeups += 1;
        match io {
            IoMode::PerDatagram => echo_each(sock, &mut buf, &mut st),
            IoMode::Batched => echo_batched(fd, &mut rx, &mut tx, &mut st),
        }
    }
    st
}

/// `recvfrom`/`sendto` per datagram until the socket is empty.
fn echo_each(sock: &UdpSocket, buf: &mut [u8], st: &mut ServerStats) {
    loop {
        st.receive_calls += 1;
        let (n, from) = match sock.recv_from(buf) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        st.received += 1;
        let data = buf.get(..n).unwrap_or(&[]);
        let mut waited = false;
        loop {
            st.send_calls += 1;
            match sock.send_to(data, from) {
                Ok(_) => st.sent += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    if wait_for(sock.as_raw_fd(), libc::POLLOUT, SEND_WAIT) {
                        continue;
                    }
                    st.send_dropped += 1;
                }
                Err(_) => st.send_dropped += 1,
            }
            break;
        }
    }
}

/// `recvmmsg` bursts, each echoed with `sendmmsg`, until a burst finds the socket empty.
fn echo_batched(fd: RawFd, rx: &mut RecvBatch, tx: &mut SendBatch, st: &mut ServerStats) {
    loop {
        st.receive_calls += 1;
        let n = match rx.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        st.received += n as u64;
        let mut done = 0;
        let mut waited = false;
        while done < n {
            st.send_calls += 1;
            let burst = rx
                .iter_mut()
                .skip(done)
                .map_while(|(from, data, _)| from.map(|f| (f, &*data)));
            match tx.send(fd, burst) {
                Ok(0) => {
                    // A datagram without a source address: nowhere to echo it.
                    st.send_dropped += 1;
                    done += 1;
                }
                Ok(k) => {
                    st.sent += k as u64;
                    done += k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    if !wait_for(fd, libc::POLLOUT, SEND_WAIT) {
                        st.send_dropped += (n - done) as u64;
                        done = n;
                    }
                }
                Err(_) => {
                    st.send_dropped += (n - done) as u64;
                    done = n;
                }
            }
        }
        // Fewer than a full burst: the socket was empty when it was read.
        if n < BURST {
            return;
        }
    }
}

struct GenOut {
    tally: Tally,
    send_calls: u64,
    recv_calls: u64,
    datagrams_sent: u64,
    datagrams_read: u64,
}

/// One generator thread: sends what is due in `sendmmsg` bursts, reads replies in
/// `recvmmsg` bursts, and waits in `poll(2)` for the next due datagram or a reply, until
/// every measured datagram is accounted for or `hard_deadline`.
fn generate(
    sock: &UdpSocket,
    server: SocketAddr,
    mut tally: Tally,
    message_size: usize,
    origin: Instant,
    hard_deadline: Instant,
) -> GenOut {
    let fd = sock.as_raw_fd();
    let mut bufs: Vec<Vec<u8>> = (0..BURST).map(|_| vec![0u8; message_size]).collect();
    let mut tx = SendBatch::default();
    let mut rx = RecvBatch::new(BURST, message_size + 1);
    let (mut send_calls, mut recv_calls) = (0u64, 0u64);
    let (mut datagrams_sent, mut datagrams_read) = (0u64, 0u64);
    std::thread::sleep(origin.saturating_duration_since(Instant::now()));
    loop {
        let now = Instant::now();
        if now >= hard_deadline {
            break;
        }
        let mut blocked = false;
        let mut budget = SENDS_PER_PASS;
        while budget > 0 {
            let elapsed = origin.elapsed();
            let first = tally.next_seq();
            let mut n = 0;
            for (i, buf) in bufs.iter_mut().take(budget).enumerate() {
                let seq = first + i as u64;
                if !tally.is_due(seq, elapsed) {
                    break;
                }
                tally.fill(seq, buf);
                n += 1;
            }
            if n == 0 {
                break;
            }
            send_calls += 1;
            match tx.send(fd, bufs.iter().take(n).map(|b| (server, b.as_slice()))) {
                Ok(k) => {
                    datagrams_sent += k as u64;
                    for _ in 0..k {
                        tally.on_sent(elapsed);
                    }
                    budget = budget.saturating_sub(k);
                    if k < n {
                        blocked = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A full send buffer (or a transient error): try again after a wait.
                Err(_) => {
                    blocked = true;
                    break;
                }
            }
        }
        for _ in 0..RECV_CALLS_PER_PASS {
            recv_calls += 1;
            match rx.recv(fd) {
                Ok(n) => {
                    datagrams_read += n as u64;
                    let at = origin.elapsed();
                    for (_, data, truncated) in rx.iter_mut() {
                        if truncated {
                            tally.on_oversized();
                        } else {
                            tally.on_reply(data, at);
                        }
                    }
                    // Fewer than a full burst: the socket was empty when it was read.
                    if n < BURST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let done = tally.schedule_done();
        if done && tally.outstanding() == 0 {
            break;
        }
        if budget == 0 {
            // Still behind the schedule: no waiting.
            continue;
        }
        let wake = if done {
            hard_deadline
        } else {
            (origin + tally.intended(tally.next_seq())).min(hard_deadline)
        };
        let wait = wake.saturating_duration_since(Instant::now());
        if !wait.is_zero() || blocked {
            let events = if blocked {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            };
            wait_for(fd, events, wait.max(Duration::from_micros(50)));
        }
    }
    GenOut {
        tally,
        send_calls,
        recv_calls,
        datagrams_sent,
        datagrams_read,
    }
}

/// What to measure: the io modes, the load, and the knee search or a single rate.
#[derive(Debug, Clone)]
pub struct CeilingConfig {
    /// Server I/O modes, one row each.
    pub io: Vec<IoMode>,
    /// The generators' load (its rate is set per run).
    pub load: LoadConfig,
    /// One run per mode at this rate instead of a knee search.
    pub rate: Option<f64>,
    /// The knee search's limits and target.
    pub search: SearchParams,
    /// Where run directories and the report go.
    pub out: PathBuf,
}

/// One run as the report lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRow {
    /// The server's I/O mode.
    pub io: IoMode,
    /// Its run directory.
    pub dir: PathBuf,
    /// What the generators measured.
    pub summary: Summary,
    /// What the server did.
    pub server: ServerStats,
    /// Replies that came back twice.
    pub duplicates: u64,
    /// The server socket's receive and send buffers (bytes, as the kernel reports them).
    pub server_buffers: (usize, usize),
    /// Generator send and receive system calls.
    pub generator_calls: (u64, u64),
    /// Datagrams the generators sent and read back, all phases.
    pub generator_datagrams: (u64, u64),
}

impl RunRow {
    /// Datagrams sent that the server never read: dropped at its full socket.
    pub fn dropped_before_server(&self) -> u64 {
        self.generator_datagrams
            .0
            .saturating_sub(self.server.received)
    }

    /// Replies the server sent that the generators never read: dropped at their sockets
    /// (or still in flight when the run ended).
    pub fn dropped_after_server(&self) -> u64 {
        self.server.sent.saturating_sub(self.generator_datagrams.1)
    }
}

/// One io mode's knee.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CeilingKnee {
    /// The server's I/O mode.
    pub io: IoMode,
    /// The search's result.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Everything a `ceiling` command measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Every run, in order.
    pub runs: Vec<RunRow>,
    /// Per io mode, the knee (empty for single-rate runs).
    pub knees: Vec<CeilingKnee>,
    /// The p99 target of the search, ms.
    pub p99_target_ms: f64,
}

/// The configuration label of an io mode in tables and plots.
pub fn label(io: IoMode) -> String {
    format!("udp io={io}")
}

/// Runs one measurement and writes its run directory (`latency.hgrm`, `latency.hlog`,
/// `summary.json`, `server.json`).
pub fn run_to_dir(cfg: &LoadConfig, io: IoMode, dir: &Path) -> Result<RunRow, CeilingError> {
    let run = run_once(cfg, io)?;
    let meta = RunMeta {
        load: run.load.clone(),
        batch_size: None,
        batch_timeout: None,
    };
    let summary = output::write_run(dir, &meta, &run.result)?;
    let row = RunRow {
        io,
        dir: dir.to_path_buf(),
        summary,
        server: run.server,
        duplicates: run.duplicates,
        server_buffers: run.server_buffers,
        generator_calls: run.generator_calls,
        generator_datagrams: run.generator_datagrams,
    };
    let path = dir.join("server.json");
    let json = serde_json::json!({
        "io": io,
        "server": row.server,
        "server_buffers": row.server_buffers,
        "duplicates": row.duplicates,
        "generator_calls": row.generator_calls,
        "generator_datagrams": row.generator_datagrams,
    });
    std::fs::write(&path, format!("{json:#}\n")).map_err(|e| CeilingError::Report(path, e))?;
    Ok(row)
}

/// Runs every io mode, as a knee search or at the single rate; `on_run` is told about each
/// run (with the verdict against the p99 target) as it finishes.
pub fn ceiling(
    cfg: &CeilingConfig,
    mut on_run: impl FnMut(&RunRow, &Result<(), String>),
) -> Result<Report, CeilingError> {
    if cfg.io.is_empty() {
        return Err(CeilingError::Config("give at least one --io mode".into()));
    }
    check(&LoadConfig {
        rate: cfg.rate.unwrap_or(cfg.search.min_rate),
        ..cfg.load.clone()
    })?;
    let mut runs = Vec::new();
    let mut knees = Vec::new();
    for &io in &cfg.io {
        let dir = cfg.out.join(format!("io-{io}"));
        if let Some(rate) = cfg.rate {
            let load = LoadConfig {
                rate,
                ..cfg.load.clone()
            };
            let row = run_to_dir(&load, io, &dir.join(rate_dir(rate)))?;
            on_run(&row, &knee::verdict(&row.summary, cfg.search.p99_target));
            runs.push(row);
            continue;
        }
        cfg.search
            .check()
            .map_err(|e| CeilingError::Config(e.to_string()))?;
        let outcome = knee::search_config(
            &label(io),
            &cfg.search,
            |rate, i| {
                let load = LoadConfig {
                    rate,
                    ..cfg.load.clone()
                };
                let mut d = dir.join(rate_dir(rate));
                if i > 0 {
                    d = d.join(format!("repeat{i}"));
                }
                let row = run_to_dir(&load, io, &d)?;
                on_run(&row, &knee::verdict(&row.summary, cfg.search.p99_target));
                let s = row.summary.clone();
                runs.push(row);
                Ok::<_, CeilingError>(s)
            },
            |_, _| {},
        )?;
        knees.push(CeilingKnee { io, outcome });
    }
    Ok(Report {
        runs,
        knees,
        p99_target_ms: cfg.search.p99_target.as_secs_f64() * 1000.0,
    })
}

fn rate_dir(rate: f64) -> String {
    format!("r{}", rate.round() as u64)
}

/// Columns of the runs table (`ceiling-runs.csv` and the runs part of `ceiling.md`).
pub const RUN_HEADERS: [&str; 19] = [
    "config",
    "rate",
    "offered",
    "refused",
    "sent",
    "received",
    "lost",
    "corrupted",
    "achieved",
    "p50",
    "p99",
    "p99.9",
    "max",
    "lag p99",
    "server dgrams/recv call",
    "server send dropped",
    "dropped before server",
    "dropped after server",
    "verdict",
];

/// The cells of one run's row, in [`RUN_HEADERS`] order.
pub fn run_cells(r: &RunRow, p99_target: Duration) -> Vec<String> {
    let s = &r.summary;
    let verdict = match knee::verdict(s, p99_target) {
        Ok(()) => "holds".to_string(),
        Err(why) => why,
    };
    vec![
        label(r.io),
        format!("{:.0}", s.config.rate),
        s.offered.to_string(),
        s.refused.to_string(),
        s.sent.to_string(),
        s.received.to_string(),
        s.lost.to_string(),
        s.corrupted.to_string(),
        format!("{:.0}", s.achieved_rate),
        format!("{:.3}", s.latency_ms.p50),
        format!("{:.3}", s.latency_ms.p99),
        format!("{:.3}", s.latency_ms.p999),
        format!("{:.3}", s.latency_ms.max),
        format!("{:.3}", s.harness_lag_ms.p99),
        format!("{:.1}", r.server.per_receive_call()),
        r.server.send_dropped.to_string(),
        r.dropped_before_server().to_string(),
        r.dropped_after_server().to_string(),
        verdict,
    ]
}

/// Columns of `ceiling-knee.csv`.
pub const KNEE_HEADERS: [&str; 8] = [
    "config",
    "io",
    "knee",
    "p99_at_knee_ms",
    "first_failure",
    "failure",
    "capped",
    "rates_tried",
];

/// The report as Markdown: the knee table (knee searches only) and every run.
pub fn markdown(report: &Report) -> String {
    let target = Duration::from_secs_f64(report.p99_target_ms / 1000.0);
    let mut s = String::new();
    if !report.knees.is_empty() {
        s.push_str(&knee::outcome_markdown(
            report.knees.iter().map(|k| &k.outcome),
            target,
        ));
        s.push('\n');
    }
    let rows: Vec<Vec<String>> = report.runs.iter().map(|r| run_cells(r, target)).collect();
    s.push_str(&crate::report::markdown_table(&RUN_HEADERS, &rows));
    s.push_str(
        "\nLatency in ms from each datagram's intended send time; lag p99 is how late the \
         generators sent against their schedule; achieved is replies per second over the \
         receive window.\n",
    );
    s
}

/// Writes `ceiling.md`, `ceiling-runs.csv` and `ceiling.json`, and for a knee search
/// `ceiling-knee.csv` and `ceiling.svg/png` (p99 against achieved rate per io mode), into
/// `dir`; returns the files written.
pub fn write(dir: &Path, report: &Report) -> Result<Vec<PathBuf>, CeilingError> {
    let put = |name: &str, text: String| -> Result<PathBuf, CeilingError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| CeilingError::Report(path.clone(), e))?;
        Ok(path)
    };
    std::fs::create_dir_all(dir).map_err(|e| CeilingError::Report(dir.to_path_buf(), e))?;
    let target = Duration::from_secs_f64(report.p99_target_ms / 1000.0);
    let mut files = vec![put("ceiling.md", markdown(report))?];
    let rows: Vec<Vec<String>> = report.runs.iter().map(|r| run_cells(r, target)).collect();
    files.push(put(
        "ceiling-runs.csv",
        crate::report::csv_table(&RUN_HEADERS, &rows),
    )?);
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| CeilingError::Report(dir.join("ceiling.json"), io::Error::other(e)))?;
    files.push(put("ceiling.json", json + "\n")?);
    if !report.knees.is_empty() {
        let rows: Vec<Vec<String>> = report
            .knees
            .iter()
            .map(|k| {
                let o = &k.outcome;
                vec![
                    o.config.clone(),
                    k.io.to_string(),
                    o.knee.map(|v| format!("{v:.0}")).unwrap_or_default(),
                    o.p99_at_knee_ms
                        .map(|v| format!("{v:.3}"))
                        .unwrap_or_default(),
                    o.first_failure
                        .map(|v| format!("{v:.0}"))
                        .unwrap_or_default(),
                    o.failure.clone().unwrap_or_default(),
                    o.capped.to_string(),
                    o.steps.len().to_string(),
                ]
            })
            .collect();
        files.push(put(
            "ceiling-knee.csv",
            crate::report::csv_table(&KNEE_HEADERS, &rows),
        )?);
        let (svg, png) = (dir.join("ceiling.svg"), dir.join("ceiling.png"));
        knee::plot(report.knees.iter().map(|k| &k.outcome), &svg, &png)
            .map_err(|e| CeilingError::Report(svg.clone(), io::Error::other(e)))?;
        files.push(svg);
        files.push(png);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally() -> Tally {
        // 1000/s, offset half an interval: datagram k due at (k + 0.5) ms; measured from
        // 10 ms for 20 ms, so datagrams 10..30 are measured.
        Tally::new(
            1000.0,
            0.5,
            64,
            Duration::from_millis(10),
            Duration::from_millis(20),
        )
    }

    fn send_upto(t: &mut Tally, seq: u64) {
        while t.next_seq() < seq {
            let at = t.intended(t.next_seq());
            t.on_sent(at + Duration::from_micros(100));
        }
    }

    #[test]
    fn schedule_and_payload_round_trip() {
        let t = tally();
        assert_eq!(t.intended(0), Duration::from_micros(500));
        assert_eq!(t.intended(10), Duration::from_micros(10_500));
        assert!(t.is_due(10, Duration::from_micros(10_500)));
        assert!(!t.is_due(11, Duration::from_micros(10_500)));
        // Datagram 30 is due at 30.5 ms, after the schedule's end.
        assert!(!t.is_due(30, Duration::from_secs(1)));
        // 3/s offset half an interval, measured from 1 s for 2 s: datagram k is due at
        // (k + 0.5) / 3 s, so 3..=8 are measured.
        let odd = Tally::new(3.0, 0.5, 64, Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!((odd.offered(), odd.unsent()), (6, 6));
        let mut buf = [0u8; 64];
        t.fill(12, &mut buf);
        assert_eq!(
            load::parse_payload(&buf, 64),
            Some((12, t.intended(12).as_nanos() as u64))
        );
    }

    #[test]
    fn latency_counts_from_the_intended_time_and_only_measured_datagrams() {
        let mut t = tally();
        send_upto(&mut t, 30);
        assert!(t.schedule_done());
        assert_eq!(t.sent, 20, "datagrams 10..30 are measured");
        assert_eq!((t.offered(), t.unsent()), (20, 0));
        assert!(
            t.lag.max().abs_diff(100_000) < 100,
            "lag recorded: {}",
            t.lag.max()
        );
        let mut buf = [0u8; 64];
        // A warm-up reply is not recorded.
        t.fill(3, &mut buf);
        assert_eq!(t.on_reply(&buf, Duration::from_millis(5)), Reply::WarmUp);
        // A measured one, 2 ms after it was due (whatever time it left).
        t.fill(12, &mut buf);
        let at = t.intended(12) + Duration::from_millis(2);
        assert_eq!(
            t.on_reply(&buf, at),
            Reply::Measured(Duration::from_millis(2))
        );
        assert_eq!(t.received, 1);
        assert_eq!(t.latency.len(), 1);
        assert!((t.latency.max() as i64 - 2_000_000).abs() < 2_000);
        assert_eq!(t.outstanding(), 19);
        assert_eq!(t.intervals.len(), 1);
    }

    #[test]
    fn duplicates_corruption_and_unsent_sequence_numbers_are_told_apart() {
        let mut t = tally();
        send_upto(&mut t, 15);
        // Behind its schedule: 15 of the 20 measured datagrams not sent.
        assert_eq!((t.sent, t.unsent()), (5, 15));
        let mut buf = [0u8; 64];
        t.fill(11, &mut buf);
        let at = Duration::from_millis(12);
        assert!(matches!(t.on_reply(&buf, at), Reply::Measured(_)));
        assert_eq!(t.on_reply(&buf, at), Reply::Duplicate);
        assert_eq!((t.received, t.duplicates), (1, 1));
        // A flipped filler byte.
        let mut bad = buf;
        bad[40] ^= 1;
        assert_eq!(t.on_reply(&bad, at), Reply::Corrupted);
        // Short.
        assert_eq!(t.on_reply(&buf[..20], at), Reply::Corrupted);
        // Never sent: 20 is past next_seq.
        t.fill(20, &mut buf);
        assert_eq!(t.on_reply(&buf, at), Reply::Corrupted);
        // The right sequence number with another intended time.
        load::write_payload(&mut buf, 12, 1);
        assert_eq!(t.on_reply(&buf, at), Reply::Corrupted);
        t.on_oversized();
        assert_eq!(t.corrupted, 5);
        // sent 5 measured (10..15), 1 received, 5 corrupted: nothing outstanding.
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn a_low_rate_run_loses_nothing_and_counts_add_up() {
        for io in [IoMode::PerDatagram, IoMode::Batched] {
            let cfg = LoadConfig {
                target: SocketAddr::from(([127, 0, 0, 1], 0)),
                threads: 2,
                connections: 2,
                rate: 2000.0,
                duration: Duration::from_millis(500),
                warmup: Duration::from_millis(100),
                message_size: 64,
                mode: Mode::Echo,
                drain: Duration::from_secs(2),
                pin: false,
            };
            let run = run_once(&cfg, io).unwrap();
            let r = &run.result;
            // 1000/s per thread over 500 ms: 500 each, 1000 in all.
            assert_eq!(
                (r.offered, r.sent, r.refused),
                (1000, 1000, 0),
                "{io}: {r:?}"
            );
            assert_eq!(r.received + r.corrupted + r.lost(), r.sent, "{io}");
            assert_eq!((r.lost(), r.corrupted, run.duplicates), (0, 0, 0), "{io}");
            // 100 ms of warm-up at 2000/s: 200 more reached the server.
            assert_eq!(run.server.received, 1200, "{io}: {:?}", run.server);
            assert_eq!(run.server.sent, run.server.received, "{io}");
            assert_eq!(run.generator_datagrams, (1200, 1200), "{io}");
            assert!(run.load.target.port() != 0);
        }
    }

    #[test]
    fn a_bad_configuration_is_refused_before_anything_starts() {
        let cfg = LoadConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 1,
            connections: 1,
            rate: 100.0,
            duration: Duration::from_millis(100),
            warmup: Duration::ZERO,
            message_size: 8,
            mode: Mode::Echo,
            drain: Duration::ZERO,
            pin: false,
        };
        assert!(matches!(
            run_once(&cfg, IoMode::Batched),
            Err(CeilingError::Config(_))
        ));
    }
}
