//! Numbers with units, as people type them on a command line: sizes (`64K`,
//! `1M`, `16MiB`), durations (`500ms`, `10s`, `2m`), rates (`1000`, `1000/s`)
//! and addresses to bind (`0.0.0.0`, `::`, `[::1]`, `localhost`).
//!
//! One parser per kind, used by every option of that kind, so `--max-frame
//! 64K` works wherever `--max-backlog 64K` does. Each returns a message that
//! says what was expected, which clap puts after the option's name.
//! *Invariant:* no I/O, except [`parse_bind`] asking the resolver for a name.

use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

/// Parses a byte count: `65536`, `64K`, `64k`, `64KiB`, `1M`, `16MB`, `2G`.
/// Suffixes are binary (K = 1024). Zero is allowed; callers that need at
/// least one byte check it (see [`parse_size_min1`]).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "'{text}' is not a size (expected bytes, e.g. 65536, 64K, 1M)"
        ));
    }
    let number: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is too large"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in '{text}' (use K, M or G)")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// [`parse_size`], refusing zero.
pub fn parse_size_min1(text: &str) -> Result<usize, String> {
    match parse_size(text)? {
        0 => Err("must be at least 1 byte".to_string()),
        n => Ok(n),
    }
}

/// Parses a duration: `500ms`, `10s`, `1.5s`, `2m`, `1h`, `250us`; a bare
/// number is seconds (`10` = `10s`), as the options always took it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!(
            "'{text}' is not a duration (expected e.g. 500ms, 10s, 2m; a bare number is seconds)"
        )
    })?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use us, ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))
}

/// [`parse_duration`], refusing zero.
pub fn parse_duration_nonzero(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be more than 0".to_string()),
        d => Ok(d),
    }
}

/// Parses an address to bind: an IPv4 or IPv6 literal, an IPv6 literal in
/// brackets (`[::1]`, as it is written in `HOST:PORT`), or a host name such
/// as `localhost`, resolved to its first address (IPv4 preferred, since the
/// usual clients try it first).
pub fn parse_bind(text: &str) -> Result<IpAddr, String> {
    let t = text.trim();
    let inner = t
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(t);
    if let Ok(ip) = inner.parse::<IpAddr>() {
        return Ok(ip);
    }
    if t.contains(':') {
        return Err(format!(
            "'{text}' is an address to bind, not HOST:PORT: give the port with --port"
        ));
    }
    let valid = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid {
        return Err(format!("'{text}' is not an IP address or host name"));
    }
    let found: Vec<IpAddr> = (inner, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{text}': {e}"))?
        .map(|a| a.ip())
        .collect();
    found
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| found.first())
        .copied()
        .ok_or_else(|| format!("'{text}' resolves to no address"))
}

/// The longest duration any option accepts: ten years. Longer is taken for
/// a typo, and it keeps every deadline computed from an option (now plus
/// the option, plus a few more of them) far inside what `Instant`,
/// `SystemTime` and a `u64` of nanoseconds hold, so none of them can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration option's value, as a float of seconds or already a
/// [`Duration`], on its way to becoming a checked `Duration` ([`cap`]).
pub trait DurationValue: Copy {
    /// The value as a `Duration`; `None` when no `Duration` holds it
    /// (negative, not a number, or too large).
    fn to_duration(self) -> Option<Duration>;
}

impl DurationValue for f64 {
    fn to_duration(self) -> Option<Duration> {
        Duration::try_from_secs_f64(self).ok()
    }
}

impl DurationValue for Duration {
    fn to_duration(self) -> Option<Duration> {
        Some(self)
    }
}

/// The value of duration option `option` as a `Duration` of at most
/// [`MAX_DURATION`]; the error names the option and the bound.
pub fn cap(option: &str, value: impl DurationValue) -> Result<Duration, String> {
    match value.to_duration() {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "{option} must be 0 to {} seconds (10 years)",
            MAX_DURATION.as_secs()
        )),
    }
}

/// Checks a pacing rate (per second) against [`MAX_DURATION`]: 0 (no
/// pacing, or whatever the option makes of it) or a rate whose period, the
/// time between two messages, is at most `MAX_DURATION`. A slower rate would
/// schedule messages beyond what a clock holds.
pub fn check_rate(option: &str, per_second: f64) -> Result<(), String> {
    if per_second == 0.0 || cap(option, 1.0 / per_second).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "{option} is too slow: at least one per {} seconds (10 years) is needed",
            MAX_DURATION.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_in_any_case() {
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("64K"), Ok(65_536));
        assert_eq!(parse_size("64k"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size_min1("0").is_err());
        assert!(parse_size("1T").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999K").is_err());
    }

    #[test]
    fn durations_take_units_and_a_bare_number_is_seconds() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration_nonzero("0s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn a_capped_duration_fits_every_clock_and_a_longer_one_is_refused() {
        assert_eq!(cap("--x", 1.5), Ok(Duration::from_millis(1500)));
        assert_eq!(cap("--x", MAX_DURATION), Ok(MAX_DURATION));
        for bad in [1e20, 1e19, 1e12, -1.0, f64::NAN, f64::INFINITY] {
            let err = cap("--x", bad).unwrap_err();
            assert!(err.starts_with("--x must be 0 to"), "{bad}: {err}");
        }
        assert!(cap("--x", Duration::MAX).is_err());
        // Four of the longest, added to now, still fit an Instant and nanoseconds in a u64.
        assert!(std::time::Instant::now()
            .checked_add(MAX_DURATION * 4)
            .is_some());
        assert!((MAX_DURATION * 4).as_nanos() < u128::from(u64::MAX));
        assert_eq!(check_rate("--rate", 0.0), Ok(()));
        assert_eq!(check_rate("--rate", 1e-8), Ok(()));
        assert!(check_rate("--rate", 1e-30)
            .unwrap_err()
            .contains("too slow"));
        assert!(check_rate("--rate", -1.0).is_err());
    }

    #[test]
    fn bind_addresses_take_literals_brackets_and_names() {
        assert_eq!(parse_bind("0.0.0.0"), Ok("0.0.0.0".parse().unwrap()));
        assert_eq!(parse_bind("::"), Ok("::".parse().unwrap()));
        assert_eq!(parse_bind("[::1]"), Ok("::1".parse().unwrap()));
        assert!(parse_bind("localhost").unwrap().is_loopback());
        let err = parse_bind("127.0.0.1:8080").unwrap_err();
        assert!(err.contains("--port"), "{err}");
        assert!(parse_bind("no such host!").is_err());
    }
}
