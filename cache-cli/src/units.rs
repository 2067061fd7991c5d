//! Times, durations and sizes, for people and for JSON.
//!
//! Timestamps come from the server as microseconds since the Unix epoch (see `sql.rs`) and are shown in UTC
//! as RFC 3339, so the output does not depend on the client's time zone. Durations (time left, age) are
//! computed on the server's clock, so a skewed client clock cannot distort them.

use serde::{Serialize, Serializer};
use std::fmt;

/// A point in time, in microseconds since 1970-01-01T00:00:00Z. Shown and serialized as RFC 3339 in UTC
/// with millisecond precision, e.g. `2026-11-29T08:15:02.123Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// This machine's clock now.
    pub fn now() -> Timestamp {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MICROS_PER_DAY: i64 = 86_400_000_000;
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let of_day = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let (secs, millis) = (of_day / 1_000_000, of_day % 1_000_000 / 1000);
        let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
        write!(f, "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A duration in microseconds: how long a computation took, or the sum of several. Serialized as
/// milliseconds with the fraction kept (`1234.567`), so a computation shorter than a millisecond is not 0;
/// shown to people with about two significant digits below a minute (`40µs`, `2.5ms`, `850ms`, `1.8s`),
/// and as [`duration_ms`] above (`29m 59s`, `2h 5m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Micros(pub u64);

impl std::ops::Add for Micros {
    type Output = Micros;

    fn add(self, other: Micros) -> Micros {
        Micros(self.0.saturating_add(other.0))
    }
}

impl std::iter::Sum for Micros {
    fn sum<I: Iterator<Item = Micros>>(iter: I) -> Micros {
        iter.fold(Micros(0), |sum, us| sum + us)
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        match us {
            0..1_000 => write!(f, "{us}µs"),
            1_000..10_000 => write!(f, "{:.1}ms", us as f64 / 1e3),
            10_000..1_000_000 => write!(f, "{}ms", us / 1000),
            1_000_000..60_000_000 => write!(f, "{:.1}s", us as f64 / 1e6),
            _ => f.write_str(&duration_ms(i64::try_from(us / 1000).unwrap_or(i64::MAX))),
        }
    }
}

impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0 as f64 / 1000.0)
    }
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), by Howard Hinnant's
/// `civil_from_days`, exact for every date PostgreSQL can store.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration in milliseconds for people, to the two largest units: `850ms`, `45s`, `29m 59s`, `2h 5m`,
/// `3d 4h`. Negative durations are shown by their size.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.unsigned_abs();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Time left before an expiry, for people: `never`, `in 29m 59s`, `expired 3s ago`.
pub fn ttl(ms: Option<i64>) -> String {
    match ms {
        None => "never".to_owned(),
        Some(ms) if ms > 0 => format!("in {}", duration_ms(ms)),
        Some(ms) => format!("expired {} ago", duration_ms(ms)),
    }
}

/// An optional timestamp for people: `never` when absent (a vacuum that never ran).
pub fn when(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "never".to_owned(), |at| at.to_string())
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Micro-USD as dollars: cents from a dollar up (`$1,234.56`), four decimals below (`$0.0054`), `$0` for none.
pub fn usd(micros: u64) -> String {
    match micros {
        0 => "$0".to_owned(),
        1..1_000_000 => format!("${:.4}", micros as f64 / 1e6),
        _ => {
            let cents = micros.saturating_add(5_000) / 10_000;
            format!("${}.{:02}", count(cents / 100), cents % 100)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_from_micros() {
        assert_eq!(usd(0), "$0");
        assert_eq!(usd(5_400), "$0.0054");
        assert_eq!(usd(999_999), "$1.0000");
        assert_eq!(usd(1_000_000), "$1.00");
        assert_eq!(usd(1_234_567_891), "$1,234.57");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:59.999Z: a leap day, at the last millisecond.
        assert_eq!(Timestamp(1_709_251_199_999_000).to_string(), "2024-02-29T23:59:59.999Z");
        assert_eq!(Timestamp(-1_000).to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(Timestamp(951_782_400_000_000).to_string(), "2000-02-29T00:00:00.000Z");
        assert_eq!(serde_json::to_string(&Timestamp(0)).ok().as_deref(), Some("\"1970-01-01T00:00:00.000Z\""));
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(45_000), "45s");
        assert_eq!(duration_ms(1_799_000), "29m 59s");
        assert_eq!(duration_ms(7_500_000), "2h 5m");
        assert_eq!(duration_ms(-3_000), "3s");
        assert_eq!(Micros(0).to_string(), "0µs");
        assert_eq!(Micros(40).to_string(), "40µs");
        assert_eq!(Micros(2_500).to_string(), "2.5ms");
        assert_eq!(Micros(850_000).to_string(), "850ms");
        assert_eq!(Micros(1_834_207).to_string(), "1.8s");
        assert_eq!(Micros(1_799_000_000).to_string(), "29m 59s");
        assert_eq!(Micros(7_500_000_000).to_string(), "2h 5m");
        assert_eq!(serde_json::to_string(&Micros(1_500)).ok().as_deref(), Some("1.5"));
        assert_eq!(serde_json::to_string(&Micros(1)).ok().as_deref(), Some("0.001"));
        assert_eq!([Micros(1), Micros(2)].into_iter().sum::<Micros>(), Micros(3));
        assert_eq!(ttl(None), "never");
        assert_eq!(ttl(Some(60_000)), "in 1m 0s");
        assert_eq!(ttl(Some(-3_000)), "expired 3s ago");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
    }
}
