//! Parsers for the value syntaxes of `proxy.toml`: sizes, durations and status ranges.
//!
//! Each returns `Err(message)` with the message shown to the operator after the key.

use std::time::Duration;

use super::file::Scalar;
use super::StatusRange;

/// Size units, matched case-insensitively. `KB`/`MB`/… are decimal (as disks and `df -H`
/// count), `KiB`/`MiB`/… binary; both are common in configs, so both are accepted and spelt
/// out instead of guessing what a bare `K` means.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// A byte count: an integer, or a string of digits with an optional unit (`"64MiB"`, `"1MB"`,
/// `"512"`, `"16 KiB"`). Negative values and values above `u64::MAX` are refused.
pub(super) fn parse_size(value: &Scalar) -> Result<u64, String> {
    let text = match value {
        Scalar::Int(n) => return u64::try_from(*n).map_err(|_| negative_size(*n)),
        Scalar::Str(s) => s.trim(),
    };
    let bad = || {
        format!("invalid size \"{text}\" (expected digits and an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    };
    if text.starts_with('-') {
        return Err(format!("invalid size \"{text}\" (must not be negative)"));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let unit = unit.trim_start().to_ascii_lowercase();
    let Some(&(_, multiplier)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(bad());
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

fn negative_size(n: i64) -> String {
    format!("invalid size {n} (must not be negative)")
}

/// A duration in humantime syntax (`"30s"`, `"500ms"`, `"2m"`, `"1h 30m"`). Zero is refused:
/// almost every duration in the config is a timeout, and a zero timeout fails every request.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    match parse_duration_or_zero(text) {
        Ok(d) if d.is_zero() => Err(format!(
            "invalid duration \"{text}\" (must be greater than 0)"
        )),
        other => other,
    }
}

/// A duration where zero means "off" (`"0s"`; humantime wants the unit even for zero).
pub(super) fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) => Ok(d),
        // humantime lists the units itself when one is unknown; otherwise show examples.
        Err(e @ humantime::DurationError::UnknownUnit { .. }) => {
            Err(format!("invalid duration \"{text}\": {e}"))
        }
        Err(e) => Err(format!(
            "invalid duration \"{text}\": {e} (expected e.g. \"30s\", \"500ms\", \"2m\")"
        )),
    }
}

/// A status set entry: `"2xx"` (a class), `"201"` or `201` (one status), `"200-299"` (a range,
/// inclusive). Statuses must lie in 100..=599.
pub(super) fn parse_status_range(value: &Scalar) -> Result<StatusRange, String> {
    let text = match value {
        Scalar::Int(n) => n.to_string(),
        Scalar::Str(s) => s.trim().to_owned(),
    };
    let bad = || {
        format!("invalid status \"{text}\" (expected a class such as \"2xx\", a status such as \"201\", or a range such as \"200-299\", within 100-599)")
    };
    let range = if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
        let class: u16 = class.parse().map_err(|_| bad())?;
        StatusRange {
            lo: class.saturating_mul(100),
            hi: class.saturating_mul(100).saturating_add(99),
        }
    } else if let Some((lo, hi)) = text.split_once('-') {
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        StatusRange { lo, hi }
    } else {
        let status: u16 = text.parse().map_err(|_| bad())?;
        StatusRange {
            lo: status,
            hi: status,
        }
    };
    if range.lo < 100 || range.hi > 599 || range.lo > range.hi {
        return Err(bad());
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(text: &str) -> Result<u64, String> {
        parse_size(&Scalar::Str(text.to_owned()))
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("512", 512),
            ("0", 0),
            ("512B", 512),
            ("16KiB", 16 * 1024),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("1KB", 1000),
            ("1MB", 1_000_000),
            ("3GB", 3_000_000_000),
            ("16 KiB", 16 * 1024),
            ("64mib", 64 << 20),
            (" 8KiB ", 8192),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, want) in ok {
            assert_eq!(size(text), Ok(*want), "{text}");
        }
        for text in [
            "",
            "MiB",
            "-1",
            "-1KiB",
            "1.5GiB",
            "1K",
            "1 M",
            "12XB",
            "0x10",
            "18446744073709551616",
            "17179869184GiB",
        ] {
            assert!(size(text).is_err(), "{text} should be refused");
        }
        assert_eq!(parse_size(&Scalar::Int(512)), Ok(512));
        assert_eq!(
            parse_size(&Scalar::Int(-1)),
            Err("invalid size -1 (must not be negative)".to_owned())
        );
    }

    #[test]
    fn durations() {
        let ok: &[(&str, Duration)] = &[
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h 30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(*want), "{text}");
        }
        for text in ["", "0", "0s", "30", "-5s", "5 parsecs", "abc"] {
            assert!(parse_duration(text).is_err(), "{text} should be refused");
        }
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("5m"), Ok(Duration::from_secs(300)));
        for text in ["", "30", "-5s", "abc"] {
            assert!(
                parse_duration_or_zero(text).is_err(),
                "{text} should be refused"
            );
        }
    }

    #[test]
    fn status_ranges() {
        let ok: &[(Scalar, (u16, u16))] = &[
            (Scalar::Str("2xx".into()), (200, 299)),
            (Scalar::Str("5XX".into()), (500, 599)),
            (Scalar::Str("201".into()), (201, 201)),
            (Scalar::Int(204), (204, 204)),
            (Scalar::Str("200-299".into()), (200, 299)),
            (Scalar::Str("301 - 302".into()), (301, 302)),
        ];
        for (value, (lo, hi)) in ok {
            let want = StatusRange { lo: *lo, hi: *hi };
            assert_eq!(parse_status_range(value), Ok(want), "{value:?}");
        }
        for text in ["", "xx", "6xx", "0xx", "99", "600", "299-200", "abc", "2x"] {
            let value = Scalar::Str(text.to_owned());
            assert!(
                parse_status_range(&value).is_err(),
                "{text} should be refused"
            );
        }
    }
}
