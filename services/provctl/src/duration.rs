//! Durations on the command line: `90s`, `30m`, `1h`, `2d`, `1w`, or sums such as `1h30m`.
//! A bare number is refused: `--since 30` could mean seconds or minutes.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration: {reason} (examples: 90s, 30m, 1h, 2d, 1h30m)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses `30m`, `1h`, `2d`, `1h30m` ... (units `s`, `m`, `h`, `d`, `w`).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(fail("it is empty"));
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(digit)))
                .ok_or_else(|| fail("the number is too large"))?;
            number = Some(n);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(fail("units are s, m, h, d and w")),
        };
        let n = number
            .take()
            .ok_or_else(|| fail("a unit needs a number before it"))?;
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| fail("the number is too large"))?;
    }
    if number.is_some() {
        return Err(fail("the last number has no unit"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("30m"), Ok(1_800));
        assert_eq!(secs("1h"), Ok(3_600));
        assert_eq!(secs("2d"), Ok(172_800));
        assert_eq!(secs("1w"), Ok(604_800));
        assert_eq!(secs("1h30m"), Ok(5_400));
        assert_eq!(secs(" 0s "), Ok(0));
    }

    #[test]
    fn ambiguous_or_malformed_input_is_refused() {
        for input in [
            "",
            "30",
            "h",
            "1x",
            "1.5h",
            "-1h",
            "1h 30m",
            "99999999999999999999s",
        ] {
            let err = parse_duration(input).unwrap_err();
            assert!(err.to_string().contains("examples"), "{input}: {err}");
        }
        assert!(parse_duration("3074457345618258603w").is_err(), "overflow");
    }
}
