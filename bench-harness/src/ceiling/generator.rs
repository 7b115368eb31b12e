//! The open-loop generator threads.

use super::server::{batches, wait_for};
use super::*;

pub(super) struct GenOut {
    pub(super) tally: Tally,
    pub(super) send_calls: u64,
    pub(super) recv_calls: u64,
    pub(super) datagrams_sent: u64,
    pub(super) datagrams_read: u64,
}

/// One generator thread: sends what is due in `sendmmsg` bursts, reads replies in
/// `recvmmsg` bursts, and waits in `poll(2)` for the next due datagram or a reply, until
/// every measured datagram is accounted for or `hard_deadline`.
pub(super) fn generate(
    sock: &UdpSocket,
    io: IoMode,
    server: SocketAddr,
    mut tally: Tally,
    message_size: usize,
    origin: Instant,
    hard_deadline: Instant,
) -> GenOut {
    let fd = sock.as_raw_fd();
    let mut bufs: Vec<Vec<u8>> = (0..BURST).map(|_| vec![0u8; message_size]).collect();
    // Batched I/O in every mode (so generators out-run the server), with GSO and GRO when
    // the server uses them: its replies to one generator then come back as runs.
    let gen_io = if io == IoMode::Offload {
        IoMode::Offload
    } else {
        IoMode::Batched
    };
    let (mut rx, mut tx) = batches(fd, gen_io, message_size + 1);
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
                    datagrams_read += rx.datagrams() as u64;
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
