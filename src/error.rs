//! The one error type a command can end with, and its exit code.
//!
//! A failing *connection* is not an [`Error`]: it ends with a
//! [`CloseReason`](crate::conn::CloseReason) and the other clients go on. An
//! `Error` is what stops the whole command: a bad address, a port in use, a
//! refused connection. `main.rs` prints it once as `sockloop: {error}`.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Why a command could not run or had to stop.
#[derive(Debug)]
pub enum Error {
    /// A command-line value that parsed but makes no sense (exit code 2).
    Usage(String),
    /// An address string that is not `HOST:PORT` (exit code 2).
    BadAddr {
        /// What the user typed.
        input: String,
        /// What is wrong with it.
        why: String,
    },
    /// A host name that did not resolve to any address (exit code 1).
    Resolve {
        /// The `HOST:PORT` that was looked up.
        input: String,
        /// The resolver's answer.
        source: io::Error,
    },
    /// Binding a listening socket failed, e.g. the port is in use (exit code 1).
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The operating system's reason.
        source: io::Error,
        /// The option that chose the port (`--port`, `--line-port`, ...), when known.
        door: Option<&'static str>,
    },
    /// An outgoing connection failed, e.g. refused or unreachable (exit code 1).
    Connect {
        /// The server we tried to reach.
        addr: SocketAddr,
        /// The operating system's reason.
        source: io::Error,
    },
    /// `--verify` saw an echoed byte that differs from the one sent (exit code 1).
    Mismatch {
        /// Offset of the first differing byte in the stream.
        offset: u64,
        /// The byte that was sent.
        sent: u8,
        /// The byte that came back.
        got: u8,
    },
    /// A run finished but what it measured is a failure (exit code 1).
    Failed(String),
    /// Any other I/O failure, with what we were doing (exit code 1).
    Io {
        /// What we were doing, e.g. "registering stdin".
        what: String,
        /// The operating system's reason.
        source: io::Error,
    },
}

impl Error {
    /// The process exit code for this error: 2 for usage mistakes, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::BadAddr { .. } => 2,
            _ => 1,
        }
    }

    /// Names the option that chose the port of a failed bind (say
    /// `--line-port`), so the message says which door could not open.
    pub fn at_door(self, flag: &'static str) -> Error {
        match self {
            Error::Bind { addr, source, .. } => Error::Bind {
                addr,
                source,
                door: Some(flag),
            },
            other => other,
        }
    }

    /// Wraps an I/O error with a short description of what we were doing.
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::BadAddr { input, why } => write!(f, "bad address '{input}': {why}"),
            Error::Resolve { input, source } => write!(f, "cannot resolve '{input}': {source}"),
            Error::Bind { addr, source, door } => {
                let door = door.unwrap_or("--port");
                write!(f, "cannot listen on {addr} ({door}): {}", plain(source))?;
                match source.kind() {
                    io::ErrorKind::AddrInUse => write!(
                        f,
                        "; another program holds port {}: pick another with {door} P, \
                         or {door} 0 to let the system choose",
                        addr.port()
                    ),
                    io::ErrorKind::AddrNotAvailable => {
                        write!(f, "; {} is not an address of this machine", addr.ip())
                    }
                    io::ErrorKind::PermissionDenied if addr.port() < 1024 => write!(
                        f,
                        "; ports below 1024 need privileges: use a port from 1024 up"
                    ),
                    _ => Ok(()),
                }
            }
            Error::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {}", plain(source))
            }
            Error::Mismatch { offset, sent, got } => write!(
                f,
                "echo mismatch at byte offset {offset}: sent 0x{sent:02x}, got back 0x{got:02x}"
            ),
            Error::Failed(msg) => write!(f, "{msg}"),
            Error::Io { what, source } => write!(f, "{what}: {}", plain(source)),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Resolve { source, .. }
            | Error::Bind { source, .. }
            | Error::Connect { source, .. }
            | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The OS message in lower case without the "(os error N)" tail, so lines read
/// "cannot connect to 127.0.0.1:9: connection refused".
pub fn plain(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_plain_lowercase_text() {
        let err = Error::Connect {
            addr: "127.0.0.1:9".parse().unwrap(),
            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        assert_eq!(
            err.to_string(),
            "cannot connect to 127.0.0.1:9: connection refused"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn usage_mistakes_exit_2() {
        let err = Error::BadAddr {
            input: "x".into(),
            why: "no port".into(),
        };
        assert_eq!(err.exit_code(), 2);
    }
}
