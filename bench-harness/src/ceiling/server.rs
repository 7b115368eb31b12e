//! The in-process echo server: per-datagram or batched I/O on the engine's socket setup.

use super::*;

pub(super) fn pin_to(pin: bool, core: Option<core_affinity::CoreId>) {
    if let (true, Some(c)) = (pin, core) {
        core_affinity::set_for_current(c);
    }
}

/// Waits up to `wait` for `events` on `fd`; whether any arrived.
pub(super) fn wait_for(fd: RawFd, events: libc::c_short, wait: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    n > 0 && pfd.revents & events != 0
}

/// The receive and send batches for `io` on `fd` (`slot`: the largest datagram without
/// GRO). With [`IoMode::Offload`], GRO is turned on for `fd` and GSO used where the kernel
/// has them; otherwise one datagram per slot and per message.
pub(super) fn batches(fd: RawFd, io: IoMode, slot: usize) -> (RecvBatch, SendBatch) {
    if io == IoMode::Offload {
        let rx = if enable_gro(fd) {
            RecvBatch::with_gro(BURST)
        } else {
            RecvBatch::new(BURST, slot)
        };
        (rx, SendBatch::new(gso_supported(fd)))
    } else {
        (RecvBatch::new(BURST, slot), SendBatch::default())
    }
}

/// The echo server's loop, until `stop`.
pub(super) fn serve(sock: &UdpSocket, io: IoMode, stop: &AtomicBool, slot: usize) -> ServerStats {
    let fd = sock.as_raw_fd();
    let mut st = ServerStats::default();
    let mut buf = vec![0u8; slot];
    let (mut rx, mut tx) = batches(fd, io, slot);
    while !stop.load(Ordering::Acquire) {
        if !wait_for(fd, libc::POLLIN, SERVER_POLL) {
            continue;
        }
        st.wakeups += 1;
        match io {
            IoMode::PerDatagram => echo_each(sock, &mut buf, &mut st),
            IoMode::Batched | IoMode::Offload => echo_batched(fd, &mut rx, &mut tx, &mut st),
        }
    }
    st
}

/// `recvfrom`/`sendto` per datagram until the socket is empty.
fn echo_each(sock: &UdpSocket, buf: &mut [u8], st: &mut ServerStats) {
    loop {
        st.receive_calls += 1;
        let (n, from) = match sock.recv_from(buf) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        st.received += 1;
        let data = buf.get(..n).unwrap_or(&[]);
        let mut waited = false;
        loop {
            st.send_calls += 1;
            match sock.send_to(data, from) {
                Ok(_) => st.sent += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    if wait_for(sock.as_raw_fd(), libc::POLLOUT, SEND_WAIT) {
                        continue;
                    }
                    st.send_dropped += 1;
                }
                Err(_) => st.send_dropped += 1,
            }
            break;
        }
    }
}

/// `recvmmsg` bursts, each echoed with `sendmmsg`, until a burst finds the socket empty.
fn echo_batched(fd: RawFd, rx: &mut RecvBatch, tx: &mut SendBatch, st: &mut ServerStats) {
    loop {
        st.receive_calls += 1;
        let slots = match rx.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        // Datagrams: with GRO a slot holds a run of them.
        let n = rx.datagrams();
        st.received += n as u64;
        let mut done = 0;
        let mut waited = false;
        while done < n {
            st.send_calls += 1;
            let burst = rx
                .iter_mut()
                .skip(done)
                .map_while(|(from, data, _)| from.map(|f| (f, &*data)));
            match tx.send(fd, burst) {
                Ok(0) => {
                    // A datagram without a source address: nowhere to echo it.
                    st.send_dropped += 1;
                    done += 1;
                }
                Ok(k) => {
                    st.sent += k as u64;
                    done += k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    if !wait_for(fd, libc::POLLOUT, SEND_WAIT) {
                        st.send_dropped += (n - done) as u64;
                        done = n;
                    }
                }
                Err(_) => {
                    st.send_dropped += (n - done) as u64;
                    done = n;
                }
            }
        }
        // Fewer than a full burst: the socket was empty when it was read.
        if slots < BURST {
            return;
        }
    }
}
