//! Counters merged across shards. Each shard counts with relaxed atomics of its own; a read
//! sums them, so reading never slows the data path.

use std::sync::atomic::Ordering;

use shards::shard::ShardStats;

/// A point-in-time sum of shard counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// UDP datagrams received.
    pub datagrams_in: u64,
    /// UDP datagrams sent.
    pub datagrams_out: u64,
    /// Receive calls that returned datagrams (datagrams per call = datagrams_in / this).
    pub receive_calls: u64,
    /// Send calls (datagrams per call = datagrams_out / this).
    pub send_calls: u64,
    /// GSO sends: buffers the kernel cut into several datagrams.
    pub gso_sends: u64,
    /// Datagrams sent inside GSO sends.
    pub gso_datagrams: u64,
    /// Datagrams dropped because they did not fit a receive slot.
    pub truncated_datagrams: u64,
    /// Datagrams whose connection ID named another shard.
    pub misrouted: u64,
    /// Datagrams for no known connection.
    pub unknown_datagrams: u64,
    /// Datagrams whose QUIC header did not parse.
    pub unparsable_datagrams: u64,
    /// Retry packets sent (address validation demanded).
    pub retries_sent: u64,
    /// Initials whose Retry token checked out.
    pub address_validated: u64,
    /// Initials dropped for a bad, foreign or expired token.
    pub invalid_tokens: u64,
    /// New-connection datagrams dropped unanswered: under 1200 bytes or a short DCID.
    pub rejected_initials: u64,
    /// Connections closed because their handshakes did not finish in time.
    pub handshake_timeouts: u64,
    /// Connections closed because a sealed frame stayed incomplete too long.
    pub frame_timeouts: u64,
    /// Error records not sent because their sender's queue was at twice its capacity.
    pub error_records_dropped: u64,
    /// New peers' Initials dropped because a shard's handshake budget was full.
    pub handshake_budget_drops: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections dialed.
    pub dialed: u64,
    /// Connections open now.
    pub connections: u64,
    /// Connections closed.
    pub closed: u64,
    /// Connections that failed the Noise handshake.
    pub handshake_failures: u64,
    /// Connections closed for a sealed frame that did not authenticate.
    pub seal_failures: u64,
    /// Connections closed for another protocol violation.
    pub protocol_errors: u64,
    /// Messages received from peers.
    pub messages_in: u64,
    /// Messages handed to the node's application.
    pub delivered_local: u64,
    /// Messages relayed towards another peer.
    pub relayed: u64,
    /// Messages sealed and written.
    pub messages_out: u64,
    /// Batches sealed and written.
    pub batches_out: u64,
    /// Error records sent.
    pub errors_out: u64,
    /// Error records received.
    pub errors_in: u64,
    /// Dropped: unknown destination.
    pub dropped_unknown_destination: u64,
    /// Dropped: over the size limit.
    pub dropped_too_large: u64,
    /// Dropped: destination connection ended first.
    pub dropped_unreachable: u64,
    /// Dropped: node shutting down.
    pub dropped_shutting_down: u64,
    /// Dropped: sender's connection ended before routing.
    pub dropped_sender_gone: u64,
    /// Dropped: the destination stopped reading and was closed with them still queued.
    pub dropped_stalled: u64,
    /// Connections closed because the peer made no flow-control progress.
    pub stalled_closed: u64,
    /// Bytes held in batch queues, not yet sealed.
    pub queued_bytes: u64,
    /// Bytes the node's connections hold against the memory limit.
    pub buffered_bytes: u64,
    /// Initials dropped at the memory limit.
    pub memory_limit_drops: u64,
    /// Times a shard stopped reading at the memory limit.
    pub memory_pauses: u64,
    /// Connections refused (connection limit, draining).
    pub refused: u64,
    /// Connections closed by the pool TTL.
    pub ttl_closed: u64,
    /// Lifecycle transitions of dialed peers into each state, indexed like
    /// `shards::lifecycle::ConnState::ALL`.
    pub transitions: [u64; 5],
}

impl EngineStats {
    /// Sums `shards`.
    pub fn collect<'a>(shards: impl IntoIterator<Item = &'a ShardStats>) -> Self {
        let mut t = EngineStats::default();
        for s in shards {
            let r = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            t.datagrams_in += r(&s.datagrams_in);
            t.datagrams_out += r(&s.datagrams_out);
            t.receive_calls += r(&s.receive_calls);
            t.send_calls += r(&s.send_calls);
            t.gso_sends += r(&s.gso_sends);
            t.gso_datagrams += r(&s.gso_datagrams);
            t.truncated_datagrams += r(&s.truncated_datagrams);
            t.misrouted += r(&s.misrouted);
            t.unknown_datagrams += r(&s.unknown_datagrams);
            t.unparsable_datagrams += r(&s.unparsable_datagrams);
            t.retries_sent += r(&s.retries_sent);
            t.address_validated += r(&s.address_validated);
            t.invalid_tokens += r(&s.invalid_tokens);
            t.rejected_initials += r(&s.rejected_initials);
            t.handshake_timeouts += r(&s.handshake_timeouts);
            t.frame_timeouts += r(&s.frame_timeouts);
            t.error_records_dropped += r(&s.error_records_dropped);
            t.handshake_budget_drops += r(&s.handshake_budget_drops);
            t.accepted += r(&s.accepted);
            t.dialed += r(&s.dialed);
            t.connections += r(&s.connections);
            t.closed += r(&s.closed);
            t.handshake_failures += r(&s.handshake_failures);
            t.seal_failures += r(&s.seal_failures);
            t.protocol_errors += r(&s.protocol_errors);
            t.messages_in += r(&s.messages_in);
            t.delivered_local += r(&s.delivered_local);
            t.relayed += r(&s.relayed);
            t.messages_out += r(&s.messages_out);
            t.batches_out += r(&s.batches_out);
            t.errors_out += r(&s.errors_out);
            t.errors_in += r(&s.errors_in);
            t.dropped_unknown_destination += r(&s.dropped_unknown_destination);
            t.dropped_too_large += r(&s.dropped_too_large);
            t.dropped_unreachable += r(&s.dropped_unreachable);
            t.dropped_shutting_down += r(&s.dropped_shutting_down);
            t.dropped_sender_gone += r(&s.dropped_sender_gone);
            t.dropped_stalled += r(&s.dropped_stalled);
            t.stalled_closed += r(&s.stalled_closed);
            t.queued_bytes += r(&s.queued_bytes);
            t.buffered_bytes += r(&s.buffered_bytes);
            t.memory_limit_drops += r(&s.memory_limit_drops);
            t.memory_pauses += r(&s.memory_pauses);
            t.refused += r(&s.refused);
            t.ttl_closed += r(&s.ttl_closed);
            for (sum, c) in t.transitions.iter_mut().zip(&s.transitions) {
                *sum += r(c);
            }
        }
        t
    }

    /// Every message that was not delivered, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_unknown_destination
            + self.dropped_too_large
            + self.dropped_unreachable
            + self.dropped_shutting_down
            + self.dropped_sender_gone
            + self.dropped_stalled
    }
}

/// The kernel's view of one UDP socket, from `/proc/net/udp` and `/proc/net/udp6`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketQueue {
    /// Bytes waiting in the socket's receive queue now.
    pub rx_queue_bytes: u64,
    /// Datagrams the kernel dropped because the receive queue was full (or for other
    /// receive errors), since the socket was created.
    pub drops: u64,
}

/// Reads the receive queue and drop count of the UDP sockets with these inodes (as the
/// shards record them); `None` for an inode that is not found (or 0).
pub fn socket_queues(inodes: &[u64]) -> Vec<Option<SocketQueue>> {
    let mut text = String::new();
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(t) = std::fs::read_to_string(f) {
            text.push_str(&t);
        }
    }
    let table = parse_proc_net_udp(&text);
    inodes
        .iter()
        .map(|ino| {
            (*ino != 0)
                .then(|| table.iter().find(|(i, _)| i == ino).map(|(_, q)| *q))
                .flatten()
        })
        .collect()
}

/// Parses the lines of `/proc/net/udp{,6}` into (inode, queue) pairs; malformed lines and
/// headers are skipped.
pub fn parse_proc_net_udp(text: &str) -> Vec<(u64, SocketQueue)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let queues = f.get(4)?;
            let (_, rx) = queues.split_once(':')?;
            let rx_queue_bytes = u64::from_str_radix(rx, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            let drops = f.get(12)?.parse().ok()?;
            Some((
                inode,
                SocketQueue {
                    rx_queue_bytes,
                    drops,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_udp_lines() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  123: 0100007F:1151 00000000:0000 07 00000000:00003A00 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
  124: garbage\n\
  125: 00000000000000000000000001000000:1151 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0\n";
        let t = parse_proc_net_udp(text);
        assert_eq!(
            t,
            vec![
                (
                    4242,
                    SocketQueue {
                        rx_queue_bytes: 0x3A00,
                        drops: 17
                    }
                ),
                (99, SocketQueue::default()),
            ]
        );
    }

    #[test]
    fn a_real_socket_is_found() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ino = {
            use std::os::fd::AsRawFd;
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::fstat(s.as_raw_fd(), &mut st) }, 0);
            st.st_ino
        };
        let q = socket_queues(&[ino, 0]);
        assert_eq!(q[0], Some(SocketQueue::default()));
        assert_eq!(q[1], None);
    }
}
