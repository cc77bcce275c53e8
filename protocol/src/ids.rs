//! Validated identifiers: device, fleet and model names, model versions, digests, times.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// Longest accepted id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Ids must have at least one character.
    #[error("{kind} is empty")]
    Empty {
        /// Which kind of id.
        kind: &'static str,
    },
    /// Ids are at most [`MAX_ID_LEN`] bytes.
    #[error("{kind} is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong {
        /// Which kind of id.
        kind: &'static str,
        /// Its length.
        len: usize,
    },
    /// Only `[a-z0-9_-]` is allowed, so ids are safe in topics, paths and SQL.
    #[error("{kind} contains {found:?}; only a-z, 0-9, '_' and '-' are allowed")]
    BadChar {
        /// Which kind of id.
        kind: &'static str,
        /// The first offending character.
        found: char,
    },
}

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, len: s.len() });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadChar { kind, found });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A device id, unique within a fleet. The controller learns it from the
    /// MQTT topic (which the broker authenticated), never from a payload.
    DeviceId,
    "device id"
);
id_type!(
    /// A fleet name: the second segment of every topic.
    FleetId,
    "fleet name"
);
id_type!(
    /// A model name; versions of one name form a lineage.
    ModelName,
    "model name"
);

/// A model version: increases by one per push of a name; never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A model name and version, written `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    /// The model name.
    pub name: ModelName,
    /// The version of that name.
    pub version: Version,
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Why `name@version` did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelRefError {
    /// The `@` separator is missing.
    #[error("expected NAME@VERSION, got {0:?}")]
    MissingAt(String),
    /// The name part is not a valid model name.
    #[error(transparent)]
    Name(#[from] IdError),
    /// The version part is not an unsigned integer.
    #[error("version {0:?} is not an unsigned integer")]
    Version(String),
}

impl FromStr for ModelRef {
    type Err = ModelRefError;
    fn from_str(s: &str) -> Result<Self, ModelRefError> {
        let (name, version) = s
            .split_once('@')
            .ok_or_else(|| ModelRefError::MissingAt(s.to_string()))?;
        let name = ModelName::new(name)?;
        let version = version
            .parse::<u64>()
            .map_err(|_| ModelRefError::Version(version.to_string()))?;
        Ok(ModelRef {
            name,
            version: Version(version),
        })
    }
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// Lower-case hex, as used in file names and the API.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

/// Incremental SHA-256, for artifacts that arrive in chunks.
#[derive(Clone, Default)]
pub struct Sha256Hasher(sha2::Sha256);

impl Sha256Hasher {
    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The digest of everything fed so far.
    pub fn finish(self) -> Sha256 {
        Sha256(self.0.finalize().into())
    }
}

/// Wall-clock time as milliseconds since the Unix epoch. Protocol types carry
/// this instead of `SystemTime` so that cores take time as plain input.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// `self + ms`, saturating.
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn ms_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    /// Converts a `SystemTime` (clamped to the epoch). Only I/O shells should call this.
    pub fn from_system(t: std::time::SystemTime) -> Timestamp {
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_allowed_alphabet() {
        assert!(DeviceId::new("dev-01_a").is_ok());
        assert!(DeviceId::new("a".repeat(64)).is_ok());
    }

    #[test]
    fn ids_refuse_bad_input_with_specific_errors() {
        assert_eq!(DeviceId::new(""), Err(IdError::Empty { kind: "device id" }));
        assert!(matches!(
            FleetId::new("x".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            ModelName::new("Model"),
            Err(IdError::BadChar { found: 'M', .. })
        ));
        assert!(matches!(
            DeviceId::new("a/b"),
            Err(IdError::BadChar { found: '/', .. })
        ));
        assert!(matches!(
            DeviceId::new("a+"),
            Err(IdError::BadChar { found: '+', .. })
        ));
    }

    #[test]
    fn deserialising_validates() {
        let bad: Result<DeviceId, _> = serde_json::from_str("\"A#\"");
        assert!(bad.is_err());
        let good: DeviceId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(good.as_str(), "abc");
    }

    #[test]
    fn model_ref_parses() {
        let r: ModelRef = "sensor@3".parse().unwrap();
        assert_eq!(r.version, Version(3));
        assert_eq!(r.to_string(), "sensor@3");
        assert!(matches!(
            "sensor".parse::<ModelRef>(),
            Err(ModelRefError::MissingAt(_))
        ));
        assert!(matches!(
            "sensor@x".parse::<ModelRef>(),
            Err(ModelRefError::Version(_))
        ));
    }

    #[test]
    fn sha256_hex_round_trip() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256::from_hex(&d.to_hex()).unwrap(), d);
        let mut h = Sha256Hasher::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), d);
    }
}
