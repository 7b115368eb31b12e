//! Drain: queues flush at once, new work is refused, the deadline closes and counts the rest.

use super::*;

#[test]
fn drain_flushes_queues_at_once_and_counts_what_is_left_at_the_deadline() {
    let (mut net, server, client) = echo_server_and(NodeSpec {
        batch: BatchPolicy {
            timeout: Duration::from_secs(60),
            max_messages: 1000,
            ..BatchPolicy::default()
        },
        ..NodeSpec::default()
    });
    let id = net.dial(client, server).expect("dial");
    for seq in 0..5 {
        net.send(client, id, seq, b"queued");
    }
    net.pump();
    // The batch timeout holds them.
    assert_eq!(get(&net.stats(server).messages_in), 0);
    let now = net.now;
    let deadline = now + Duration::from_secs(5);
    net.ep(client)
        .handle_command(now, Command::Shutdown { deadline });
    net.pump();
    // Drain flushed the queue regardless of its timeout, and finished the session.
    assert_eq!(get(&net.stats(server).messages_in), 5);
    assert!(net.ep(client).conns.iter_mut().all(|(_, c)| c.finished));
    // New work is refused while draining.
    let (tx, rx) = flume::bounded(1);
    let addr = net.addr(server);
    net.ep(client)
        .handle_command(now, Command::Dial { addr, reply: tx });
    assert!(rx.try_recv().is_ok_and(|r| r.is_err()));
    // At the deadline whatever is left is closed and counted.
    net.now = deadline;
    net.ep(client).close_all(deadline);
    assert_eq!(net.ep(client).connections(), 0);
    assert_eq!(get(&net.stats(client).closed), 1);
}
