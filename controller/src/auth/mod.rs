//! Operator API tokens: created at random, shown once, stored hashed in
//! `DATA_DIR/tokens.json` (0600), checked on every request by
//! [`layer::require`]. Which role a route needs is decided in
//! [`crate::core::auth`].
//!
//! Tokens are 256 random bits, so a plain SHA-256 of the token is enough to
//! store: a slow KDF protects guessable passwords against brute force, but
//! nothing guesses a 2^256 space, and one fast hash keeps every request
//! cheap. The lookup compares digests in constant time.

pub mod layer;
pub mod perms;
pub mod routes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use crate::core::auth::OperatorRole;

/// The file tokens live in, under the data directory.
pub const TOKENS_FILE: &str = "tokens.json";
/// Where the first start writes the admin token, under the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Prefix of every token, so leaked tokens are easy to grep for.
pub const TOKEN_PREFIX: &str = "drv_";

/// Token store failures.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing the token file.
    #[error("token file {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file is not valid JSON.
    #[error("token file {path} is corrupt: {detail}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// Parser message.
        detail: String,
    },
    /// No random bytes.
    #[error("no randomness: {0}")]
    Random(String),
    /// Bad name.
    #[error("invalid token name {0:?}: 1-64 characters of a-z, 0-9, '-', '_', '.'")]
    BadName(String),
    /// Name taken.
    #[error("a token named {0:?} already exists; revoke it first")]
    Exists(String),
    /// Name unknown.
    #[error("no token named {0:?}")]
    NotFound(String),
}

/// A stored token (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// Who holds it (shown in audit entries).
    pub name: String,
    /// What it may do.
    pub role: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// When it was created (ms since the epoch).
    pub created_at_ms: u64,
}

/// What the API shows about a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Created (ms since the epoch).
    pub created_at_ms: u64,
}

/// A freshly created token: the only time the secret is visible.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewToken {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// The bearer token. Store it now; the controller keeps only its hash.
    pub token: String,
}

/// The authenticated caller of a request, put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: OperatorRole,
}

/// The token store: cheap to clone, one file.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
    records: Arc<Mutex<Vec<TokenRecord>>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TokenStore {
    /// Opens `DATA_DIR/tokens.json`. When it holds no token yet, creates an
    /// admin token named `admin`, writes it to `DATA_DIR/admin.token` (0600)
    /// and returns it as the second value.
    pub fn open(data_dir: &Path) -> Result<(TokenStore, Option<NewToken>), AuthError> {
        let path = data_dir.join(TOKENS_FILE);
        let records: Vec<TokenRecord> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| AuthError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(AuthError::Io { path, source }),
        };
        let store = TokenStore {
            path,
            records: Arc::new(Mutex::new(records)),
        };
        if !store.list().is_empty() {
            return Ok((store, None));
        }
        let admin = store.create("admin", OperatorRole::Admin)?;
        let file = data_dir.join(ADMIN_TOKEN_FILE);
        write_private(&file, format!("{}\n", admin.token).as_bytes())
            .map_err(|source| AuthError::Io { path: file, source })?;
        Ok((store, Some(admin)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TokenRecord>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, records: &[TokenRecord]) -> Result<(), AuthError> {
        let bytes = serde_json::to_vec_pretty(records).map_err(|e| AuthError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        write_private(&self.path, &bytes).map_err(|source| AuthError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Creates a token; the secret is in the result and nowhere else.
    pub fn create(&self, name: &str, role: OperatorRole) -> Result<NewToken, AuthError> {
        if !valid_name(name) {
            return Err(AuthError::BadName(name.into()));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| AuthError::Random(e.to_string()))?;
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let mut records = self.lock();
        if records.iter().any(|r| r.name == name) {
            return Err(AuthError::Exists(name.into()));
        }
        let mut next = records.clone();
        next.push(TokenRecord {
            name: name.into(),
            role: role.as_str().into(),
            sha256: hex::encode(digest(&token)),
            created_at_ms: now_ms(),
        });
        self.save(&next)?;
        *records = next;
        Ok(NewToken {
            name: name.into(),
            role: role.as_str().into(),
            token,
        })
    }

    /// Every token (without secrets).
    pub fn list(&self) -> Vec<TokenInfo> {
        self.lock()
            .iter()
            .map(|r| TokenInfo {
                name: r.name.clone(),
                role: r.role.clone(),
                created_at_ms: r.created_at_ms,
            })
            .collect()
    }

    /// Revokes a token by name; it stops working at once.
    pub fn revoke(&self, name: &str) -> Result<(), AuthError> {
        let mut records = self.lock();
        let next: Vec<TokenRecord> = records.iter().filter(|r| r.name != name).cloned().collect();
        if next.len() == records.len() {
            return Err(AuthError::NotFound(name.into()));
        }
        self.save(&next)?;
        *records = next;
        Ok(())
    }

    /// Who holds `token`, if it is a live token.
    pub fn verify(&self, token: &str) -> Option<Actor> {
        let d = digest(token);
        let records = self.lock();
        let mut found = None;
        // Compare against every record so the time taken does not say
        // which record (if any) matched.
        for r in records.iter() {
            let stored = hex::decode(&r.sha256).unwrap_or_default();
            if ct_eq(&stored, &d) {
                found = Some(r);
            }
        }
        let r = found?;
        Some(Actor {
            name: r.name.clone(),
            role: r.role.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn first_open_writes_a_private_admin_token_and_later_opens_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (store, admin) = TokenStore::open(dir.path()).unwrap();
        let admin = admin.unwrap();
        assert!(admin.token.starts_with(TOKEN_PREFIX) && admin.token.len() == 4 + 64);
        let file = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(file.trim(), admin.token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for f in [ADMIN_TOKEN_FILE, TOKENS_FILE] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        // The secret is not stored, only its digest.
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!stored.contains(&admin.token[4..]));
        assert_eq!(
            store.verify(&admin.token).unwrap().role,
            OperatorRole::Admin
        );
        let (again, none) = TokenStore::open(dir.path()).unwrap();
        assert!(none.is_none());
        assert_eq!(again.verify(&admin.token).unwrap().name, "admin");
    }

    #[test]
    fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = TokenStore::open(dir.path()).unwrap();
        let ci = store.create("ci", OperatorRole::Operator).unwrap();
        assert!(matches!(
            store.create("ci", OperatorRole::Viewer),
            Err(AuthError::Exists(_))
        ));
        assert!(matches!(
            store.create("Bad Name", OperatorRole::Viewer),
            Err(AuthError::BadName(_))
        ));
        assert_eq!(
            store.verify(&ci.token),
            Some(Actor {
                name: "ci".into(),
                role: OperatorRole::Operator
            })
        );
        assert_eq!(store.verify("drv_00"), None);
        store.revoke("ci").unwrap();
        assert_eq!(store.verify(&ci.token), None);
        assert!(matches!(store.revoke("ci"), Err(AuthError::NotFound(_))));
        // Revocation survives a restart.
        let (again, _) = TokenStore::open(dir.path()).unwrap();
        assert_eq!(again.verify(&ci.token), None);
    }
}
