//! The few raw system calls that std and mio do not expose, each wrapped once.
//!
//! Everything `unsafe` in sockloop lives here, behind small safe functions —
//! descriptor flags, kernel queue sizes, the open-file limit and blocking
//! writes to stdout — except the UDP receive path, which has its own
//! `udp.rs`. No socket is serviced here.

use std::io;
use std::os::fd::RawFd;

/// True when descriptor `fd` is open. Checked for stdin before any socket is
/// opened: when a program starts with fd 0 closed, the first socket it opens
/// gets fd 0 and must never be mistaken for stdin.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Sets `O_NONBLOCK` on `fd` and returns the flags it had before, for [`restore_flags`].
pub fn set_nonblocking(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL/F_SETFL read and write the status flags of a descriptor we were handed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags == -1 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == -1
        {
            return Err(io::Error::last_os_error());
        }
        Ok(flags)
    }
}

/// Puts back the status flags saved by [`set_nonblocking`].
pub fn restore_flags(fd: RawFd, flags: libc::c_int) {
    // SAFETY: F_SETFL on a descriptor we own the flags of; failure is harmless at exit.
    unsafe {
        libc::fcntl(fd, libc::F_SETFL, flags);
    }
}

/// Bytes the kernel holds for a socket: (received but not yet read, sent but
/// not yet acknowledged), from `SIOCINQ` and `SIOCOUTQ`.
pub fn socket_queues(fd: RawFd) -> io::Result<(usize, usize)> {
    let mut inq: libc::c_int = 0;
    let mut outq: libc::c_int = 0;
    // SAFETY: both ioctls write one int through the pointer we pass.
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
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the open-file soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = nofile_limit()?;
    if soft >= hard {
        return Ok(soft);
    }
    let limit = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(hard)
}

/// Writes all of `data` to `fd`, waiting in `poll(2)` when the descriptor is
/// non-blocking and full. Stdout shares its open file description with stdin
/// on a terminal, so making stdin non-blocking makes stdout non-blocking too;
/// this keeps a burst of output from failing with `EAGAIN`.
pub fn write_all_fd(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: write reads `data.len()` bytes from a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => wait_writable(fd)?,
            _ => return Err(err),
        }
    }
    Ok(())
}

fn wait_writable(fd: RawFd) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd we own.
    if unsafe { libc::poll(&mut pfd, 1, -1) } == -1 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on a socket about to be bound: the bind
/// then fixes only the source address, and the port is chosen at `connect()`
/// from the whole 4-tuple, so one source address can serve many destinations
/// and a bind never uses up an ephemeral port by itself.
pub fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one int through the pointer and length we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time this process has used so far (user + system), from `getrusage`.
pub fn cpu_time() -> std::time::Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == -1 {
        return std::time::Duration::ZERO;
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    std::time::Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
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
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

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
    fn write_all_fd_waits_out_a_full_nonblocking_descriptor() {
        let (writer, mut reader) = UnixStream::pair().unwrap();
        writer.set_nonblocking(true).unwrap();
        reader
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Far more than a socket buffer holds, so the writer meets EAGAIN.
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let drain = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).map(|_| got)
        });
        write_all_fd(writer.as_raw_fd(), &data).unwrap();
        drop(writer);
        let got = drain.join().unwrap().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes arrived changed or out of order");
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
