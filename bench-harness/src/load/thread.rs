//! One generator thread: its connections, what it counts, and the loop that sends what
//! falls due, reads replies and waits without blocking on any one connection.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shards::client::Client;
use shards::shard::Delivery;
use shards::wire::PeerId;

use super::inbound::{Arrival, Inbound};
use super::schedule::Schedule;
use super::{
    CLOSE_BUDGET, LoadConfig, PAYLOAD_HEADER, Progress, SENDS_PER_PASS, interval_length, new_hist,
    parse_payload, record_interval, write_payload,
};
use crate::summary::QuicStats;

pub(super) struct Peer {
    pub(super) client: Client,
    /// Where this peer sends: the node (echo) or the next peer (relay).
    pub(super) dst: PeerId,
    /// When each of its messages is due.
    pub(super) schedule: Schedule,
    pub(super) next_seq: u64,
    /// The connection closed or failed: its due messages are refused.
    pub(super) dead: bool,
    /// When (after the run's origin) the connection last pushed back: messages due by then
    /// and sent later were deferred by back-pressure, and their lateness is not the harness's.
    pub(super) full_at: Option<Duration>,
    /// The messages arriving on this connection and which of them came back.
    pub(super) inbound: Inbound,
    /// In relay mode, which of this connection's own messages have had an ERROR record
    /// (in echo mode `inbound` is of its own messages and serves for both).
    pub(super) errored: Option<Inbound>,
}

pub(super) struct ThreadResult {
    pub(super) latency: Histogram<u64>,
    pub(super) intervals: Vec<Histogram<u64>>,
    pub(super) lag: Histogram<u64>,
    pub(super) offered: u64,
    pub(super) sent: u64,
    pub(super) deferred: u64,
    pub(super) refused: u64,
    pub(super) connection_errors: u64,
    pub(super) received: u64,
    pub(super) corrupted: u64,
    /// Of `corrupted`, those whose header places them in the measured phase.
    pub(super) measured_corrupted: u64,
    /// Second or later replies to one message.
    pub(super) duplicates: u64,
    pub(super) errors: std::collections::BTreeMap<String, u64>,
    /// When each measured reply arrived, nanoseconds after the measured phase began.
    pub(super) arrivals: Histogram<u64>,
    /// This thread has sent its last message (and said so in `Progress`).
    pub(super) done_sending: bool,
    /// QUIC statistics of this thread's connections, taken at the end of the drain.
    pub(super) quic: QuicStats,
    /// Progress counts not yet added to the shared [`Progress`].
    pub(super) unpublished: Unpublished,
    /// Replies that arrived at the same instant (every reply a connection yields in one
    /// pass is timestamped once), not yet in `arrivals`: one histogram entry per run.
    pub(super) arrival_run: Option<(u64, u64)>,
}

/// A thread's progress counts since it last published them: added to the shared atomics
/// once a pass instead of four atomic additions a message.
#[derive(Debug, Default)]
pub(super) struct Unpublished {
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) measured_sent: u64,
    pub(super) measured_done: u64,
}

impl Unpublished {
    /// Adds the counts to `progress` and starts again from zero. A thread publishes before
    /// it says it has stopped sending, so once every thread has, `measured_sent` is final.
    pub(super) fn publish(&mut self, progress: &Progress) {
        let counts = [
            (&progress.sent, &mut self.sent),
            (&progress.received, &mut self.received),
            (&progress.measured_sent, &mut self.measured_sent),
            (&progress.measured_done, &mut self.measured_done),
        ];
        for (shared, n) in counts {
            if *n > 0 {
                shared.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
    }
}

impl ThreadResult {
    pub(super) fn new() -> Self {
        ThreadResult {
            latency: new_hist(),
            intervals: Vec::new(),
            lag: new_hist(),
            offered: 0,
            sent: 0,
            deferred: 0,
            refused: 0,
            connection_errors: 0,
            received: 0,
            corrupted: 0,
            measured_corrupted: 0,
            duplicates: 0,
            errors: Default::default(),
            arrivals: new_hist(),
            done_sending: false,
            quic: QuicStats::default(),
            unpublished: Unpublished::default(),
            arrival_run: None,
        }
    }

    /// Counts a measured reply that arrived `ns` after the measured phase began.
    pub(super) fn note_arrival(&mut self, ns: u64) {
        match &mut self.arrival_run {
            Some((at, n)) if *at == ns => *n += 1,
            _ => {
                self.flush_arrivals();
                self.arrival_run = Some((ns, 1));
            }
        }
    }

    /// Adds the pending run of equal arrival times to `arrivals`.
    pub(super) fn flush_arrivals(&mut self) {
        if let Some((at, n)) = self.arrival_run.take() {
            self.arrivals.saturating_record_n(at, n);
        }
    }
}

/// One harness thread: keeps each peer's schedule, sends what is due (refusing what a full
/// connection cannot take), records what arrives, then waits for stragglers until the
/// shared deadline, and closes its connections within [`CLOSE_BUDGET`].
pub(super) fn drive(
    mut peers: Vec<Peer>,
    cfg: &LoadConfig,
    origin: Instant,
    progress: &Progress,
) -> ThreadResult {
    let warm_end = cfg.warmup;
    let measure_end = cfg.warmup + cfg.duration;
    // One deadline for every thread and peer: the schedule's end plus the drain.
    let hard_deadline = origin + measure_end + cfg.drain;
    let mut r = ThreadResult::new();
    // One payload buffer, rewritten per message and copied by the client into a buffer
    // a sealed message left behind.
    let mut body = vec![0u8; cfg.message_size.max(PAYLOAD_HEADER)];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(peers.len());
    // Which peers' sockets the last poll(2) found readable; before the first, all.
    let mut readable: Vec<bool> = vec![true; peers.len()];
    'run: loop {
        let pass_start = Instant::now();
        if pass_start >= hard_deadline {
            break;
        }
        // Whether any peer still has messages due before the schedule's end (a pass that
        // starts just after the end still sends what fell due just before it).
        let mut sending = false;
        let mut next_due = pass_start + Duration::from_millis(1);
        for (p, &ready) in peers.iter_mut().zip(readable.iter()) {
            // The clock is read once per peer, not once per pass: with many connections a
            // later peer's messages go out a good part of a pass later, and its lag and due
            // check must see that.
            let now = Instant::now();
            if now >= hard_deadline {
                break 'run;
            }
            let elapsed = now.saturating_duration_since(origin);
            // Whether the connection pushed back this pass.
            let mut pushed_back = false;
            {
                let mut budget = SENDS_PER_PASS;
                // Send what is due by now (catching up after a stall, a bounded number per
                // pass). What the connection cannot take yet waits for the next pass; what
                // it has not taken within the backlog bound, or a closed connection's, is
                // refused.
                loop {
                    let due = p.schedule.due(p.next_seq);
                    if due > elapsed || due >= measure_end {
                        if due < measure_end {
                            next_due = next_due.min(origin + due);
                        }
                        break;
                    }
                    let measured = due >= warm_end;
                    if p.dead || elapsed.saturating_sub(due) > cfg.max_backlog {
                        let (next, n) = refuse_stale(
                            p.schedule,
                            p.next_seq,
                            (p.dead, p.full_at),
                            elapsed,
                            cfg,
                            &mut r.lag,
                        );
                        r.offered += n;
                        r.refused += n;
                        // `next` is past `next_seq` here; the `max` only guards the loop.
                        p.next_seq = next.max(p.next_seq + 1);
                        continue;
                    }
                    if budget == 0 {
                        next_due = now;
                        break;
                    }
                    budget -= 1;
                    write_payload(&mut body, p.next_seq, due.as_nanos() as u64);
                    match p.client.try_send_slice(p.dst, p.next_seq, &body, now) {
                        Ok(true) => {}
                        Ok(false) => {
                            // Deferred: retried once the connection's socket has news (its
                            // acknowledgements free room) or within the usual wait.
                            p.full_at = Some(elapsed);
                            pushed_back = true;
                            break;
                        }
                        Err(_) => {
                            p.dead = true;
                            r.connection_errors += 1;
                            continue;
                        }
                    }
                    if measured {
                        r.offered += 1;
                        r.sent += 1;
                        r.unpublished.measured_sent += 1;
                        if p.full_at.is_some_and(|t| due <= t) {
                            r.deferred += 1;
                        } else {
                            r.lag
                                .saturating_record(elapsed.saturating_sub(due).as_nanos() as u64);
                        }
                    }
                    r.unpublished.sent += 1;
                    p.next_seq += 1;
                }
                sending |= p.schedule.due(p.next_seq) < measure_end;
            }
            if p.dead {
                continue;
            }
            // Every pass services every connection (timers, inbox), reads the sockets
            // poll(2) found readable, then seals and sends what was queued above, with the
            // acknowledgements of what it read in the same packets.
            if p.client.poll_ready(ready).is_err() || p.client.is_closed() {
                p.dead = true;
                r.connection_errors += 1;
            }
            if pushed_back && ready {
                // What was just read may have freed room: try again at once, not after
                // the wait.
                next_due = now;
            }
            let at = origin.elapsed();
            while let Some(d) = p.client.try_recv() {
                if let Some(body) = record(
                    &mut r,
                    d,
                    at,
                    p.schedule,
                    (&mut p.inbound, p.errored.as_mut()),
                    cfg,
                ) {
                    p.client.recycle(body);
                }
            }
        }
        r.unpublished.publish(progress);
        if !sending {
            // Once every thread has sent its last message, stop when everything measured
            // is accounted for, over all threads.
            if !r.done_sending {
                r.done_sending = true;
                progress.sending_threads.fetch_sub(1, Ordering::AcqRel);
            }
            let all_stopped = progress.sending_threads.load(Ordering::Acquire) == 0;
            let outstanding = progress.measured_sent.load(Ordering::Relaxed)
                > progress.measured_done.load(Ordering::Relaxed);
            if all_stopped && !outstanding {
                break;
            }
            let soon = (Instant::now() + Duration::from_millis(1)).min(hard_deadline);
            wait_readable(&mut fds, &peers, soon, &mut readable);
            continue;
        }
        // Wait for the next message to be due, a reply, or a client timer, whichever is
        // first: replies are timestamped as soon as they arrive, not after a fixed sleep.
        let deadline = peers
            .iter()
            .filter(|p| !p.dead)
            .filter_map(|p| p.client.next_deadline())
            .fold(next_due, Instant::min)
            .min(hard_deadline);
        wait_readable(&mut fds, &peers, deadline, &mut readable);
    }
    for p in &mut peers {
        if let Some(q) = quic_stats(&mut p.client) {
            r.quic.merge(&q);
        }
    }
    close_all(&mut peers, &mut r, origin, cfg, progress);
    r.flush_arrivals();
    r
}

/// Refuses at once every message of a connection from `next_seq` on that is due by
/// `elapsed` (and before the schedule's end) and either belongs to a closed connection
/// (`dead`) or is more than `max_backlog` late; returns the first message not refused and
/// how many of the refused were in the measured phase. Constant time however far behind
/// the generator is: one message at a time, a run at `--rate 1e8` that fell a second behind
/// would spin through millions of refusals without reading a reply or checking the deadline.
///
/// A measured message refused for lateness that its connection had not pushed back for
/// (due after `full_at`, or no push-back at all) was refused because the generator itself
/// fell behind: its lateness goes into `lag`, so the harness's lag shows the stall instead
/// of the refusal passing for back-pressure.
pub(super) fn refuse_stale(
    schedule: Schedule,
    next_seq: u64,
    (dead, full_at): (bool, Option<Duration>),
    elapsed: Duration,
    cfg: &LoadConfig,
    lag: &mut Histogram<u64>,
) -> (u64, u64) {
    let measure_end = cfg.warmup + cfg.duration;
    // The first message not refused: due after `elapsed` for a closed connection, within
    // the backlog bound otherwise; never past the schedule's end.
    let keep = if dead {
        schedule.first_due_from(elapsed + Duration::from_nanos(1))
    } else if let Some(oldest) = elapsed.checked_sub(cfg.max_backlog) {
        schedule.first_due_from(oldest)
    } else {
        return (next_seq, 0);
    };
    let end = keep.min(schedule.first_due_from(measure_end)).max(next_seq);
    let measured_from = schedule.first_due_from(cfg.warmup).max(next_seq);
    if !dead {
        let generator_late_from = match full_at {
            Some(t) => schedule.first_due_from(t + Duration::from_nanos(1)),
            None => 0,
        };
        record_lateness(
            lag,
            schedule,
            measured_from.max(generator_late_from)..end,
            elapsed,
        );
    }
    (end, end.saturating_sub(measured_from))
}

/// Lateness samples [`record_lateness`] records at most per call.
const LATENESS_RUNS: u64 = 64;

/// Records in `lag` how late each of the messages `seqs` is at `elapsed`: up to
/// [`LATENESS_RUNS`] one by one, more in that many equal runs of consecutive messages, each
/// run at the lateness of its least late message. Constant time, and never more than the
/// true lateness (by at most 1/64 of the range's spread).
pub(super) fn record_lateness(
    lag: &mut Histogram<u64>,
    schedule: Schedule,
    seqs: std::ops::Range<u64>,
    elapsed: Duration,
) {
    let n = seqs.end.saturating_sub(seqs.start);
    let runs = n.min(LATENESS_RUNS);
    // The offset of run `i`'s first message (`i` = `runs`: one past the last).
    let at = |i: u64| seqs.start + (u128::from(n) * u128::from(i) / u128::from(runs)) as u64;
    for i in 0..runs {
        let (first, end) = (at(i), at(i + 1));
        let late = elapsed.saturating_sub(schedule.due(end - 1));
        lag.saturating_record_n(late.as_nanos() as u64, end - first);
    }
}

/// One connection's QUIC statistics, from connect until now (its active path's RTT and
/// congestion window); none for a connection without an active path (one that failed).
pub(super) fn quic_stats(c: &mut Client) -> Option<QuicStats> {
    let conn = c.session_mut().quic();
    let st = conn.stats();
    let mut q = QuicStats {
        connections: 1,
        packets_sent: st.sent as u64,
        packets_received: st.recv as u64,
        packets_lost: st.lost as u64,
        packets_spurious_lost: st.spurious_lost as u64,
        stream_retrans_bytes: st.stream_retrans_bytes,
        ..QuicStats::default()
    };
    let mut active = false;
    for path in conn.path_stats() {
        q.pto_count += path.total_pto_count as u64;
        if let Some(max) = path.max_rtt {
            q.rtt_ms_max = q.rtt_ms_max.max(max.as_secs_f64() * 1000.0);
        }
        if path.active {
            active = true;
            q.srtt_ms_mean = path.rtt.as_secs_f64() * 1000.0;
            q.cwnd_min_bytes = path.cwnd as u64;
            q.cwnd_max_bytes = path.cwnd as u64;
        }
    }
    active.then_some(q)
}

/// Closes every connection at once: FIN on all, then service all until all are closed or
/// [`CLOSE_BUDGET`] passes, then close what is left. Replies read meanwhile count only if
/// they arrived before the end of the drain ([`record`]): when every measured message was
/// accounted for early, closing starts before it, and warm-up replies may still come.
pub(super) fn close_all(
    peers: &mut [Peer],
    r: &mut ThreadResult,
    origin: Instant,
    cfg: &LoadConfig,
    progress: &Progress,
) {
    let deadline = Instant::now() + CLOSE_BUDGET;
    for p in peers.iter_mut().filter(|p| !p.dead) {
        if p.client.start_close().is_err() {
            p.dead = true;
        }
    }
    let mut fds = Vec::with_capacity(peers.len());
    let mut readable = vec![true; peers.len()];
    while Instant::now() < deadline && peers.iter().any(|p| !p.dead && !p.client.is_closed()) {
        for (p, &ready) in peers.iter_mut().zip(readable.iter()) {
            if p.dead {
                continue;
            }
            if p.client.poll_ready(ready).is_err() {
                p.dead = true;
            }
            let at = origin.elapsed();
            while let Some(d) = p.client.try_recv() {
                if let Some(body) = record(
                    r,
                    d,
                    at,
                    p.schedule,
                    (&mut p.inbound, p.errored.as_mut()),
                    cfg,
                ) {
                    p.client.recycle(body);
                }
            }
        }
        r.unpublished.publish(progress);
        let soon = (Instant::now() + Duration::from_millis(1)).min(deadline);
        wait_readable(&mut fds, peers, soon, &mut readable);
    }
    for p in peers.iter_mut() {
        p.client.abort();
    }
    r.unpublished.publish(progress);
}

/// Accounts for one delivery that arrived `at` after the run's origin, and returns a
/// message's payload for the client to reuse.
/// `schedule` is that of the connection it arrived on: an error record is about a message
/// that connection sent, whose intended time its sequence number gives; `inbound` is what
/// the connection receives, which a message is checked against.
/// A delivery read at or after the end of the drain (the last pass, or while closing) is
/// not counted: a message not answered by then is lost, however soon after it comes.
pub(super) fn record(
    r: &mut ThreadResult,
    d: Delivery,
    at: Duration,
    schedule: Schedule,
    (inbound, errored): (&mut Inbound, Option<&mut Inbound>),
    cfg: &LoadConfig,
) -> Option<Vec<u8>> {
    let warm_end = cfg.warmup;
    let measure_end = cfg.warmup + cfg.duration;
    if at >= measure_end + cfg.drain {
        return match d {
            Delivery::Message { payload, .. } => Some(payload),
            Delivery::Error(_) => None,
        };
    }
    r.unpublished.received += 1;
    match d {
        Delivery::Message { payload: body, .. } => {
            account_message(r, &body, at, inbound, cfg);
            Some(body)
        }
        Delivery::Error(e) => {
            // Only errors about measured messages count (warm-up ones are not measured),
            // and only a message's first outcome: a second error, or an error for a
            // message also answered, counted again would hide a lost message.
            let intended = schedule.due(e.seq);
            let measured = intended >= warm_end && intended < measure_end;
            let seen = match errored {
                Some(own) => own,
                None => inbound,
            };
            match seen.mark(e.seq) {
                Arrival::First if measured => {
                    *r.errors.entry(format!("{:?}", e.code)).or_default() += 1;
                    r.unpublished.measured_done += 1;
                }
                Arrival::Again if measured => r.duplicates += 1,
                _ => {}
            }
            None
        }
    }
}

/// Records one echoed or relayed message's latency (measured ones only), or counts it
/// corrupted (its payload, or its sequence number and intended time, are not those of a
/// message sent to this connection) or duplicated (its message was answered already).
pub(super) fn account_message(
    r: &mut ThreadResult,
    body: &[u8],
    at: Duration,
    inbound: &mut Inbound,
    cfg: &LoadConfig,
) {
    let warm_end = cfg.warmup;
    let measure_end = cfg.warmup + cfg.duration;
    let Some((seq, intended_ns)) = parse_payload(body, cfg.message_size) else {
        // The sequence number as sent, if the whole header is there.
        let seq = body
            .get(..8)
            .filter(|_| body.len() >= 16)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        count_corrupted(r, seq, inbound, cfg);
        return;
    };
    match inbound.arrive(seq, intended_ns, at) {
        Arrival::First => {}
        Arrival::Again => {
            // Neither received nor accounted for in the drain: counted as received it would
            // stand for a message that was lost.
            r.duplicates += 1;
            return;
        }
        Arrival::Mismatch => {
            count_corrupted(r, Some(seq), inbound, cfg);
            return;
        }
    }
    let intended = Duration::from_nanos(intended_ns);
    if intended >= warm_end && intended < measure_end {
        r.received += 1;
        r.note_arrival(at.saturating_sub(warm_end).as_nanos() as u64);
        r.unpublished.measured_done += 1;
        let lat = at.saturating_sub(intended).as_nanos() as u64;
        r.latency.saturating_record(lat);
        record_interval(
            &mut r.intervals,
            interval_length(cfg.duration),
            intended - warm_end,
            lat,
        );
    }
}

/// Counts a corrupted reply whose header names message `seq` (if readable). It is
/// accounted for in the drain, and against the measured messages sent, only when that
/// message is of the schedule, measured, and had no outcome yet (the reply then takes its
/// place): counting a corrupted warm-up reply, or a second one for the same message,
/// could let the drain end before a measured message came back, and would hide a measured
/// loss; one whose header is unreadable leaves the drain to its deadline.
fn count_corrupted(
    r: &mut ThreadResult,
    seq: Option<u64>,
    inbound: &mut Inbound,
    cfg: &LoadConfig,
) {
    r.corrupted += 1;
    let Some(seq) = seq else { return };
    let due = inbound.due(seq);
    if due < cfg.warmup || due >= cfg.warmup + cfg.duration {
        return;
    }
    if inbound.mark(seq) == Arrival::First {
        r.measured_corrupted += 1;
        r.unpublished.measured_done += 1;
    }
}

/// How much of a wait a generator thread spends polling instead of asleep: it sleeps
/// until this long before its deadline and polls from then on. Waking a sleeping core
/// costs tens of microseconds in a VM, so a thread that slept until the deadline would
/// send late; at rates above about 10,000 msg/s per thread it never sleeps at all.
pub(super) const SPIN_BEFORE_DEADLINE: Duration = Duration::from_micros(100);

/// Waits until one of the peers' sockets is readable or `deadline` passes (less
/// [`SPIN_BEFORE_DEADLINE`]), and notes in `readable` which are. Always one `ppoll`, with
/// a zero timeout once within that margin: one system call tells which of many sockets
/// hold datagrams, instead of one empty read per socket.
pub(super) fn wait_readable(
    fds: &mut Vec<libc::pollfd>,
    peers: &[Peer],
    deadline: Instant,
    readable: &mut [bool],
) {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(SPIN_BEFORE_DEADLINE);
    fds.clear();
    fds.extend(peers.iter().map(|p| libc::pollfd {
        fd: p.client.raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }));
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid array of pollfd of the given length; no signal mask.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    for (r, f) in readable.iter_mut().zip(fds.iter()) {
        // On a failed poll (EINTR) nothing is known: read every socket.
        *r = n < 0 || f.revents != 0;
    }
}
