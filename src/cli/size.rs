//! Byte sizes on the command line: `8MiB`, `16M`, `10k`, `1GB`, `4096`.
//!
//! Like coreutils: a bare number is bytes; `K`, `M`, `G`, `T`, `P` (or `KiB`, `MiB`, ...) are
//! powers of 1024; `KB`, `MB`, `GB`, `TB`, `PB` are powers of 1000. Units are case-insensitive
//! and may follow a space. Only whole numbers are accepted (write `1536MiB`, not `1.5GiB`).

/// Parses a size, or says what is wrong with it.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("the size is empty".into());
    }
    if s.starts_with('-') {
        return Err(format!("'{text}' is negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "'{text}' is not a size (expected a number, e.g. 4096, 16M or 8MiB)"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "'{text}' is not a whole number (write e.g. 1536MiB instead of 1.5GiB)"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is too large"))?;
    let multiplier = unit_multiplier(unit.trim_start()).ok_or_else(|| {
        format!(
            "'{text}' has an unknown unit '{}' (accepted: B, K/KiB, M/MiB, G/GiB, T/TiB, P/PiB, KB, MB, GB, TB, PB)",
            unit.trim_start()
        )
    })?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let unit = unit.to_ascii_lowercase();
    let (letter, rest) = match unit.char_indices().next() {
        None => return Some(1),
        Some((_, c)) => (c, &unit[c.len_utf8()..]),
    };
    if letter == 'b' && rest.is_empty() {
        return Some(1);
    }
    let power = match letter {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        _ => return None,
    };
    let base: u64 = match rest {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    Some(base.pow(power))
}

/// The length `truncate` asks for: absolute, or relative to the object's size like truncate(1)'s
/// `+N` (extend by N) and `-N` (cut N off, stopping at 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TruncateLen {
    To(u64),
    GrowBy(u64),
    ShrinkBy(u64),
}

impl TruncateLen {
    /// The new length for an object of `current` bytes (0 for a missing one).
    pub fn resolve(self, current: u64) -> Result<u64, String> {
        match self {
            Self::To(len) => Ok(len),
            Self::GrowBy(n) => current
                .checked_add(n)
                .ok_or_else(|| format!("{current} + {n} bytes is too large")),
            Self::ShrinkBy(n) => Ok(current.saturating_sub(n)),
        }
    }
}

/// Parses `LEN`, `+LEN` or `-LEN` (see [`TruncateLen`]).
pub fn parse_truncate_len(text: &str) -> Result<TruncateLen, String> {
    let s = text.trim();
    let (make, size): (fn(u64) -> TruncateLen, &str) = if let Some(n) = s.strip_prefix('+') {
        (TruncateLen::GrowBy, n)
    } else if let Some(n) = s.strip_prefix('-') {
        (TruncateLen::ShrinkBy, n)
    } else {
        (TruncateLen::To, s)
    };
    if size.starts_with(['+', '-']) {
        return Err(format!("'{text}' has more than one sign"));
    }
    parse_size(size)
        .map(make)
        .map_err(|e| e.replace(&format!("'{size}'"), &format!("'{text}'")))
}

/// A size for humans, in binary units with one decimal: `5.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_and_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("+7"), Ok(7));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("10k"), Ok(10 * 1024));
        assert_eq!(parse_size("10KiB"), Ok(10 * 1024));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8mib"), Ok(8 << 20));
        assert_eq!(parse_size("8 MiB"), Ok(8 << 20));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("1PB"), Ok(1_000_000_000_000_000));
        assert_eq!(parse_size(" 3 "), Ok(3));
    }

    #[test]
    fn rejects_bad_sizes_with_a_reason() {
        let bad = |s: &str, needle: &str| {
            let err = parse_size(s).expect_err(s);
            assert!(err.contains(needle), "{s}: expected {needle:?} in {err:?}");
        };
        bad("", "empty");
        bad("   ", "empty");
        bad("-5", "negative");
        bad("MiB", "not a size");
        bad("abc", "not a size");
        bad("1.5GiB", "whole number");
        bad("10XB", "unknown unit 'XB'");
        bad("10 bytes", "unknown unit");
        bad("10MiBs", "unknown unit");
        bad("99999999999999999999", "too large");
        bad("16777216TiB", "too large");
    }

    #[test]
    fn truncate_lengths_are_absolute_or_relative_like_coreutils() {
        use TruncateLen::*;
        assert_eq!(parse_truncate_len("10MiB"), Ok(To(10 << 20)));
        assert_eq!(parse_truncate_len("0"), Ok(To(0)));
        assert_eq!(parse_truncate_len("+10"), Ok(GrowBy(10)));
        assert_eq!(parse_truncate_len("-1K"), Ok(ShrinkBy(1024)));
        for bad in ["+-1", "--1", "-", "+", "-abc"] {
            assert!(parse_truncate_len(bad).is_err(), "{bad}");
        }
        assert!(parse_truncate_len("-abc").unwrap_err().contains("'-abc'"));
        assert_eq!(To(7).resolve(100), Ok(7));
        assert_eq!(GrowBy(10).resolve(1 << 20), Ok((1 << 20) + 10));
        assert_eq!(GrowBy(10).resolve(0), Ok(10));
        assert_eq!(ShrinkBy(3).resolve(5), Ok(2));
        assert_eq!(
            ShrinkBy(100).resolve(5),
            Ok(0),
            "stops at 0, as truncate -s -100 does"
        );
        assert!(GrowBy(u64::MAX).resolve(1).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(5 << 20), "5.0 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
