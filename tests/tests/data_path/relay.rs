use std::collections::HashMap;
use std::time::{Duration, Instant};

use shards::client::Client;
use shards::shard::Delivery;
use shards::wire::PeerId;

use crate::common::*;

const THREADS: usize = 4;

/// 20 clients exchange 5,000 messages through a 2-shard engine in a ring: most pairs cross
/// shards. None is lost, order holds per sender-destination pair. (With 20 clients, all
/// landing on one shard has a probability of 2^-19.)
#[test]
fn relay_across_shards_ring_of_20_clients() {
    relay_ring(20, 250);
}

/// The same ring at 100 clients and 100,000 messages.
#[test]
#[ignore = "slow tier: relay stress, 100,000 messages (about a minute on two cores)"]
fn relay_across_shards_100_clients_100k_messages() {
    relay_ring(100, 1_000);
}

/// `clients` clients spread over both shards; each sends `per_client` messages to the next
/// one in a ring and receives as many from the previous one.
fn relay_ring(clients: usize, per_client: u64) {
    let e = engine(2);
    let all: Vec<Client> = (0..clients).map(|_| client(&e)).collect();
    let ids: Vec<PeerId> = all.iter().map(|c| c.peer_id()).collect();
    // Both shards hold clients.
    let shards: std::collections::HashSet<usize> = ids
        .iter()
        .filter_map(|p| e.peers().get(p))
        .map(|p| p.shard)
        .collect();
    assert_eq!(shards.len(), 2, "clients landed on both shards");

    // Deal clients to threads; each thread drives its clients round-robin.
    let mut groups: Vec<Vec<(usize, Client)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, c) in all.into_iter().enumerate() {
        groups[i % THREADS].push((i, c));
    }
    let ids = std::sync::Arc::new(ids);
    let handles: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let ids = ids.clone();
            std::thread::spawn(move || drive(group, &ids, per_client))
        })
        .collect();
    let mut received = 0;
    for h in handles {
        match h.join() {
            Ok(n) => received += n,
            Err(_) => panic!("a driver failed; engine stats: {:?}", e.stats()),
        }
    }
    let total = clients as u64 * per_client;
    assert_eq!(received, total);
    let s = e.stats();
    assert_eq!(s.dropped(), 0, "{s:?}");
    assert_eq!(s.relayed, total);
}

/// Sends `per_client` messages from each client to its ring successor and checks what each
/// receives from its predecessor. Returns the number of messages received.
fn drive(mut group: Vec<(usize, Client)>, ids: &[PeerId], per_client: u64) -> u64 {
    let clients = ids.len();
    let mut next_seq: HashMap<usize, u64> = group.iter().map(|(i, _)| (*i, 0)).collect();
    let mut expect: HashMap<usize, u64> = group.iter().map(|(i, _)| (*i, 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut received = 0;
    loop {
        let mut done = true;
        for (i, c) in group.iter_mut() {
            let dst = ids[(*i + 1) % clients];
            let src = ids[(*i + clients - 1) % clients];
            let seq = next_seq.get_mut(i).unwrap();
            let burst = (*seq + 50).min(per_client);
            while *seq < burst {
                let payload = format!("{i}:{}", *seq).into_bytes();
                c.send_with_seq(dst, *seq, payload).unwrap();
                *seq += 1;
            }
            c.flush().unwrap();
            c.poll(Duration::ZERO).unwrap();
            while let Some(d) = c.try_recv() {
                match d {
                    Delivery::Message { from, seq, payload } => {
                        assert_eq!(from, src, "message from the ring predecessor");
                        let exp = expect.get_mut(i).unwrap();
                        assert_eq!(seq, *exp, "client {i}: order per pair");
                        let pred = (*i + clients - 1) % clients;
                        assert_eq!(payload, format!("{pred}:{seq}").as_bytes());
                        *exp += 1;
                        received += 1;
                    }
                    Delivery::Error(err) => panic!("client {i}: error record {err:?}"),
                }
            }
            if *next_seq.get(i).unwrap() < per_client || *expect.get(i).unwrap() < per_client {
                done = false;
            }
        }
        if done {
            for (_, c) in group {
                c.close(Duration::from_secs(2)).unwrap();
            }
            return received;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not finish in time: {received} received"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}
