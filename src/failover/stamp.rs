//! Kernel receive timestamps of heartbeat datagrams: how long a datagram sat in the
//! socket's queue before the loop read it, so the loop's own lateness is not measured as
//! the peer's jitter.
//!
//! `SIOCGSTAMPNS` returns the arrival time (`CLOCK_REALTIME`) of the last datagram read
//! from the socket; the first call turns timestamping on, so [`enable`] makes it once at
//! bind time. The age is `now - stamp` on the same clock, clamped at zero, so a clock step
//! between the two reads costs at most one wrong sample, bounded by the machine. When no
//! other socket had timestamps on, the kernel switches them on from a work queue a moment
//! later; a datagram that arrives before then has no stamp, the ioctl answers with the
//! time of the call, and its age reads as zero: unknown, which is what the machine assumes.

use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `SIOCGSTAMPNS` from `<linux/sockios.h>` (64-bit `time_t`, as on every 64-bit target).
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

fn stamp(fd: &impl AsRawFd) -> std::io::Result<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: the ioctl writes one `struct timespec` into `ts`, which lives across the
    // call; the fd is a socket owned by the caller.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).map_err(|_| std::io::Error::other("timestamp before 1970"))?;
    let nanos = u32::try_from(ts.tv_nsec).map_err(|_| std::io::Error::other("bad timestamp"))?;
    Ok(Duration::new(secs, nanos.min(999_999_999)))
}

/// Turn on receive timestamps for `fd` (the kernel answers "no datagram yet").
pub fn enable(fd: &impl AsRawFd) {
    let _ = stamp(fd);
}

/// How long the datagram just read from `fd` waited in the kernel; zero when unknown.
pub fn queued(fd: &impl AsRawFd) -> Duration {
    let Ok(at) = stamp(fd) else { return Duration::ZERO };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_left_waiting_reports_its_wait() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(&rx);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 16];
        // The kernel may switch timestamping on a moment after `enable` (see the module
        // doc): the first datagrams can come unstamped, so a few tries are allowed.
        let mut q = Duration::ZERO;
        for _ in 0..5 {
            tx.send_to(b"one", rx.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(120));
            rx.recv_from(&mut buf).unwrap();
            q = queued(&rx);
            // Unstamped, the age is the microseconds since the ioctl answered.
            if q >= Duration::from_millis(120) {
                break;
            }
        }
        assert!(q >= Duration::from_millis(120) && q < Duration::from_secs(60), "queued {q:?}");
        // Each read reports its own datagram's arrival, not the first one's.
        let first = stamp(&rx).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        tx.send_to(b"two", rx.local_addr().unwrap()).unwrap();
        rx.recv_from(&mut buf).unwrap();
        assert!(stamp(&rx).unwrap() > first, "the stamp did not move to the second datagram");
    }
}
