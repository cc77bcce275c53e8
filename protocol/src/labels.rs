//! Device labels and label selectors, validated in one place: the agent's
//! config, the controller's inventory, rollout specs and retraining cohorts
//! all parse and check `k=v` text here.
//!
//! A label key or value is 1..=63 characters of `[A-Za-z0-9._/-]`. Text
//! forms are `k=v,k2=v2`: whitespace around terms is ignored, empty terms
//! are skipped (so `""` is the empty set / the match-everything selector),
//! and a key given twice with different values is refused (it could never
//! match); the same pair twice is harmless.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest label key or value.
pub const MAX_TOKEN_LEN: usize = 63;

/// What is wrong with a label text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelErrorKind {
    /// A term has no `=`.
    NotKeyValue,
    /// A key is empty, too long or has a character outside the alphabet.
    BadKey,
    /// A value is empty, too long or has a character outside the alphabet.
    BadValue,
    /// The same key with two different values.
    Conflict,
}

/// Why labels or a selector were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad labels {input:?}: {reason} (expected k=v[,k=v...], keys and values of 1..=63 [A-Za-z0-9._/-])"
)]
pub struct LabelError {
    /// The text (or `k=v` pair) refused.
    pub input: String,
    /// Which rule it broke.
    pub kind: LabelErrorKind,
    /// What is wrong, for people.
    pub reason: String,
}

/// True for a valid label key or value.
pub fn is_valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TOKEN_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// Checks one `key=value` pair.
pub fn check_label(key: &str, value: &str) -> Result<(), LabelError> {
    let err = |kind, reason: String| LabelError {
        input: format!("{key}={value}"),
        kind,
        reason,
    };
    if !is_valid_token(key) {
        return Err(err(LabelErrorKind::BadKey, format!("bad key {key:?}")));
    }
    if !is_valid_token(value) {
        return Err(err(
            LabelErrorKind::BadValue,
            format!("bad value {value:?} for key {key:?}"),
        ));
    }
    Ok(())
}

/// Parses `k=v,k2=v2` into validated labels.
pub fn parse_labels(input: &str) -> Result<BTreeMap<String, String>, LabelError> {
    let err = |kind, reason: String| LabelError {
        input: input.to_owned(),
        kind,
        reason,
    };
    let mut map = BTreeMap::new();
    for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v) = term.split_once('=').ok_or_else(|| {
            err(
                LabelErrorKind::NotKeyValue,
                format!("{term:?} is not key=value"),
            )
        })?;
        let (k, v) = (k.trim(), v.trim());
        check_label(k, v).map_err(|e| err(e.kind, e.reason))?;
        if let Some(first) = map.get(k) {
            if first != v {
                return Err(err(
                    LabelErrorKind::Conflict,
                    format!("key {k:?} given twice ({first:?} and {v:?})"),
                ));
            }
        }
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

/// Checks every pair of an already-built label map (e.g. read from TOML).
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    labels.iter().try_for_each(|(k, v)| check_label(k, v))
}

/// A label selector: every `k=v` must hold; the empty selector matches every
/// device. Only constructible from valid labels.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    /// Parses `k=v,k2=v2`.
    pub fn parse(input: &str) -> Result<Selector, LabelError> {
        parse_labels(input).map(Selector)
    }

    /// The required pairs.
    pub fn pairs(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// True when the selector matches every device.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if every pair holds in `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// True when some label set could match both selectors (no key is
    /// required to hold two different values).
    pub fn compatible(&self, other: &Selector) -> bool {
        self.0
            .iter()
            .all(|(k, v)| other.0.get(k).is_none_or(|w| w == v))
    }
}

impl TryFrom<BTreeMap<String, String>> for Selector {
    type Error = LabelError;

    fn try_from(map: BTreeMap<String, String>) -> Result<Selector, LabelError> {
        check_labels(&map)?;
        Ok(Selector(map))
    }
}

impl From<Selector> for BTreeMap<String, String> {
    fn from(s: Selector) -> Self {
        s.0
    }
}

impl FromStr for Selector {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Selector, LabelError> {
        Selector::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// One `key=value` label, e.g. the cohort a retraining job looks at.
/// Serialised as `{"key": ..., "value": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "LabelFields")]
pub struct Label {
    key: String,
    value: String,
}

#[derive(Deserialize)]
struct LabelFields {
    key: String,
    value: String,
}

impl TryFrom<LabelFields> for Label {
    type Error = LabelError;

    fn try_from(f: LabelFields) -> Result<Label, LabelError> {
        Label::new(f.key, f.value)
    }
}

impl Label {
    /// A validated pair.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Result<Label, LabelError> {
        let (key, value) = (key.into(), value.into());
        check_label(&key, &value)?;
        Ok(Label { key, value })
    }

    /// The key, e.g. `region`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value, e.g. `eu-west`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether `labels` carry this pair.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.key) == Some(&self.value)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_parse_match_and_print() {
        let s = Selector::parse("region=eu, site=a-1").unwrap();
        assert!(!s.matches(&labels(&[("region", "eu")])));
        assert!(s.matches(&labels(&[("region", "eu"), ("site", "a-1"), ("x", "y")])));
        assert_eq!(s.to_string(), "region=eu,site=a-1");
        assert!(Selector::parse("").unwrap().matches(&BTreeMap::new()));
        assert!(Selector::parse(" , ").unwrap().is_empty());
        assert_eq!(
            Selector::parse("a=b,a=b").unwrap(),
            Selector::parse("a=b").unwrap()
        );
        let us: Selector = "region=us".parse().unwrap();
        assert!(!s.compatible(&us));
        assert!(s.compatible(&"site=a-1,hw=pi4".parse().unwrap()));
    }

    #[test]
    fn refusals_name_the_rule() {
        for (bad, kind) in [
            ("region", LabelErrorKind::NotKeyValue),
            ("a=b;c", LabelErrorKind::BadValue),
            ("=eu", LabelErrorKind::BadKey),
            ("re gion=eu", LabelErrorKind::BadKey),
            ("region=", LabelErrorKind::BadValue),
            ("site=a b", LabelErrorKind::BadValue),
            ("a=b,a=c", LabelErrorKind::Conflict),
        ] {
            let e = Selector::parse(bad).unwrap_err();
            assert_eq!(e.kind, kind, "{bad:?}: {e}");
            assert!(e.to_string().contains("k=v"), "{e}");
        }
        let long = "k".repeat(MAX_TOKEN_LEN + 1);
        assert!(parse_labels(&format!("{long}=v")).is_err());
        assert!(parse_labels(&format!("{}=v", &long[1..])).is_ok());
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let s: Selector = serde_json::from_str(r#"{"region":"eu"}"#).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"region":"eu"}"#);
        assert!(serde_json::from_str::<Selector>(r#"{"region":"e u"}"#).is_err());
        let l: Label = serde_json::from_str(r#"{"key":"region","value":"eu"}"#).unwrap();
        assert!(l.matches(&labels(&[("region", "eu")])));
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"key":"region","value":"eu"}"#
        );
        assert!(serde_json::from_str::<Label>(r#"{"key":"","value":"eu"}"#).is_err());
    }
}
