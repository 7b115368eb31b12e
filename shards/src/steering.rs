//! One UDP port, one socket per shard, steered by connection ID.
//!
//! All shards listen on the same address through an `SO_REUSEPORT` group. Without help the
//! kernel would spread datagrams by 4-tuple hash, which breaks connection migration and
//! does not know which shard owns a connection. So a classic BPF program is attached to the
//! group (`SO_ATTACH_REUSEPORT_CBPF`); it reads the first byte of the destination
//! connection ID, which this engine sets to the owning shard index ([`crate::cid`]), and
//! returns `byte % n` as the index of the socket in the group:
//!
//! ```text
//! A = payload[0]
//! if A & 0x80 (long header):  A = payload[6]   // flags, version(4), dcid len, dcid[0]
//! else        (short header): A = payload[1]   // flags, dcid[0]
//! return A % n
//! ```
//!
//! Offsets are relative to the UDP payload. An out-of-bounds load makes the program
//! return 0 (shard 0). A client's first Initial carries a random DCID, so new connections
//! spread over the shards; the shard that accepts it issues CIDs naming itself.
//!
//! The group's socket indices follow bind order, so sockets are bound in index order on
//! one thread, and all of them must stay open for the life of the group (closing one makes
//! the kernel move the last socket into its slot).

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// `SO_ATTACH_REUSEPORT_CBPF` from `asm-generic/socket.h` (the `libc` crate only exports
/// it for Android).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Socket buffer size requested for every group socket; bursts of small datagrams overflow
/// the default buffers long before a busy shard gets to read them.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Largest group: the routing byte is a `u8`, so more than 256 shards could never be
/// addressed.
pub const MAX_SHARDS: usize = 256;

/// Why the steered socket group could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SteeringError {
    /// Some socket (of any process) is already bound to the address. Checked explicitly
    /// because `SO_REUSEPORT` would otherwise silently join an existing group of the same
    /// user, splitting its traffic between two engines.
    #[error("another process is bound to {addr} (is another engine running?)")]
    AddressInUse {
        /// The requested address.
        addr: SocketAddr,
    },
    /// Creating, configuring or binding a socket failed.
    #[error("cannot bind UDP socket to {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// The kernel refused the CID steering program.
    #[error(
        "cannot attach the SO_REUSEPORT CID steering program (SO_ATTACH_REUSEPORT_CBPF, needs Linux >= 4.5): {0}"
    )]
    Bpf(io::Error),
    /// More shards than a one-byte routing key can address (max [`MAX_SHARDS`]).
    #[error("{0} shards requested, at most {MAX_SHARDS} can be steered by CID")]
    TooManyShards(usize),
    /// Zero shards requested.
    #[error("at least one shard is required")]
    NoShards,
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The classic BPF steering program for a group of `n` sockets (see the module docs).
/// Public so it can be inspected and unit-tested; `n` must be in `1..=256` (0 is treated
/// as 1 so the program never divides by zero).
pub fn steering_program(n: usize) -> Vec<libc::sock_filter> {
    let n = n.clamp(1, MAX_SHARDS) as u32;
    vec![
        // 0: A = payload[0]
        stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0),
        // 1: if A & 0x80 goto 2 (long) else goto 4 (short)
        jump(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0x80, 0, 2),
        // 2: A = payload[6]
        stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 6),
        // 3: goto 5
        stmt(libc::BPF_JMP | libc::BPF_JA, 1),
        // 4: A = payload[1]
        stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 1),
        // 5: A %= n
        stmt(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n),
        // 6: return A
        stmt(libc::BPF_RET | libc::BPF_A, 0),
    ]
}

/// Runs a classic BPF program of the subset [`steering_program`] emits over a UDP payload
/// the way the kernel does (an out-of-bounds load returns 0), so tests and fuzzing can check
/// its logic without the kernel. `None` for an instruction outside that subset or a jump
/// off the end.
pub(crate) fn interpret(prog: &[libc::sock_filter], pkt: &[u8]) -> Option<u32> {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    // Every jump in the subset goes forward, so the program ends within its length.
    for _ in 0..=prog.len() {
        let ins = prog.get(pc)?;
        let code = u32::from(ins.code);
        pc += 1;
        if code == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS {
            match pkt.get(usize::try_from(ins.k).ok()?) {
                Some(b) => a = u32::from(*b),
                None => return Some(0),
            }
        } else if code == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K {
            pc += usize::from(if a & ins.k != 0 { ins.jt } else { ins.jf });
        } else if code == libc::BPF_JMP | libc::BPF_JA {
            pc += usize::try_from(ins.k).ok()?;
        } else if code == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K {
            a = a.checked_rem(ins.k)?;
        } else if code == libc::BPF_RET | libc::BPF_A {
            return Some(a);
        } else {
            return None;
        }
    }
    None
}

fn attach_program(sock: &Socket, n: usize) -> Result<(), SteeringError> {
    let mut prog = steering_program(n);
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points to `prog`, which outlives the call; the kernel copies the
    // program during setsockopt and the length passed is the size of `fprog`.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast::<libc::c_void>(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(SteeringError::Bpf(io::Error::last_os_error()));
    }
    Ok(())
}

fn bind_err(addr: SocketAddr, e: io::Error) -> SteeringError {
    if e.raw_os_error() == Some(libc::EADDRINUSE) || e.kind() == io::ErrorKind::AddrInUse {
        SteeringError::AddressInUse { addr }
    } else {
        SteeringError::Bind { addr, source: e }
    }
}

fn new_udp(addr: SocketAddr) -> Result<Socket, SteeringError> {
    Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| SteeringError::Bind { addr, source })
}

/// Binds a probe socket *without* `SO_REUSEPORT`: it fails with `EADDRINUSE` if anything
/// is bound to `addr`, and for port 0 it yields a port nobody uses. Returns the bound
/// address (the probe is closed on return).
fn probe(addr: SocketAddr) -> Result<SocketAddr, SteeringError> {
    let sock = new_udp(addr)?;
    sock.bind(&addr.into()).map_err(|e| bind_err(addr, e))?;
    let local = sock
        .local_addr()
        .map_err(|source| SteeringError::Bind { addr, source })?;
    local.as_socket().ok_or_else(|| SteeringError::Bind {
        addr,
        source: io::Error::other("bound address is not an IP address"),
    })
}

/// Creates `n` UDP sockets bound to `addr` in one `SO_REUSEPORT` group, with the CID
/// steering program attached, so that a datagram is delivered to the socket of the shard
/// its connection ID names. Returns the sockets in index order (index `i` = shard `i`)
/// and the bound address.
///
/// Sockets are bound in index order on the calling thread, are non-blocking, and ask for
/// [`SOCKET_BUFFER_BYTES`] of receive/send buffer (best effort: the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`). The program is attached after the last bind; with
/// `n == 1` no program is needed.
///
/// Before building the group, a probe socket without `SO_REUSEPORT` is bound to `addr`, so
/// an address held by anyone else is reported as [`SteeringError::AddressInUse`] instead
/// of silently joining their group. With port 0 the probe also picks the port (a port
/// chosen by the kernel for a reuseport socket could belong to an existing group). A
/// process binding the port between probe and group is not detected (tiny window).
///
/// ```
/// use shards::steering::bind_group;
/// let (socks, addr) = bind_group("127.0.0.1:0".parse()?, 2)?;
/// assert_eq!(socks.len(), 2);
/// assert_ne!(addr.port(), 0);
/// assert_eq!(socks[1].local_addr()?, addr);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn bind_group(
    addr: SocketAddr,
    n: usize,
) -> Result<(Vec<UdpSocket>, SocketAddr), SteeringError> {
    if n == 0 {
        return Err(SteeringError::NoShards);
    }
    if n > MAX_SHARDS {
        return Err(SteeringError::TooManyShards(n));
    }
    let bound = probe(addr)?;
    let mut socks: Vec<Socket> = Vec::with_capacity(n);
    for i in 0..n {
        let sock = new_udp(bound)?;
        sock.set_reuse_port(true)
            .map_err(|source| SteeringError::Bind { addr, source })?;
        sock.set_nonblocking(true)
            .map_err(|source| SteeringError::Bind { addr, source })?;
        if let Err(e) = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
            tracing::debug!(shard = i, error = %e, "could not raise SO_RCVBUF");
        }
        if let Err(e) = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
            tracing::debug!(shard = i, error = %e, "could not raise SO_SNDBUF");
        }
        sock.bind(&bound.into()).map_err(|e| bind_err(addr, e))?;
        socks.push(sock);
    }
    if n > 1
        && let Some(last) = socks.last()
    {
        attach_program(last, n)?;
    }
    let socks: Vec<UdpSocket> = socks.into_iter().map(UdpSocket::from).collect();
    tracing::debug!(%bound, shards = n, "bound steered SO_REUSEPORT group");
    Ok((socks, bound))
}

/// The receive and send buffer sizes the kernel gave `sock` (`SO_RCVBUF`, `SO_SNDBUF`; Linux
/// reports twice what was asked, its bookkeeping overhead included), so a measurement can
/// say what socket setup it ran on.
///
/// ```
/// let (socks, _) = shards::steering::bind_group("127.0.0.1:0".parse()?, 1)?;
/// let (rcv, snd) = shards::steering::buffer_sizes(&socks[0])?;
/// assert!(rcv > 0 && snd > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn buffer_sizes(sock: &UdpSocket) -> io::Result<(usize, usize)> {
    let s = socket2::SockRef::from(sock);
    Ok((s.recv_buffer_size()?, s.send_buffer_size()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::dcid_routing_byte;
    use std::time::{Duration, Instant};

    fn interpret(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        super::interpret(prog, pkt).unwrap()
    }

    #[test]
    fn program_matches_routing_rule() {
        for n in [1usize, 2, 3, 4, 7, 255, 256] {
            let prog = steering_program(n);
            assert_eq!(prog.len(), 7);
            for k in 0..=255u8 {
                let short = [0x40, k, 1, 2];
                let long = [0xc0, 0, 0, 0, 1, 16, k, 3];
                for pkt in [&short[..], &long[..]] {
                    let want = u32::from(dcid_routing_byte(pkt).unwrap()) % n as u32;
                    assert_eq!(interpret(&prog, pkt), want);
                }
            }
            assert_eq!(interpret(&prog, &[]), 0);
            assert_eq!(interpret(&prog, &[0x41]), 0);
            assert_eq!(interpret(&prog, &[0xc0, 0, 0, 0, 1]), 0);
        }
        // Never a division by zero.
        assert_eq!(steering_program(0)[5].k, 1);
    }

    #[test]
    fn shard_count_limits() {
        let lo = "127.0.0.1:0".parse().unwrap();
        assert!(matches!(bind_group(lo, 0), Err(SteeringError::NoShards)));
        assert!(matches!(
            bind_group(lo, 257),
            Err(SteeringError::TooManyShards(257))
        ));
    }

    fn steer_test(n: usize) {
        let (socks, addr) = bind_group("127.0.0.1:0".parse().unwrap(), n).unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        for s in &socks {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
        let clients: Vec<UdpSocket> = (0..4)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut sent = 0usize;
        for (ci, client) in clients.iter().enumerate() {
            for k in 0..(2 * n as u8 + 3) {
                let tag = [ci as u8, k];
                let mut short = vec![0x40, k];
                short.extend_from_slice(&tag);
                let mut long = vec![0xc0, 0, 0, 0, 1, 16, k];
                long.extend_from_slice(&tag);
                client.send_to(&short, addr).unwrap();
                client.send_to(&long, addr).unwrap();
                sent += 2;
            }
            // Too short to carry a routing byte: shard 0.
            client.send_to(&[0x40], addr).unwrap();
            sent += 1;
        }
        let mut received = 0usize;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 64];
        while received < sent && Instant::now() < deadline {
            let mut got_any = false;
            for (i, s) in socks.iter().enumerate() {
                loop {
                    match s.recv_from(&mut buf) {
                        Ok((len, _)) => {
                            got_any = true;
                            received += 1;
                            let d = &buf[..len];
                            let want = dcid_routing_byte(d).map_or(0, |b| usize::from(b) % n);
                            assert_eq!(i, want, "datagram {d:?} arrived at shard {i}");
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("recv: {e}"),
                    }
                }
            }
            if !got_any {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(received, sent, "not all datagrams arrived within 2 s");
    }

    #[test]
    fn steers_two_shards() {
        steer_test(2);
    }

    #[test]
    fn steers_four_shards() {
        steer_test(4);
    }

    #[test]
    fn single_shard_group() {
        let (socks, addr) = bind_group("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(&[0x40, 5, 5], addr).unwrap();
        socks[0]
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socks[0].set_nonblocking(false).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(socks[0].recv_from(&mut buf).unwrap().0, 3);
    }

    #[test]
    fn address_in_use_detected() {
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        match bind_group(addr, 2) {
            Err(SteeringError::AddressInUse { addr: a }) => assert_eq!(a, addr),
            r => panic!("expected AddressInUse, got {r:?}"),
        }
        // A second engine on the address of an existing group is refused too.
        let (_group, gaddr) = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert!(matches!(
            bind_group(gaddr, 2),
            Err(SteeringError::AddressInUse { .. })
        ));
        let msg = SteeringError::AddressInUse { addr }.to_string();
        assert!(msg.contains("another process is bound to"), "{msg}");
    }
}
