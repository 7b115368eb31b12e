//! `bench-harness control-server` (tokio + quinn speaking qme/1) driven by the engine's own
//! client and by `bench-harness run`, as a throughput comparison drives it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shards::client::{Client, ClientConfig};
use shards::identity::Identity;
use shards::shard::Delivery;
use shards::wire::{ErrorCode, Message, PeerId, Record, close_code};

use crate::common::{harness_bin, msg, recv_n};

/// A control server child process; killed on drop if a test did not stop it.
struct Control {
    child: Child,
    addr: SocketAddr,
    node: PeerId,
}

impl Control {
    /// Starts `control-server` on a free loopback port with `args` and reads its banner.
    /// Unpinned: tests share the cores.
    fn start(args: &[&str]) -> Control {
        let child = Command::new(harness_bin())
            .args(["control-server", "--listen", "127.0.0.1:0", "--no-pin"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Owned from here on, so a failed check below still kills the child.
        let mut c = Control {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            node: PeerId([0; 16]),
        };
        let mut line = String::new();
        // Ends at the first newline or when the process exits (EOF).
        BufReader::new(c.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "listening on 127.0.0.1:PORT with 1 thread(s); peer id HEX", like `engine serve`.
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            line.starts_with("listening on ") && words.len() == 9,
            "banner: {line:?}"
        );
        assert_eq!(words[4..6], ["1", "thread(s);"], "{line}");
        c.addr = words[2].parse().unwrap();
        c.node = words[8].parse().unwrap();
        c
    }

    /// SIGTERM, then the exit status and stderr (bounded wait).
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "control server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(c: &Control) -> Client {
    let cfg = ClientConfig {
        batch: shards::batch::BatchPolicy {
            timeout: Duration::ZERO,
            ..Default::default()
        },
        ..ClientConfig::default()
    };
    Client::connect(c.addr, &Identity::generate().unwrap(), cfg).unwrap()
}

/// Polls `c` until the server's close arrives (bounded), and returns it.
fn closed_by_server(c: &mut Client) -> shards::session::CloseInfo {
    for _ in 0..400 {
        let _ = c.poll(Duration::from_millis(25));
        if let Some(i) = c.close_info().filter(|i| i.by_peer) {
            return i;
        }
    }
    panic!("the server did not close the connection");
}

/// One echo round trip: after it the server has the client's session open, so its peer id
/// is registered for relays.
fn echo_once(c: &mut Client, seq: u64) {
    let node = c.node_id();
    c.send_with_seq(node, seq, b"ping".to_vec()).unwrap();
    c.flush().unwrap();
    let got = recv_n(c, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "echo {seq} answered");
    assert_eq!(msg(&got[0]).1, seq);
}

/// Echo: every reply comes back intact, in order, from the node's peer id (the one the
/// banner printed); SIGTERM then drains and exits 0 with the counts.
#[test]
fn control_echoes_in_order_and_drains_on_sigterm() {
    let control = Control::start(&["--batch-timeout", "0"]);
    let mut c = connect(&control);
    assert_eq!(c.node_id(), control.node);
    const N: u64 = 500;
    for i in 0..N {
        let payload = format!("echo-{i}").into_bytes();
        c.send_with_seq(control.node, i, payload).unwrap();
    }
    c.flush().unwrap();
    let got = recv_n(&mut c, N as usize, Duration::from_secs(20));
    assert_eq!(got.len(), N as usize, "all echoes arrive");
    for (i, d) in got.iter().enumerate() {
        let (from, seq, payload) = msg(d);
        assert_eq!(from, control.node);
        assert_eq!(seq, i as u64, "order preserved");
        assert_eq!(payload, format!("echo-{i}").as_bytes());
    }
    // The graceful close: the server answers the client's FIN with its own.
    assert!(c.close(Duration::from_secs(5)).unwrap().is_empty());
    let (status, err) = control.stop();
    assert!(status.success(), "{status:?} {err}");
    assert!(err.contains("draining"), "{err}");
    assert!(
        err.contains("stopped: 500 messages in, 500 delivered locally, 0 relayed, 0 dropped"),
        "{err}"
    );
}

/// Relay from one client to another (src rewritten to the sender's authenticated id), and
/// an ERROR UnknownDestination for a peer id nobody holds.
#[test]
fn control_relays_between_clients_and_refuses_unknown_destinations() {
    let control = Control::start(&["--batch-timeout", "1ms"]);
    let mut a = connect(&control);
    let mut b = connect(&control);
    echo_once(&mut a, 1_000);
    echo_once(&mut b, 1_000);
    for i in 0..20u64 {
        a.send_with_seq(b.peer_id(), i, vec![i as u8; 100]).unwrap();
    }
    a.flush().unwrap();
    let got = recv_n(&mut b, 20, Duration::from_secs(10));
    assert_eq!(got.len(), 20, "all relayed messages arrive");
    for (i, d) in got.iter().enumerate() {
        let (from, seq, payload) = msg(d);
        assert_eq!((from, seq), (a.peer_id(), i as u64));
        assert_eq!(payload, &vec![i as u8; 100][..]);
    }

    let nobody = PeerId([0x5a; 16]);
    a.send_with_seq(nobody, 77, b"lost".to_vec()).unwrap();
    a.flush().unwrap();
    let got = recv_n(&mut a, 1, Duration::from_secs(5));
    match got.as_slice() {
        [Delivery::Error(e)] => {
            assert_eq!(e.code, ErrorCode::UnknownDestination);
            assert_eq!((e.seq, e.dst), (77, nobody));
            assert_eq!(e.reason, format!("no connected peer {nobody}"));
        }
        other => panic!("expected one ERROR record, got {other:?}"),
    }
    // Too large for the 64 KiB limit: ERROR MessageTooLarge, even to the node itself.
    a.send_with_seq(control.node, 78, vec![0; 64 * 1024 + 1])
        .unwrap();
    a.flush().unwrap();
    let got = recv_n(&mut a, 1, Duration::from_secs(5));
    match got.as_slice() {
        [Delivery::Error(e)] => assert_eq!((e.code, e.seq), (ErrorCode::MessageTooLarge, 78)),
        other => panic!("expected one ERROR record, got {other:?}"),
    }
}

/// A frame that fails authentication closes the connection with SEAL_FAILED, as the engine
/// does; the server keeps serving others.
#[test]
fn control_closes_a_tampered_frame_with_seal_failed() {
    let control = Control::start(&[]);
    let mut bystander = connect(&control);
    let mut c = connect(&control);
    echo_once(&mut c, 1);
    let record = Record::Message(Message {
        dst: control.node,
        src: PeerId([0; 16]),
        seq: 2,
        payload: b"x".to_vec(),
    });
    let mut frame = c.session_mut().seal_detached(&[record]).unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 1;
    c.session_mut().send_raw(&frame).unwrap();
    let info = closed_by_server(&mut c);
    assert!(info.is_app, "{info:?}");
    assert_eq!(info.code, close_code::SEAL_FAILED, "{info:?}");
    assert!(info.reason.starts_with("seal: "), "{info:?}");
    echo_once(&mut bystander, 3);
}

/// The engine's frame bounds: a header announcing more than 16 MiB closes with
/// FRAME_TOO_LARGE at once; a frame that stops arriving half way closes with
/// PROTOCOL_VIOLATION after `--frame-timeout`.
#[test]
fn control_enforces_the_frame_limit_and_the_frame_deadline() {
    let control = Control::start(&["--frame-timeout", "300ms"]);
    let mut c = connect(&control);
    echo_once(&mut c, 1);
    c.session_mut().send_raw(&u32::MAX.to_be_bytes()).unwrap();
    let info = closed_by_server(&mut c);
    assert_eq!(info.code, close_code::FRAME_TOO_LARGE, "{info:?}");

    let mut c = connect(&control);
    echo_once(&mut c, 2);
    let record = Record::Message(Message {
        dst: control.node,
        src: c.peer_id(),
        seq: 3,
        payload: vec![7; 1000],
    });
    let frame = c.session_mut().seal_detached(&[record]).unwrap();
    c.session_mut().send_raw(&frame[..frame.len() / 2]).unwrap();
    let info = closed_by_server(&mut c);
    assert!(info.is_app, "{info:?}");
    assert_eq!(
        (info.code, info.reason.as_str()),
        (
            close_code::PROTOCOL_VIOLATION,
            "frame incomplete after 300 ms"
        )
    );
    let (status, err) = control.stop();
    assert!(status.success(), "{status:?} {err}");
}

/// A peer that completes the QUIC handshake but never starts the Noise one is closed with
/// HANDSHAKE_FAILED after `--handshake-timeout`.
#[test]
fn control_closes_a_handshake_that_never_finishes() {
    let control = Control::start(&["--handshake-timeout", "300ms"]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let mut cfg = shards::session::client_config(&Default::default()).unwrap();
    let scid = quiche::ConnectionId::from_ref(&[9; 16]);
    let mut quic = quiche::connect(None, &scid, me, control.addr, &mut cfg).unwrap();
    let mut buf = [0u8; 65_535];
    for _ in 0..500 {
        while let Ok((n, _)) = quic.send(&mut buf) {
            sock.send_to(&buf[..n], control.addr).unwrap();
        }
        if quic.is_closed() || quic.peer_error().is_some() {
            break;
        }
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = quic.recv(&mut buf[..n], quiche::RecvInfo { from, to: me });
        }
        if quic.timeout().is_some_and(|t| t.is_zero()) {
            quic.on_timeout();
        }
    }
    assert!(quic.is_established(), "the QUIC handshake finished");
    let err = quic.peer_error().expect("the server closed the connection");
    assert!(err.is_app, "{err:?}");
    assert_eq!(err.error_code, close_code::HANDSHAKE_FAILED, "{err:?}");
    assert_eq!(err.reason, b"handshake did not finish within 300 ms");
}

/// One frame of 3000 messages (more than the 1024 records the frame reader hands on per
/// step, and larger than the 128 KiB receive window, so it arrives as it is read) is
/// echoed whole and in order.
#[test]
fn control_echoes_a_frame_of_many_records_in_order() {
    let control = Control::start(&["--batch-timeout", "0"]);
    let cfg = ClientConfig {
        batch: shards::batch::BatchPolicy {
            max_messages: 4096,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(30),
        },
        send_capacity: 1 << 20,
        ..ClientConfig::default()
    };
    let mut c = Client::connect(control.addr, &Identity::generate().unwrap(), cfg).unwrap();
    const N: u64 = 3000;
    for i in 0..N {
        c.send_with_seq(control.node, i, i.to_be_bytes().to_vec())
            .unwrap();
    }
    c.flush().unwrap();
    let got = recv_n(&mut c, N as usize, Duration::from_secs(30));
    assert_eq!(got.len(), N as usize, "all echoes arrive");
    for (i, d) in got.iter().enumerate() {
        let (from, seq, payload) = msg(d);
        assert_eq!((from, seq), (control.node, i as u64));
        assert_eq!(payload, (i as u64).to_be_bytes());
    }
    let (status, err) = control.stop();
    assert!(status.success(), "{status:?} {err}");
    assert!(
        err.contains("stopped: 3000 messages in, 3000 delivered locally"),
        "{err}"
    );
}

/// The batch policy flags work as the engine's: a batch leaves at `--batch-size` records
/// (the timeout is far away), and a lone record leaves when `--batch-timeout` passes.
#[test]
fn control_flushes_batches_on_size_and_on_timeout() {
    let control = Control::start(&["--batch-size", "4", "--batch-timeout", "30s"]);
    let mut c = connect(&control);
    for i in 0..3u64 {
        c.send_with_seq(control.node, i, b"wait".to_vec()).unwrap();
    }
    c.flush().unwrap();
    let early = recv_n(&mut c, 1, Duration::from_millis(300));
    assert!(early.is_empty(), "3 of 4 records flushed: {early:?}");
    c.send_with_seq(control.node, 3, b"fill".to_vec()).unwrap();
    c.flush().unwrap();
    let got = recv_n(&mut c, 4, Duration::from_secs(10));
    let seqs: Vec<u64> = got.iter().map(|d| msg(d).1).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    drop(control);

    let control = Control::start(&["--batch-size", "128", "--batch-timeout", "100ms"]);
    let mut c = connect(&control);
    c.send_with_seq(control.node, 9, b"alone".to_vec()).unwrap();
    c.flush().unwrap();
    let got = recv_n(&mut c, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "a lone record leaves on the timeout");
    assert_eq!(msg(&got[0]).1, 9);
}

/// The harness drives the control unchanged: `run --target` loses nothing.
#[test]
fn harness_run_against_the_control_loses_nothing() {
    let control = Control::start(&["--batch-timeout", "0"]);
    let out = std::env::temp_dir().join(format!("bh-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(harness_bin())
        .args([
            "run",
            "--rate",
            "500",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ])
        .args([
            "--drain",
            "2s",
            "--no-pin",
            "--target",
            &control.addr.to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("lost 0"), "{stdout}");
    let summary = bench_harness::summary::Summary::read_json(&out.join("summary.json")).unwrap();
    assert_eq!((summary.lost, summary.corrupted), (0, 0));
    assert!(summary.sent >= 450, "{summary:?}");
    assert_eq!(summary.received, summary.sent, "{summary:?}");
    std::fs::remove_dir_all(&out).unwrap();
    let (status, err) = control.stop();
    assert!(status.success(), "{status:?} {err}");
}

/// The control takes only settings the engine takes: a queue capacity below the engine's
/// minimum, a payload limit of 0 or a duration too long for a deadline is refused at start
/// with the rule and the flag.
#[test]
fn control_refuses_settings_the_engine_refuses() {
    for (args, expect) in [
        (
            ["--queue-capacity", "100"],
            "queue_capacity (100) must be at least 4096 (--queue-capacity)",
        ),
        (
            ["--max-message-size", "0"],
            "max_message_size (0) must be at least 1 (--max-message-size)",
        ),
        (
            ["--drain-timeout", "18446744073709551615s"],
            "drain_timeout (18446744073709551615s) must be at most 1d (--drain-timeout)",
        ),
    ] {
        let o = Command::new(harness_bin())
            .args(["control-server", "--listen", "127.0.0.1:0", "--no-pin"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("invalid control-server configuration"),
            "{err}"
        );
        assert!(err.contains(expect), "{err}");
    }
}
