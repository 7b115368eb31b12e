//! The whole per-message path through two engine sessions in memory, without sockets:
//! `send_batch` of N 64 B messages on the client side (encode, seal, write to the QUIC
//! stream), moving every datagram both ways (QUIC packet protection, ACKs, flow-control
//! updates), then `read_records` on the server side (read the stream, open, decode).
//! The QUIC and Noise handshakes run once in setup. Reported per message.
//! Run: `cargo bench -p shards --bench session`.

/// The allocator of the `engine` binary, so the bench measures what it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shards::cid::new_cid;
use shards::identity::Identity;
use shards::session::{Session, TransportConfig, client_config, server_config};
use shards::tls::TlsFiles;
use shards::wire::{Message, Record};

/// Moves every datagram `from` has to send into `to`. Returns how many it moved.
fn drain(from: &mut Session, to: &mut Session, buf: &mut [u8]) -> usize {
    let mut moved = 0;
    while let Some((n, info)) = from.send(buf) {
        if let Some(datagram) = buf.get_mut(..n) {
            to.recv(datagram, info.from, info.to);
        }
        moved += 1;
    }
    moved
}

/// Moves datagrams from `a` to `b` and back until neither has anything to send. Returns
/// the number of datagrams moved.
fn pump(a: &mut Session, b: &mut Session, buf: &mut [u8]) -> usize {
    let mut moved = 0;
    loop {
        let step = drain(a, b, buf) + drain(b, a, buf);
        if step == 0 {
            return moved;
        }
        moved += step;
    }
}

/// A client and a server session with both handshakes done, and the TLS files the server
/// configuration was loaded from (removed when dropped).
fn open_pair() -> (Session, Session, TlsFiles) {
    let (Ok(tls), Ok(client_id), Ok(server_id)) = (
        TlsFiles::self_signed(),
        Identity::generate(),
        Identity::generate(),
    ) else {
        panic!("TLS files and identities for the benchmark");
    };
    let transport = TransportConfig::default();
    let (Ok(mut scfg), Ok(mut ccfg)) = (
        server_config(&transport, &tls.cert_str(), &tls.key_str()),
        client_config(&transport),
    ) else {
        panic!("quiche configurations for the benchmark");
    };
    let client_addr: SocketAddr = ([127, 0, 0, 1], 40_000).into();
    let server_addr: SocketAddr = ([127, 0, 0, 1], 4_433).into();
    let mut rng = rand::thread_rng();
    let now = Instant::now();
    let (Ok(mut client), Ok(mut server)) = (
        Session::connect(
            &mut ccfg,
            &client_id,
            &new_cid(0, &mut rng),
            client_addr,
            server_addr,
            now,
        ),
        Session::accept(
            &mut scfg,
            &server_id,
            &new_cid(0, &mut rng),
            None,
            server_addr,
            client_addr,
            now,
        ),
    ) else {
        panic!("sessions for the benchmark");
    };
    let mut buf = vec![0u8; 65_535];
    for _ in 0..64 {
        if client.is_open() && server.is_open() {
            break;
        }
        if pump(&mut client, &mut server, &mut buf) == 0 {
            break;
        }
    }
    assert!(
        client.is_open() && server.is_open(),
        "handshake completes in memory"
    );
    assert_eq!(server.peer(), Some(client_id.peer_id()));
    (client, server, tls)
}

fn session_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for n in [1usize, 16, 128] {
        let (mut client, mut server, _tls) = open_pair();
        let (Some(src), Some(dst)) = (server.peer(), client.peer()) else {
            panic!("both sides authenticated");
        };
        let records: Vec<Record> = (0..n)
            .map(|i| {
                Record::Message(Message {
                    dst,
                    src,
                    seq: i as u64,
                    payload: vec![0x5a; 64],
                })
            })
            .collect();
        let mut buf = vec![0u8; 65_535];
        let mut out = Vec::with_capacity(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("send_batch+pump+read_records", n), |b| {
            b.iter(|| {
                let sent = client.send_batch(&records);
                assert!(sent.is_ok(), "the client session stays open");
                pump(&mut client, &mut server, &mut buf);
                out.clear();
                let read = server.read_records(&mut out, usize::MAX);
                assert!(read.is_ok(), "the server session opens every frame");
                // Every message of the batch must arrive in the same iteration, otherwise
                // the loop would measure a backlog instead of the path.
                assert_eq!(out.len(), n, "the whole batch arrives");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, session_path);
criterion_main!(benches);
