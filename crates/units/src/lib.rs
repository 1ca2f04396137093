//! Sizes and durations as people type them on a command line, and byte counts as people read them.
//!
//! This crate is the one place that decides what `--cache-size 10G`, `--blob-size 64M` or `--timeout 500ms`
//! mean, so every binary (hydrate, the benchmark) accepts the same spellings and reports the same errors.
//!
//! - [`parse_size`]: a whole or decimal number with an optional binary unit: `4096`, `64M`, `1.5G`, `10GiB`,
//!   `512 kb`. Units are powers of 1024 whatever the spelling (`K`, `KB` and `KiB` are all 1024 bytes: that
//!   is what the command-line options always meant); case does not matter.
//! - [`parse_duration`]: a whole or decimal number with an optional unit: `500ms`, `10s`, `1.5s`, `2m`,
//!   `2min`, `12h`, `30d`; a bare number is seconds.
//! - [`human`]: `12 B`, `1.5 KiB`, `3.0 GiB`.
//!
//! Both parsers compute in integers (no floating point), so every whole input is exact and a fraction is
//! rounded down to the byte or nanosecond; a value that does not fit is an error, never a silent saturation.

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

/// What [`parse_size`] accepts, quoted in its errors.
pub const SIZE_FORMS: &str = "a number of bytes with an optional binary unit B, K, M, G or T \
     (KB and KiB alike, all powers of 1024), e.g. 4096, 64M, 1.5G, 10GiB";

/// What [`parse_duration`] accepts, quoted in its errors.
pub const DURATION_FORMS: &str =
    "a number with an optional unit ms, s, m (or min), h or d (seconds if none), e.g. 500ms, 10s, 1.5s, 2m, 30d";

/// A size or duration that could not be parsed: says which text, what was wrong with it and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    kind: Kind,
    text: String,
    problem: Problem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Size,
    Duration,
}

/// What was wrong with the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The text is empty (or only white space).
    Empty,
    /// The text does not start with a number (`abc`, `-1M`, `.`).
    NotANumber,
    /// The number is followed by something that is not a unit this parser knows.
    UnknownUnit(String),
    /// The value does not fit (more than 16 EiB, or a duration beyond `Duration::MAX`).
    OutOfRange,
}

impl ParseError {
    fn new(kind: Kind, text: &str, problem: Problem) -> ParseError {
        ParseError {
            kind,
            text: text.to_owned(),
            problem,
        }
    }

    /// The text as it was given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What was wrong with it.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, forms) = match self.kind {
            Kind::Size => ("size", SIZE_FORMS),
            Kind::Duration => ("duration", DURATION_FORMS),
        };
        write!(f, "{what} {:?}: ", self.text)?;
        match &self.problem {
            Problem::Empty => write!(f, "empty")?,
            Problem::NotANumber => write!(f, "not a number")?,
            Problem::UnknownUnit(unit) => write!(f, "unknown unit {unit:?}")?,
            Problem::OutOfRange => write!(f, "too large")?,
        }
        write!(f, "; expected {forms}")
    }
}

impl std::error::Error for ParseError {}

/// A non-negative decimal number split into its whole part and its fraction `numerator / 10^digits`.
struct Decimal {
    whole: u128,
    numerator: u128,
    digits: u32,
}

/// Fraction digits kept; further ones are below a nanosecond or a byte for any unit here, and dropped.
const MAX_FRACTION_DIGITS: u32 = 18;

impl Decimal {
    /// Splits `text` into a leading decimal number and the rest (the unit, trimmed).
    fn split(text: &str) -> Option<(Decimal, &str)> {
        let end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, rest) = text.split_at(end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return None;
        }
        let whole = if whole.is_empty() {
            0
        } else {
            // Longer than u128 can hold: the caller's range check rejects it as too large.
            whole.parse().unwrap_or(u128::MAX)
        };
        let kept = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS as usize)];
        let numerator = if kept.is_empty() {
            0
        } else {
            kept.parse().ok()?
        };
        let decimal = Decimal {
            whole,
            numerator,
            digits: kept.len() as u32,
        };
        Some((decimal, rest.trim()))
    }

    /// `self * scale`, rounded down; `None` past u128.
    fn times(&self, scale: u128) -> Option<u128> {
        let whole = self.whole.checked_mul(scale)?;
        let fraction = self.numerator.checked_mul(scale)? / 10u128.pow(self.digits);
        whole.checked_add(fraction)
    }
}

/// Parses a size such as `4096`, `64M`, `1.5G` or `10GiB` into bytes (see [`SIZE_FORMS`]).
pub fn parse_size(text: &str) -> Result<u64, ParseError> {
    let error = |problem| ParseError::new(Kind::Size, text, problem);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error(Problem::Empty));
    }
    let (number, unit) = Decimal::split(trimmed).ok_or_else(|| error(Problem::NotANumber))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(error(Problem::UnknownUnit(unit.to_owned()))),
    };
    number
        .times(1u128 << shift)
        .and_then(|bytes| u64::try_from(bytes).ok())
        .ok_or_else(|| error(Problem::OutOfRange))
}

/// Parses a duration such as `500ms`, `10s`, `1.5s`, `2m` or `30d`; a bare number is seconds (see
/// [`DURATION_FORMS`]).
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let error = |problem| ParseError::new(Kind::Duration, text, problem);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error(Problem::Empty));
    }
    let (number, unit) = Decimal::split(trimmed).ok_or_else(|| error(Problem::NotANumber))?;
    // Case matters: "m" is minutes, and "M" or "MS" would only invite a guess.
    let nanos_per_unit = match unit {
        "ms" => 1_000_000,
        "" | "s" => NANOS_PER_SEC,
        "m" | "min" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        _ => return Err(error(Problem::UnknownUnit(unit.to_owned()))),
    };
    let nanos = number
        .times(nanos_per_unit)
        .ok_or_else(|| error(Problem::OutOfRange))?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| error(Problem::OutOfRange))?;
    Ok(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// A byte count for people: `12 B`, `1.5 KiB`, `3.0 GiB` (powers of 1024, one decimal past bytes, rounded half
/// up). The unit is the largest whose rounded value stays below 1024, so 1048575 bytes read `1.0 MiB`,
/// never `1024.0 KiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let (mut unit, mut tenths) = (0, 0);
    for (index, shift) in (10..=50).step_by(10).enumerate() {
        // Tenths of this unit, rounded half up, in u128 so 16 EiB cannot overflow.
        let divisor = 1u128 << shift;
        (unit, tenths) = (index, (u128::from(bytes) * 20 + divisor) / (2 * divisor));
        if tenths < 10_240 {
            break;
        }
    }
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_problems<T: fmt::Debug>(
        parse: fn(&str) -> Result<T, ParseError>,
        cases: &[(&str, Problem)],
    ) {
        for (text, problem) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.problem(), problem, "{text}");
            assert_eq!(error.text(), *text);
        }
    }

    #[test]
    fn sizes_in_every_spelling_the_options_ever_took() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("64K", 64 << 10),
            ("64kb", 64 << 10),
            ("64KiB", 64 << 10),
            ("32M", 32 << 20),
            ("256m", 256 << 20),
            ("1G", 1 << 30),
            ("10GiB", 10 << 30),
            ("2T", 2 << 40),
            ("1.5k", 1536),
            ("1.5G", 3 << 29),
            ("0.5M", 512 << 10),
            (".5K", 512),
            ("1.K", 1024),
            (" 64 M ", 64 << 20),
            ("1.2", 1),
            ("18446744073709551615", u64::MAX),
            ("16383.999999999999999T", (16384 << 40) - 1),
        ];
        for &(text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_was_wrong_and_what_is_accepted() {
        let cases: &[(&str, Problem)] = &[
            ("", Problem::Empty),
            ("  ", Problem::Empty),
            ("abc", Problem::NotANumber),
            ("-1M", Problem::NotANumber),
            (".", Problem::NotANumber),
            ("1.2.3K", Problem::NotANumber),
            ("12Q", Problem::UnknownUnit("Q".into())),
            ("3X", Problem::UnknownUnit("X".into())),
            ("1GG", Problem::UnknownUnit("GG".into())),
            ("1 000", Problem::UnknownUnit("000".into())),
            ("18446744073709551616", Problem::OutOfRange),
            ("99999999999999G", Problem::OutOfRange),
            ("16777216T", Problem::OutOfRange),
            (
                "999999999999999999999999999999999999999999999999",
                Problem::OutOfRange,
            ),
        ];
        assert_problems(parse_size, cases);
        assert_eq!(
            parse_size("12Q").unwrap_err().to_string(),
            format!("size \"12Q\": unknown unit \"Q\"; expected {SIZE_FORMS}")
        );
    }

    #[test]
    fn durations_in_every_spelling_the_options_ever_took() {
        let cases: &[(&str, Duration)] = &[
            ("0s", Duration::ZERO),
            ("7", Duration::from_secs(7)),
            ("10s", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("500ms", Duration::from_millis(500)),
            ("250ms", Duration::from_millis(250)),
            ("0.5ms", Duration::from_micros(500)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("12h", Duration::from_secs(12 * 3600)),
            ("30d", Duration::from_secs(30 * 86_400)),
            (" 5 s ", Duration::from_secs(5)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("18446744073709551615", Duration::from_secs(u64::MAX)),
        ];
        for &(text, duration) in cases {
            assert_eq!(parse_duration(text), Ok(duration), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_was_wrong_and_what_is_accepted() {
        let cases: &[(&str, Problem)] = &[
            ("", Problem::Empty),
            ("s", Problem::NotANumber),
            ("ten", Problem::NotANumber),
            ("-1s", Problem::NotANumber),
            ("3w", Problem::UnknownUnit("w".into())),
            ("5S", Problem::UnknownUnit("S".into())),
            ("1M", Problem::UnknownUnit("M".into())),
            ("18446744073709551616s", Problem::OutOfRange),
            ("999999999999999999d", Problem::OutOfRange),
        ];
        for (text, problem) in cases {
            assert_eq!(
                parse_duration(text).unwrap_err().problem(),
                problem,
                "{text}"
            );
        }
        assert_eq!(
            parse_duration("3w").unwrap_err().to_string(),
            format!("duration \"3w\": unknown unit \"w\"; expected {DURATION_FORMS}")
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(12), "12 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(1075), "1.0 KiB");
        assert_eq!(human(1076), "1.1 KiB");
        assert_eq!(human((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human((1 << 20) - 52), "1023.9 KiB");
        assert_eq!(human(5 << 40), "5.0 TiB");
        assert_eq!(human(5 << 50), "5.0 PiB");
        assert_eq!(human(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn errors_work_with_the_question_mark_of_boxed_errors() {
        fn boxed() -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
            Ok(parse_size("1Z")?)
        }
        assert!(boxed().unwrap_err().to_string().contains("1Z"));
    }
}
