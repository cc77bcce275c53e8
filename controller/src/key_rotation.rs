//! Key rotation on a running controller: with the root key in the data dir
//! in one step (`rotate_key`); with the root key offline in two
//! (`prepare_rotation` stages a fresh key and returns the unsigned key list,
//! the operator's CLI signs it with the offline root key, `commit_rotation`
//! checks it and installs both). The root private key never crosses the
//! network.

use std::sync::Arc;

use drover_protocol::labels::Selector;
use drover_protocol::messages::Down;
use drover_protocol::trust::{KeyList, Role};
use drover_protocol::{DeviceId, Ed25519Signer, Sign as _, Signed};
use serde::{Deserialize, Serialize};

use crate::controller::{Controller, ControllerError, RotateOutcome, lock_read, lock_write};
use crate::keys::{self, KeyError};

/// A staged rotation waiting for the offline root's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPrepared {
    /// Role being rotated.
    pub role: String,
    /// The staged new public key (hex).
    pub public_key: String,
    /// The key list to sign with the root key (version = current + 1).
    pub key_list: KeyList,
}

impl Controller {
    /// True if the root private key is in the data dir (the controller can
    /// sign key lists itself).
    pub fn root_key_online(&self) -> bool {
        lock_read(&self.inner.keys).keys.root.is_some()
    }

    /// Rotates the `role` key when the root key is in the data dir: new key
    /// file (old one retired), a new root-signed key list (version + 1)
    /// pushed to every known device, and for the models role every manifest
    /// re-signed. With the root key offline this is
    /// [`KeyError::RootOffline`] and nothing changes.
    pub async fn rotate_key(&self, role: Role) -> Result<RotateOutcome, ControllerError> {
        if !self.root_key_online() {
            return Err(KeyError::RootOffline.into());
        }
        let this = self.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let inner = &this.inner;
            let mut k = lock_write(&inner.keys);
            let fresh = inner.key_store.stage(role)?;
            let mut next = k.keys.clone();
            next.set(role, fresh.clone());
            let list = keys::sign_key_list(&next, k.version + 1, inner.clock.now())?;
            this.install(&mut k, role, fresh, list)
        })
        .await
        .map_err(|e| ControllerError::Task(e.to_string()))??;
        self.push_key_list(committed).await
    }

    /// First step of a rotation with the root key offline: stages a fresh
    /// `role` key (not used yet) and returns the key list naming it, for the
    /// operator to sign with the root key.
    pub async fn prepare_rotation(&self, role: Role) -> Result<RotationPrepared, ControllerError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let inner = &this.inner;
            let k = lock_write(&inner.keys);
            let fresh = inner.key_store.stage(role)?;
            Ok(RotationPrepared {
                role: role.to_string(),
                public_key: fresh.public_key().to_hex(),
                key_list: keys::build_key_list(
                    k.keys.delegates().with(role, fresh.public_key()),
                    k.version + 1,
                    inner.clock.now(),
                ),
            })
        })
        .await
        .map_err(|e| ControllerError::Task(e.to_string()))?
    }

    /// Second step: installs the staged `role` key with `signed`, the key
    /// list the offline root signed, after checking it names exactly the
    /// staged key and is the next version; then pushes it to every device.
    /// A refused list changes nothing.
    pub async fn commit_rotation(
        &self,
        role: Role,
        signed: Signed<KeyList>,
    ) -> Result<RotateOutcome, ControllerError> {
        let this = self.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let inner = &this.inner;
            let mut k = lock_write(&inner.keys);
            let fresh = inner.key_store.staged(role)?.ok_or_else(|| {
                KeyError::BadKeyList(format!(
                    "no {role} key is prepared; run `drover keys rotate --role {role} --root-key FILE`"
                ))
            })?;
            keys::check_rotation_list(
                &signed,
                &k.keys,
                role,
                fresh.public_key(),
                k.version,
                inner.clock.now(),
            )?;
            this.install(&mut k, role, fresh, signed)
        })
        .await
        .map_err(|e| ControllerError::Task(e.to_string()))??;
        self.push_key_list(committed).await
    }

    /// Makes the staged `fresh` key current with its key list `list`
    /// (already signed and checked), re-signing manifests for a models key.
    fn install(
        &self,
        k: &mut crate::controller::KeyState,
        role: Role,
        fresh: Arc<Ed25519Signer>,
        list: Signed<KeyList>,
    ) -> Result<(RotateOutcome, Signed<KeyList>), ControllerError> {
        let inner = &self.inner;
        let version = k.version + 1;
        inner.key_store.commit_staged(role)?;
        keys::store_key_list(&inner.db, version, &list, inner.clock.now())?;
        k.keys.set(role, fresh.clone());
        k.key_list = list.clone();
        k.version = version;
        let resigned = match role {
            Role::Models => inner.store.resign_all(fresh.as_ref())?,
            Role::Agents => crate::agent_releases::resign_all(&inner.db, fresh.as_ref())
                .map_err(|e| ControllerError::Task(format!("re-signing agent releases: {e}")))?,
            Role::Commands => 0,
        };
        let outcome = RotateOutcome {
            role: role.to_string(),
            public_key: fresh.public_key().to_hex(),
            key_list_version: version,
            devices_notified: 0,
            manifests_resigned: resigned,
        };
        Ok((outcome, list))
    }

    async fn push_key_list(
        &self,
        (mut outcome, list): (RotateOutcome, Signed<KeyList>),
    ) -> Result<RotateOutcome, ControllerError> {
        let devices = self.devices(&Selector::default()).await?;
        for d in devices {
            let Ok(id) = DeviceId::new(d.id) else {
                continue;
            };
            match self.publish_down(&id, &Down::KeyList(list.clone())).await {
                Ok(()) => {
                    outcome.devices_notified += 1;
                    crate::metrics::inc(&self.inner.metrics.key_lists_sent);
                }
                Err(e) => {
                    tracing::warn!(device = %id, error = %e, "pushing the new key list failed")
                }
            }
        }
        tracing::info!(role = %outcome.role, version = outcome.key_list_version, "rotated key");
        Ok(outcome)
    }
}
