use std::time::Duration;

use engine::{Engine, EngineConfig};
use shards::shard::Delivery;
use shards::wire::{ErrorCode, Message, PeerId, Record, close_code};

use crate::common::*;

fn echo_ok(c: &mut shards::client::Client, seq: u64) {
    let node = c.node_id();
    c.send_with_seq(node, seq, b"ping".to_vec()).unwrap();
    c.flush().unwrap();
    let got = recv_n(c, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "echo {seq} answered");
    assert_eq!(msg(&got[0]).1, seq);
}

fn wait_closed(c: &mut shards::client::Client) -> shards::session::CloseInfo {
    for _ in 0..200 {
        if let Some(info) = c.close_info()
            && (c.is_closed() || info.by_peer)
        {
            return info;
        }
        let _ = c.poll(Duration::from_millis(25));
    }
    panic!("connection was not closed by the node");
}

fn record(dst: PeerId, seq: u64) -> Record {
    Record::Message(Message {
        dst,
        src: PeerId([0; 16]),
        seq,
        payload: b"x".to_vec(),
    })
}

/// A sealed frame with one flipped bit closes that connection with SEAL_FAILED; another
/// connection on the same engine is not disturbed.
#[test]
fn tampered_frame_is_rejected() {
    let e = engine(2);
    let mut bystander = client(&e);
    let mut c = client(&e);
    echo_ok(&mut c, 1);
    let node = c.node_id();
    let mut frame = c.session_mut().seal_detached(&[record(node, 2)]).unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    c.session_mut().send_raw(&frame).unwrap();
    let info = wait_closed(&mut c);
    assert!(info.by_peer && info.is_app, "{info:?}");
    assert_eq!(info.code, close_code::SEAL_FAILED);
    assert_eq!(e.stats().seal_failures, 1);
    echo_ok(&mut bystander, 7);
}

/// Replaying a frame (same counter) and reordering frames both fail authentication.
#[test]
fn replayed_and_reordered_frames_are_rejected() {
    let e = engine(1);
    // Replay.
    let mut c = client(&e);
    let node = c.node_id();
    let f = c.session_mut().seal_detached(&[record(node, 1)]).unwrap();
    c.session_mut().send_raw(&f).unwrap();
    let got = recv_n(&mut c, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the original frame is accepted");
    c.session_mut().send_raw(&f).unwrap();
    let info = wait_closed(&mut c);
    assert_eq!((info.by_peer, info.code), (true, close_code::SEAL_FAILED));
    // Reorder: frame 1 before frame 0.
    let mut c = client(&e);
    let f0 = c.session_mut().seal_detached(&[record(node, 1)]).unwrap();
    let f1 = c.session_mut().seal_detached(&[record(node, 2)]).unwrap();
    c.session_mut().send_raw(&f1).unwrap();
    c.session_mut().send_raw(&f0).unwrap();
    let info = wait_closed(&mut c);
    assert_eq!((info.by_peer, info.code), (true, close_code::SEAL_FAILED));
    assert_eq!(e.stats().seal_failures, 2);
}

/// A frame length over the protocol maximum closes with FRAME_TOO_LARGE.
#[test]
fn oversize_frame_length_is_rejected() {
    let e = engine(1);
    let mut c = client(&e);
    c.session_mut().send_raw(&u32::MAX.to_be_bytes()).unwrap();
    let info = wait_closed(&mut c);
    assert_eq!(
        (info.by_peer, info.code),
        (true, close_code::FRAME_TOO_LARGE)
    );
}

/// Unknown destination and oversized message each come back as the documented error
/// record, referring to the message's seq and destination; both are counted.
#[test]
fn unknown_destination_and_oversized_message_errors() {
    let mut cfg = EngineConfig::loopback(2);
    cfg.max_message_size = 1024;
    let e = Engine::start(cfg).unwrap();
    let mut c = client(&e);
    let nobody = PeerId([0xab; 16]);
    c.send_with_seq(nobody, 41, b"hello?".to_vec()).unwrap();
    c.send_with_seq(c.node_id(), 42, vec![7u8; 1025]).unwrap();
    c.send_with_seq(c.node_id(), 43, vec![7u8; 1024]).unwrap();
    c.flush().unwrap();
    let got = recv_n(&mut c, 3, Duration::from_secs(5));
    assert_eq!(got.len(), 3);
    let mut errors: Vec<_> = got
        .iter()
        .filter_map(|d| match d {
            Delivery::Error(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    errors.sort_by_key(|e| e.seq);
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].code, ErrorCode::UnknownDestination);
    assert_eq!((errors[0].seq, errors[0].dst), (41, nobody));
    assert_eq!(errors[1].code, ErrorCode::MessageTooLarge);
    assert_eq!((errors[1].seq, errors[1].dst), (42, c.node_id()));
    assert!(
        got.iter()
            .any(|d| matches!(d, Delivery::Message { seq: 43, .. }))
    );
    let s = e.stats();
    assert_eq!(s.dropped_unknown_destination, 1);
    assert_eq!(s.dropped_too_large, 1);
    assert_eq!(s.errors_out, 2);
}

/// A frame cut short by the end of the stream (truncation) fails authentication.
#[test]
fn truncated_frame_is_rejected() {
    let e = engine(1);
    let mut c = client(&e);
    let node = c.node_id();
    let frame = c.session_mut().seal_detached(&[record(node, 1)]).unwrap();
    c.session_mut().send_raw(&frame[..frame.len() / 2]).unwrap();
    c.session_mut().finish();
    let info = wait_closed(&mut c);
    assert_eq!((info.by_peer, info.code), (true, close_code::SEAL_FAILED));
}
