//! Batched datagram I/O on a non-blocking UDP socket: `recvmmsg` to drain what is
//! already queued after the executor's receive completes, and `sendmmsg` to hand the
//! kernel many datagrams in one system call. Both use `MSG_DONTWAIT` and never block the
//! executor: `WouldBlock` tells the driver to fall back to glommio's awaited operations.
//! Public so the blocking client and the load harness use the same calls as the shards.
//!
//! ```
//! use std::os::fd::AsRawFd;
//! use shards::udp_batch::{RecvBatch, SendBatch};
//! let rx = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! let tx = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! let to = rx.local_addr()?;
//! let sent = SendBatch::default().send(tx.as_raw_fd(), [(to, &b"a"[..]), (to, &b"bc"[..])].into_iter())?;
//! assert_eq!(sent, 2);
//! let mut batch = RecvBatch::new(8, 1500);
//! let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
//! let mut got = 0;
//! while got < 2 && std::time::Instant::now() < give_up {
//!     match batch.recv(rx.as_raw_fd()) {
//!         Ok(n) => got += n,
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! assert_eq!(got, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Receive slots: `recvmmsg` buffers and their headers, reused across calls.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    filled: usize,
}

// SAFETY: the raw pointers in the headers point into buffers and address slots the batch
// owns (heap memory that moves with it) and are rebuilt before every call; they are only
// dereferenced by the kernel during a call made through `&mut self`.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `slots` datagrams of up to `size` bytes per call.
    pub fn new(slots: usize, size: usize) -> RecvBatch {
        let slots = slots.max(1);
        RecvBatch {
            bufs: (0..slots).map(|_| vec![0u8; size.max(1)]).collect(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: (0..slots)
                .map(|_| unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() })
                .collect(),
            iovecs: Vec::with_capacity(slots),
            msgs: Vec::with_capacity(slots),
            filled: 0,
        }
    }

    /// Reads as many queued datagrams as there are slots, without waiting. Returns how
    /// many were read; `Err(WouldBlock)` when none were queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.iovecs.clear();
        self.msgs.clear();
        for b in self.bufs.iter_mut() {
            self.iovecs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            });
        }
        for (i, a) in self.addrs.iter_mut().enumerate() {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            m.msg_hdr.msg_name = (a as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            // The iovec vector is not reallocated below, so this pointer stays valid.
            m.msg_hdr.msg_iov = self.iovecs.as_mut_ptr().wrapping_add(i);
            m.msg_hdr.msg_iovlen = 1;
            self.msgs.push(m);
        }
        // SAFETY: every header points at a live buffer, iovec and address slot owned by
        // `self` for the duration of the call; the kernel writes at most the given lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.filled = 0;
            return Err(io::Error::last_os_error());
        }
        self.filled = n as usize;
        Ok(self.filled)
    }

    /// The datagrams of the last call: source, bytes, and whether each was cut short
    /// because it did not fit in its slot.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Option<SocketAddr>, &mut [u8], bool)> + '_ {
        let filled = self.filled;
        self.bufs
            .iter_mut()
            .zip(self.msgs.iter())
            .zip(self.addrs.iter())
            .take(filled)
            .map(|((buf, m), a)| {
                let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                let n = (m.msg_len as usize).min(buf.len());
                let from = sockaddr_to_std(a, m.msg_hdr.msg_namelen);
                (from, &mut buf[..n], truncated)
            })
    }

    /// Datagram `i` of the last call: its source, its bytes, and whether it was cut short
    /// because it did not fit in a slot.
    #[cfg(test)]
    pub(crate) fn get(&mut self, i: usize) -> Option<(Option<SocketAddr>, &mut [u8], bool)> {
        if i >= self.filled {
            return None;
        }
        let m = self.msgs.get(i)?;
        let len = m.msg_len as usize;
        let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let namelen = m.msg_hdr.msg_namelen;
        let from = self.addrs.get(i).and_then(|a| sockaddr_to_std(a, namelen));
        let buf = self.bufs.get_mut(i)?;
        let n = len.min(buf.len());
        Some((from, buf.get_mut(..n)?, truncated))
    }
}

fn sockaddr_to_std(a: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    // SAFETY: the storage is large enough for any address family and `len` is what the
    // kernel wrote; socket2 checks the family before reading.
    let addr = unsafe { socket2::SockAddr::new(*a, len) };
    addr.as_socket()
}

/// `sendmmsg` headers, reused across calls so sending allocates nothing per datagram.
#[derive(Default)]
pub struct SendBatch {
    addrs: Vec<socket2::SockAddr>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the headers are cleared after every call, so between calls they hold no pointers
// into borrowed memory; the addresses they point to during a call are owned by the batch.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Sends `datagrams` (destination, bytes) with one `sendmmsg` call, without waiting.
    /// Returns how many the kernel took (a prefix); `Err` when it took none, with the error
    /// of the first (`WouldBlock` when the socket buffer is full).
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        datagrams: impl Iterator<Item = (SocketAddr, &'a [u8])>,
    ) -> io::Result<usize> {
        self.addrs.clear();
        self.iovecs.clear();
        self.msgs.clear();
        for (to, data) in datagrams {
            self.addrs.push(socket2::SockAddr::from(to));
            self.iovecs.push(libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            });
        }
        if self.iovecs.is_empty() {
            return Ok(0);
        }
        for (i, a) in self.addrs.iter().enumerate() {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            m.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = a.len();
            m.msg_hdr.msg_iov = self.iovecs.as_mut_ptr().wrapping_add(i);
            m.msg_hdr.msg_iovlen = 1;
            self.msgs.push(m);
        }
        // SAFETY: every header points at an address and iovec owned by `self` and at a
        // buffer borrowed for 'a, all alive for the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as _,
                libc::MSG_DONTWAIT,
            )
        };
        // The iovecs point into the caller's buffers: forget them now.
        self.iovecs.clear();
        self.msgs.clear();
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_burst_sent_with_sendmmsg_is_read_back_with_recvmmsg() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + i as usize]).collect();
        let items: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (to, p.as_slice())).collect();
        let mut send = SendBatch::default();
        assert_eq!(send.send(tx.as_raw_fd(), items.into_iter()).unwrap(), 10);
        let mut batch = RecvBatch::new(4, 2048);
        let mut got = Vec::new();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 10 && std::time::Instant::now() < give_up {
            match batch.recv(rx.as_raw_fd()) {
                Ok(n) => {
                    assert!(n <= 4);
                    for i in 0..n {
                        let (from, data, truncated) = batch.get(i).unwrap();
                        assert_eq!(from, Some(tx.local_addr().unwrap()));
                        assert!(!truncated);
                        got.push(data.to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, payloads);
        assert!(matches!(
            batch.recv(rx.as_raw_fd()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        ));
    }

    #[test]
    fn a_datagram_larger_than_its_slot_is_marked_truncated() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7u8; 3000], rx.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new(2, 1500);
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match batch.recv(rx.as_raw_fd()) {
                Ok(1) => break,
                Ok(n) => panic!("{n} datagrams"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < give_up);
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        let (_, data, truncated) = batch.get(0).unwrap();
        assert!(truncated);
        assert_eq!(data.len(), 1500);
    }
}
