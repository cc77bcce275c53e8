//! Trust rules (TUF/Uptane-lite), as a pure state machine that takes `now`.
//!
//! - The **root key** is pinned at install and only signs [`KeyList`]s.
//! - A key list names the `models` and `commands` keys; a new one is accepted
//!   only if root-signed, unexpired and of a higher version (rotation without
//!   rollback).
//! - Manifests must be signed by a listed key with the `models` role, commands
//!   by one with the `commands` role, agent releases by one with the `agents`
//!   role (a leaked models key cannot ship code).
//! - Commands are for exactly one device, carry a strictly increasing
//!   sequence number and an expiry.
//! - Each model has a version floor (the highest version ever activated); a
//!   Deploy below it is a downgrade and is refused. Only an explicit, signed
//!   Rollback command goes below the floor.
//!
//! Every check returns a specific [`TrustError`]; a refused input never
//! changes the state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, ModelName, Sha256, Timestamp, Version};
pub use crate::keys::{KeyEntry, KeyList, Role};
use crate::manifest::ModelManifest;
use crate::manifest::{AgentVersion, Artifact};
use crate::messages::{Action, Command};
use crate::reasons::{Reason, ReasonCode};
use crate::release::{AgentRelease, Arch};
use crate::signing::{PublicKey, SignatureError, Signed, SignedPayload};

/// Why something signed was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrustError {
    /// The key list was not signed by the pinned root key.
    #[error("key list is not signed by the pinned root key: {0}")]
    KeyListNotRootSigned(SignatureError),
    /// The key list is older than the installed one.
    #[error("key list version {offered} is older than installed version {installed}")]
    KeyListRollback {
        /// Installed version.
        installed: u64,
        /// Offered version.
        offered: u64,
    },
    /// Same version as installed, different content.
    #[error("key list version {0} differs from the installed list of the same version")]
    KeyListConflict(u64),
    /// The key list (offered or installed) has expired.
    #[error("key list version {version} expired at {expires_at}")]
    KeyListExpired {
        /// Its version.
        version: u64,
        /// Its expiry.
        expires_at: Timestamp,
    },
    /// No key list installed yet, so no delegated key is trusted.
    #[error("no key list installed")]
    NoKeyList,
    /// The signing key is not in the key list.
    #[error("signing key {0} is not in the key list")]
    UnknownKey(String),
    /// The key is listed, but not for this role.
    #[error("key {key} lacks the {role} role")]
    MissingRole {
        /// Key id.
        key: String,
        /// Role needed.
        role: Role,
    },
    /// The signature does not verify, or the body is malformed.
    #[error("bad signature: {0}")]
    Signature(SignatureError),
    /// The manifest has expired.
    #[error("manifest {model} expired at {expires_at}")]
    ManifestExpired {
        /// `name@version`.
        model: String,
        /// Its expiry.
        expires_at: Timestamp,
    },
    /// The command has expired.
    #[error("command {seq} expired at {expires_at}")]
    CommandExpired {
        /// Its sequence.
        seq: u64,
        /// Its expiry.
        expires_at: Timestamp,
    },
    /// The command's sequence is not above the last accepted one.
    #[error("command sequence {got} replayed (last accepted {last})")]
    Replay {
        /// Last accepted sequence.
        last: u64,
        /// Offered sequence.
        got: u64,
    },
    /// The command is for another device.
    #[error("command is for device {got}, this is {expected}")]
    WrongTarget {
        /// This device.
        expected: DeviceId,
        /// The command's target.
        got: DeviceId,
    },
    /// Deploying below the model's version floor.
    #[error(
        "{model} version {offered} is below the floor {floor}; only a signed rollback goes there"
    )]
    Downgrade {
        /// Model.
        model: ModelName,
        /// Floor.
        floor: Version,
        /// Offered.
        offered: Version,
    },
    /// The agent release has expired.
    #[error("agent release {release} expired at {expires_at}")]
    ReleaseExpired {
        /// `agent@version/arch`.
        release: String,
        /// Its expiry.
        expires_at: Timestamp,
    },
    /// The agent release is for another CPU architecture.
    #[error("agent release is for {release}, this device is {device}")]
    WrongArch {
        /// The release's arch.
        release: Arch,
        /// This device's arch.
        device: Arch,
    },
    /// Installing an agent below its version floor.
    #[error(
        "agent version {offered} is below the floor {floor}; only an explicit signed rollback goes there"
    )]
    AgentDowngrade {
        /// Floor.
        floor: AgentVersion,
        /// Offered.
        offered: AgentVersion,
    },
    /// The artifact does not match the manifest.
    #[error(
        "artifact mismatch: manifest says {expected} ({expected_size} bytes), got {got} ({got_size} bytes)"
    )]
    ArtifactMismatch {
        /// Manifest digest.
        expected: Sha256,
        /// Manifest size.
        expected_size: u64,
        /// Actual digest.
        got: Sha256,
        /// Actual size.
        got_size: u64,
    },
}

impl TrustError {
    /// Stable code for reports and metrics.
    pub fn code(&self) -> ReasonCode {
        match self {
            TrustError::KeyListNotRootSigned(_) => ReasonCode::KeyListNotRootSigned,
            TrustError::KeyListRollback { .. } => ReasonCode::KeyListRollback,
            TrustError::KeyListConflict(_) => ReasonCode::KeyListConflict,
            TrustError::KeyListExpired { .. } => ReasonCode::KeyListExpired,
            TrustError::NoKeyList => ReasonCode::NoKeyList,
            TrustError::UnknownKey(_) => ReasonCode::UnknownKey,
            TrustError::MissingRole { .. } => ReasonCode::MissingRole,
            TrustError::Signature(_) => ReasonCode::BadSignature,
            TrustError::ManifestExpired { .. } => ReasonCode::ManifestExpired,
            TrustError::CommandExpired { .. } => ReasonCode::CommandExpired,
            TrustError::Replay { .. } => ReasonCode::ReplayedCommand,
            TrustError::WrongTarget { .. } => ReasonCode::WrongTarget,
            TrustError::Downgrade { .. } => ReasonCode::Downgrade,
            TrustError::ArtifactMismatch { .. } => ReasonCode::ArtifactMismatch,
            TrustError::ReleaseExpired { .. } => ReasonCode::ManifestExpired,
            TrustError::WrongArch { .. } => ReasonCode::WrongArch,
            TrustError::AgentDowngrade { .. } => ReasonCode::Downgrade,
        }
    }

    /// As a wire [`Reason`].
    pub fn reason(&self) -> Reason {
        Reason::new(self.code(), self.to_string())
    }
}

/// What an agent trusts: the pinned root, the installed key list, the last
/// accepted command sequence and per-model version floors. Serialisable so
/// the agent persists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustState {
    root: PublicKey,
    device: DeviceId,
    key_list: Option<KeyList>,
    last_command_seq: u64,
    floors: BTreeMap<ModelName, Version>,
}

impl TrustState {
    /// Fresh state for `device` pinning `root`.
    pub fn new(root: PublicKey, device: DeviceId) -> TrustState {
        TrustState {
            root,
            device,
            key_list: None,
            last_command_seq: 0,
            floors: BTreeMap::new(),
        }
    }

    /// The pinned root key.
    pub fn root(&self) -> &PublicKey {
        &self.root
    }

    /// The installed key list, if any.
    pub fn key_list(&self) -> Option<&KeyList> {
        self.key_list.as_ref()
    }

    /// Highest accepted command sequence.
    pub fn last_command_seq(&self) -> u64 {
        self.last_command_seq
    }

    /// Version floor of a model.
    pub fn floor(&self, model: &ModelName) -> Option<Version> {
        self.floors.get(model).copied()
    }

    /// Installs a newer root-signed key list. Re-offering the installed list
    /// is accepted as a no-op (controllers resend it on every Hello).
    pub fn handle_key_list(
        &mut self,
        signed: &Signed<KeyList>,
        now: Timestamp,
    ) -> Result<(), TrustError> {
        let list = signed
            .verify(&self.root)
            .map_err(TrustError::KeyListNotRootSigned)?;
        if let Some(installed) = &self.key_list {
            if list.version < installed.version {
                return Err(TrustError::KeyListRollback {
                    installed: installed.version,
                    offered: list.version,
                });
            }
            if list.version == installed.version {
                return if &list == installed {
                    Ok(())
                } else {
                    Err(TrustError::KeyListConflict(list.version))
                };
            }
        }
        if now > list.expires_at {
            return Err(TrustError::KeyListExpired {
                version: list.version,
                expires_at: list.expires_at,
            });
        }
        self.key_list = Some(list);
        Ok(())
    }

    fn verify_delegated<T: SignedPayload>(
        &self,
        signed: &Signed<T>,
        role: Role,
        now: Timestamp,
    ) -> Result<T, TrustError> {
        let list = self.key_list.as_ref().ok_or(TrustError::NoKeyList)?;
        if now > list.expires_at {
            return Err(TrustError::KeyListExpired {
                version: list.version,
                expires_at: list.expires_at,
            });
        }
        let entry = list
            .keys
            .iter()
            .find(|k| k.public_key.key_id() == signed.key_id)
            .ok_or_else(|| TrustError::UnknownKey(signed.key_id.to_string()))?;
        if !entry.roles.contains(&role) {
            return Err(TrustError::MissingRole {
                key: signed.key_id.to_string(),
                role,
            });
        }
        signed
            .verify(&entry.public_key)
            .map_err(TrustError::Signature)
    }

    /// Verifies something the controller signed with a listed `commands` key
    /// (telemetry acknowledgements). Changes no state.
    pub fn verify_controller<T: SignedPayload>(
        &self,
        signed: &Signed<T>,
        now: Timestamp,
    ) -> Result<T, TrustError> {
        self.verify_delegated(signed, Role::Commands, now)
    }

    /// Verifies a manifest: listed `models` key, good signature, unexpired.
    pub fn verify_manifest(
        &self,
        signed: &Signed<ModelManifest>,
        now: Timestamp,
    ) -> Result<ModelManifest, TrustError> {
        let m = self.verify_delegated(signed, Role::Models, now)?;
        if now > m.expires_at {
            return Err(TrustError::ManifestExpired {
                model: m.model_ref().to_string(),
                expires_at: m.expires_at,
            });
        }
        Ok(m)
    }

    /// Verifies an agent release: listed `agents` key, good signature,
    /// unexpired. Changes no state; whether this device may install it is
    /// [`check_release_target`].
    pub fn verify_agent_release(
        &self,
        signed: &Signed<AgentRelease>,
        now: Timestamp,
    ) -> Result<AgentRelease, TrustError> {
        let r = self.verify_delegated(signed, Role::Agents, now)?;
        if now > r.expires_at {
            return Err(TrustError::ReleaseExpired {
                release: r.label(),
                expires_at: r.expires_at,
            });
        }
        Ok(r)
    }

    /// Checks a command without changing state: `commands` key, signature,
    /// target, expiry, sequence, and for Deploy the manifest and version floor.
    pub fn check_command(
        &self,
        signed: &Signed<Command>,
        now: Timestamp,
    ) -> Result<Command, TrustError> {
        let cmd = self.verify_delegated(signed, Role::Commands, now)?;
        if cmd.target != self.device {
            return Err(TrustError::WrongTarget {
                expected: self.device.clone(),
                got: cmd.target,
            });
        }
        if cmd.seq <= self.last_command_seq {
            return Err(TrustError::Replay {
                last: self.last_command_seq,
                got: cmd.seq,
            });
        }
        if now > cmd.expires_at {
            return Err(TrustError::CommandExpired {
                seq: cmd.seq,
                expires_at: cmd.expires_at,
            });
        }
        match &cmd.action {
            Action::Deploy { manifest } => {
                let m = self.verify_manifest(manifest, now)?;
                if let Some(floor) = self.floor(&m.name)
                    && m.version < floor
                {
                    return Err(TrustError::Downgrade {
                        model: m.name,
                        floor,
                        offered: m.version,
                    });
                }
            }
            Action::Shadow { manifest, .. } => {
                self.verify_manifest(manifest, now)?;
            }
            _ => {}
        }
        Ok(cmd)
    }

    /// [`check_command`](Self::check_command), then records its sequence.
    pub fn accept_command(
        &mut self,
        signed: &Signed<Command>,
        now: Timestamp,
    ) -> Result<Command, TrustError> {
        let cmd = self.check_command(signed, now)?;
        self.last_command_seq = cmd.seq;
        Ok(cmd)
    }

    /// Records that `version` of `model` was activated; the floor only rises.
    pub fn raise_floor(&mut self, model: &ModelName, version: Version) {
        let floor = self.floors.entry(model.clone()).or_insert(version);
        if version > *floor {
            *floor = version;
        }
    }
}

/// Checks downloaded bytes' digest and size against the manifest.
pub fn check_artifact(
    manifest: &ModelManifest,
    got: Sha256,
    got_size: u64,
) -> Result<(), TrustError> {
    check_bytes(&manifest.artifact, got, got_size)
}

/// Checks downloaded bytes' digest and size against what was signed (a
/// model's or an agent release's artifact).
pub fn check_bytes(expected: &Artifact, got: Sha256, got_size: u64) -> Result<(), TrustError> {
    if expected.sha256 != got || expected.size != got_size {
        return Err(TrustError::ArtifactMismatch {
            expected: expected.sha256,
            expected_size: expected.size,
            got,
            got_size,
        });
    }
    Ok(())
}

/// Whether a verified release may be installed on a device of `arch` whose
/// agent version floor is `floor` (the highest version it ever confirmed
/// running): same arch, and not below the floor unless `rollback` (an
/// explicit, signed rollback command) says so.
pub fn check_release_target(
    release: &AgentRelease,
    arch: Arch,
    floor: AgentVersion,
    rollback: bool,
) -> Result<(), TrustError> {
    if release.arch != arch {
        return Err(TrustError::WrongArch {
            release: release.arch,
            device: arch,
        });
    }
    if release.version < floor && !rollback {
        return Err(TrustError::AgentDowngrade {
            floor,
            offered: release.version,
        });
    }
    Ok(())
}
