//! The token map: which `mio::Token` stands for which source. The only place
//! that knows the numbers.
//!
//! | token                    | source                                  |
//! |--------------------------|-----------------------------------------|
//! | `0 ..`                   | TCP connections: the slab key *is* the token |
//! | `usize::MAX - 1`         | the UDP socket                          |
//! | `usize::MAX - 2`         | standard input                          |
//! | `usize::MAX - 3`         | the signal pipe (SIGINT, SIGTERM, SIGUSR1, SIGCONT) |
//! | `usize::MAX - 4`         | the deadline clock (a timerfd)          |
//! | `usize::MAX - 5`         | standard output (only while bytes wait for it) |
//! | `usize::MAX - 6`         | standard error (only while bytes wait for it) |
//! | `usize::MAX - 8 - i`     | TCP listener number `i` (up to 4)       |
//!
//! The fixed tokens sit at the top of the range, where a slab key never
//! reaches (it would need that many connections), so they cannot collide.

use mio::Token;

/// Most listeners one reactor serves (a chat server has a framed and a line port).
pub const MAX_LISTENERS: usize = 4;

const UDP: usize = usize::MAX - 1;
const STDIN: usize = usize::MAX - 2;
const SIGNALS: usize = usize::MAX - 3;
const TIMER: usize = usize::MAX - 4;
const STDOUT: usize = usize::MAX - 5;
const STDERR: usize = usize::MAX - 6;
const LISTENER_BASE: usize = usize::MAX - 8;

/// A poll source, as decoded from its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// TCP listener number `i`, in the order they were added.
    Listener(usize),
    /// The UDP socket.
    Udp,
    /// Standard input.
    Stdin,
    /// The signal pipe.
    Signals,
    /// The timerfd set to the nearest deadline.
    Timer,
    /// Standard output, registered while bytes wait for it.
    Stdout,
    /// Standard error, registered while bytes wait for it.
    Stderr,
    /// A TCP connection: its slab key.
    Conn(usize),
}

impl Source {
    /// The token to register this source with.
    pub fn token(self) -> Token {
        Token(match self {
            Source::Listener(i) => {
                assert!(i < MAX_LISTENERS, "at most {MAX_LISTENERS} listeners");
                LISTENER_BASE - i
            }
            Source::Udp => UDP,
            Source::Stdin => STDIN,
            Source::Signals => SIGNALS,
            Source::Timer => TIMER,
            Source::Stdout => STDOUT,
            Source::Stderr => STDERR,
            Source::Conn(key) => {
                debug_assert!(key < LISTENER_BASE - MAX_LISTENERS);
                key
            }
        })
    }
}

impl From<Token> for Source {
    fn from(token: Token) -> Source {
        match token.0 {
            UDP => Source::Udp,
            STDIN => Source::Stdin,
            SIGNALS => Source::Signals,
            TIMER => Source::Timer,
            STDOUT => Source::Stdout,
            STDERR => Source::Stderr,
            t if t <= LISTENER_BASE && t > LISTENER_BASE - MAX_LISTENERS => {
                Source::Listener(LISTENER_BASE - t)
            }
            key => Source::Conn(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_round_trips_through_its_token() {
        for source in [
            Source::Listener(0),
            Source::Listener(3),
            Source::Udp,
            Source::Stdin,
            Source::Signals,
            Source::Timer,
            Source::Stdout,
            Source::Stderr,
            Source::Conn(0),
            Source::Conn(19_999),
        ] {
            assert_eq!(Source::from(source.token()), source);
        }
    }
}
