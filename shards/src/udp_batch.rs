//! Batched datagram I/O on a non-blocking UDP socket: `recvmmsg` to drain what is
//! queued, with UDP GRO where the kernel allows (a run of same-size datagrams from one
//! source arrives as one buffer, cut back into the original datagrams here), and
//! `sendmmsg` to hand the kernel many datagrams in one system call, coalesced with UDP GSO
//! where the kernel allows.
//! Both use `MSG_DONTWAIT` and never block the executor: `WouldBlock` tells the driver to
//! wait for the socket (the shards with an awaited one-byte peek through glommio).
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
    /// Control data per slot, for the `UDP_GRO` segment size (GRO batches only).
    controls: Vec<GsoControl>,
    /// Segment size of each filled slot: the datagram size of a coalesced run, or 0 for
    /// one plain datagram.
    segment_sizes: Vec<usize>,
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
            controls: Vec::new(),
            segment_sizes: vec![0; slots],
            filled: 0,
        }
    }

    /// `slots` receive buffers of [`GRO_SLOT`] bytes each for a socket on which
    /// [`enable_gro`] succeeded: each holds one datagram or one coalesced run, which
    /// [`RecvBatch::iter_mut`] cuts back into datagrams. Memory is fixed at
    /// `slots * GRO_SLOT` bytes.
    pub fn with_gro(slots: usize) -> RecvBatch {
        let mut b = RecvBatch::new(slots, GRO_SLOT);
        b.controls = vec![[0; 4]; b.bufs.len()];
        b
    }

    /// Receive slots: the most datagrams (or GRO runs) one [`RecvBatch::recv`] reads.
    pub fn slots(&self) -> usize {
        self.bufs.len()
    }

    /// Whether the slots take GRO runs ([`RecvBatch::with_gro`]).
    pub fn gro(&self) -> bool {
        !self.controls.is_empty()
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
            if let Some(c) = self.controls.get_mut(i) {
                m.msg_hdr.msg_control = c.as_mut_ptr().cast();
                m.msg_hdr.msg_controllen = std::mem::size_of::<GsoControl>() as _;
            }
            self.msgs.push(m);
        }
        // SAFETY: every header points at a live buffer, iovec, address slot and (GRO)
        // control slot owned by `self` for the duration of the call; the kernel writes at
        // most the given lengths.
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
        let gro = self.gro();
        for (size, m) in self
            .segment_sizes
            .iter_mut()
            .zip(&self.msgs)
            .take(self.filled)
        {
            *size = if gro { gro_segment_size(&m.msg_hdr) } else { 0 };
        }
        Ok(self.filled)
    }

    /// Datagrams the last call read: as many as [`RecvBatch::iter_mut`] yields (a GRO run
    /// counts as the datagrams it holds), without walking them.
    pub fn datagrams(&self) -> usize {
        self.bufs
            .iter()
            .zip(&self.msgs)
            .zip(&self.segment_sizes)
            .take(self.filled)
            .map(|((buf, m), &segment)| {
                let n = (m.msg_len as usize).min(buf.len());
                if segment == 0 {
                    1
                } else {
                    n.div_ceil(segment).max(1)
                }
            })
            .sum()
    }

    /// The datagrams of the last call (a coalesced run counts as the datagrams it holds):
    /// source, bytes, and whether each was cut short because it did not fit in its slot.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Option<SocketAddr>, &mut [u8], bool)> + '_ {
        let filled = self.filled;
        self.bufs
            .iter_mut()
            .zip(self.msgs.iter())
            .zip(self.addrs.iter())
            .zip(self.segment_sizes.iter())
            .take(filled)
            .flat_map(|(((buf, m), a), &segment)| {
                let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                let n = (m.msg_len as usize).min(buf.len());
                let from = sockaddr_to_std(a, m.msg_hdr.msg_namelen);
                // A plain datagram is one chunk of its own length (an empty one included).
                let chunk = if segment == 0 { n.max(1) } else { segment };
                buf[..n]
                    .chunks_mut(chunk)
                    .chain((n == 0).then_some(&mut [][..]))
                    .map(move |d| (from, d, truncated))
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

/// Bytes of one GRO receive slot: the largest UDP payload, which bounds a coalesced run.
pub const GRO_SLOT: usize = 65_535;
/// `UDP_GRO` (linux/udp.h); not in every libc release.
const UDP_GRO: libc::c_int = 104;

/// Asks the kernel to deliver runs of same-size datagrams from one source on `fd` as one
/// buffer with their size attached (`UDP_GRO`). Returns whether it agreed; the socket must
/// then be read only through a [`RecvBatch::with_gro`] (or another reader of the
/// `UDP_GRO` control message), or datagrams run together.
pub fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: `on` is valid for reads of the size passed; the kernel does not keep it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// The `UDP_GRO` segment size the kernel attached to a received message, or 0.
fn gro_segment_size(hdr: &libc::msghdr) -> usize {
    if hdr.msg_control.is_null() || hdr.msg_controllen < std::mem::size_of::<libc::cmsghdr>() as _ {
        return 0;
    }
    // SAFETY: `hdr` was filled by recvmmsg: `msg_control` points at the slot's control
    // buffer and `msg_controllen` is what the kernel wrote, so CMSG_FIRSTHDR/NXTHDR stay
    // inside it; the data of a `UDP_GRO` message is one int, read unaligned.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(hdr);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_UDP
                && (*cm).cmsg_type == UDP_GRO
                && (*cm).cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize
            {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<libc::c_int>());
                return usize::try_from(size).unwrap_or(0);
            }
            cm = libc::CMSG_NXTHDR(hdr, cm);
        }
    }
    0
}

/// Most segments one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS` on older kernels).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one GSO send may carry: one UDP payload (65,507 B over IPv4) with room to spare.
pub(crate) const GSO_MAX_BYTES: usize = 65_000;
/// `UDP_SEGMENT` (linux/udp.h); not in every libc release.
const UDP_SEGMENT: libc::c_int = 103;
/// Bytes of control data for one `UDP_SEGMENT` message, 8-byte aligned.
type GsoControl = [u64; 4];

/// Whether the kernel accepts `UDP_SEGMENT` (generic segmentation offload) on `fd`.
pub fn gso_supported(fd: RawFd) -> bool {
    let mut size: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `size` and `len` are valid for writes of the sizes passed; the kernel writes
    // at most `len` bytes and does not keep the pointers.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&mut size as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0
}

/// `sendmmsg` headers, reused across calls so sending allocates nothing per datagram.
///
/// With GSO on, consecutive datagrams to the same address of the same size (the last may be
/// shorter) go as one message carrying a `UDP_SEGMENT` size: the kernel cuts it into the
/// original datagrams, so a peer sees exactly what it would have without GSO, for one pass
/// through the stack instead of one per datagram. quiche fills packets to the same size
/// while it has data, so a connection's flight coalesces.
#[derive(Default)]
pub struct SendBatch {
    gso: bool,
    /// The datagrams of the call in progress (destination, flow, bytes); empty between
    /// calls.
    items: Vec<(SocketAddr, u64, libc::iovec)>,
    addrs: Vec<socket2::SockAddr>,
    /// Datagrams in each message, in order.
    segments: Vec<usize>,
    iovecs: Vec<libc::iovec>,
    controls: Vec<GsoControl>,
    msgs: Vec<libc::mmsghdr>,
    messages: usize,
    sent_messages: usize,
}

// SAFETY: the headers are cleared after every call, so between calls they hold no pointers
// into borrowed memory; the addresses they point to during a call are owned by the batch.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// A batch that coalesces with GSO when `gso` (see [`gso_supported`]);
    /// `SendBatch::default()` sends one datagram per message.
    pub fn new(gso: bool) -> SendBatch {
        SendBatch {
            gso,
            ..SendBatch::default()
        }
    }

    /// Whether sends still coalesce (GSO is turned off for good after the kernel refuses it).
    #[cfg(test)]
    pub(crate) fn gso(&self) -> bool {
        self.gso
    }

    /// Messages (GSO groups, or datagrams without GSO) in the last call's batch.
    #[cfg(test)]
    pub(crate) fn last_messages(&self) -> usize {
        self.messages
    }

    /// Of the messages the last call sent: how many carried several datagrams (GSO), and
    /// how many datagrams those carried.
    pub(crate) fn last_coalesced(&self) -> (usize, usize) {
        self.segments
            .iter()
            .take(self.sent_messages)
            .filter(|n| **n > 1)
            .fold((0, 0), |(m, d), n| (m + 1, d + n))
    }

    /// Sends `datagrams` (destination, bytes) with one `sendmmsg` call, without waiting.
    /// Returns how many datagrams the kernel took (a prefix); `Err` when it took none, with
    /// the error of the first (`WouldBlock` when the socket buffer is full).
    ///
    /// If the kernel rejects a GSO message (`EIO`: the device cannot segment; `EINVAL`),
    /// GSO is switched off and the same datagrams are sent again one per message.
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        datagrams: impl Iterator<Item = (SocketAddr, &'a [u8])>,
    ) -> io::Result<usize> {
        self.send_flows(fd, datagrams.map(|(to, data)| (to, 0, data)))
    }

    /// [`SendBatch::send`] for datagrams of several flows (connections): only consecutive
    /// datagrams of one flow to one address share a GSO message, so a receiver that steers
    /// a GSO train by its first datagram (a reuseport group steered by connection ID) gets
    /// every datagram where it would have gone alone.
    pub fn send_flows<'a>(
        &mut self,
        fd: RawFd,
        datagrams: impl Iterator<Item = (SocketAddr, u64, &'a [u8])>,
    ) -> io::Result<usize> {
        self.items.clear();
        for (to, flow, data) in datagrams {
            self.items.push((
                to,
                flow,
                libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                },
            ));
        }
        let sent = match self.transmit(fd) {
            Err(e)
                if self.gso
                    && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
                    && self.segments.iter().any(|n| *n > 1) =>
            {
                tracing::warn!("UDP GSO refused by the kernel ({e}); sending without it");
                self.gso = false;
                self.transmit(fd)
            }
            other => other,
        };
        // No pointer into the caller's datagrams outlives the call.
        self.items.clear();
        sent
    }

    /// Groups `items` into messages (GSO runs when on) and hands them to `sendmmsg`.
    fn transmit(&mut self, fd: RawFd) -> io::Result<usize> {
        self.addrs.clear();
        self.segments.clear();
        self.iovecs.clear();
        self.controls.clear();
        self.msgs.clear();
        self.messages = 0;
        self.sent_messages = 0;
        // Group: (destination, flow, segment size, bytes so far) of the message being built.
        let mut open: Option<(SocketAddr, u64, usize, usize)> = None;
        for &(to, flow, iov) in &self.items {
            let len = iov.iov_len;
            let joins = match open {
                Some((dst, group_flow, size, total)) => {
                    self.gso
                        && dst == to
                        && group_flow == flow
                        && len <= size
                        && total + len <= GSO_MAX_BYTES
                        && self.segments.last().is_some_and(|n| *n < GSO_MAX_SEGMENTS)
                }
                None => false,
            };
            if joins {
                if let (Some(n), Some((_, _, size, total))) =
                    (self.segments.last_mut(), open.as_mut())
                {
                    *n += 1;
                    *total += len;
                    // A shorter datagram must be the group's last.
                    if len < *size {
                        open = None;
                    }
                }
            } else {
                self.addrs.push(socket2::SockAddr::from(to));
                self.segments.push(1);
                open = Some((to, flow, len, len));
            }
            self.iovecs.push(iov);
        }
        if self.iovecs.is_empty() {
            return Ok(0);
        }
        self.messages = self.segments.len();
        self.controls.resize(self.segments.len(), [0; 4]);
        let mut first_iov = 0usize;
        for ((a, n), control) in self
            .addrs
            .iter()
            .zip(self.segments.iter())
            .zip(self.controls.iter_mut())
        {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) header.
            let mut m: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            m.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = a.len();
            m.msg_hdr.msg_iov = self.iovecs.as_mut_ptr().wrapping_add(first_iov);
            m.msg_hdr.msg_iovlen = *n as _;
            if *n > 1 {
                let size = self
                    .iovecs
                    .get(first_iov)
                    .map(|v| v.iov_len)
                    .unwrap_or_default();
                set_segment_size(&mut m.msg_hdr, control, size as u16);
            }
            first_iov += n;
            self.msgs.push(m);
        }
        // SAFETY: every header points at an address, iovecs and control data owned by `self`
        // and the iovecs at the caller's datagrams, borrowed for the duration of `send`, which
        // this call is inside; the kernel only reads them. `msgs.len()` headers are
        // initialized.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as _,
                libc::MSG_DONTWAIT,
            )
        };
        self.iovecs.clear();
        self.msgs.clear();
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.sent_messages = n as usize;
        Ok(self.segments.iter().take(n as usize).sum())
    }
}

/// Attaches a `UDP_SEGMENT` control message of `size` to `hdr`, in `control`.
fn set_segment_size(hdr: &mut libc::msghdr, control: &mut GsoControl, size: u16) {
    hdr.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    hdr.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
    // SAFETY: `msg_control` points at `control`, 32 bytes and 8-byte aligned, which holds one
    // cmsghdr (16 bytes) plus a u16 payload (CMSG_SPACE(2) = 24 bytes), so the first header and
    // its data are in bounds; CMSG_FIRSTHDR is non-null because msg_controllen covers a header.
    unsafe {
        let cm = libc::CMSG_FIRSTHDR(hdr);
        if cm.is_null() {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            return;
        }
        (*cm).cmsg_level = libc::SOL_UDP;
        (*cm).cmsg_type = UDP_SEGMENT;
        (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), size);
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
        let mut send = SendBatch::new(gso_supported(tx.as_raw_fd()));
        assert_eq!(send.send(tx.as_raw_fd(), items.into_iter()).unwrap(), 10);
        // Sizes all differ and grow, so nothing coalesces.
        assert_eq!(send.last_messages(), 10);
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

    /// Reads datagrams one at a time until `count` arrived (or 5 s passed).
    fn read_each(rx: &std::net::UdpSocket, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while out.len() < count {
            match rx.recv_from(&mut buf) {
                Ok((n, from)) => out.push((from, buf[..n].to_vec())),
                Err(e) => panic!("after {} datagrams: {e}", out.len()),
            }
        }
        out
    }

    #[test]
    fn gso_coalesces_same_size_runs_and_the_peer_sees_the_original_datagrams() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if !gso_supported(tx.as_raw_fd()) {
            eprintln!("UDP GSO not supported by this kernel; coalescing not exercised");
            return;
        }
        let rx_a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx_b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b) = (rx_a.local_addr().unwrap(), rx_b.local_addr().unwrap());
        // To a: five of 1200 then a short one (one message); a 1200 after the short one
        // starts a new message. To b: three of 900 (one message). Back to a: one of 1200.
        let mut plan: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for i in 0..5u8 {
            plan.push((a, vec![i; 1200]));
        }
        plan.push((a, vec![50; 300]));
        plan.push((a, vec![51; 1200]));
        for i in 0..3u8 {
            plan.push((b, vec![60 + i; 900]));
        }
        plan.push((a, vec![70; 1200]));
        let mut send = SendBatch::new(true);
        let items = plan.iter().map(|(to, d)| (*to, d.as_slice()));
        assert_eq!(send.send(tx.as_raw_fd(), items).unwrap(), plan.len());
        assert!(send.gso());
        // Messages: [a: 5 x 1200 + 300] [a: 1200] [b: 3 x 900] [a: 1200].
        assert_eq!(send.last_messages(), 4);
        assert_eq!(send.last_coalesced(), (2, 9));
        let got_a: Vec<Vec<u8>> = read_each(&rx_a, 8).into_iter().map(|(_, d)| d).collect();
        let want_a: Vec<Vec<u8>> = plan
            .iter()
            .filter(|(to, _)| *to == a)
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(got_a, want_a);
        let got_b: Vec<Vec<u8>> = read_each(&rx_b, 3).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got_b, vec![vec![60; 900], vec![61; 900], vec![62; 900]]);
    }

    /// A sender and a receiver on loopback, or `None` (and a note) where the kernel has no
    /// GSO, so the test exercising `what` is skipped.
    fn gso_sockets(what: &str) -> Option<(std::net::UdpSocket, std::net::UdpSocket)> {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if !gso_supported(tx.as_raw_fd()) {
            eprintln!("UDP GSO not supported by this kernel; {what} not exercised");
            return None;
        }
        Some((tx, std::net::UdpSocket::bind("127.0.0.1:0").unwrap()))
    }

    #[test]
    fn gso_never_joins_datagrams_of_two_flows() {
        let Some((tx, rx)) = gso_sockets("flows") else {
            return;
        };
        let to = rx.local_addr().unwrap();
        // Two connections to one address, same-size packets: flow 1, 1, 2, 2, 1.
        let plan: Vec<(u64, Vec<u8>)> = [1u64, 1, 2, 2, 1]
            .iter()
            .enumerate()
            .map(|(i, f)| (*f, vec![i as u8; 1000]))
            .collect();
        let mut send = SendBatch::new(true);
        let items = plan.iter().map(|(f, d)| (to, *f, d.as_slice()));
        assert_eq!(send.send_flows(tx.as_raw_fd(), items).unwrap(), 5);
        assert_eq!(send.last_messages(), 3);
        assert_eq!(send.last_coalesced(), (2, 4));
        let got: Vec<Vec<u8>> = read_each(&rx, 5).into_iter().map(|(_, d)| d).collect();
        let want: Vec<Vec<u8>> = plan.into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn gso_groups_respect_the_segment_and_byte_limits() {
        let Some((tx, rx)) = gso_sockets("limits") else {
            return;
        };
        let to = rx.local_addr().unwrap();
        // 100 small datagrams: split at GSO_MAX_SEGMENTS.
        let small: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 100]).collect();
        let mut send = SendBatch::new(true);
        let n = send
            .send(tx.as_raw_fd(), small.iter().map(|d| (to, d.as_slice())))
            .unwrap();
        assert_eq!((n, send.last_messages()), (100, 2));
        let got: Vec<Vec<u8>> = read_each(&rx, 100).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, small);
        // 60 of 1400 B = 84,000 B: split at GSO_MAX_BYTES (46 fit in 65,000).
        let big: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 1400]).collect();
        let n = send
            .send(tx.as_raw_fd(), big.iter().map(|d| (to, d.as_slice())))
            .unwrap();
        assert_eq!((n, send.last_messages()), (60, 2));
        let got: Vec<Vec<u8>> = read_each(&rx, 60).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, big);
    }

    /// Source, bytes and truncation of one datagram read.
    type Received = (Option<SocketAddr>, Vec<u8>, bool);

    /// Reads with `batch` until `count` datagrams arrived (or 5 s passed); returns them and
    /// how many `recvmmsg` slots (datagrams or runs) they came in.
    fn read_batched(
        batch: &mut RecvBatch,
        rx: &std::net::UdpSocket,
        count: usize,
    ) -> (Vec<Received>, usize) {
        let mut got = Vec::new();
        let mut slots = 0;
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < count && std::time::Instant::now() < give_up {
            match batch.recv(rx.as_raw_fd()) {
                Ok(n) => {
                    slots += n;
                    let before = got.len();
                    got.extend(batch.iter_mut().map(|(f, d, t)| (f, d.to_vec(), t)));
                    assert_eq!(batch.datagrams(), got.len() - before);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        (got, slots)
    }

    #[test]
    fn gro_runs_are_cut_back_into_the_datagrams_that_were_sent() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if !gso_supported(tx.as_raw_fd()) || !enable_gro(rx.as_raw_fd()) {
            eprintln!("UDP GSO or GRO not supported by this kernel; runs not exercised");
            return;
        }
        let to = rx.local_addr().unwrap();
        // One GSO message of five 1200 B datagrams and a 300 B tail, then a lone 1200 B one
        // and an empty datagram: on loopback the run arrives as one GRO buffer.
        let mut plan: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1200]).collect();
        plan.push(vec![50; 300]);
        let mut send = SendBatch::new(true);
        let n = send
            .send(tx.as_raw_fd(), plan.iter().map(|d| (to, d.as_slice())))
            .unwrap();
        assert_eq!((n, send.last_messages()), (6, 1));
        tx.send_to(&[51; 1200], to).unwrap();
        tx.send_to(&[], to).unwrap();
        plan.push(vec![51; 1200]);
        plan.push(Vec::new());
        let mut batch = RecvBatch::with_gro(4);
        assert!(batch.gro());
        let (got, slots) = read_batched(&mut batch, &rx, plan.len());
        let from = Some(tx.local_addr().unwrap());
        let want: Vec<_> = plan.iter().map(|d| (from, d.clone(), false)).collect();
        assert_eq!(got, want);
        // The six of the GSO send shared one slot (two or three slots in all: the kernel
        // may or may not append the lone datagram to the run).
        assert!(slots <= 3, "{slots} slots for {} datagrams", plan.len());
    }

    #[test]
    fn a_gro_batch_reads_a_socket_without_gro_one_datagram_per_slot() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let plan: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1000]).collect();
        let n = SendBatch::new(gso_supported(tx.as_raw_fd()))
            .send(tx.as_raw_fd(), plan.iter().map(|d| (to, d.as_slice())))
            .unwrap();
        assert_eq!(n, 6);
        let mut batch = RecvBatch::with_gro(8);
        let (got, slots) = read_batched(&mut batch, &rx, plan.len());
        let data: Vec<Vec<u8>> = got.into_iter().map(|(_, d, _)| d).collect();
        assert_eq!((data, slots), (plan, 6));
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_message() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let same: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 500]).collect();
        let mut send = SendBatch::new(false);
        let n = send
            .send(tx.as_raw_fd(), same.iter().map(|d| (to, d.as_slice())))
            .unwrap();
        assert_eq!((n, send.last_messages()), (8, 8));
        assert_eq!(send.last_coalesced(), (0, 0));
        let got: Vec<Vec<u8>> = read_each(&rx, 8).into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, same);
    }
}
