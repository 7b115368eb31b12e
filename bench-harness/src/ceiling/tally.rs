//! Per-thread bookkeeping of a generator: schedule, sent and received counts, latency.

use super::*;

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
    /// The same per interval of the measured phase (by intended time; one second, longer
    /// for long runs: [`load::interval_length`]).
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
    /// Of those, the ones that stand for a measured datagram: their sequence number, read
    /// as sent, names one that was sent, is measured and had no reply yet (the first such
    /// reply takes its place; others cannot hide a measured loss).
    pub measured_corrupted: u64,
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
            measured_corrupted: 0,
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
            let claimed = bytes
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes);
            return self.corrupt(claimed);
        };
        let intended = self.intended(seq);
        if seq >= self.next_seq || intended.as_nanos() as u64 != intended_ns {
            return self.corrupt(Some(seq));
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
            None => return self.corrupt(None),
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
        load::record_interval(
            &mut self.intervals,
            load::interval_length(self.measure_end - self.warm_end),
            intended - self.warm_end,
            ns,
        );
        Reply::Measured(lat)
    }

    /// A reply that did not fit its receive slot (longer than any datagram sent).
    pub fn on_oversized(&mut self) {
        self.corrupted += 1;
    }

    /// Counts a corrupted reply whose header names datagram `seq` (if readable). It stands
    /// for that datagram (marked answered) only if it was sent, is measured and had no
    /// reply yet.
    fn corrupt(&mut self, seq: Option<u64>) -> Reply {
        self.corrupted += 1;
        let Some(seq) = seq.filter(|&s| s < self.next_seq) else {
            return Reply::Corrupted;
        };
        let intended = self.intended(seq);
        if intended < self.warm_end || intended >= self.measure_end {
            return Reply::Corrupted;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if let Some(w) = self.seen.get_mut(word)
            && *w & (1 << bit) == 0
        {
            *w |= 1 << bit;
            self.measured_corrupted += 1;
        }
        Reply::Corrupted
    }

    /// Measured datagrams not accounted for yet.
    pub fn outstanding(&self) -> u64 {
        self.sent
            .saturating_sub(self.received + self.measured_corrupted)
    }
}
