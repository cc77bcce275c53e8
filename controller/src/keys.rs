//! Signing keys on disk: root, models and commands ed25519 keys in
//! `DATA_DIR/keys` (files 0600), creation, loading and rotation, and the
//! root-signed key list built from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_protocol::signing::KeyFileError;
use drover_protocol::trust::{KeyEntry, KeyList, Role};
use drover_protocol::{Ed25519Signer, PublicKey, Sign, Signed, Timestamp};

/// How long a key list stays valid; the controller re-issues one well before.
pub(crate) const KEY_LIST_VALIDITY_MS: u64 = 365 * 24 * 3600 * 1000;
/// A key list expiring within this is re-issued at startup.
pub(crate) const KEY_LIST_RENEW_BEFORE_MS: u64 = 30 * 24 * 3600 * 1000;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error(transparent)]
    File(#[from] KeyFileError),
    /// Directory or rename I/O failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A key file is missing (run `drover keys init`).
    #[error(
        "key file {0} is missing; run `drover keys init` (or start `drover serve`, which creates keys)"
    )]
    Missing(String),
    /// Signing the key list failed.
    #[error("cannot sign the key list: {0}")]
    Sign(String),
}

/// The controller's three signing keys.
#[derive(Clone)]
pub(crate) struct Keys {
    /// Signs key lists only.
    pub root: Arc<Ed25519Signer>,
    /// Signs model manifests.
    pub models: Arc<Ed25519Signer>,
    /// Signs device commands.
    pub commands: Arc<Ed25519Signer>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("root", &self.root.public_key())
            .field("models", &self.models.public_key())
            .field("commands", &self.commands.public_key())
            .finish()
    }
}

/// Result of [`KeyStore::init`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyInit {
    /// True if any key was created now; false if all already existed.
    pub created: bool,
    /// The root public key agents pin (hex).
    pub root_public_key: String,
    /// Models key (hex).
    pub models_public_key: String,
    /// Commands key (hex).
    pub commands_public_key: String,
    /// Where the key files are.
    pub dir: String,
}

/// The key directory.
#[derive(Debug, Clone)]
pub(crate) struct KeyStore {
    dir: PathBuf,
}

fn role_file(role: &str) -> String {
    format!("{role}.key")
}

impl KeyStore {
    /// The key store of a data dir (`DATA_DIR/keys`).
    pub(crate) fn new(data_dir: &Path) -> KeyStore {
        KeyStore {
            dir: data_dir.join("keys"),
        }
    }

    fn path(&self, role: &str) -> PathBuf {
        self.dir.join(role_file(role))
    }

    /// True if all three keys exist.
    pub(crate) fn exists(&self) -> bool {
        ["root", "models", "commands"]
            .iter()
            .all(|r| self.path(r).exists())
    }

    /// Creates whichever keys are missing; idempotent.
    pub(crate) fn init(&self) -> Result<KeyInit, KeyError> {
        create_private_dir(&self.dir)?;
        let mut created = false;
        for role in ["root", "models", "commands"] {
            let path = self.path(role);
            if !path.exists() {
                Ed25519Signer::generate()?.save(&path)?;
                created = true;
            }
        }
        let keys = self.load()?;
        Ok(KeyInit {
            created,
            root_public_key: keys.root.public_key().to_hex(),
            models_public_key: keys.models.public_key().to_hex(),
            commands_public_key: keys.commands.public_key().to_hex(),
            dir: self.dir.display().to_string(),
        })
    }

    /// Loads all three keys.
    pub(crate) fn load(&self) -> Result<Keys, KeyError> {
        let load = |role: &str| -> Result<Arc<Ed25519Signer>, KeyError> {
            let path = self.path(role);
            if !path.exists() {
                return Err(KeyError::Missing(path.display().to_string()));
            }
            Ok(Arc::new(Ed25519Signer::load(&path)?))
        };
        Ok(Keys {
            root: load("root")?,
            models: load("models")?,
            commands: load("commands")?,
        })
    }

    /// Replaces the key of `role` with a fresh one; the old file moves to
    /// `keys/retired/` (kept for audit, never used again). Returns the new key.
    pub(crate) fn rotate(&self, role: Role) -> Result<Arc<Ed25519Signer>, KeyError> {
        let name = role.to_string();
        let current = self.path(&name);
        let old = Ed25519Signer::load(&current)?;
        let fresh = Ed25519Signer::generate()?;
        let staged = self.dir.join(format!("{name}.key.new"));
        if staged.exists() {
            // A rotation that crashed before its rename; that key was never used.
            std::fs::remove_file(&staged).map_err(|source| KeyError::Io {
                what: "removing",
                path: staged.display().to_string(),
                source,
            })?;
        }
        fresh.save(&staged)?;
        let retired_dir = self.dir.join("retired");
        create_private_dir(&retired_dir)?;
        let retired = retired_dir.join(format!("{name}-{}.key", old.public_key().key_id()));
        std::fs::rename(&current, &retired).map_err(|source| KeyError::Io {
            what: "retiring",
            path: current.display().to_string(),
            source,
        })?;
        std::fs::rename(&staged, &current).map_err(|source| KeyError::Io {
            what: "installing",
            path: current.display().to_string(),
            source,
        })?;
        Ok(Arc::new(fresh))
    }
}

fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        what: "creating",
        path: dir.display().to_string(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| KeyError::Io {
                what: "restricting",
                path: dir.display().to_string(),
                source,
            },
        )?;
    }
    Ok(())
}

/// The key list naming `keys`' models and commands keys, signed by root.
pub(crate) fn sign_key_list(
    keys: &Keys,
    version: u64,
    now: Timestamp,
) -> Result<Signed<KeyList>, KeyError> {
    let list = KeyList {
        version,
        expires_at: now.plus_ms(KEY_LIST_VALIDITY_MS),
        keys: vec![
            KeyEntry {
                public_key: keys.models.public_key(),
                roles: vec![Role::Models],
            },
            KeyEntry {
                public_key: keys.commands.public_key(),
                roles: vec![Role::Commands],
            },
        ],
    };
    Signed::sign(&list, keys.root.as_ref()).map_err(|e| KeyError::Sign(e.to_string()))
}

/// True if `list` names exactly `keys`' models and commands keys.
pub(crate) fn key_list_matches(list: &KeyList, keys: &Keys) -> bool {
    let has = |pk: PublicKey, role: Role| {
        list.keys
            .iter()
            .any(|k| k.public_key == pk && k.roles.contains(&role))
    };
    list.keys.len() == 2
        && has(keys.models.public_key(), Role::Models)
        && has(keys.commands.public_key(), Role::Commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let first = store.init().unwrap();
        assert!(first.created);
        let again = store.init().unwrap();
        assert!(!again.created);
        assert_eq!(first.root_public_key, again.root_public_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for role in ["root", "models", "commands"] {
                let mode = std::fs::metadata(store.path(role))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{role}");
            }
        }
    }

    #[test]
    fn rotation_replaces_and_retires() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        store.init().unwrap();
        let before = store.load().unwrap();
        let fresh = store.rotate(Role::Models).unwrap();
        let after = store.load().unwrap();
        assert_ne!(before.models.public_key(), after.models.public_key());
        assert_eq!(fresh.public_key(), after.models.public_key());
        assert_eq!(before.root.public_key(), after.root.public_key());
        assert_eq!(before.commands.public_key(), after.commands.public_key());
        let retired = dir.path().join("keys/retired").join(format!(
            "models-{}.key",
            before.models.public_key().key_id()
        ));
        assert!(retired.exists());
        let list = sign_key_list(&after, 2, Timestamp(1)).unwrap();
        let decoded = list.verify(&after.root.public_key()).unwrap();
        assert!(key_list_matches(&decoded, &after));
        assert!(!key_list_matches(&decoded, &before));
    }

    #[test]
    fn missing_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeyStore::new(dir.path()).load().unwrap_err();
        assert!(err.to_string().contains("drover keys init"), "{err}");
    }
}
