//! Durations as operators write them, with one meaning everywhere: the
//! controller's HTTP bodies and query strings, `controller.toml`, and the
//! `drover` flags all go through [`parse`] (and [`serde_text`]).
//!
//! A bare number is **seconds** (`600` is ten minutes), because that is what
//! operators mean when they leave the unit off. Otherwise the text is one or
//! more `<integer><unit>` groups, humantime style: `500ms`, `30s`, `10m`,
//! `1h30m`, `2h 15m`, `1d`. Units: `us`, `ms`, `s`, `m` (or `min`), `h`,
//! `d`. Signs, fractions and unknown units are refused.

use std::fmt;
use std::time::Duration;

/// Why a duration did not parse. Carries the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration like 600 (seconds), 500ms, 30s, 10m, 1h30m or 1d")]
pub struct DurationError(pub String);

const UNITS: [(&str, u64); 7] = [
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("min", 60_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// Parses a duration; see the module docs for the grammar.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(text.to_owned());
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t.parse().map_err(|_| bad())?;
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let after = &rest[digits..];
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let unit = &after[..unit_len];
        let per = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, per)| *per)
            .ok_or_else(bad)?;
        total = n
            .checked_mul(per)
            .and_then(|ns| total.checked_add(ns))
            .ok_or_else(bad)?;
        rest = after[unit_len..].trim_start();
    }
    Ok(Duration::from_nanos(total))
}

/// The shortest exact form of `d` in one unit that [`parse`] reads back to
/// the same value (`90s`, `10m`, `250ms`); sub-microsecond parts are dropped.
pub fn format(d: Duration) -> String {
    Text(d).to_string()
}

/// Whole milliseconds in `d`, saturating (the engines count in ms).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `Display` for a duration in [`format`]'s form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text(pub Duration);

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = u64::try_from(self.0.as_micros()).unwrap_or(u64::MAX);
        for (unit, per_us) in [
            ("d", 86_400_000_000),
            ("h", 3_600_000_000),
            ("m", 60_000_000),
            ("s", 1_000_000),
            ("ms", 1_000),
        ] {
            if us != 0 && us % per_us == 0 {
                return write!(f, "{}{unit}", us / per_us);
            }
        }
        if us == 0 {
            write!(f, "0s")
        } else {
            write!(f, "{us}us")
        }
    }
}

/// Serde adapter (`#[serde(with = "drover_protocol::duration::serde_text")]`):
/// writes [`format`]'s text, reads an integer (seconds) or any text
/// [`parse`] accepts, so `600` and `"600"` and `"10m"` are the same value in
/// JSON and TOML.
pub mod serde_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }

    fn from_raw<E: serde::de::Error>(raw: Raw) -> Result<Duration, E> {
        match raw {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => super::parse(&t).map_err(E::custom),
        }
    }

    /// Writes `d` as text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&super::Text(*d))
    }

    /// Reads seconds or duration text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        from_raw(Raw::deserialize(d)?)
    }

    /// The same for `Option<Duration>` (use with `#[serde(default)]`).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `Some(d)` as text, `None` as none.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&super::super::Text(*d)),
                None => s.serialize_none(),
            }
        }

        /// Reads null, seconds or duration text.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<super::Raw>::deserialize(d)?
                .map(super::from_raw)
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse(" 0 "), Ok(Duration::ZERO));
    }

    #[test]
    fn units_and_compounds() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("10min"), Ok(Duration::from_secs(600)));
        assert_eq!(parse(" 2h "), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2h 15m"), Ok(Duration::from_secs(8100)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("750us"), Ok(Duration::from_micros(750)));
    }

    #[test]
    fn refusals() {
        for t in [
            "",
            "h",
            "ten",
            "5y",
            "-1s",
            "1.5s",
            "10 m",
            "m10",
            "99999999999999999d",
            "18446744073709551616",
        ] {
            assert!(parse(t).is_err(), "{t:?} must be refused");
        }
        assert!(parse("5y").unwrap_err().to_string().contains("5y"));
    }

    #[test]
    fn format_round_trips() {
        for d in ["90s", "10m", "2h", "1d", "250ms", "750us", "0s"] {
            assert_eq!(format(parse(d).unwrap()), d);
        }
        assert_eq!(format(Duration::from_secs(5400)), "90m");
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Body {
        #[serde(with = "serde_text")]
        every: Duration,
        #[serde(default, with = "serde_text::option")]
        bake: Option<Duration>,
    }

    #[test]
    fn serde_reads_seconds_and_text_alike() {
        let a: Body = serde_json::from_str(r#"{"every": 600, "bake": 600}"#).unwrap();
        let b: Body = serde_json::from_str(r#"{"every": "600", "bake": "10m"}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.every, Duration::from_secs(600));
        let c: Body = serde_json::from_str(r#"{"every": "1h30m"}"#).unwrap();
        assert_eq!(c.bake, None);
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"every":"90m","bake":null}"#
        );
        assert!(serde_json::from_str::<Body>(r#"{"every": "soon"}"#).is_err());
        assert!(serde_json::from_str::<Body>(r#"{"every": -1}"#).is_err());
    }
}
