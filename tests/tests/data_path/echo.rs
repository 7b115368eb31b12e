use std::time::{Duration, Instant};

use crate::common::*;

/// Many messages through a 2-shard engine's echo handler; every reply intact and in order.
#[test]
fn echo_many_messages_two_shards() {
    let e = engine(2);
    let mut clients: Vec<_> = (0..4).map(|_| client(&e)).collect();
    const N: u64 = 2_000;
    for c in &mut clients {
        let node = c.node_id();
        for i in 0..N {
            let payload = format!("msg-{i}-{}", c.peer_id()).into_bytes();
            c.send_with_seq(node, i, payload).unwrap();
        }
        c.flush().unwrap();
    }
    for c in &mut clients {
        let got = recv_n(c, N as usize, Duration::from_secs(20));
        assert_eq!(got.len(), N as usize, "all echoes arrive");
        for (i, d) in got.iter().enumerate() {
            let (from, seq, payload) = msg(d);
            assert_eq!(from, e.peer_id());
            assert_eq!(seq, i as u64, "order preserved");
            assert_eq!(payload, format!("msg-{i}-{}", c.peer_id()).as_bytes());
        }
    }
    let s = e.stats();
    assert_eq!(s.delivered_local, 4 * N);
    assert_eq!(s.dropped(), 0);
}

/// The sink application counts messages addressed to the node and sends nothing back.
#[test]
fn sink_counts_and_replies_nothing() {
    let mut cfg = engine::EngineConfig::loopback(2);
    cfg.app = engine::AppKind::Sink;
    let e = engine::Engine::start(cfg).unwrap();
    let mut c = client(&e);
    let node = c.node_id();
    for i in 0..100u64 {
        c.send_with_seq(node, i, vec![1; 10]).unwrap();
    }
    c.flush().unwrap();
    assert!(wait_for(Duration::from_secs(5), || {
        c.poll(Duration::from_millis(1)).unwrap();
        e.stats().delivered_local == 100
    }));
    assert!(c.recv(Duration::from_millis(200)).unwrap().is_none());
    assert_eq!(e.stats().messages_out, 0);
}

/// A shard that busy-polls its socket still runs its timers when they fall due. Each
/// message here is alone in its batch (size 1024), so its echo leaves only when the 1 ms
/// batch timer flushes it, and nothing else arrives meanwhile to end a turn. A shard that
/// kept polling until its 10 ms window ran out would answer each message after 10 ms or
/// more; one that stops for due timers answers after about 1 ms.
#[test]
fn busy_polling_shard_stops_polling_for_a_due_timer() {
    let mut cfg = engine::EngineConfig::loopback(1);
    cfg.busy_poll = Duration::from_millis(10);
    cfg.batch.max_messages = 1024;
    cfg.batch.timeout = Duration::from_millis(1);
    let e = engine::Engine::start(cfg).unwrap();
    let mut c = client(&e);
    let node = c.node_id();
    const N: u64 = 40;
    let mut delays = Vec::new();
    for i in 0..N {
        c.send_with_seq(node, i, vec![7; 32]).unwrap();
        c.flush().unwrap();
        let sent = Instant::now();
        let got = recv_n(&mut c, 1, Duration::from_secs(2));
        let (_, seq, _) = msg(got.first().expect("the echo arrives"));
        assert_eq!(seq, i);
        delays.push(sent.elapsed());
        // Quiet long enough for the shard's poll window to end.
        let quiet = Instant::now() + Duration::from_millis(15);
        while Instant::now() < quiet {
            c.poll(Duration::from_millis(1)).unwrap();
        }
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    assert!(
        median < Duration::from_millis(6),
        "median echo delay {median:?}: the shard polled past its due batch timer"
    );
    assert_eq!(e.stats().dropped(), 0);
}

/// A client with nothing queued holds back the acknowledgement of a lone reply, and its
/// next message carries it: one message every 300 us, each echoed in a packet of its own,
/// costs the client 1.0-1.1 packets a message, where acknowledging every reply at once
/// cost 1.4 (some replies arrive just as a message is sealed and ride with it anyway).
#[test]
fn client_acknowledgements_ride_with_its_next_message() {
    let mut cfg = engine::EngineConfig::loopback(1);
    cfg.batch.timeout = Duration::ZERO;
    let e = engine::Engine::start(cfg).unwrap();
    let mut ccfg = shards::client::ClientConfig::default();
    ccfg.batch.timeout = Duration::ZERO;
    let mut c = client_with(&e, ccfg);
    let node = c.node_id();
    let before = c.session_mut().quic().stats().sent;
    const N: u64 = 400;
    let body = [5u8; 32];
    let mut got = 0u64;
    for i in 0..N {
        assert!(c.try_send_slice(node, i, &body, Instant::now()).unwrap());
        let next = Instant::now() + Duration::from_micros(300);
        loop {
            c.poll_ready(true).unwrap();
            while c.try_recv().is_some() {
                got += 1;
            }
            if Instant::now() >= next {
                break;
            }
            std::hint::spin_loop();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < N && Instant::now() < deadline {
        c.poll(Duration::from_millis(5)).unwrap();
        while c.try_recv().is_some() {
            got += 1;
        }
    }
    assert_eq!(got, N, "every echo arrives");
    let sent = c.session_mut().quic().stats().sent - before;
    eprintln!("{sent} client packets for {N} messages");
    assert!(
        (sent as f64) < 1.25 * N as f64,
        "{sent} client packets for {N} messages: replies were acknowledged on their own"
    );
}
