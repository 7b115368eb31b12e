//! `handshake_msg`: the length-prefixed Noise messages on stream 0, before any key exists.

use std::sync::OnceLock;

use super::Input;
use crate::handshake::{Handshake, HandshakeError, LEN_PREFIX, MAX_HANDSHAKE_MSG, Role};
use crate::identity::Identity;

/// Most bytes sent after msg3 in a conversation (sealed frames the responder must leave).
const MAX_TRAILER: usize = 256;
/// Rounds of a conversation: every round moves at least one byte or ends it, and the
/// handshake plus trailer are under 500 bytes.
const MAX_ROUNDS: usize = 4096;
/// Length of msg1 (`e`) and msg2 (`e, ee, s, es` with an empty payload).
const MSG1_LEN: usize = 32;
const MSG2_LEN: usize = 96;

/// Fixed static identities, so runs differ only by the ephemeral keys snow draws.
fn identities() -> Option<&'static (Identity, Identity)> {
    static IDS: OnceLock<Option<(Identity, Identity)>> = OnceLock::new();
    IDS.get_or_init(|| {
        let initiator = Identity::from_private([0x11; 32]).ok()?;
        let responder = Identity::from_private([0x22; 32]).ok()?;
        Some((initiator, responder))
    })
    .as_ref()
}

/// Feeds handshake bytes to [`Handshake`]. `data[0]` picks the mode:
///
/// * even: a stranger's bytes (`data[2..]`) fed to a fresh responder (bit 1 clear) or
///   initiator (bit 1 set) in chunks of `data[1] + 1` bytes. The handshake must never
///   finish, must consume everything until it fails, must fail only as a value (oversize
///   prefixes as [`HandshakeError::TooLarge`]) and stay failed, must buffer at most one
///   message, and a responder must answer any complete first message of 32 to 1024 bytes
///   with a 96-byte msg2.
/// * odd: an honest initiator and responder talk, bytes moved in chunks of `data[1] + 1`
///   and `data[2] + 1`, with `data[5]` xored into byte `data[3..5]` of the handshake bytes
///   sent in one direction (bit 1: responder to initiator) and `data[6..]` sent after
///   msg3. Untouched, both finish with matching keys and the peer ids of each other, and
///   the responder leaves exactly the trailer; touched, they never both finish.
pub fn handshake_msg(data: &[u8]) {
    let Some((initiator, responder)) = identities() else {
        panic!("fixed identities are valid X25519 keys");
    };
    let mut input = Input::new(data);
    let mode = input.u8().unwrap_or(0);
    if mode & 1 == 0 {
        let (role, id) = if mode & 2 == 0 {
            (Role::Responder, responder)
        } else {
            (Role::Initiator, initiator)
        };
        let chunk = usize::from(input.u8().unwrap_or(0)) + 1;
        stranger(role, id, chunk, input.rest());
    } else {
        let c2s_chunk = usize::from(input.u8().unwrap_or(0)) + 1;
        let s2c_chunk = usize::from(input.u8().unwrap_or(0)) + 1;
        let mutation = Mutation {
            towards_initiator: mode & 2 != 0,
            at: usize::from(input.u16().unwrap_or(0)),
            mask: input.u8().unwrap_or(0),
        };
        let trailer = input.take(MAX_TRAILER);
        conversation(
            initiator, responder, c2s_chunk, s2c_chunk, &mutation, trailer,
        );
    }
}

/// Checks that `bytes` (from `take_outgoing`) are whole length-prefixed messages within
/// the limit, and returns their lengths.
pub(super) fn framed_lengths(mut bytes: &[u8]) -> Vec<usize> {
    let mut lens = Vec::new();
    while !bytes.is_empty() {
        let Some((prefix, rest)) = bytes.split_first_chunk::<LEN_PREFIX>() else {
            panic!("outgoing handshake bytes end inside a length prefix");
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        assert!(len <= MAX_HANDSHAKE_MSG, "outgoing message of {len} bytes");
        let Some((_, rest)) = rest.split_at_checked(len) else {
            panic!("outgoing handshake message shorter than its prefix");
        };
        lens.push(len);
        bytes = rest;
    }
    lens
}

fn assert_dead(hs: Handshake) {
    let mut hs = hs;
    assert!(!hs.is_finished());
    assert!(matches!(hs.feed(b"more"), Err(HandshakeError::Failed)));
    assert!(matches!(hs.into_keys(), Err(HandshakeError::Failed)));
}

fn stranger(role: Role, id: &Identity, chunk: usize, stream: &[u8]) {
    let Ok(mut hs) = Handshake::new(role, id) else {
        panic!("a handshake starts with a valid identity");
    };
    if role == Role::Initiator {
        let msg1 = hs.take_outgoing().unwrap_or_default();
        assert_eq!(framed_lengths(&msg1), [MSG1_LEN]);
    }
    // The first message's prefix, as the peer announced it.
    let first_len = stream
        .first_chunk::<LEN_PREFIX>()
        .map(|p| usize::from(u16::from_be_bytes(*p)));
    let first_complete = first_len.is_some_and(|l| stream.len() >= LEN_PREFIX + l);
    let mut replies = Vec::new();
    let mut fed = 0;
    let mut failure = None;
    for piece in stream.chunks(chunk) {
        match hs.feed(piece) {
            Ok(n) => {
                // Only a finished handshake leaves bytes, and a stranger cannot finish one.
                assert_eq!(n, piece.len(), "an unfinished handshake left input");
                fed += n;
            }
            Err(e) => failure = Some(e),
        }
        assert!(hs.buffered_in() <= LEN_PREFIX + MAX_HANDSHAKE_MSG);
        // A reply written before a later message in the same piece failed counts too.
        if let Some(out) = hs.take_outgoing() {
            replies.extend(framed_lengths(&out));
        }
        if failure.is_some() {
            break;
        }
    }
    assert!(
        !hs.is_finished(),
        "bytes from a stranger finished a handshake"
    );
    match failure {
        Some(e) => {
            if let HandshakeError::TooLarge(n) = e {
                assert!(n > MAX_HANDSHAKE_MSG, "TooLarge({n}) is within the limit");
            }
            if first_len.is_some_and(|l| l > MAX_HANDSHAKE_MSG) {
                assert!(
                    matches!(e, HandshakeError::TooLarge(n) if Some(n) == first_len),
                    "oversize first prefix failed as {e}"
                );
            }
            assert_dead(hs);
        }
        None => {
            assert_eq!(fed, stream.len());
            assert!(matches!(hs.into_keys(), Err(HandshakeError::NotFinished)));
        }
    }
    if role == Role::Responder && first_complete {
        // msg1 is `e` plus a plaintext payload: any 32..=1024 bytes are a valid one.
        if first_len.is_some_and(|l| (MSG1_LEN..=MAX_HANDSHAKE_MSG).contains(&l)) {
            assert_eq!(replies, [MSG2_LEN], "no msg2 after a well-formed msg1");
        } else {
            assert!(replies.is_empty());
        }
    }
}

/// One byte of one direction's handshake bytes to flip.
struct Mutation {
    towards_initiator: bool,
    at: usize,
    mask: u8,
}

/// Handshake bytes of one direction on their way: counted as produced, flipped once at
/// the mutation's offset, handed over in chunks.
struct Pipe {
    queue: Vec<u8>,
    produced: usize,
    mutate: Option<(usize, u8)>,
    mutated: bool,
}

impl Pipe {
    fn new(mutate: Option<(usize, u8)>) -> Self {
        Pipe {
            queue: Vec::new(),
            produced: 0,
            mutate,
            mutated: false,
        }
    }

    fn push_handshake(&mut self, bytes: &[u8]) {
        let start = self.queue.len();
        self.queue.extend_from_slice(bytes);
        if let Some((at, mask)) = self.mutate
            && mask != 0
            && (self.produced..self.produced + bytes.len()).contains(&at)
            && let Some(b) = self.queue.get_mut(start + at - self.produced)
        {
            *b ^= mask;
            self.mutated = true;
        }
        self.produced += bytes.len();
    }

    fn pop(&mut self, chunk: usize) -> Vec<u8> {
        let n = chunk.min(self.queue.len());
        self.queue.drain(..n).collect()
    }
}

fn conversation(
    ci: &Identity,
    si: &Identity,
    c2s_chunk: usize,
    s2c_chunk: usize,
    mutation: &Mutation,
    trailer: &[u8],
) {
    let (Ok(mut c), Ok(mut s)) = (
        Handshake::new(Role::Initiator, ci),
        Handshake::new(Role::Responder, si),
    ) else {
        panic!("a handshake starts with a valid identity");
    };
    let flip = Some((mutation.at, mutation.mask));
    let mut c2s = Pipe::new(if mutation.towards_initiator {
        None
    } else {
        flip
    });
    let mut s2c = Pipe::new(if mutation.towards_initiator {
        flip
    } else {
        None
    });
    let mut trailer_sent = false;
    let mut left = Vec::new();
    let (mut c_failed, mut s_failed) = (false, false);
    for _ in 0..MAX_ROUNDS {
        if let Some(out) = c.take_outgoing() {
            framed_lengths(&out);
            c2s.push_handshake(&out);
        }
        if c.is_finished() && !trailer_sent {
            c2s.queue.extend_from_slice(trailer);
            trailer_sent = true;
        }
        let piece = c2s.pop(c2s_chunk);
        if !s_failed && !piece.is_empty() {
            match s.feed(&piece) {
                Ok(n) => {
                    assert!(n == piece.len() || s.is_finished());
                    left.extend_from_slice(piece.get(n..).unwrap_or_default());
                }
                Err(_) => s_failed = true,
            }
            assert!(s.buffered_in() <= LEN_PREFIX + MAX_HANDSHAKE_MSG);
        }
        if let Some(out) = s.take_outgoing() {
            framed_lengths(&out);
            s2c.push_handshake(&out);
        }
        let back = s2c.pop(s2c_chunk);
        if !c_failed && !back.is_empty() {
            match c.feed(&back) {
                // The responder sends nothing after msg2, so the initiator takes it all.
                Ok(n) => assert_eq!(n, back.len()),
                Err(_) => c_failed = true,
            }
        }
        if c2s.queue.is_empty() && s2c.queue.is_empty() && piece.is_empty() && back.is_empty() {
            break;
        }
    }
    let mutated = c2s.mutated || s2c.mutated;
    if mutated {
        assert!(
            !(c.is_finished() && s.is_finished()),
            "a flipped handshake byte went unnoticed"
        );
        for (failed, hs) in [(c_failed, c), (s_failed, s)] {
            if failed {
                assert_dead(hs);
            }
        }
        return;
    }
    assert!(!c_failed && !s_failed, "an honest handshake failed");
    assert!(
        c.is_finished() && s.is_finished(),
        "an honest handshake stalled"
    );
    assert_eq!(left, trailer, "the responder consumed bytes after msg3");
    let (Ok(ck), Ok(sk)) = (c.into_keys(), s.into_keys()) else {
        panic!("finished handshakes give keys");
    };
    assert_eq!(*ck.send, *sk.recv);
    assert_eq!(*ck.recv, *sk.send);
    assert_ne!(*ck.send, *ck.recv);
    assert_eq!(ck.remote_peer, si.peer_id());
    assert_eq!(sk.remote_peer, ci.peer_id());
}
