//! The duration grammar of `ttl`, `stale` and `local`, checked at compile time.
//!
//! ```text
//! duration := "never"                      (ttl only)
//!           | [N "d"] [N "h"] [N "m"] [N "s"]   (at least one part, units in this order, each once)
//! N        := one or more ASCII digits
//! ```
//!
//! The total must be more than zero and at most 10,000 years (`cache_rules::MAX_TTL_SECS`, the runtime's
//! limit for a TTL).

use cache_rules::MAX_TTL_SECS;

/// A duration literal after parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// `"never"`.
    Never,
    /// A positive number of seconds.
    Secs(u64),
}

/// Whether the option accepts `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Never {
    Allowed,
    Rejected,
}

const UNITS: [(char, u64, &str); 4] =
    [('d', 86_400, "days"), ('h', 3_600, "hours"), ('m', 60, "minutes"), ('s', 1, "seconds")];

const EXAMPLES: &str = r#"e.g. "45s", "30m", "2h", "1d" or "1h30m""#;

/// Parses `text`; the error is a complete message for the user.
pub(crate) fn parse(text: &str, never: Never) -> Result<Parsed, String> {
    if text.is_empty() {
        return Err(format!("empty duration; expected a duration, {EXAMPLES}"));
    }
    if text == "never" {
        return match never {
            Never::Allowed => Ok(Parsed::Never),
            Never::Rejected => Err(format!("`never` is not allowed here; expected a duration, {EXAMPLES}")),
        };
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("a duration has no spaces and uses the units `d`, `h`, `m` and `s`, {EXAMPLES}"));
    }
    if text.starts_with('-') {
        return Err("a duration cannot be negative".to_owned());
    }

    let mut total: u64 = 0;
    // Index into UNITS of the last unit seen, to check order and duplicates.
    let mut last: Option<usize> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`; {EXAMPLES}"));
        }
        let (number, after) = rest.split_at(digits);
        if after.starts_with(['.', ',']) {
            return Err(
                "a duration takes whole numbers; combine units instead, e.g. \"1h30m\" rather than \"1.5h\"".to_owned()
            );
        }
        let letters = after.len() - after.trim_start_matches(|c: char| c.is_ascii_alphabetic()).len();
        let (unit, after) = after.split_at(letters);
        if unit.is_empty() {
            return Err(match after.chars().next() {
                None => format!("missing unit after `{number}`; expected `d`, `h`, `m` or `s`, {EXAMPLES}"),
                Some(c) => format!("unexpected `{c}` in duration; {EXAMPLES}"),
            });
        }
        let Some(index) = UNITS.iter().position(|(u, ..)| unit.len() == 1 && unit.starts_with(*u)) else {
            let hint = match unit {
                "ms" | "us" | "µs" | "ns" => "; durations are whole seconds at least",
                _ => "",
            };
            return Err(format!(
                "unknown unit `{unit}`; expected `d` (days), `h` (hours), `m` (minutes) or `s` (seconds){hint}"
            ));
        };
        let (symbol, scale, _) = UNITS[index];
        if let Some(prev) = last {
            if prev == index {
                return Err(format!("duplicate unit `{symbol}` in duration"));
            }
            if prev > index {
                return Err(format!(
                    "units out of order: `{symbol}` must come before `{}`; write them as days, hours, minutes, seconds (e.g. \"1h30m\")",
                    UNITS[prev].0
                ));
            }
        }
        last = Some(index);
        let too_long = || format!("duration is too long: the maximum is 10,000 years{}", never_hint(never));
        let value: u64 = number.parse().map_err(|_| too_long())?;
        total = value
            .checked_mul(scale)
            .and_then(|secs| total.checked_add(secs))
            .filter(|&t| t <= MAX_TTL_SECS)
            .ok_or_else(too_long)?;
        rest = after;
    }
    if total == 0 {
        return Err("a duration must be longer than zero".to_owned());
    }
    Ok(Parsed::Secs(total))
}

fn never_hint(never: Never) -> &'static str {
    match never {
        Never::Allowed => "; use \"never\" for entries that do not expire",
        Never::Rejected => "",
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Never, Parsed, MAX_TTL_SECS};

    fn secs(text: &str) -> u64 {
        match parse(text, Never::Allowed) {
            Ok(Parsed::Secs(s)) => s,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(text, Never::Allowed) {
            Err(e) => e,
            Ok(p) => panic!("{text:?} parsed as {p:?}"),
        }
    }

    #[test]
    fn accepts_each_unit_and_combinations() {
        assert_eq!(secs("45s"), 45);
        assert_eq!(secs("30m"), 1_800);
        assert_eq!(secs("2h"), 7_200);
        assert_eq!(secs("1d"), 86_400);
        assert_eq!(secs("1h30m"), 5_400);
        assert_eq!(secs("1d2h3m4s"), 86_400 + 7_200 + 180 + 4);
        assert_eq!(secs("1d4s"), 86_404);
        assert_eq!(secs("90m"), 5_400);
        assert_eq!(secs("1h0m"), 3_600);
        assert_eq!(secs("007s"), 7);
    }

    #[test]
    fn never() {
        assert_eq!(parse("never", Never::Allowed), Ok(Parsed::Never));
        let e = parse("never", Never::Rejected).unwrap_err();
        assert!(e.contains("`never` is not allowed here"), "{e}");
    }

    #[test]
    fn rejects_words_and_spaces() {
        assert!(err("30 minutes").contains("no spaces"));
        assert!(err(" 30m").contains("no spaces"));
        assert!(err("30minutes").contains("unknown unit `minutes`"));
        assert!(err("1w").contains("unknown unit `w`"));
        assert!(err("5x").contains("unknown unit `x`"));
        assert!(err("500ms").contains("whole seconds"));
        assert!(err("M").contains("expected a number at `M`"));
        assert!(err("30M").contains("unknown unit `M`"));
    }

    #[test]
    fn rejects_zero_negative_empty_fractions() {
        assert!(err("0s").contains("longer than zero"));
        assert!(err("0h0m").contains("longer than zero"));
        assert!(err("-1m").contains("negative"));
        assert!(err("").contains("empty duration"));
        assert!(err("1.5h").contains("whole numbers"));
        assert!(err("30").contains("missing unit after `30`"));
        assert!(err("1h30").contains("missing unit after `30`"));
        assert!(err("1h_30m").contains("expected a number at `_30m`"));
        assert!(err("5m!").contains("expected a number at `!`"));
        assert!(err("h").contains("expected a number"));
        assert!(err("+5m").contains("expected a number"));
    }

    #[test]
    fn rejects_duplicates_and_disorder() {
        assert_eq!(err("1h2h"), "duplicate unit `h` in duration");
        assert!(err("30m1h").starts_with("units out of order: `h` must come before `m`"));
        assert!(err("5s1d").starts_with("units out of order: `d` must come before `s`"));
    }

    #[test]
    fn rejects_overflow() {
        assert!(err("99999999999999999999999s").contains("too long"));
        assert!(err("18446744073709551615d").contains("too long"));
        assert!(err("3650001d").contains("too long"));
        assert!(err("3650001d").contains("\"never\""));
        assert_eq!(secs("3650000d"), MAX_TTL_SECS);
        let e = parse("3650001d", Never::Rejected).unwrap_err();
        assert!(!e.contains("never"), "{e}");
    }
}
