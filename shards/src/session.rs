//! One QUIC connection carrying one engine session, without I/O.
//!
//! A [`Session`] owns the quiche connection, runs the Noise handshake on the session stream
//! (client-initiated bidirectional stream 0), then moves sealed batches in both directions. The
//! driver feeds it datagrams ([`Session::recv`]), asks it for datagrams ([`Session::send`]),
//! and pulls decoded records only when it has room for them ([`Session::read_records`]): not
//! reading is how back-pressure reaches the sender through QUIC flow control.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::frames::{FrameReader, StreamRead};
use crate::handshake::{Handshake, HandshakeError, Role};
use crate::identity::Identity;
use crate::seal::{Opener, SealError, SealKey, Sealer};
use crate::wire::{self, PeerId, Record, WireError, close_code};

/// The QUIC stream that carries the handshake and then the sealed frames.
pub const SESSION_STREAM: u64 = 0;

/// Why a session failed; each maps to the QUIC application close code sent to the peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// quiche refused an operation.
    #[error("quic: {0}")]
    Quic(#[from] quiche::Error),
    /// The Noise handshake failed (bad message, wrong key, oversize).
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// A sealed frame did not authenticate (tampered, replayed, reordered, truncated).
    #[error("seal: {0}")]
    Seal(#[from] SealError),
    /// A batch did not decode.
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// The peer broke a protocol rule.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A send was attempted before the handshake finished or after the stream finished.
    #[error("session is not open for sending")]
    NotOpen,
    /// The peer finished the session stream with part of a sealed frame still buffered
    /// (a truncated frame); closed with `SEAL_FAILED` and reason [`FIN_MID_FRAME`].
    #[error("{FIN_MID_FRAME}")]
    FinMidFrame,
}

/// Close reason text sent when the peer's stream FIN arrives inside a sealed frame.
pub const FIN_MID_FRAME: &str = "stream finished mid-frame";

impl SessionError {
    /// The QUIC application close code this error is reported with.
    pub fn close_code(&self) -> u64 {
        match self {
            SessionError::Quic(_) | SessionError::NotOpen => close_code::INTERNAL_ERROR,
            SessionError::Handshake(_) => close_code::HANDSHAKE_FAILED,
            SessionError::Seal(SealError::TooLarge { .. } | SealError::TooShort { .. }) => {
                close_code::FRAME_TOO_LARGE
            }
            SessionError::Seal(_) | SessionError::FinMidFrame => close_code::SEAL_FAILED,
            SessionError::Wire(_) | SessionError::Protocol(_) => close_code::PROTOCOL_VIOLATION,
        }
    }
}

/// How a session ended, as seen from this side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// Whether the close was sent by the peer (true) or by this side (false).
    pub by_peer: bool,
    /// Application close code, or the QUIC transport error code when `is_app` is false.
    pub code: u64,
    /// Whether `code` is an application code (see `close_code`).
    pub is_app: bool,
    /// The reason text sent with the close.
    pub reason: String,
    /// Whether the connection ended because the idle timeout fired.
    pub timed_out: bool,
}

enum Phase {
    /// QUIC handshake and/or Noise handshake in progress.
    Handshaking(Box<Handshake>),
    /// Keys agreed; sealed frames flow.
    Open { sealer: Sealer, opener: Opener },
    /// A fatal error happened; the connection is closing.
    Failed,
}

/// Tuning of the QUIC transport used by sessions.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Connection and stream receive window, in bytes.
    pub window: u64,
    /// Largest UDP payload sent.
    pub max_udp_payload: usize,
    /// Coalesce outgoing datagrams with UDP GSO (`UDP_SEGMENT`) where the kernel supports
    /// it. Peers see the same datagrams either way; off only to compare or to work around a
    /// device that mishandles it (the driver also turns it off if the kernel refuses it).
    pub gso: bool,
}

/// Default QUIC connection and stream receive window: 128 KiB. What a peer may have in
/// flight towards a node is bounded by it, so it bounds both the work a node that stopped
/// reading a peer (back-pressure) has waiting for it and, summed over connections, the
/// standing queue in front of a saturated node. 128 KiB sustains ~250 MB/s per connection
/// at 0.5 ms RTT (loopback, one data centre); raise it (`--window`) for long paths.
pub const DEFAULT_WINDOW: u64 = 128 * 1024;

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            idle_timeout: Duration::from_secs(30),
            window: DEFAULT_WINDOW,
            max_udp_payload: 1350,
            gso: true,
        }
    }
}

/// Builds the quiche configuration for the accepting side. `cert` and `key` are PEM file
/// paths: the certificate is not what authenticates a peer (Noise static keys do).
pub fn server_config(
    transport: &TransportConfig,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quiche::Config, quiche::Error> {
    let mut cfg = base_config(transport)?;
    cfg.load_cert_chain_from_pem_file(cert_pem)?;
    cfg.load_priv_key_from_pem_file(key_pem)?;
    cfg.set_initial_max_streams_bidi(1);
    Ok(cfg)
}

/// Builds the quiche configuration for the dialing side. The server certificate is not
/// verified: the Noise handshake authenticates the peer.
pub fn client_config(transport: &TransportConfig) -> Result<quiche::Config, quiche::Error> {
    let mut cfg = base_config(transport)?;
    cfg.verify_peer(false);
    cfg.set_initial_max_streams_bidi(0);
    Ok(cfg)
}

fn base_config(t: &TransportConfig) -> Result<quiche::Config, quiche::Error> {
    let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
    cfg.set_application_protos(&[crate::handshake::ALPN])?;
    cfg.set_max_idle_timeout(u64::try_from(t.idle_timeout.as_millis()).unwrap_or(u64::MAX));
    cfg.set_max_recv_udp_payload_size(t.max_udp_payload);
    cfg.set_max_send_udp_payload_size(t.max_udp_payload);
    cfg.set_initial_max_data(t.window);
    cfg.set_initial_max_stream_data_bidi_local(t.window);
    cfg.set_initial_max_stream_data_bidi_remote(t.window);
    cfg.set_initial_max_stream_data_uni(0);
    cfg.set_initial_max_streams_uni(0);
    cfg.set_max_connection_window(t.window);
    cfg.set_max_stream_window(t.window);
    // quiche keeps one path entry per peer address a connection has used and sizes that
    // table by this limit; a NAT rebinding that needs a new entry when the table is full is
    // dropped. 8 allows seven rebindings per connection (see docs/PROTOCOL.md, Limits).
    cfg.set_active_connection_id_limit(8);
    cfg.set_disable_active_migration(false);
    Ok(cfg)
}

/// One engine session over one QUIC connection.
pub struct Session {
    conn: quiche::Connection,
    phase: Phase,
    is_client: bool,
    peer: Option<PeerId>,
    ready_reported: bool,
    /// Bytes read from the stream that do not yet form a whole sealed frame, and whether
    /// the peer finished the stream.
    rx: FrameReader,
    /// Sealed bytes waiting for quiche to accept them (stream flow control).
    tx: Vec<u8>,
    tx_off: usize,
    /// Sealed bytes QUIC has accepted into the stream since the session opened; it only
    /// moves while the peer grants flow-control credit (the driver's stall detector).
    tx_accepted: u64,
    /// Plaintext scratch for encoding batches.
    scratch: Vec<u8>,
    fin_sent: bool,
    fin_wanted: bool,
    /// Close code and reason of the error that closed this session on this side.
    error: Option<(u64, String)>,
    created: Instant,
    established_at: Option<Instant>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("trace_id", &self.conn.trace_id())
            .field("peer", &self.peer)
            .field("is_client", &self.is_client)
            .finish()
    }
}

impl Session {
    /// Starts a session as the dialing side (QUIC client, Noise initiator).
    pub fn connect(
        config: &mut quiche::Config,
        identity: &Identity,
        scid: &[u8],
        local: SocketAddr,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<Session, SessionError> {
        let scid = quiche::ConnectionId::from_ref(scid);
        let conn = quiche::connect(None, &scid, local, peer, config)?;
        Self::new(conn, Role::Initiator, identity, true, now)
    }

    /// Starts a session as the accepting side (QUIC server, Noise responder). `odcid` is
    /// the peer's original destination connection ID when its address was validated with a
    /// Retry (then `scid` is the connection ID the Retry gave it).
    pub fn accept(
        config: &mut quiche::Config,
        identity: &Identity,
        scid: &[u8],
        odcid: Option<&[u8]>,
        local: SocketAddr,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<Session, SessionError> {
        let scid = quiche::ConnectionId::from_ref(scid);
        let odcid = odcid.map(quiche::ConnectionId::from_ref);
        let conn = quiche::accept(&scid, odcid.as_ref(), local, peer, config)?;
        Self::new(conn, Role::Responder, identity, false, now)
    }

    fn new(
        conn: quiche::Connection,
        role: Role,
        identity: &Identity,
        is_client: bool,
        now: Instant,
    ) -> Result<Session, SessionError> {
        Ok(Session {
            conn,
            phase: Phase::Handshaking(Box::new(Handshake::new(role, identity)?)),
            is_client,
            peer: None,
            ready_reported: false,
            rx: FrameReader::default(),
            tx: Vec::new(),
            tx_off: 0,
            tx_accepted: 0,
            scratch: Vec::new(),
            fin_sent: false,
            fin_wanted: false,
            error: None,
            created: now,
            established_at: None,
        })
    }

    /// The authenticated peer id, once the Noise handshake finished.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// Whether this side dialed.
    pub fn is_client(&self) -> bool {
        self.is_client
    }

    /// Returns the peer id once, the first time it is called after the handshake finished.
    pub fn take_ready(&mut self) -> Option<PeerId> {
        if self.ready_reported {
            return None;
        }
        let peer = self.peer?;
        self.ready_reported = true;
        Some(peer)
    }

    /// How long the QUIC and Noise handshakes took, once both are done.
    pub fn handshake_duration(&self) -> Option<Duration> {
        self.established_at.map(|t| t.duration_since(self.created))
    }

    /// Whether sealed frames can be sent.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. }) && !self.fin_wanted
    }

    /// Whether the peer finished its direction of the session stream.
    pub fn peer_finished(&self) -> bool {
        self.rx.fin_received()
    }

    /// Whether the connection is fully closed and can be dropped.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Whether the connection is closing (draining or closed).
    pub fn is_closing(&self) -> bool {
        self.conn.is_closed() || self.conn.is_draining() || self.error.is_some()
    }

    /// The QUIC trace id, for logs.
    pub fn trace_id(&self) -> &str {
        self.conn.trace_id()
    }

    /// The address the peer currently sends from.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.conn
            .path_stats()
            .find(|p| p.active)
            .map(|p| p.peer_addr)
    }

    /// Read access to the quiche connection (stats, ids).
    pub fn quic(&self) -> &quiche::Connection {
        &self.conn
    }

    /// Mutable access to the quiche connection, for driver-level operations such as
    /// issuing new connection IDs.
    pub fn quic_mut(&mut self) -> &mut quiche::Connection {
        &mut self.conn
    }

    /// The close code and reason of the error that closed this session on this side.
    pub fn error(&self) -> Option<&(u64, String)> {
        self.error.as_ref()
    }

    /// How the session ended, once it is closing.
    pub fn close_info(&self) -> Option<CloseInfo> {
        let timed_out = self.conn.is_timed_out();
        if let Some(e) = self.conn.peer_error() {
            return Some(CloseInfo {
                by_peer: true,
                code: e.error_code,
                is_app: e.is_app,
                reason: String::from_utf8_lossy(&e.reason).into_owned(),
                timed_out,
            });
        }
        if let Some(e) = self.conn.local_error() {
            return Some(CloseInfo {
                by_peer: false,
                code: e.error_code,
                is_app: e.is_app,
                reason: String::from_utf8_lossy(&e.reason).into_owned(),
                timed_out,
            });
        }
        if self.conn.is_closed() {
            return Some(CloseInfo {
                by_peer: false,
                code: 0,
                is_app: false,
                reason: String::new(),
                timed_out,
            });
        }
        None
    }

    /// Feeds one received datagram. Errors inside the engine protocol close the connection
    /// with the matching code and are returned once; QUIC-level errors on a single packet
    /// (a stray or undecryptable datagram) are ignored, as QUIC requires.
    pub fn recv(&mut self, buf: &mut [u8], from: SocketAddr, to: SocketAddr) {
        let _ = self.conn.recv(buf, quiche::RecvInfo { from, to });
        if self.conn.is_established()
            && let Err(e) = self.advance_handshake()
        {
            self.fail(&e);
        }
    }

    /// Moves the Noise handshake forward and flushes pending stream bytes.
    fn advance_handshake(&mut self) -> Result<(), SessionError> {
        if let Phase::Handshaking(hs) = &mut self.phase {
            if let Some(out) = hs.take_outgoing() {
                self.tx.extend_from_slice(&out);
            }
            // Read only handshake bytes; the rest is left for read_records.
            let mut buf = [0u8; 1024];
            while !hs.is_finished() {
                match self.conn.stream_recv(SESSION_STREAM, &mut buf) {
                    Ok((n, fin)) => {
                        let data = buf.get(..n).unwrap_or(&[]);
                        let used = hs.feed(data)?;
                        self.rx.extend(data.get(used..).unwrap_or(&[]));
                        if let Some(out) = hs.take_outgoing() {
                            self.tx.extend_from_slice(&out);
                        }
                        if fin {
                            if !hs.is_finished() {
                                return Err(SessionError::Protocol("stream finished in handshake"));
                            }
                            self.rx.set_fin();
                        }
                    }
                    Err(quiche::Error::Done) => break,
                    // The client has not opened the session stream yet (or, on the
                    // client, the stream is not readable yet): wait for it.
                    Err(quiche::Error::InvalidStreamState(_)) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            if hs.is_finished() {
                if let Some(out) = hs.take_outgoing() {
                    self.tx.extend_from_slice(&out);
                }
                let Phase::Handshaking(hs) = std::mem::replace(&mut self.phase, Phase::Failed)
                else {
                    return Err(SessionError::NotOpen);
                };
                let keys = hs.into_keys()?;
                self.peer = Some(keys.remote_peer);
                self.phase = Phase::Open {
                    sealer: Sealer::new(SealKey::from_bytes(*keys.send)),
                    opener: Opener::new(SealKey::from_bytes(*keys.recv)),
                };
                self.established_at = Some(Instant::now());
            }
        }
        self.flush_tx()?;
        Ok(())
    }

    /// Pushes buffered sealed bytes into the QUIC stream as far as flow control allows.
    fn flush_tx(&mut self) -> Result<(), SessionError> {
        // Only offer data when the stream can take some: every stream_send on a
        // flow-control-blocked connection re-arms a DATA_BLOCKED frame, and the send loop
        // would then emit a datagram per call.
        // (A stream this side has not opened yet has no capacity to ask about.)
        let writable = !matches!(self.conn.stream_capacity(SESSION_STREAM), Ok(0));
        if self.tx_off < self.tx.len() && writable {
            let pending = self.tx.get(self.tx_off..).unwrap_or(&[]);
            match self.conn.stream_send(SESSION_STREAM, pending, false) {
                Ok(n) => {
                    self.tx_off += n;
                    self.tx_accepted += n as u64;
                }
                Err(quiche::Error::Done) => {}
                Err(e) => return Err(e.into()),
            }
            if self.tx_off == self.tx.len() {
                self.tx.clear();
                self.tx_off = 0;
            } else if self.tx_off > 64 * 1024 && self.tx_off * 2 > self.tx.len() {
                self.tx.drain(..self.tx_off);
                self.tx_off = 0;
            }
        }
        if self.fin_wanted && !self.fin_sent && self.tx.is_empty() && self.peer.is_some() {
            match self.conn.stream_send(SESSION_STREAM, &[], true) {
                Ok(_) => self.fin_sent = true,
                Err(quiche::Error::Done) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sealed bytes accepted from the caller but not yet taken by the QUIC stream. The
    /// driver uses it (plus its batch queues) to decide when to stop feeding this session.
    pub fn pending_bytes(&self) -> usize {
        self.tx.len() - self.tx_off
    }

    /// Sealed bytes QUIC has taken into the session stream so far. It stops moving while
    /// the peer withholds flow-control credit, which is how the driver tells a peer that
    /// stopped reading from one that is merely slow.
    pub fn accepted_bytes(&self) -> u64 {
        self.tx_accepted
    }

    /// Encodes and seals `records` as one batch (one AEAD operation) and queues the frame.
    pub fn send_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<(), SessionError> {
        if self.fin_wanted || self.error.is_some() {
            return Err(SessionError::NotOpen);
        }
        let Phase::Open { sealer, .. } = &mut self.phase else {
            return Err(SessionError::NotOpen);
        };
        self.scratch.clear();
        wire::encode_batch(records, &mut self.scratch);
        if self.scratch.is_empty() {
            return Ok(());
        }
        sealer.seal_into(&self.scratch, &mut self.tx)?;
        if let Err(e) = self.flush_tx() {
            self.fail(&e);
            return Err(SessionError::NotOpen);
        }
        Ok(())
    }

    /// Queues raw bytes on the session stream, bypassing the seal. Only for tests that
    /// check how a peer reacts to forged or replayed frames.
    #[doc(hidden)]
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.tx.extend_from_slice(bytes);
        self.flush_tx()
    }

    /// Seals `records` and returns the frame bytes without queuing them. Only for tests
    /// that replay or reorder frames.
    #[doc(hidden)]
    pub fn seal_detached(&mut self, records: &[Record]) -> Result<Vec<u8>, SessionError> {
        let Phase::Open { sealer, .. } = &mut self.phase else {
            return Err(SessionError::NotOpen);
        };
        let mut plain = Vec::new();
        wire::encode_batch(records, &mut plain);
        let mut out = Vec::new();
        sealer.seal_into(&plain, &mut out)?;
        Ok(out)
    }

    /// Reads and opens up to `max_frames` sealed frames, appending their records to `out`.
    /// Returns the number of frames opened. Data beyond that stays in QUIC's receive buffer,
    /// so a driver that stops calling this pushes back on the peer. On an error the session
    /// is closed with the matching code and the error is returned.
    pub fn read_records(
        &mut self,
        out: &mut Vec<Record>,
        max_frames: usize,
    ) -> Result<usize, SessionError> {
        if self.error.is_some() {
            return Ok(0);
        }
        match self.read_records_inner(out, max_frames) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    fn read_records_inner(
        &mut self,
        out: &mut Vec<Record>,
        max_frames: usize,
    ) -> Result<usize, SessionError> {
        let Phase::Open { opener, .. } = &mut self.phase else {
            return Ok(0);
        };
        let conn = &mut self.conn;
        self.rx.read_frames(opener, out, max_frames, |dst| {
            match conn.stream_recv(SESSION_STREAM, dst) {
                Ok((n, fin)) => Ok(StreamRead::Data { n, fin }),
                Err(quiche::Error::Done) => Ok(StreamRead::Done),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Bytes read from the session stream and not yet consumed (part of a frame, or whole
    /// frames not yet opened).
    pub fn received_bytes(&self) -> usize {
        self.rx.buffered()
    }

    /// Whether part of a sealed frame is buffered and the rest has not arrived: the frame
    /// deadline runs while this holds (a complete frame waiting for room does not count).
    ///
    /// Only bytes the peer has not sent count: while the rest of the frame waits readable in
    /// QUIC (this node stopped reading, for back-pressure), the frame is not awaited.
    pub fn awaiting_frame_bytes(&self) -> bool {
        self.is_open() && self.rx.awaiting_bytes() && !self.conn.stream_readable(SESSION_STREAM)
    }

    /// Sealed frames received and opened so far: while [`Session::awaiting_frame_bytes`]
    /// holds, the index of the frame awaited, so a deadline can be kept per frame.
    pub fn frames_opened(&self) -> u64 {
        self.rx.frames_opened()
    }

    /// Ends this side of the session stream once every queued frame is in the stream.
    /// After it no more batches can be sent; the session closes when both sides finished.
    pub fn finish(&mut self) {
        self.fin_wanted = true;
        if let Err(e) = self.flush_tx() {
            self.fail(&e);
        }
    }

    /// Whether both directions finished and everything this side sent was acknowledged.
    pub fn is_complete(&mut self) -> bool {
        self.fin_sent
            && self.rx.fin_received()
            && self.rx.buffered() == 0
            && matches!(
                self.conn.stream_capacity(SESSION_STREAM),
                Err(quiche::Error::InvalidStreamState(_))
            )
    }

    /// A one-line account of where the graceful close stands, for logs.
    pub fn close_progress(&mut self) -> String {
        format!(
            "fin_sent={} fin_received={} pending={} partial_frame={} stream={:?} closing={}",
            self.fin_sent,
            self.rx.fin_received(),
            self.pending_bytes(),
            self.rx.buffered(),
            self.conn.stream_capacity(SESSION_STREAM),
            self.is_closing()
        )
    }

    /// Closes the connection with an application close code.
    pub fn close(&mut self, code: u64, reason: &str) {
        let _ = self.conn.close(true, code, reason.as_bytes());
    }

    fn fail(&mut self, e: &SessionError) {
        tracing::debug!(trace_id = self.conn.trace_id(), "closing session: {e}");
        let code = e.close_code();
        let reason = e.to_string();
        self.close(code, &reason);
        self.phase = Phase::Failed;
        if self.error.is_none() {
            self.error = Some((code, reason));
        }
    }

    /// Produces the next datagram to send, or `None` when quiche has nothing more. The
    /// driver must call this until `None` after every recv, timeout and batch send.
    pub fn send(&mut self, out: &mut [u8]) -> Option<(usize, quiche::SendInfo)> {
        if let Err(e) = self.flush_tx() {
            self.fail(&e);
        }
        match self.conn.send(out) {
            Ok(v) => Some(v),
            Err(quiche::Error::Done) => None,
            Err(e) => {
                tracing::debug!(trace_id = self.conn.trace_id(), "quic send error: {e}");
                let _ = self.conn.close(false, 0x1, b"send error");
                None
            }
        }
    }

    /// When quiche next needs [`Session::on_timeout`].
    pub fn timeout_at(&self) -> Option<Instant> {
        self.conn.timeout_instant()
    }

    /// Runs quiche's timers (loss detection, idle timeout, draining).
    pub fn on_timeout(&mut self) {
        self.conn.on_timeout();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{RX_CHUNK, RX_KEEP};
    use crate::seal;
    use crate::tls::TlsFiles;
    use crate::wire::Message;

    const CLIENT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        40001,
    ));
    const SERVER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        40002,
    ));

    /// Moves every pending datagram between the two sessions until neither has any.
    fn pump(client: &mut Session, server: &mut Session) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let mut moved = false;
            while let Some((n, _)) = client.send(&mut buf) {
                server.recv(&mut buf[..n], CLIENT, SERVER);
                moved = true;
            }
            while let Some((n, _)) = server.send(&mut buf) {
                client.recv(&mut buf[..n], SERVER, CLIENT);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    /// A client and a server session in memory, both past the Noise handshake.
    fn open_pair(tls: &TlsFiles) -> (Session, Session) {
        let transport = TransportConfig::default();
        let mut ccfg = client_config(&transport).unwrap();
        let mut scfg = server_config(&transport, &tls.cert_str(), &tls.key_str()).unwrap();
        let now = Instant::now();
        let cid = Identity::generate().unwrap();
        let sid = Identity::generate().unwrap();
        let mut client = Session::connect(&mut ccfg, &cid, &[1; 16], CLIENT, SERVER, now).unwrap();
        let mut server =
            Session::accept(&mut scfg, &sid, &[2; 16], None, SERVER, CLIENT, now).unwrap();
        for _ in 0..16 {
            pump(&mut client, &mut server);
            if client.is_open() && server.is_open() {
                break;
            }
        }
        assert!(
            client.is_open() && server.is_open(),
            "handshake did not finish"
        );
        (client, server)
    }

    #[test]
    fn fin_inside_a_frame_closes_with_its_own_reason() {
        let tls = TlsFiles::self_signed().unwrap();
        let (mut client, mut server) = open_pair(&tls);
        let record = Record::Message(Message {
            src: PeerId([1; 16]),
            dst: PeerId([2; 16]),
            seq: 1,
            payload: b"cut short".to_vec(),
        });
        let frame = client.seal_detached(&[record]).unwrap();
        client.send_raw(&frame[..frame.len() / 2]).unwrap();
        client.finish();
        pump(&mut client, &mut server);
        let mut out = Vec::new();
        let err = server.read_records(&mut out, 16).unwrap_err();
        assert!(matches!(err, SessionError::FinMidFrame), "{err}");
        assert!(out.is_empty());
        assert_eq!(
            server.error(),
            Some(&(close_code::SEAL_FAILED, FIN_MID_FRAME.to_string()))
        );
        pump(&mut client, &mut server);
        let info = client.close_info().unwrap();
        assert!(info.by_peer && info.is_app);
        assert_eq!(
            (info.code, info.reason.as_str()),
            (close_code::SEAL_FAILED, FIN_MID_FRAME)
        );
    }

    #[test]
    fn a_frame_header_announcing_16_mib_costs_only_the_bytes_that_arrived() {
        let tls = TlsFiles::self_signed().unwrap();
        let (mut client, mut server) = open_pair(&tls);
        let announced = u32::try_from(seal::MAX_SEALED_LEN).unwrap();
        let mut raw = announced.to_be_bytes().to_vec();
        raw.extend_from_slice(&[0u8; 1000]);
        client.send_raw(&raw).unwrap();
        pump(&mut client, &mut server);
        let mut out = Vec::new();
        assert_eq!(server.read_records(&mut out, 16).unwrap(), 0);
        assert!(out.is_empty());
        // Amortized growth: at most twice what arrived plus one chunk, not 16 MiB.
        assert!(
            server.rx.capacity() <= 2 * (1004 + RX_CHUNK),
            "buffer of {} bytes for 1004 received",
            server.rx.capacity()
        );
        assert_eq!(server.rx.buffered(), 1004);
    }

    #[test]
    fn a_large_frame_arrives_whole_and_its_buffer_is_given_back() {
        let tls = TlsFiles::self_signed().unwrap();
        let (mut client, mut server) = open_pair(&tls);
        let records: Vec<Record> = (0..20)
            .map(|seq| {
                Record::Message(Message {
                    src: PeerId([1; 16]),
                    dst: PeerId([2; 16]),
                    seq,
                    payload: vec![seq as u8; 60 * 1024],
                })
            })
            .collect();
        let frame = client.seal_detached(&records).unwrap();
        assert!(frame.len() > RX_KEEP);
        // Larger than the stream window: it arrives as the reader consumes it.
        client.send_raw(&frame).unwrap();
        let mut out = Vec::new();
        for _ in 0..1000 {
            pump(&mut client, &mut server);
            server.read_records(&mut out, 16).unwrap();
            if !out.is_empty() {
                break;
            }
            client.send_raw(&[]).unwrap();
        }
        assert_eq!(out, records);
        assert!(server.rx.capacity() <= RX_KEEP, "{}", server.rx.capacity());
    }

    #[test]
    fn whole_frames_before_fin_are_read_and_fin_ends_cleanly() {
        let tls = TlsFiles::self_signed().unwrap();
        let (mut client, mut server) = open_pair(&tls);
        let record = Record::Message(Message {
            src: PeerId([1; 16]),
            dst: PeerId([2; 16]),
            seq: 7,
            payload: b"whole".to_vec(),
        });
        let frame = client.seal_detached(std::slice::from_ref(&record)).unwrap();
        client.send_raw(&frame).unwrap();
        client.finish();
        pump(&mut client, &mut server);
        let mut out = Vec::new();
        assert_eq!(server.read_records(&mut out, 16).unwrap(), 1);
        assert_eq!(server.read_records(&mut out, 16).unwrap(), 0);
        assert_eq!(out, vec![record]);
        assert!(server.peer_finished());
        assert!(server.error().is_none());
    }
}
