//! Small pieces of the shard driver that talk to the kernel or the executor rather than to
//! peers: the kernel's receive timestamp and socket inode (for the receive-delay and
//! socket-drop metrics), and a wake-up for tasks waiting for room.

use std::cell::RefCell;
use std::time::Duration;

/// Wakes the tasks of one executor that wait for a condition to change. Every waiter is
/// woken and re-checks its condition; nothing is polled on a timer.
#[derive(Default)]
pub(crate) struct Notify {
    epoch: std::cell::Cell<u64>,
    wakers: RefCell<Vec<std::task::Waker>>,
}

impl Notify {
    pub(crate) fn notify(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves after the next [`Notify::notify`] (counted from this call, not from the
    /// first poll, so a check followed by `wait` cannot miss a signal in between).
    pub(crate) fn wait(&self) -> impl std::future::Future<Output = ()> + '_ {
        let start = self.epoch.get();
        futures_lite::future::poll_fn(move |cx| {
            if self.epoch.get() != start {
                return std::task::Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
    }
}

/// `SIOCGSTAMPNS` from linux/sockios.h (its 64-bit `timespec` form; libc does not name it).
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

/// How long the datagram the socket returned last waited in the kernel's receive queue:
/// now minus the kernel's receive timestamp (SIOCGSTAMPNS). The first call on a socket turns
/// timestamping on and returns `None`.
pub(crate) fn kernel_queue_delay(fd: std::os::fd::RawFd) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: SIOCGSTAMPNS writes one `timespec` through the pointer, which is valid and
    // outlives the call; the fd is this shard's open socket.
    let rc = unsafe { libc::ioctl(fd, SIOCGSTAMPNS as _, &mut ts as *mut libc::timespec) };
    if rc != 0 {
        return None;
    }
    let stamp = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(ts.tv_sec).ok()?,
            u32::try_from(ts.tv_nsec).ok()?,
        );
    std::time::SystemTime::now().duration_since(stamp).ok()
}

/// The inode of a socket, which names it in `/proc/net/udp`.
pub(crate) fn socket_inode(fd: std::os::fd::RawFd) -> Option<u64> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer and `fd` an open descriptor.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    (rc == 0).then_some(st.st_ino)
}
