//! One QUIC connection carrying one engine session, without I/O.
//!
//! A [`Session`] owns the quiche connection and a [`StreamSession`] (the Noise handshake,
//! sealed frames and records of the session stream, client-initiated bidirectional stream
//! 0) and moves stream bytes between the two: quiche's `stream_recv` is the stream
//! session's source, and its outgoing bytes go to `stream_send` as flow control allows.
//! The driver feeds it datagrams ([`Session::recv`]), asks it for datagrams
//! ([`Session::send`]), and pulls decoded records only when it has room for them
//! ([`Session::read_records`]): not reading is how back-pressure reaches the sender through
//! QUIC flow control.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::handshake::Role;
use crate::identity::Identity;
use crate::stream_session::{StreamError, StreamRead, StreamSession};
use crate::wire::{PayloadPool, PeerId, Record, close_code};

pub use crate::stream_session::FIN_MID_FRAME;

/// The QUIC stream that carries the handshake and then the sealed frames.
pub const SESSION_STREAM: u64 = 0;

/// Why a session failed; each maps to the QUIC application close code sent to the peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// quiche refused an operation.
    #[error("quic: {0}")]
    Quic(#[from] quiche::Error),
    /// The session-stream protocol failed (handshake, seal, batch, a protocol rule), or a
    /// send came before the handshake or after the stream finished.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl SessionError {
    /// The QUIC application close code this error is reported with.
    pub fn close_code(&self) -> u64 {
        match self {
            SessionError::Quic(_) => close_code::INTERNAL_ERROR,
            SessionError::Stream(e) => e.close_code(),
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
    /// Receive runs of same-size datagrams as one buffer with UDP GRO (`UDP_GRO`) where the
    /// kernel supports it, cutting them back into datagrams in user space: one pass through
    /// the stack and one copy per run. What QUIC sees is the same either way.
    pub gro: bool,
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
            gro: true,
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
    /// The session-stream protocol; its outgoing bytes wait there for quiche's stream flow
    /// control, its received ones for a whole frame.
    stream: StreamSession,
    is_client: bool,
    ready_reported: bool,
    /// Close code and reason of the error that closed this session on this side.
    error: Option<(u64, String)>,
    created: Instant,
    established_at: Option<Instant>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("trace_id", &self.conn.trace_id())
            .field("peer", &self.stream.peer())
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
            stream: StreamSession::new(role, identity)?,
            is_client,
            ready_reported: false,
            error: None,
            created: now,
            established_at: None,
        })
    }

    /// The authenticated peer id, once the Noise handshake finished.
    pub fn peer(&self) -> Option<PeerId> {
        self.stream.peer()
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
        let peer = self.stream.peer()?;
        self.ready_reported = true;
        Some(peer)
    }

    /// How long the QUIC and Noise handshakes took, once both are done.
    pub fn handshake_duration(&self) -> Option<Duration> {
        self.established_at.map(|t| t.duration_since(self.created))
    }

    /// Whether sealed frames can be sent.
    pub fn is_open(&self) -> bool {
        self.stream.is_open()
    }

    /// Whether the peer finished its direction of the session stream.
    pub fn peer_finished(&self) -> bool {
        self.stream.peer_finished()
    }

    /// Whether the connection is fully closed and can be dropped.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Whether the connection is closing: a close was asked for (by us, or by quiche on
    /// an error), even if quiche could not send it yet (an unvalidated address's
    /// amplification budget spent), or it is draining or closed.
    pub fn is_closing(&self) -> bool {
        self.conn.is_closed()
            || self.conn.is_draining()
            || self.conn.local_error().is_some()
            || self.error.is_some()
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
        if self.stream.is_handshaking() {
            // Read only handshake bytes; the rest is left for read_records.
            let conn = &mut self.conn;
            self.stream
                .read_handshake(|dst| match conn.stream_recv(SESSION_STREAM, dst) {
                    Ok((n, fin)) => Ok(StreamRead::Data { n, fin }),
                    Err(quiche::Error::Done) => Ok(StreamRead::Done),
                    // The client has not opened the session stream yet (or, on the
                    // client, the stream is not readable yet): wait for it.
                    Err(quiche::Error::InvalidStreamState(_)) => Ok(StreamRead::Done),
                    Err(e) => Err(SessionError::from(e)),
                })?;
            if self.established_at.is_none() && self.stream.is_established() {
                self.established_at = Some(Instant::now());
            }
        }
        self.flush_tx()?;
        Ok(())
    }

    /// Pushes buffered stream bytes into the QUIC stream as far as flow control allows.
    fn flush_tx(&mut self) -> Result<(), SessionError> {
        // Only offer data when the stream can take some: every stream_send on a
        // flow-control-blocked connection re-arms a DATA_BLOCKED frame, and the send loop
        // would then emit a datagram per call.
        // (A stream this side has not opened yet has no capacity to ask about.)
        let writable = !matches!(self.conn.stream_capacity(SESSION_STREAM), Ok(0));
        if !self.stream.outgoing().is_empty() && writable {
            match self
                .conn
                .stream_send(SESSION_STREAM, self.stream.outgoing(), false)
            {
                Ok(n) => self.stream.advance_outgoing(n),
                Err(quiche::Error::Done) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.stream.fin_due() {
            match self.conn.stream_send(SESSION_STREAM, &[], true) {
                Ok(_) => self.stream.fin_written(),
                Err(quiche::Error::Done) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sealed bytes accepted from the caller but not yet taken by the QUIC stream. The
    /// driver uses it (plus its batch queues) to decide when to stop feeding this session.
    pub fn pending_bytes(&self) -> usize {
        self.stream.pending_bytes()
    }

    /// Sealed bytes QUIC has taken into the session stream so far. It stops moving while
    /// the peer withholds flow-control credit, which is how the driver tells a peer that
    /// stopped reading from one that is merely slow.
    pub fn accepted_bytes(&self) -> u64 {
        self.stream.accepted_bytes()
    }

    /// Encodes and seals `records` as one batch (one AEAD operation) and queues the frame,
    /// offering it to the QUIC stream at once.
    pub fn send_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<(), SessionError> {
        self.queue_batch(records)?;
        self.flush_stream()
    }

    /// Encodes and seals `records` as one batch like [`Session::send_batch`], but only
    /// appends the frame to the session's outgoing bytes: a driver sealing several batches
    /// in one turn hands them to the QUIC stream with one [`Session::flush_stream`] (one
    /// `stream_send`, one stream buffer) instead of one per frame, which at batch size 1 is
    /// one per message.
    ///
    /// ```no_run
    /// # fn f(s: &mut shards::session::Session, batches: &[Vec<shards::wire::Record>]) -> Result<(), shards::session::SessionError> {
    /// for b in batches {
    ///     s.queue_batch(b)?;
    /// }
    /// s.flush_stream()?;
    /// # Ok(()) }
    /// ```
    pub fn queue_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<(), SessionError> {
        if self.error.is_some() {
            return Err(StreamError::NotOpen.into());
        }
        self.stream.send_batch(records)?;
        Ok(())
    }

    /// Offers the sealed bytes queued so far to the QUIC stream (as far as its flow
    /// control takes them). On a QUIC error the session fails and is closed.
    pub fn flush_stream(&mut self) -> Result<(), SessionError> {
        if self.error.is_some() {
            return Err(StreamError::NotOpen.into());
        }
        if let Err(e) = self.flush_tx() {
            self.fail(&e);
            return Err(StreamError::NotOpen.into());
        }
        Ok(())
    }

    /// Queues raw bytes on the session stream, bypassing the seal. Only for tests that
    /// check how a peer reacts to forged or replayed frames.
    #[doc(hidden)]
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.stream.queue_raw(bytes);
        self.flush_tx()
    }

    /// Seals `records` and returns the frame bytes without queuing them. Only for tests
    /// that replay or reorder frames.
    #[doc(hidden)]
    pub fn seal_detached(&mut self, records: &[Record]) -> Result<Vec<u8>, SessionError> {
        Ok(self.stream.seal_detached(records)?)
    }

    /// Takes up to `max_frames` steps of the stream session's frame reader (a step opens a
    /// whole frame or continues an opened one, at most 1024 records), appending records to
    /// `out`, and returns how many steps gave records. Data beyond the frame being read
    /// stays in QUIC's receive buffer, so a driver that stops calling this pushes back on
    /// the peer. On an error the session is closed with the matching code and the error is
    /// returned.
    pub fn read_records(
        &mut self,
        out: &mut Vec<Record>,
        max_frames: usize,
    ) -> Result<usize, SessionError> {
        self.read_records_pooled(out, &mut PayloadPool::none(), max_frames)
    }

    /// [`Session::read_records`], taking message payload buffers from `pool` where they
    /// fit, so a node or client that recycles sent payloads allocates none per message.
    pub fn read_records_pooled(
        &mut self,
        out: &mut Vec<Record>,
        pool: &mut PayloadPool,
        max_frames: usize,
    ) -> Result<usize, SessionError> {
        if self.error.is_some() {
            return Ok(0);
        }
        match self.read_records_inner(out, pool, max_frames) {
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
        pool: &mut PayloadPool,
        max_frames: usize,
    ) -> Result<usize, SessionError> {
        let conn = &mut self.conn;
        self.stream
            .read_records_pooled(out, pool, max_frames, |dst| {
                match conn.stream_recv(SESSION_STREAM, dst) {
                    Ok((n, fin)) => Ok(StreamRead::Data { n, fin }),
                    Err(quiche::Error::Done) => Ok(StreamRead::Done),
                    Err(e) => Err(SessionError::from(e)),
                }
            })
    }

    /// Bytes read from the session stream and not yet consumed (part of a frame, or whole
    /// frames not yet opened).
    pub fn received_bytes(&self) -> usize {
        self.stream.received_bytes()
    }

    /// Whether part of a sealed frame is buffered and the rest has not arrived: the frame
    /// deadline runs while this holds (a complete frame waiting for room does not count).
    ///
    /// Only bytes the peer has not sent count: while the rest of the frame waits readable in
    /// QUIC (this node stopped reading, for back-pressure), the frame is not awaited.
    pub fn awaiting_frame_bytes(&self) -> bool {
        self.stream.awaiting_frame_bytes() && !self.conn.stream_readable(SESSION_STREAM)
    }

    /// Sealed frames received and opened so far: while [`Session::awaiting_frame_bytes`]
    /// holds, the index of the frame awaited, so a deadline can be kept per frame.
    pub fn frames_opened(&self) -> u64 {
        self.stream.frames_opened()
    }

    /// Ends this side of the session stream once every queued frame is in the stream.
    /// After it no more batches can be sent; the session closes when both sides finished.
    pub fn finish(&mut self) {
        self.stream.finish();
        if let Err(e) = self.flush_tx() {
            self.fail(&e);
        }
    }

    /// Whether both directions finished and everything this side sent was acknowledged.
    pub fn is_complete(&mut self) -> bool {
        self.stream.both_finished()
            && matches!(
                self.conn.stream_capacity(SESSION_STREAM),
                Err(quiche::Error::InvalidStreamState(_))
            )
    }

    /// A one-line account of where the graceful close stands, for logs.
    pub fn close_progress(&mut self) -> String {
        format!(
            "fin_sent={} fin_received={} pending={} partial_frame={} stream={:?} closing={}",
            self.stream.fin_sent(),
            self.stream.peer_finished(),
            self.pending_bytes(),
            self.stream.received_bytes(),
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
        self.stream.fail();
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
        assert!(
            matches!(err, SessionError::Stream(StreamError::FinMidFrame)),
            "{err}"
        );
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
    fn queued_batches_wait_for_one_flush_and_arrive_in_order() {
        let tls = TlsFiles::self_signed().unwrap();
        let (mut client, mut server) = open_pair(&tls);
        let records: Vec<Record> = (0..50)
            .map(|seq| {
                Record::Message(Message {
                    src: PeerId([1; 16]),
                    dst: PeerId([2; 16]),
                    seq,
                    payload: vec![seq as u8; 64],
                })
            })
            .collect();
        for r in &records {
            client.queue_batch([r]).unwrap();
        }
        assert!(
            client.pending_bytes() > 50 * 64,
            "frames wait in the session"
        );
        client.flush_stream().unwrap();
        assert_eq!(client.pending_bytes(), 0, "one flush offers every frame");
        let mut out = Vec::new();
        let mut pool = PayloadPool::new(64, 4096);
        pump(&mut client, &mut server);
        while server
            .read_records_pooled(&mut out, &mut pool, 100)
            .unwrap()
            > 0
        {}
        assert_eq!(out, records);
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
            server.stream.rx_capacity() <= 2 * (1004 + RX_CHUNK),
            "buffer of {} bytes for 1004 received",
            server.stream.rx_capacity()
        );
        assert_eq!(server.stream.received_bytes(), 1004);
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
        assert!(
            server.stream.rx_capacity() <= RX_KEEP,
            "{}",
            server.stream.rx_capacity()
        );
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
