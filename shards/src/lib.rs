//! The per-core data plane of the QUIC message engine.
//!
//! Pure protocol logic (no I/O, time passed in): [`wire`] (record and batch codec),
//! [`seal`] (ChaCha20-Poly1305 per batch with per-direction counters), [`batch`] (flush
//! policy), [`handshake`] (Noise XX over the session stream), [`identity`] (static keys and
//! peer ids), [`cid`] (connection IDs that carry the shard index), [`stream_session`] (the
//! session-stream protocol: handshake, sealed frames and records, without a transport),
//! [`session`] (one QUIC connection: quiche driving a stream session), [`endpoint`] (a
//! shard's whole state machine: connections, routing, pool, drain, timers, counters).
//!
//! I/O drivers: [`steering`] (SO_REUSEPORT group with a CBPF program that steers by CID),
//! [`shard`] (the glommio executor per core, driving an endpoint), [`client`] (a blocking
//! single-connection client) and [`udp_batch`] (`recvmmsg`/`sendmmsg` on a non-blocking socket).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod cid;
pub mod client;
pub mod config;
pub mod endpoint;
mod frames;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod hist;
pub mod identity;
pub mod lifecycle;
mod payloads;
pub mod runtime;
pub mod seal;
pub mod session;
pub mod shard;
mod sockstat;
pub mod steering;
pub mod stream_session;
pub mod tls;
pub mod udp_batch;
pub mod wire;

/// `d` after `now`; a wait too long for the clock to express (a caller's
/// `Duration::MAX`) becomes a century, as good as for ever, instead of a panic.
pub(crate) fn deadline_after(
    now: std::time::Instant,
    d: std::time::Duration,
) -> std::time::Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(100 * 365 * 86_400))
}

#[cfg(test)]
mod protocol_doc;
