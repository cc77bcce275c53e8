//! drover-protocol: everything the controller and the agents agree on.
//!
//! # Layout
//! - [`ids`]: validated device/fleet/model ids, versions, digests, timestamps.
//! - [`topic`]: the four MQTT topics per device, built and parsed.
//! - [`limits`]: payload size limits per channel.
//! - [`codec`]: version byte + postcard, enforcing those limits.
//! - [`messages`]: `Up`, `Down`, `Status`, and the signed `Command`.
//! - [`reasons`]: `Reason` and the `ReasonCode` enum (string on the wire,
//!   `retryable()`, unknown codes from newer peers kept as `Unknown`).
//! - [`manifest`]: the signed `ModelManifest`.
//! - [`release`]: the signed `AgentRelease` of an agent binary, its `Arch`,
//!   and reading the arch from an ELF header.
//! - [`telemetry`]: `TelemetryWindow` and its compact `LatencyHistogram`.
//! - [`signing`]: `Signed<T>`, the `Sign` trait, the ed25519 key-file signer.
//! - [`keys`]: the root-signed `KeyList` of delegated keys and their roles.
//! - [`trust`]: the pure `TrustState` that accepts or refuses what is signed.
//! - [`uplink`]: sealing and opening device-signed `up` messages.
//! - `testkit` (cargo feature `testkit`, for tests only): deterministic keys,
//!   manifests, commands and windows.
//!
//! Imports point one way (`a` ← `b`: `b` imports `a`): `limits` ← `topic` ←
//! `codec`; `manifest` ← `release` ← `messages`, `trust`; `reasons`, `keys` ← `messages` ← `trust`;
//! `messages`, `codec` ← `uplink`. No file imports one
//! that imports it back (`scripts/check_layout.py` checks this).
//!
//! This crate does no network I/O and depends on no async runtime: both the
//! agent and the controller (and fuzzers) use it as-is.

pub mod codec;
pub mod duration;
pub mod fault;
pub mod ids;
pub mod keys;
pub mod labels;
pub mod limits;
pub mod manifest;
pub mod messages;
pub mod reasons;
pub mod release;
pub mod signing;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod topic;
pub mod trust;
pub mod uplink;

pub use codec::CodecError;
pub use ids::{DeviceId, FleetId, ModelName, ModelRef, Sha256, Timestamp, Version};
pub use manifest::ModelManifest;
pub use messages::{Action, Command, Down, Status, Up};
pub use reasons::{Reason, ReasonCode};
pub use release::{AgentRelease, Arch};
pub use signing::{Ed25519Signer, PublicKey, Sign, Signed};
pub use telemetry::{LatencyHistogram, TelemetryWindow};
pub use trust::{KeyList, Role, TrustError, TrustState};
