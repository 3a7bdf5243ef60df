//! `--start-at TIME`: the wall-clock moment generators on several hosts
//! begin their load together, so their interval logs cover the same seconds
//! and `stress merge` adds up histograms of the same load.
//!
//! Parsing only: text and "now" in, a `SystemTime` or a message out; nothing
//! here reads a clock or sleeps (the run turns the time into a deadline of
//! its one loop). Clocks of different hosts agree only as well as NTP keeps
//! them; that error is the user's to know, and the interval log records each
//! generator's own start so it can be checked afterwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Local, NaiveTime, TimeZone};

/// The furthest ahead a start may be: further is taken for a typo.
pub const MAX_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// What `--start-at` accepts, for its help and its errors.
pub const FORMATS: &str = "@UNIX_SECONDS (e.g. @1764072000, what `date +%s` prints), \
     an RFC 3339 time (2026-11-25T12:00:00Z, 2026-11-25T13:00:00.5+01:00) or a local \
     time of today (12:00, 12:00:05)";

/// Parses `text` as one of [`FORMATS`]; the time must lie ahead of `now`,
/// by at most [`MAX_AHEAD`].
pub fn parse(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    let at = if let Some(seconds) = text.strip_prefix('@') {
        seconds
            .parse()
            .ok()
            .and_then(|s: f64| Duration::try_from_secs_f64(s).ok())
            .and_then(|since| UNIX_EPOCH.checked_add(since))
            .ok_or_else(|| {
                format!("{text:?} is not @ and a number of seconds since 1970 that a clock holds")
            })?
    } else if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        SystemTime::from(at)
    } else if let Some(at) = today_at(text, now) {
        at
    } else {
        return Err(format!("{text:?} is not a time: use {FORMATS}"));
    };
    match at.duration_since(now) {
        Err(past) => Err(format!(
            "{text} is {:.1} s in the past (generators that are to start together need a \
             time still ahead of every one of them)",
            past.duration().as_secs_f64()
        )),
        Ok(ahead) if ahead > MAX_AHEAD => Err(format!(
            "{text} is {:.1} h ahead; at most {} h is accepted",
            ahead.as_secs_f64() / 3600.0,
            MAX_AHEAD.as_secs() / 3600
        )),
        Ok(_) => Ok(at),
    }
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fff` as a local time on `now`'s day.
fn today_at(text: &str, now: SystemTime) -> Option<SystemTime> {
    let time = ["%H:%M:%S%.f", "%H:%M"]
        .iter()
        .find_map(|format| NaiveTime::parse_from_str(text, format).ok())?;
    let today = DateTime::<Local>::from(now).date_naive();
    let local = Local
        .from_local_datetime(&today.and_time(time))
        .earliest()?;
    Some(SystemTime::from(local))
}

/// A wall-clock time as people and logs write it: `2026-11-25T12:00:00.000Z`;
/// `?` for a time the calendar cannot show (before 1970, or past year 262143).
pub fn utc_text(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| {
            let secs = i64::try_from(since.as_secs()).ok()?;
            DateTime::from_timestamp(secs, since.subsec_nanos())
        })
        .map_or_else(
            || "?".to_string(),
            |at| at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        )
}

/// Seconds since 1970 as a float (0 for times before it).
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_764_072_000)
    }

    #[test]
    fn unix_seconds_and_rfc3339_name_the_same_instant() {
        let a = parse("@1764072010.5", now()).unwrap();
        let b = parse("2025-11-25T12:00:10.5Z", now()).unwrap();
        let c = parse("2025-11-25T13:00:10.500+01:00", now()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(
            a.duration_since(now()).unwrap(),
            Duration::from_millis(10_500)
        );
        assert_eq!(utc_text(a), "2025-11-25T12:00:10.500Z");
        assert_eq!(utc_text(UNIX_EPOCH + Duration::from_secs(1 << 62)), "?");
        assert_eq!(unix_seconds(a), 1_764_072_010.5);
    }

    #[test]
    fn a_clock_time_is_today_in_local_time() {
        let local_now = DateTime::<Local>::from(now());
        let ahead = local_now + chrono::Duration::minutes(5);
        if ahead.date_naive() != local_now.date_naive() {
            return; // 23:55 local: "today" ends before five minutes pass.
        }
        let text = ahead.format("%H:%M:%S").to_string();
        let at = parse(&text, now()).unwrap();
        assert_eq!(at.duration_since(now()).unwrap(), Duration::from_secs(300));
    }

    #[test]
    fn the_past_a_far_future_and_nonsense_are_refused_with_reasons() {
        let past = parse("@1764071990", now()).unwrap_err();
        assert!(past.contains("10.0 s in the past"), "{past}");
        let far = parse("@1764272000", now()).unwrap_err();
        assert!(far.contains("h ahead"), "{far}");
        let bad = parse("soon", now()).unwrap_err();
        assert!(
            bad.contains("is not a time") && bad.contains("@UNIX_SECONDS"),
            "{bad}"
        );
        let bad = parse("@x", now()).unwrap_err();
        assert!(bad.contains("seconds since 1970"), "{bad}");
        // Beyond what a Duration or the clock holds: refused, not a panic.
        for beyond in ["@1e30", "@1e19", "@-1", "@inf"] {
            let far = parse(beyond, now()).unwrap_err();
            assert!(
                far.contains("seconds since 1970") || far.contains("h ahead"),
                "{far}"
            );
        }
    }
}
