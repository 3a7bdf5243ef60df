//! The few system calls that std and mio do not expose, each wrapped once.
//!
//! Descriptor flags, non-blocking writes to stdout and stderr, `IP_BIND_ADDRESS_NO_PORT` and
//! CPU time go through `nix`'s typed wrappers; the open-file limit through
//! `rlimit`. What no safe wrapper covers stays here as a raw `libc` call with
//! its SAFETY note: probing whether fd 0 exists at all, and the kernel queue
//! sizes (`SIOCINQ`/`SIOCOUTQ`). The UDP receive path has its own `udp.rs`.
//! No socket is serviced here.
//!
//! The functions take descriptor numbers, as their callers hold them (stdin,
//! stdout, a socket's raw fd); [`with_fd`] is the one place that lends such a
//! number to `nix` as a borrowed descriptor.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// Lends the open descriptor `fd` to `f` as a [`BorrowedFd`], the form `nix`
/// takes. A negative `fd` is `EBADF` without calling `f`.
fn with_fd<T>(fd: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> nix::Result<T>) -> io::Result<T> {
    if fd < 0 {
        return Err(Errno::EBADF.into());
    }
    // SAFETY: every caller of this module passes a descriptor it holds open
    // across the call (stdin, stdout, or a socket it owns), and `fd` is not
    // -1; the borrow lives only inside `f`, which cannot return it.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    f(fd).map_err(io::Error::from)
}

/// True when descriptor `fd` is open. Checked for stdin before any socket is
/// opened: when a program starts with fd 0 closed, the first socket it opens
/// gets fd 0 and must never be mistaken for stdin.
pub fn fd_is_open(fd: RawFd) -> bool {
    // A raw call on purpose: the descriptor may not exist, which is exactly
    // what a `BorrowedFd` would promise it does.
    // SAFETY: F_GETFD only reads the descriptor's flags; on a closed
    // descriptor it fails with EBADF and touches nothing.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// The status flags of descriptor `fd` (`F_GETFL`), or `None` when it is not
/// open. Read at start-up, before anything changes them, so that they can be
/// put back exactly as they were.
pub fn status_flags(fd: RawFd) -> Option<libc::c_int> {
    if !fd_is_open(fd) {
        return None;
    }
    with_fd(fd, |fd| fcntl(fd, FcntlArg::F_GETFL)).ok()
}

/// Sets `O_NONBLOCK` on `fd` unless it is set already, and returns the
/// flags it had before, for [`restore_flags`]. One `fcntl` when the flag is
/// in place: cheap enough to call before every read of stdin and every write
/// of stdout, whose flag a shell sharing the terminal may clear at any time.
pub fn set_nonblocking(fd: RawFd) -> io::Result<libc::c_int> {
    with_fd(fd, |fd| {
        let flags = fcntl(fd, FcntlArg::F_GETFL)?;
        let old = OFlag::from_bits_retain(flags);
        if !old.contains(OFlag::O_NONBLOCK) {
            fcntl(fd, FcntlArg::F_SETFL(old | OFlag::O_NONBLOCK))?;
        }
        Ok(flags)
    })
}

/// Puts back the status flags saved by [`set_nonblocking`].
pub fn restore_flags(fd: RawFd, flags: libc::c_int) {
    // Failure is harmless here: this runs on the way out.
    let _ = with_fd(fd, |fd| {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_retain(flags)))
    });
}

/// Bytes the kernel holds for a socket: (received but not yet read, sent but
/// not yet acknowledged), from `SIOCINQ` and `SIOCOUTQ`.
pub fn socket_queues(fd: RawFd) -> io::Result<(usize, usize)> {
    let mut inq: libc::c_int = 0;
    let mut outq: libc::c_int = 0;
    // SAFETY: both ioctls write one int through the pointer we pass. (nix
    // offers only macros that generate unsafe functions for ioctls.)
    unsafe {
        if libc::ioctl(fd, libc::FIONREAD, &mut inq) == -1 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((inq.max(0) as usize, outq.max(0) as usize))
}

/// The open-file limit as (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    rlimit::Resource::NOFILE.get()
}

/// Raises the open-file soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// One `write(2)` to `fd`. On a non-blocking descriptor a full pipe or
/// terminal answers `WouldBlock`; nothing here waits.
pub fn write_fd(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    with_fd(fd, |fd| nix::unistd::write(fd, data))
}

/// Waits at most `timeout` for `fd` to take more bytes (`poll(2)` for
/// `POLLOUT`). Only for the bounded flush at exit, when the loop is over.
pub fn wait_writable(fd: RawFd, timeout: Duration) {
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let _ = with_fd(fd, |fd| {
        poll(&mut [PollFd::new(fd, PollFlags::POLLOUT)], millis).map(|_| ())
    });
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on a socket about to be bound: the bind
/// then fixes only the source address, and the port is chosen at `connect()`
/// from the whole 4-tuple, so one source address can serve many destinations
/// and a bind never uses up an ephemeral port by itself.
pub fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    with_fd(fd, |fd| {
        setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)
    })
}

/// CPU time this process has used so far (user + system), from `getrusage`.
pub fn cpu_time() -> std::time::Duration {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return std::time::Duration::ZERO;
    };
    let micros = |t: TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    std::time::Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

/// The current system-wide value of a `/proc/sys` setting, e.g. `net/core/somaxconn`.
pub fn proc_sys(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The process's resident memory in KiB, from `/proc/self/status` (VmRSS).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::net::{SocketAddr, TcpListener};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    fn flags_of(fd: &impl AsFd) -> OFlag {
        OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL).unwrap())
    }

    #[test]
    fn set_nonblocking_hands_back_the_old_flags_for_restore() {
        let (a, _b) = UnixStream::pair().unwrap();
        let before = flags_of(&a);
        assert!(!before.contains(OFlag::O_NONBLOCK));
        let saved = set_nonblocking(a.as_raw_fd()).unwrap();
        assert_eq!(saved, before.bits());
        assert!(flags_of(&a).contains(OFlag::O_NONBLOCK));
        restore_flags(a.as_raw_fd(), saved);
        assert_eq!(flags_of(&a), before);
    }

    #[test]
    fn a_descriptor_that_is_not_open_is_told_apart() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        assert!(fd_is_open(fd));
        assert!(!fd_is_open(-1));
        assert!(set_nonblocking(-1).is_err());
    }

    #[test]
    fn a_full_nonblocking_descriptor_answers_would_block_and_never_waits() {
        let (writer, _reader) = UnixStream::pair().unwrap();
        set_nonblocking(writer.as_raw_fd()).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        let full = loop {
            match write_fd(writer.as_raw_fd(), &chunk) {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(written < 64 << 20, "a socket buffer never filled");
        };
        assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock);
        // Nobody reads: the wait ends at its timeout.
        wait_writable(writer.as_raw_fd(), Duration::from_millis(10));
    }

    #[test]
    fn bind_address_no_port_leaves_the_port_to_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        set_bind_address_no_port(socket.as_raw_fd()).unwrap();
        let source: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&source.into()).unwrap();
        // Bound, yet no port taken: that is what the option is for.
        let bound = socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(bound.port(), 0);
        socket
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let connected = socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(connected.ip(), source.ip());
        assert_ne!(connected.port(), 0);
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard);
        assert_eq!(raise_nofile_limit().unwrap(), hard);
        assert_eq!(nofile_limit().unwrap(), (hard, hard));
        // Already at the hard limit: nothing to do, same answer.
        assert_eq!(raise_nofile_limit().unwrap(), hard);
    }

    #[test]
    fn cpu_time_counts_work_done() {
        let start = cpu_time();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut spin = 0u64;
        while cpu_time() <= start {
            spin = spin.wrapping_add(std::hint::black_box(1));
            assert!(Instant::now() < deadline, "no CPU time counted in 10 s");
        }
        assert!(cpu_time() > Duration::ZERO);
        let _ = spin;
    }
}
