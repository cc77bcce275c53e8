//! Delegated keys: the root-signed [`KeyList`] naming which keys may sign
//! models, commands and agent releases. The rules that accept or refuse a list live in
//! [`crate::trust`].

use serde::{Deserialize, Serialize};

use crate::ids::Timestamp;
use crate::signing::{PublicKey, SignedPayload};

/// What a key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Model manifests.
    Models,
    /// Device commands.
    Commands,
    /// Agent releases (the agent binary itself): a role of its own so a
    /// leaked models key cannot ship code. Last, so the earlier roles keep
    /// their wire tags.
    Agents,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Models => "models",
            Role::Commands => "commands",
            Role::Agents => "agents",
        })
    }
}

/// A key and the roles it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The key.
    pub public_key: PublicKey,
    /// Its roles.
    pub roles: Vec<Role>,
}

/// The root-signed list of delegated keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// Increases with every rotation.
    pub version: u64,
    /// Refused after this.
    pub expires_at: Timestamp,
    /// Delegated keys.
    pub keys: Vec<KeyEntry>,
}

impl SignedPayload for KeyList {
    const DOMAIN: &'static str = "keylist";
}
