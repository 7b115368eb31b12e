//! The cluster-wide peer index: which shard and connection hold each peer.
//!
//! Written on connect and disconnect, read by metrics, the API and by shards on a cache
//! miss; never on the per-message path (shards cache lookups and drop the cache when
//! [`PeerIndex::generation`] moves).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use dashmap::DashMap;
use shards::lifecycle::ConnState;
use shards::shard::{PeerActivity, PeerDirectory};
use shards::wire::PeerId;

/// What the index knows about one connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// Shard holding the connection.
    pub shard: usize,
    /// Connection key, unique within the shard.
    pub conn: u64,
    /// The peer's address when it connected.
    pub addr: SocketAddr,
    /// Whether this node dialed.
    pub outbound: bool,
    /// When the handshake finished.
    pub since: SystemTime,
    /// Lifecycle state.
    pub state: ConnState,
    /// Traffic as last published by the owning shard.
    pub activity: PeerActivity,
}

/// Peer id -> owning shard and connection.
#[derive(Debug, Default)]
pub struct PeerIndex {
    map: DashMap<PeerId, PeerEntry>,
    generation: AtomicU64,
}

impl PeerIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry for `peer`, if connected.
    pub fn get(&self, peer: &PeerId) -> Option<PeerEntry> {
        self.map.get(peer).map(|e| e.value().clone())
    }

    /// Number of connected peers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many peers are in each lifecycle state.
    pub fn state_counts(&self) -> Vec<(ConnState, usize)> {
        ConnState::ALL
            .iter()
            .map(|s| (*s, self.map.iter().filter(|e| e.state == *s).count()))
            .collect()
    }

    /// A copy of every entry.
    pub fn snapshot(&self) -> Vec<(PeerId, PeerEntry)> {
        self.map
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect()
    }
}

impl PeerDirectory for PeerIndex {
    fn connected(&self, peer: PeerId, shard: usize, conn: u64, addr: SocketAddr, outbound: bool) {
        // The newest connection of a peer wins; the older one stays up but unreachable.
        self.map.insert(
            peer,
            PeerEntry {
                shard,
                conn,
                addr,
                outbound,
                since: SystemTime::now(),
                state: ConnState::Connected,
                activity: PeerActivity {
                    addr: Some(addr),
                    ..PeerActivity::default()
                },
            },
        );
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn disconnected(&self, peer: PeerId, shard: usize, conn: u64) {
        self.map
            .remove_if(&peer, |_, e| e.shard == shard && e.conn == conn);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn activity(&self, peer: PeerId, shard: usize, conn: u64, activity: PeerActivity) {
        if let Some(mut e) = self.map.get_mut(&peer)
            && e.shard == shard
            && e.conn == conn
        {
            if let Some(a) = activity.addr {
                e.addr = a;
            }
            e.activity = activity;
        }
    }

    fn state(&self, peer: PeerId, shard: usize, state: ConnState) {
        if let Some(mut e) = self.map.get_mut(&peer) {
            // Only the dialing side's pool owns the state of an outbound entry.
            if e.shard == shard && e.outbound {
                e.state = state;
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn owner(&self, peer: &PeerId) -> Option<(usize, u64, bool)> {
        self.map
            .get(peer)
            .filter(|e| e.state == ConnState::Connected)
            .map(|e| (e.shard, e.conn, e.outbound))
    }

    fn shard_of(&self, peer: &PeerId) -> Option<usize> {
        self.map.get(peer).map(|e| e.shard)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_connection_wins_and_stale_disconnect_is_ignored() {
        let idx = PeerIndex::new();
        let p = PeerId([7; 16]);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        idx.connected(p, 0, 1, a, false);
        let g = idx.generation();
        idx.connected(p, 1, 5, a, false);
        assert!(idx.generation() > g);
        idx.disconnected(p, 0, 1);
        assert_eq!(idx.shard_of(&p), Some(1));
        idx.disconnected(p, 1, 5);
        assert_eq!(idx.shard_of(&p), None);
        assert!(idx.is_empty());
    }
}
