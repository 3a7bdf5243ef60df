//! Per-client rate limits: `--rate-limit MSGS/s[,BYTES/s]` as token buckets.
//!
//! A client over its rate is *slowed*: the reactor stops reading from it until
//! its bucket has refilled, so the kernel's flow control pushes back on the
//! sender. It is never disconnected for it, and nobody else waits. No I/O here.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A rate limit as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Messages per second (frames for chat; reads for echo).
    pub msgs_per_s: f64,
    /// Bytes per second, if limited.
    pub bytes_per_s: Option<f64>,
}

impl FromStr for RateLimit {
    type Err = String;

    /// `100/s`, `100`, `100/s,65536/s`, `100,65536`.
    fn from_str(text: &str) -> Result<RateLimit, String> {
        let number = |part: &str, what: &str| -> Result<f64, String> {
            let digits = part.trim().trim_end_matches("/s");
            match digits.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
                _ => Err(format!(
                    "'{part}' is not a positive {what} rate (expected MSGS/s[,BYTES/s], e.g. 100/s,65536/s)"
                )),
            }
        };
        let mut parts = text.split(',');
        let msgs_per_s = number(parts.next().unwrap_or(""), "message")?;
        let bytes_per_s = parts.next().map(|p| number(p, "byte")).transpose()?;
        if parts.next().is_some() {
            return Err("expected at most two rates: MSGS/s[,BYTES/s]".to_string());
        }
        Ok(RateLimit {
            msgs_per_s,
            bytes_per_s,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.msgs_per_s)?;
        if let Some(bytes) = self.bytes_per_s {
            write!(f, ",{bytes}/s")?;
        }
        Ok(())
    }
}

/// Parses a rate given as `R` or `R/s` (messages per second), as SPEC.md writes them.
pub fn parse_per_second(text: &str) -> Result<f64, String> {
    let digits = text.trim().trim_end_matches("/s");
    match digits.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!(
            "'{text}' is not a rate (expected a number per second, e.g. 1000 or 1000/s)"
        )),
    }
}

/// A token bucket: holds up to one second's worth, and never less than one
/// whole token, so a rate below 1/s (`0.5/s`: a message every two seconds)
/// slows a client instead of starving it. Refills continuously.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    /// The most it holds: `max(rate, 1)` tokens.
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `rate` tokens per second.
    pub fn new(rate: f64, now: Instant) -> Bucket {
        let capacity = rate.max(1.0);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens.max(0.0)
    }

    /// Takes `n` tokens (the bucket may go into debt).
    pub fn take(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// How long until at least one token is available (zero if one is), at
    /// most [`units::MAX_DURATION`](crate::units::MAX_DURATION): a rate so slow
    /// that the wait would overflow a `Duration` or a clock waits that long.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            let seconds = (1.0 - self.tokens) / self.rate;
            crate::units::cap("--rate-limit", seconds).unwrap_or(crate::units::MAX_DURATION)
        }
    }
}

/// One client's buckets.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// Messages.
    pub msgs: Bucket,
    /// Bytes, if limited.
    pub bytes: Option<Bucket>,
}

impl Throttle {
    /// Full buckets for a limit.
    pub fn new(limit: RateLimit, now: Instant) -> Throttle {
        Throttle {
            msgs: Bucket::new(limit.msgs_per_s, now),
            bytes: limit.bytes_per_s.map(|rate| Bucket::new(rate, now)),
        }
    }

    /// How long reading must wait before the client is within its rate again.
    pub fn wait(&mut self, now: Instant) -> Duration {
        let bytes = self.bytes.as_mut().map_or(Duration::ZERO, |b| b.wait(now));
        self.msgs.wait(now).max(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_slower_than_any_clock_waits_the_longest_duration() {
        let now = Instant::now();
        let mut bucket = Bucket::new(1e-300, now);
        bucket.take(1.0, now);
        assert_eq!(bucket.wait(now), crate::units::MAX_DURATION);
        assert!(now.checked_add(bucket.wait(now)).is_some());
    }

    #[test]
    fn rates_take_an_optional_per_second() {
        assert_eq!(parse_per_second("1000/s"), Ok(1000.0));
        assert_eq!(parse_per_second("2.5"), Ok(2.5));
        assert!(parse_per_second("fast").unwrap_err().contains("1000/s"));
    }

    #[test]
    fn parses_every_spelling() {
        let limit: RateLimit = "100/s,65536/s".parse().unwrap();
        assert_eq!(limit.msgs_per_s, 100.0);
        assert_eq!(limit.bytes_per_s, Some(65536.0));
        assert_eq!("5".parse::<RateLimit>().unwrap().bytes_per_s, None);
        assert!("0/s".parse::<RateLimit>().is_err());
        assert!("x".parse::<RateLimit>().unwrap_err().contains("MSGS/s"));
        assert!("1,2,3".parse::<RateLimit>().is_err());
    }

    #[test]
    fn a_bucket_in_debt_says_how_long_to_wait() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10.0, start);
        bucket.take(15.0, start);
        let wait = bucket.wait(start);
        assert!((wait.as_secs_f64() - 0.6).abs() < 1e-6, "{wait:?}");
        assert_eq!(
            bucket.wait(start + Duration::from_millis(600)),
            Duration::ZERO
        );
        // It never holds more than one second's worth.
        assert_eq!(bucket.available(start + Duration::from_secs(60)), 10.0);
    }

    #[test]
    fn a_rate_below_one_per_second_fills_to_one_whole_token() {
        let start = Instant::now();
        let mut bucket = Bucket::new(0.5, start);
        assert_eq!(bucket.wait(start), Duration::ZERO);
        bucket.take(1.0, start);
        let wait = bucket.wait(start);
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.wait(start + wait), Duration::ZERO);
        assert_eq!(bucket.available(start + Duration::from_secs(60)), 1.0);
    }
}
