//! Signing keys on disk: root, models, commands and agents ed25519 keys in
//! `DATA_DIR/keys` (files 0600), creation, loading and rotation, and the
//! root-signed key list built from them.
//!
//! The root key may be kept offline: then `keys/root.pub` holds only its
//! public half and every new key list is signed by the operator's CLI from
//! the offline file (see `drover keys rotate --root-key`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_protocol::codec::{self, CodecError};
use drover_protocol::signing::KeyFileError;
use drover_protocol::trust::{KeyEntry, KeyList, Role};
use drover_protocol::{Ed25519Signer, PublicKey, Sign, Signed, Timestamp};
use rusqlite::{OptionalExtension as _, params};

use crate::db::{Db, DbError};

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
    /// A new key list is needed but the root private key is kept offline.
    #[error(
        "the root private key is kept offline (only keys/root.pub is on this controller), so the \
         controller cannot sign a new key list; run `drover keys rotate --role ROLE --root-key FILE` \
         with the offline root key file"
    )]
    RootOffline,
    /// A key list offered for a rotation was refused.
    #[error("refused the signed key list: {0}")]
    BadKeyList(String),
    /// The key list table could not be read or written.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored key list did not encode or decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// The controller's signing keys.
#[derive(Clone)]
pub(crate) struct Keys {
    /// Signs key lists only; `None` when the root key is kept offline.
    pub root: Option<Arc<Ed25519Signer>>,
    /// The root public key agents pin (also known when the root is offline).
    pub root_public: PublicKey,
    /// Signs model manifests.
    pub models: Arc<Ed25519Signer>,
    /// Signs device commands.
    pub commands: Arc<Ed25519Signer>,
    /// Signs agent releases.
    pub agents: Arc<Ed25519Signer>,
}

impl Keys {
    /// The public keys the key list names.
    pub(crate) fn delegates(&self) -> Delegates {
        Delegates {
            models: self.models.public_key(),
            commands: self.commands.public_key(),
            agents: self.agents.public_key(),
        }
    }

    /// Replaces the key of `role` (a rotation).
    pub(crate) fn set(&mut self, role: Role, key: Arc<Ed25519Signer>) {
        match role {
            Role::Models => self.models = key,
            Role::Commands => self.commands = key,
            Role::Agents => self.agents = key,
        }
    }
}

/// The delegated public keys a key list names, one per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delegates {
    /// Models key.
    pub models: PublicKey,
    /// Commands key.
    pub commands: PublicKey,
    /// Agents key.
    pub agents: PublicKey,
}

impl Delegates {
    /// These keys with `role`'s replaced by `fresh`.
    pub(crate) fn with(mut self, role: Role, fresh: PublicKey) -> Delegates {
        match role {
            Role::Models => self.models = fresh,
            Role::Commands => self.commands = fresh,
            Role::Agents => self.agents = fresh,
        }
        self
    }

    fn entries(&self) -> [(PublicKey, Role); 3] {
        [
            (self.models, Role::Models),
            (self.commands, Role::Commands),
            (self.agents, Role::Agents),
        ]
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("root", &self.root_public)
            .field("root_offline", &self.root.is_none())
            .field("models", &self.models.public_key())
            .field("commands", &self.commands.public_key())
            .field("agents", &self.agents.public_key())
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
    /// Agents key (hex); empty from controllers older than agent releases.
    #[serde(default)]
    pub agents_public_key: String,
    /// Where the key files are.
    pub dir: String,
    /// Where the root private key was written (`--root-out`); it is no
    /// longer in `dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key_file: Option<String>,
}

/// The key directory.
#[derive(Debug, Clone)]
pub(crate) struct KeyStore {
    dir: PathBuf,
}

/// The delegated roles' key file names, in key list order.
const DELEGATED: [&str; 3] = ["models", "commands", "agents"];

fn role_file(role: &str) -> String {
    format!("{role}.key")
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.display().to_string();
    move |source| KeyError::Io { what, path, source }
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

    fn root_pub_path(&self) -> PathBuf {
        self.dir.join("root.pub")
    }

    fn staged_path(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{role}.key.new"))
    }

    /// True if the models, commands and agents keys and the root key
    /// (private, or only its public half when kept offline) exist.
    pub(crate) fn exists(&self) -> bool {
        (self.path("root").exists() || self.root_pub_path().exists())
            && DELEGATED.iter().all(|r| self.path(r).exists())
    }

    /// Creates whichever keys are missing; idempotent (a data dir from
    /// before agent releases gains its agents key here). A root key kept
    /// offline (only `root.pub` present) is never re-created.
    pub(crate) fn init(&self) -> Result<KeyInit, KeyError> {
        create_private_dir(&self.dir)?;
        let mut created = false;
        for role in std::iter::once("root").chain(DELEGATED) {
            let path = self.path(role);
            let offline_root = role == "root" && self.root_pub_path().exists();
            if !path.exists() && !offline_root {
                Ed25519Signer::generate()?.save(&path)?;
                created = true;
            }
        }
        let keys = self.load()?;
        if !self.root_pub_path().exists() {
            self.write_root_pub(&keys.root_public)?;
        }
        Ok(KeyInit {
            created,
            root_public_key: keys.root_public.to_hex(),
            models_public_key: keys.models.public_key().to_hex(),
            commands_public_key: keys.commands.public_key().to_hex(),
            agents_public_key: keys.agents.public_key().to_hex(),
            dir: self.dir.display().to_string(),
            root_key_file: None,
        })
    }

    fn write_root_pub(&self, key: &PublicKey) -> Result<(), KeyError> {
        let path = self.root_pub_path();
        std::fs::write(&path, format!("{}\n", key.to_hex())).map_err(io_err("writing", &path))
    }

    /// Loads the keys; the root private key only if it is in the data dir.
    pub(crate) fn load(&self) -> Result<Keys, KeyError> {
        let load = |role: &str| -> Result<Arc<Ed25519Signer>, KeyError> {
            let path = self.path(role);
            if !path.exists() {
                return Err(KeyError::Missing(path.display().to_string()));
            }
            Ok(Arc::new(Ed25519Signer::load(&path)?))
        };
        let pub_path = self.root_pub_path();
        let (root, root_public) = if self.path("root").exists() {
            let root = load("root")?;
            let public = root.public_key();
            (Some(root), public)
        } else if pub_path.exists() {
            let text = std::fs::read_to_string(&pub_path).map_err(io_err("reading", &pub_path))?;
            let public = PublicKey::from_hex(text.trim())
                .map_err(|_| KeyFileError::Format(pub_path.display().to_string()))?;
            (None, public)
        } else {
            return Err(KeyError::Missing(self.path("root").display().to_string()));
        };
        Ok(Keys {
            root,
            root_public,
            models: load("models")?,
            commands: load("commands")?,
            agents: load("agents")?,
        })
    }

    /// Moves the root private key out of the data dir: writes it to `out`
    /// (a new file, 0600), keeps only the public half in `keys/root.pub`,
    /// then deletes `keys/root.key`. Refuses if the root is already offline.
    pub(crate) fn export_root(&self, out: &Path) -> Result<PublicKey, KeyError> {
        let path = self.path("root");
        if !path.exists() {
            return Err(KeyError::Missing(format!(
                "{} (the root key is already offline or was never created here)",
                path.display()
            )));
        }
        let root = Ed25519Signer::load(&path)?;
        root.save(out)?;
        // Delete the data dir's copy only once the exported file reads back
        // as the same key: a failed write must not lose the root key.
        if Ed25519Signer::load(out)?.public_key() != root.public_key() {
            return Err(KeyError::Sign(format!(
                "{} does not read back as the root key",
                out.display()
            )));
        }
        self.write_root_pub(&root.public_key())?;
        std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
        Ok(root.public_key())
    }

    /// Creates a fresh key for `role` in `keys/ROLE.key.new` (replacing an
    /// earlier staged key, which was never used); the current key stays in
    /// use until [`KeyStore::commit_staged`].
    pub(crate) fn stage(&self, role: Role) -> Result<Arc<Ed25519Signer>, KeyError> {
        let staged = self.staged_path(role);
        if staged.exists() {
            std::fs::remove_file(&staged).map_err(io_err("removing", &staged))?;
        }
        let fresh = Ed25519Signer::generate()?;
        fresh.save(&staged)?;
        Ok(Arc::new(fresh))
    }

    /// The staged key of `role`, if any.
    pub(crate) fn staged(&self, role: Role) -> Result<Option<Arc<Ed25519Signer>>, KeyError> {
        let staged = self.staged_path(role);
        if !staged.exists() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Ed25519Signer::load(&staged)?)))
    }

    /// Makes the staged key of `role` current; the old file moves to
    /// `keys/retired/` (kept for audit, never used again).
    pub(crate) fn commit_staged(&self, role: Role) -> Result<(), KeyError> {
        let name = role.to_string();
        let current = self.path(&name);
        let staged = self.staged_path(role);
        let old = Ed25519Signer::load(&current)?;
        let retired_dir = self.dir.join("retired");
        create_private_dir(&retired_dir)?;
        let retired = retired_dir.join(format!("{name}-{}.key", old.public_key().key_id()));
        std::fs::rename(&current, &retired).map_err(io_err("retiring", &current))?;
        std::fs::rename(&staged, &current).map_err(io_err("installing", &current))?;
        Ok(())
    }

    /// Replaces the key of `role` with a fresh one (stage + commit).
    /// Returns the new key.
    #[cfg(test)]
    pub(crate) fn rotate(&self, role: Role) -> Result<Arc<Ed25519Signer>, KeyError> {
        let fresh = self.stage(role)?;
        self.commit_staged(role)?;
        Ok(fresh)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("restricting", dir))?;
    }
    Ok(())
}

/// The (unsigned) key list naming the `delegates`, one role each.
pub(crate) fn build_key_list(delegates: Delegates, version: u64, now: Timestamp) -> KeyList {
    KeyList {
        version,
        expires_at: now.plus_ms(KEY_LIST_VALIDITY_MS),
        keys: delegates
            .entries()
            .into_iter()
            .map(|(public_key, role)| KeyEntry {
                public_key,
                roles: vec![role],
            })
            .collect(),
    }
}

/// The key list naming `keys`' delegated keys, signed by root;
/// [`KeyError::RootOffline`] if the root key is not in the data dir.
pub(crate) fn sign_key_list(
    keys: &Keys,
    version: u64,
    now: Timestamp,
) -> Result<Signed<KeyList>, KeyError> {
    let root = keys.root.as_ref().ok_or(KeyError::RootOffline)?;
    let list = build_key_list(keys.delegates(), version, now);
    Signed::sign(&list, root.as_ref()).map_err(|e| KeyError::Sign(e.to_string()))
}

/// True if `list` names exactly `keys`' delegated keys.
pub(crate) fn key_list_matches(list: &KeyList, keys: &Keys) -> bool {
    list_names(list, &keys.delegates())
}

/// True if `list` names exactly `delegates`, each with its one role.
pub(crate) fn list_names(list: &KeyList, delegates: &Delegates) -> bool {
    let entries = delegates.entries();
    list.keys.len() == entries.len()
        && entries.iter().all(|(pk, role)| {
            list.keys
                .iter()
                .any(|k| k.public_key == *pk && k.roles == [*role])
        })
}

/// Checks a key list signed elsewhere (by the offline root) for a rotation
/// of `role` to `fresh`: root-signed, the next version, naming exactly
/// `fresh` for `role` and the current key of the other role, unexpired.
pub(crate) fn check_rotation_list(
    signed: &Signed<KeyList>,
    keys: &Keys,
    role: Role,
    fresh: PublicKey,
    current_version: u64,
    now: Timestamp,
) -> Result<KeyList, KeyError> {
    let list = signed
        .verify(&keys.root_public)
        .map_err(|e| KeyError::BadKeyList(format!("not signed by this fleet's root key: {e}")))?;
    if list.version != current_version + 1 {
        return Err(KeyError::BadKeyList(format!(
            "version {} is not the next version {} (another rotation happened; run it again)",
            list.version,
            current_version + 1
        )));
    }
    if !list_names(&list, &keys.delegates().with(role, fresh)) {
        return Err(KeyError::BadKeyList(format!(
            "it does not name exactly the prepared {role} key and the current other keys"
        )));
    }
    if now >= list.expires_at {
        return Err(KeyError::BadKeyList("it has already expired".into()));
    }
    Ok(list)
}

/// The latest stored key list and its version.
pub(crate) fn latest_key_list(db: &Db) -> Result<Option<(u64, Signed<KeyList>)>, KeyError> {
    let row: Option<(i64, Vec<u8>)> = db
        .lock()
        .query_row(
            "SELECT version, signed FROM key_lists ORDER BY version DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(DbError::from)?;
    Ok(row
        .map(|(v, bytes)| {
            codec::decode(&bytes, usize::MAX)
                .map(|s| (v as u64, s))
                .map_err(|e| DbError::Corrupt(format!("key list: {e}")))
        })
        .transpose()?)
}

/// Stores `list` as key list `version`.
pub(crate) fn store_key_list(
    db: &Db,
    version: u64,
    list: &Signed<KeyList>,
    now: Timestamp,
) -> Result<(), KeyError> {
    let bytes = codec::encode(list, usize::MAX)?;
    db.lock()
        .execute(
            "INSERT INTO key_lists (version, signed, created_at) VALUES (?1, ?2, ?3)",
            params![version as i64, bytes, now.0 as i64],
        )
        .map_err(DbError::from)?;
    Ok(())
}

/// The key list to serve: the latest stored one if it names `keys` and is
/// not close to expiry, else a new one (version + 1) signed now. With the
/// root key offline a stale list is kept (with a warning) since only the
/// operator can sign; no list at all is [`KeyError::RootOffline`].
pub(crate) fn current_key_list(
    db: &Db,
    keys: &Keys,
    now: Timestamp,
) -> Result<(u64, Signed<KeyList>), KeyError> {
    let latest = latest_key_list(db)?;
    let next = match &latest {
        Some((v, signed)) => {
            let list = signed.verify(&keys.root_public).ok();
            let fresh = list
                .as_ref()
                .filter(|l| key_list_matches(l, keys))
                .is_some_and(|l| l.expires_at.ms_since(now) > KEY_LIST_RENEW_BEFORE_MS);
            if fresh {
                return Ok((*v, signed.clone()));
            }
            if keys.root.is_none() && list.is_some() {
                tracing::warn!(
                    version = v,
                    "the key list no longer names the current keys or expires soon, and the root \
                     key is offline: run `drover keys rotate --role models --root-key FILE`"
                );
                return Ok((*v, signed.clone()));
            }
            v + 1
        }
        None => 1,
    };
    let list = sign_key_list(keys, next, now)?;
    store_key_list(db, next, &list, now)?;
    if next > 1 {
        tracing::info!(
            version = next,
            "issued a new key list (keys changed or list expiring)"
        );
    }
    Ok((next, list))
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
            for role in ["root", "models", "commands", "agents"] {
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
        assert_eq!(before.root_public, after.root_public);
        assert_eq!(before.commands.public_key(), after.commands.public_key());
        let retired = dir.path().join("keys/retired").join(format!(
            "models-{}.key",
            before.models.public_key().key_id()
        ));
        assert!(retired.exists());
        let list = sign_key_list(&after, 2, Timestamp(1)).unwrap();
        let decoded = list.verify(&after.root_public).unwrap();
        assert!(key_list_matches(&decoded, &after));
        assert!(!key_list_matches(&decoded, &before));
    }

    #[test]
    fn exported_root_leaves_only_its_public_half() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let init = store.init().unwrap();
        let out = dir.path().join("offline-root.key");
        let public = store.export_root(&out).unwrap();
        assert_eq!(public.to_hex(), init.root_public_key);
        assert!(!store.path("root").exists());
        assert_eq!(Ed25519Signer::load(&out).unwrap().public_key(), public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // init again must not mint a new root key next to the offline one.
        let again = store.init().unwrap();
        assert!(!again.created);
        assert!(!store.path("root").exists());
        let keys = store.load().unwrap();
        assert!(keys.root.is_none());
        assert_eq!(keys.root_public, public);
        assert!(matches!(
            sign_key_list(&keys, 2, Timestamp(1)),
            Err(KeyError::RootOffline)
        ));
        // A second export finds nothing to export and keeps the file.
        assert!(store.export_root(&dir.path().join("again.key")).is_err());
        assert!(out.exists());
    }

    #[test]
    fn rotation_lists_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        store.init().unwrap();
        let root = Ed25519Signer::load(&store.path("root")).unwrap();
        store.export_root(&dir.path().join("root.out")).unwrap();
        let keys = store.load().unwrap();
        let fresh = store.stage(Role::Models).unwrap().public_key();
        let now = Timestamp(1_000);
        let list = build_key_list(keys.delegates().with(Role::Models, fresh), 4, now);
        let good = Signed::sign(&list, &root).unwrap();
        assert!(check_rotation_list(&good, &keys, Role::Models, fresh, 3, now).is_ok());
        // Wrong version, wrong role, wrong signer, expired.
        assert!(check_rotation_list(&good, &keys, Role::Models, fresh, 4, now).is_err());
        assert!(check_rotation_list(&good, &keys, Role::Commands, fresh, 3, now).is_err());
        let other = Ed25519Signer::generate().unwrap();
        let forged = Signed::sign(&list, &other).unwrap();
        assert!(check_rotation_list(&forged, &keys, Role::Models, fresh, 3, now).is_err());
        let late = Timestamp(list.expires_at.0 + 1);
        assert!(check_rotation_list(&good, &keys, Role::Models, fresh, 3, late).is_err());
        let wrong = build_key_list(keys.delegates(), 4, now);
        let wrong = Signed::sign(&wrong, &root).unwrap();
        assert!(check_rotation_list(&wrong, &keys, Role::Models, fresh, 3, now).is_err());
    }

    #[test]
    fn missing_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeyStore::new(dir.path()).load().unwrap_err();
        assert!(err.to_string().contains("drover keys init"), "{err}");
    }
}
