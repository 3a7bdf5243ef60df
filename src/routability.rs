//! Return routability for UDP, after RFC 9000 §8.1: an address a datagram
//! came from may not be the address of whoever sent it, so a server that
//! answers every datagram in full is an amplifier pointed at whoever's
//! address was forged. Until an address has shown that it receives what we
//! send, it is sent at most [`AMPLIFICATION`] times the bytes it sent us
//! ([`Budget`]).
//!
//! It shows it by echoing a token. The token is an HMAC-SHA256 of the address
//! and the current minute under a key drawn at random when the program
//! starts, cut to 64 bits ([`Tokens`]): nothing is stored for an address
//! before it answers, an off-path sender cannot guess it, and it is good for
//! the minute it was made in and the next.
//!
//! Both halves are chat messages, so the course's Python peers show them as
//! text and a person there can answer by typing:
//!
//! * the challenge, a message whose text contains `<ECHO 0123456789abcdef>`
//!   ([`challenge_text`]);
//! * the answer, a message whose whole text is that `<ECHO ...>`
//!   ([`answer_text`]), sent back to the address that asked. `sockloop
//!   udp-chat` answers by itself, never with more bytes than the challenge
//!   had, so answering cannot be turned into an amplifier either.
//!
//! *Invariant:* no I/O; the key never leaves this file.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::SystemRandom;

/// How many times the bytes an unproven address sent us it may be sent.
pub const AMPLIFICATION: u64 = 3;

/// How long a token's minute lasts; a token is good for its own and the next.
pub const TOKEN_PERIOD: Duration = Duration::from_secs(60);

/// What an answer's text starts with.
const ECHO_OPEN: &str = "<ECHO ";

/// Makes and checks tokens.
pub struct Tokens {
    key: hmac::Key,
    start: Instant,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

impl Tokens {
    /// Tokens under a fresh random key. Fails only if the system has no
    /// randomness to give, which is reported as an I/O error.
    pub fn new() -> std::io::Result<Tokens> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| std::io::Error::other("no randomness for the UDP tokens"))?;
        Ok(Tokens {
            key,
            start: Instant::now(),
        })
    }

    /// The token for `addr` now.
    pub fn token(&self, addr: SocketAddr, now: Instant) -> u64 {
        self.token_in(addr, self.period(now))
    }

    /// True when `token` is `addr`'s, made now or in the period before.
    pub fn check(&self, addr: SocketAddr, token: u64, now: Instant) -> bool {
        let period = self.period(now);
        token == self.token_in(addr, period)
            || period > 0 && token == self.token_in(addr, period - 1)
    }

    fn period(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / TOKEN_PERIOD.as_secs()
    }

    fn token_in(&self, addr: SocketAddr, period: u64) -> u64 {
        let mut input = Vec::with_capacity(28);
        match addr {
            SocketAddr::V4(v4) => input.extend_from_slice(&v4.ip().to_ipv6_mapped().octets()),
            SocketAddr::V6(v6) => input.extend_from_slice(&v6.ip().octets()),
        }
        input.extend_from_slice(&addr.port().to_be_bytes());
        input.extend_from_slice(&period.to_be_bytes());
        let tag = hmac::sign(&self.key, &input);
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_be_bytes(first)
    }
}

/// What a challenge's text says before its token.
const CHALLENGE_OPEN: &str = "to hear the room at this address, answer ";

/// The text of a challenge carrying `token`.
pub fn challenge_text(token: u64) -> String {
    format!("{CHALLENGE_OPEN}{ECHO_OPEN}{token:016x}>")
}

/// The text of the answer to a challenge carrying `token`.
pub fn answer_text(token: u64) -> String {
    format!("{ECHO_OPEN}{token:016x}>")
}

/// The token a challenge carries, when its whole text is one (as
/// [`challenge_text`] writes it): a message that merely mentions an
/// `<ECHO ...>` is a message, to be shown, not answered.
pub fn parse_challenge(text: &str) -> Option<u64> {
    let rest = text.trim().strip_prefix(CHALLENGE_OPEN)?;
    if rest.len() != ECHO_OPEN.len() + 17 {
        return None;
    }
    parse_token(rest)
}

/// The token an answer carries: its whole text (trimmed) is `<ECHO ...>`.
pub fn parse_answer(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.len() != ECHO_OPEN.len() + 17 {
        return None;
    }
    parse_token(text)
}

/// `<ECHO 0123456789abcdef>` at the start of `text`.
fn parse_token(text: &str) -> Option<u64> {
    let digits = text.strip_prefix(ECHO_OPEN)?.get(..17)?;
    let digits = digits.strip_suffix('>')?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// What an address that has not proven itself may still be sent: at most
/// [`AMPLIFICATION`] times what it sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Bytes received from it.
    received: u64,
    /// Bytes sent to it.
    sent: u64,
}

impl Budget {
    /// It sent us `bytes`.
    pub fn received(&mut self, bytes: usize) {
        self.received += bytes as u64;
    }

    /// Whether `bytes` more may be sent to it; if so, they are counted.
    pub fn spend(&mut self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        if self.sent + bytes > self.received.saturating_mul(AMPLIFICATION) {
            return false;
        }
        self.sent += bytes;
        true
    }

    /// Whether `bytes` more could be sent now, without counting them.
    pub fn allows(&self, bytes: usize) -> bool {
        self.sent + bytes as u64 <= self.received.saturating_mul(AMPLIFICATION)
    }

    /// Bytes received and sent so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.received, self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_token_is_its_addresses_for_two_periods() {
        let tokens = Tokens::new().unwrap();
        let now = Instant::now();
        let token = tokens.token(addr(1), now);
        assert!(tokens.check(addr(1), token, now));
        assert!(!tokens.check(addr(2), token, now));
        assert!(!tokens.check(addr(1), token ^ 1, now));
        assert!(tokens.check(addr(1), token, now + TOKEN_PERIOD));
        assert!(!tokens.check(addr(1), token, now + TOKEN_PERIOD * 3));
        // Another process's key makes other tokens.
        let other = Tokens::new().unwrap();
        assert_ne!(other.token(addr(1), now), token);
    }

    #[test]
    fn challenge_and_answer_read_back() {
        let token = 0x0123_4567_89ab_cdef;
        let challenge = challenge_text(token);
        assert_eq!(parse_challenge(&challenge), Some(token));
        assert_eq!(parse_answer(&answer_text(token)), Some(token));
        assert_eq!(
            parse_answer(&format!(" {} ", answer_text(token))),
            Some(token)
        );
        assert_eq!(parse_answer(&challenge), None, "a challenge is no answer");
        assert_eq!(parse_answer("<ECHO 0123456789abcdeg>"), None);
        assert_eq!(parse_answer("<ECHO 0123>"), None);
        assert_eq!(parse_challenge("no token here"), None);
        assert_eq!(parse_challenge("see <ECHO 0123456789abcdef>"), None);
        assert_eq!(parse_challenge(&format!("{challenge}!")), None);
    }

    #[test]
    fn an_unproven_address_gets_three_times_what_it_sent() {
        let mut budget = Budget::default();
        assert!(!budget.spend(1), "nothing sent, nothing owed");
        budget.received(40);
        assert!(budget.spend(100));
        assert!(!budget.spend(21));
        assert!(budget.allows(20));
        assert!(budget.spend(20));
        assert_eq!(budget.counts(), (40, 120));
    }
}
