//! Time-to-live arguments (`60`, `0.25`, `500ms`, `15m`, `2h`, `30d`) and the rounding rules of
//! `kcache ttl`. Parsing happens before anything is sent, so a bad TTL is a usage error.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest TTL accepted: 100 years. Longer ones are almost certainly a mistake, and every
/// backend can represent this one exactly (PostgreSQL's `sec2ttl` fails above ~9.2e12 s).
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A parsed, non-negative TTL. Zero is allowed and means "leave no entry".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ttl(Duration);

impl Ttl {
    pub fn from_duration(d: Duration) -> Ttl {
        Ttl(d)
    }
    pub fn duration(self) -> Duration {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
    /// Seconds as a float, for the backends that want one (PostgreSQL's `sec2ttl`).
    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 { write!(f, "{}s", d.as_secs()) } else { write!(f, "{}s", d.as_secs_f64()) }
    }
}

use crate::error::excerpt;

impl FromStr for Ttl {
    type Err = String;

    /// Plain decimal notation only: digits, an optional fraction, an optional unit. No sign, no
    /// exponent, no spaces: `1e3`, `+5`, `-1`, `10x` and `1e999` are all refused.
    fn from_str(s: &str) -> Result<Ttl, String> {
        if s.is_empty() {
            return Err(
                "the TTL is empty; give seconds (60, 0.25) or a number with a unit (500ms, 15m, 2h, 30d)".into()
            );
        }
        if s.starts_with('-') {
            return Err(format!("{} is negative; a TTL is 0 or more", excerpt(s)));
        }
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let nanos_per_unit: u128 = match unit {
            "" | "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => {
                return Err(format!(
                    "{} is not a TTL; give seconds (60, 0.25) or a number with a unit ms, s, m, h or d (500ms, 15m, 2h, 30d)",
                    excerpt(s)
                ));
            }
        };
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') || number.is_empty() {
            return Err(format!("{} is not a number of seconds", excerpt(s)));
        }
        // Exact decimal arithmetic in nanoseconds: no float rounding, no overflow surprises.
        let too_long = || format!("{} is longer than the maximum TTL of 100 years", excerpt(s));
        let int_part: u128 = if int.is_empty() {
            0
        } else if int.len() > 20 {
            return Err(too_long());
        } else {
            int.parse().map_err(|_| format!("{} is not a number of seconds", excerpt(s)))?
        };
        let mut nanos = int_part.checked_mul(nanos_per_unit).ok_or_else(too_long)?;
        // The fraction: keep digits down to the nanosecond, round the rest up (a TTL never
        // shrinks below what was asked).
        let mut scale = nanos_per_unit;
        let mut rest_nonzero = false;
        for c in frac.chars() {
            let digit = u128::from(c as u8 - b'0');
            if scale >= 10 {
                scale /= 10;
                nanos += digit * scale;
            } else if digit != 0 {
                rest_nonzero = true;
            }
        }
        if rest_nonzero {
            nanos += 1;
        }
        if nanos > MAX_TTL.as_nanos() {
            return Err(too_long());
        }
        let secs = (nanos / 1_000_000_000) as u64;
        let sub = (nanos % 1_000_000_000) as u32;
        Ok(Ttl(Duration::new(secs, sub)))
    }
}

/// What `kcache ttl` knows about an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remaining {
    /// No such key, or it has expired.
    Missing,
    /// The entry exists and never expires (a NULL ttl row written by another client).
    NoExpiry,
    /// The entry expires after this long (never zero: a zero remainder means expired).
    Left(Duration),
}

/// Whole seconds, rounded up: a live entry never shows 0.
pub fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whole milliseconds, rounded up.
pub fn whole_millis_up(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(s: &str) -> Duration {
        s.parse::<Ttl>().unwrap_or_else(|e| panic!("{s}: {e}")).duration()
    }

    #[test]
    fn plain_seconds_and_decimals() {
        assert_eq!(ttl("60"), Duration::from_secs(60));
        assert_eq!(ttl("0"), Duration::ZERO);
        assert_eq!(ttl("0.25"), Duration::from_millis(250));
        assert_eq!(ttl(".5"), Duration::from_millis(500));
        assert_eq!(ttl("5."), Duration::from_secs(5));
        assert_eq!(ttl("3600"), Duration::from_secs(3600));
        assert_eq!(ttl("0.000000001"), Duration::from_nanos(1));
    }

    #[test]
    fn units() {
        assert_eq!(ttl("500ms"), Duration::from_millis(500));
        assert_eq!(ttl("1.5ms"), Duration::from_micros(1500));
        assert_eq!(ttl("15s"), Duration::from_secs(15));
        assert_eq!(ttl("15m"), Duration::from_secs(900));
        assert_eq!(ttl("2h"), Duration::from_secs(7200));
        assert_eq!(ttl("30d"), Duration::from_secs(30 * 86400));
        assert_eq!(ttl("0.5d"), Duration::from_secs(43200));
        assert_eq!(ttl("40d"), Duration::from_secs(40 * 86400));
    }

    #[test]
    fn digits_beyond_nanoseconds_round_up() {
        assert_eq!(ttl("0.0000000001"), Duration::from_nanos(1));
        assert_eq!(ttl("0.0000000000"), Duration::ZERO);
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            "-1",
            "-0",
            "abc",
            "10x",
            "1e999",
            "1e3",
            "+5",
            " 5",
            "5 ",
            "1..2",
            ".",
            "ms",
            "1.2.3",
            "NaN",
            "inf",
            "5 s",
            "5S",
            "٣",
            "1_000",
            "36501d",
            "99999999999999999999999999",
            "0x10",
        ] {
            assert!(bad.parse::<Ttl>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn maximum_is_inclusive() {
        assert_eq!(ttl("36500d"), MAX_TTL);
        assert!("36500.000001d".parse::<Ttl>().is_err());
    }

    #[test]
    fn error_messages_name_the_input() {
        let e = "10x".parse::<Ttl>().unwrap_err();
        assert!(e.contains("'10x'"), "{e}");
        let e = "-1".parse::<Ttl>().unwrap_err();
        assert!(e.contains("negative"), "{e}");
    }

    #[test]
    fn rounding_up() {
        assert_eq!(whole_seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1000)), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds_up(Duration::from_secs(3600)), 3600);
        assert_eq!(whole_millis_up(Duration::from_nanos(1)), 1);
        assert_eq!(whole_millis_up(Duration::from_micros(1500)), 2);
        assert_eq!(whole_millis_up(Duration::from_millis(250)), 250);
    }
}
