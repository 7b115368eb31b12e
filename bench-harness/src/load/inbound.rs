//! Which of the messages a connection receives have come back, so that a reply that does
//! not match its message or comes a second time is not counted as received: a duplicate
//! counted as received would hide one lost message and could end the drain early.

use std::time::Duration;

use super::schedule::Schedule;

/// What a reply turned out to be, against the schedule of the messages it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The first reply to a message that was sent.
    First,
    /// Another reply to a message already answered.
    Again,
    /// Not a message of this schedule: a sequence number past its end, an intended time
    /// other than its own, or one still in the future when the reply came.
    Mismatch,
}

/// The messages one connection receives: those it sent itself in echo mode, those of the
/// connection before it in relay mode (it is that one's only destination).
#[derive(Debug, Clone)]
pub(super) struct Inbound {
    schedule: Schedule,
    /// Messages the schedule holds: every one due before the end of the measured phase.
    len: u64,
    /// One bit per sequence number, set when its first reply arrived. Grown as replies come
    /// and only to messages already due, so at most one bit per message of the schedule:
    /// rate × (warm-up + duration) / 8 bytes over all connections, 7.5 MB a minute at
    /// 1,000,000 msg/s.
    seen: Vec<u64>,
}

impl Inbound {
    /// The messages of `schedule` that fall due before `measure_end`.
    pub(super) fn new(schedule: Schedule, measure_end: Duration) -> Self {
        Inbound {
            schedule,
            len: schedule.first_due_from(measure_end),
            seen: Vec::new(),
        }
    }

    /// When message `seq` of the schedule is due.
    pub(super) fn due(&self, seq: u64) -> Duration {
        self.schedule.due(seq)
    }

    /// Notes an ERROR record about message `seq` (which carries no intended time): the
    /// first outcome of that message, another one (its reply or an error came already),
    /// or none of this schedule's.
    pub(super) fn mark(&mut self, seq: u64) -> Arrival {
        if seq >= self.len {
            return Arrival::Mismatch;
        }
        self.set(seq)
    }

    /// Notes a reply, arrived `at` after the run's origin, to message `seq` that carries
    /// `intended_ns` as its intended send time.
    pub(super) fn arrive(&mut self, seq: u64, intended_ns: u64, at: Duration) -> Arrival {
        let due = self.schedule.due(seq);
        if seq >= self.len || due.as_nanos() != u128::from(intended_ns) || due > at {
            return Arrival::Mismatch;
        }
        self.set(seq)
    }

    /// Sets `seq`'s bit: whether it was clear.
    fn set(&mut self, seq: u64) -> Arrival {
        let Ok(word) = usize::try_from(seq / 64) else {
            return Arrival::Mismatch;
        };
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        match self.seen.get_mut(word) {
            Some(w) if *w & bit != 0 => Arrival::Again,
            Some(w) => {
                *w |= bit;
                Arrival::First
            }
            None => Arrival::Mismatch,
        }
    }
}
