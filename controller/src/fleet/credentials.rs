//! Device passwords: the stored hash, its verification at the broker gate,
//! a cache that keeps a reconnect storm from re-running the KDF, and the
//! on-the-fly upgrade of hashes made with an older, cheaper cost.
//!
//! One hash format serves both the embedded broker and Mosquitto: `$7$`
//! (PBKDF2-HMAC-SHA512, as `mosquitto_passwd` writes it), with
//! [`DEFAULT_KDF_ITERATIONS`] by default. Device passwords are 144 random
//! bits, so the KDF only matters if the database leaks *and* a password was
//! chosen by a person; the cost is still current (OWASP: >= 210,000 for
//! PBKDF2-SHA512) so a leaked `drover.db` or `drover broker acl` output is
//! not a shortcut.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use rusqlite::{OptionalExtension as _, params};
use sha2::Digest as _;

use crate::db::DbError;

/// PBKDF2-SHA512 iterations for new device password hashes.
pub const DEFAULT_KDF_ITERATIONS: u32 = 600_000;
/// Iterations [`crate::serve::ServeConfig::ephemeral`] uses: tests and
/// the simulator enroll hundreds of devices in one process, where the real
/// cost would only measure PBKDF2. Never the default of `drover serve`.
pub const SIMULATION_KDF_ITERATIONS: u32 = 1_000;
/// Refuse stored hashes claiming more than this (a corrupt row must not
/// make one connect burn minutes of CPU).
const MAX_KDF_ITERATIONS: u32 = 10_000_000;

/// The outcome of checking a password against a stored `$7$` hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verified {
    /// Matches; the hash was made with this many iterations.
    Yes { iterations: u32 },
    /// Does not match.
    No,
    /// The stored value is not a `$7$` hash the gate can check.
    Unsupported,
}

/// Checks `password` against a `$7$ITER$SALT$HASH` string. Constant time in
/// the comparison; the KDF itself is the slow part (run it off the runtime).
pub(crate) fn verify(password: &[u8], stored: &str) -> Verified {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut parts = stored.split('$');
    let (Some(""), Some("7"), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Verified::Unsupported;
    };
    let (Ok(iterations), Ok(salt), Ok(hash)) =
        (iter.parse::<u32>(), b64.decode(salt), b64.decode(hash))
    else {
        return Verified::Unsupported;
    };
    if iterations == 0 || iterations > MAX_KDF_ITERATIONS || hash.len() != 64 {
        return Verified::Unsupported;
    }
    let got = pbkdf2::pbkdf2_hmac_array::<sha2::Sha512, 64>(password, &salt, iterations);
    let diff = got.iter().zip(&hash).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 {
        Verified::Yes { iterations }
    } else {
        Verified::No
    }
}

/// The stored hash of a registered device (None: unknown or never registered).
pub(crate) fn stored_hash(
    conn: &rusqlite::Connection,
    device: &str,
) -> Result<Option<String>, DbError> {
    Ok(conn
        .query_row(
            "SELECT password_hash FROM devices WHERE id = ?1 AND registered = 1",
            params![device],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// Replaces `old` by `new` (a re-hash at the current cost) unless the row
/// changed meanwhile (the device was re-registered).
pub(crate) fn upgrade_hash(
    conn: &rusqlite::Connection,
    device: &str,
    old: &str,
    new: &str,
) -> Result<bool, DbError> {
    Ok(conn.execute(
        "UPDATE devices SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
        params![device, old, new],
    )? == 1)
}

/// Passwords that already passed the KDF, per device, tied to the stored
/// hash they passed against (a re-registration invalidates the entry).
/// Holds a SHA-256 of the password, never the password.
#[derive(Debug, Default)]
pub(crate) struct VerifiedCache {
    entries: Mutex<HashMap<String, (String, [u8; 32])>>,
}

/// Entries kept at most (one per device of a large fleet).
const CACHE_CAP: usize = 200_000;

impl VerifiedCache {
    fn digest(password: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(password).into()
    }

    /// True if this password already verified against this stored hash.
    pub(crate) fn hit(&self, device: &str, stored: &str, password: &[u8]) -> bool {
        let m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        m.get(device)
            .is_some_and(|(h, d)| h == stored && *d == Self::digest(password))
    }

    /// Remembers a successful verification.
    pub(crate) fn insert(&self, device: &str, stored: &str, password: &[u8]) {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CACHE_CAP && !m.contains_key(device) {
            m.clear();
        }
        m.insert(
            device.to_string(),
            (stored.to_string(), Self::digest(password)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::devices::mosquitto_hash_with_salt;

    #[test]
    fn verifies_mosquitto_hashes() {
        let h = mosquitto_hash_with_salt("pw", b"0123456789ab", 1000);
        assert_eq!(verify(b"pw", &h), Verified::Yes { iterations: 1000 });
        assert_eq!(verify(b"pX", &h), Verified::No);
        assert_eq!(verify(b"", &h), Verified::No);
        for bad in [
            "",
            "plain",
            "$6$1$a$b",
            "$7$0$AAAA$AAAA",
            "$7$x$AAAA$AAAA",
            "$7$99999999$AAAA$AAAA",
            "$7$10$AAAA$AAAA",
            "$7$10$!!$AAAA",
        ] {
            assert_eq!(verify(b"pw", bad), Verified::Unsupported, "{bad}");
        }
    }

    #[test]
    fn cache_is_tied_to_the_stored_hash() {
        let c = VerifiedCache::default();
        c.insert("d", "$7$h1", b"pw");
        assert!(c.hit("d", "$7$h1", b"pw"));
        assert!(!c.hit("d", "$7$h1", b"other"));
        assert!(!c.hit("d", "$7$h2", b"pw"));
        assert!(!c.hit("e", "$7$h1", b"pw"));
    }
}
