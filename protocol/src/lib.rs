//! drover-protocol: everything the controller and the agents agree on.
//!
//! # Layout
//! - [`ids`]: validated device/fleet/model ids, versions, digests, timestamps.
//! - [`topic`]: the four MQTT topics per device, built and parsed.
//! - [`codec`]: version byte + postcard, size limits per channel.
//! - [`messages`]: `Up`, `Down`, `Status`, and the signed `Command`.
//! - [`manifest`]: the signed `ModelManifest`.
//! - [`telemetry`]: `TelemetryWindow` and its compact `LatencyHistogram`.
//! - [`signing`]: `Signed<T>`, the `Sign` trait, the ed25519 key-file signer.
//! - [`trust`]: key lists and the pure `TrustState` that accepts or refuses.
//! - [`testkit`]: deterministic keys, manifests, commands and windows for tests.
//!
//! This crate does no network I/O and depends on no async runtime: both the
//! agent and the controller (and fuzzers) use it as-is.

pub mod codec;
pub mod duration;
pub mod ids;
pub mod labels;
pub mod manifest;
pub mod messages;
pub mod signing;
pub mod telemetry;
pub mod testkit;
pub mod topic;
pub mod trust;

pub use codec::CodecError;
pub use ids::{DeviceId, FleetId, ModelName, ModelRef, Sha256, Timestamp, Version};
pub use manifest::ModelManifest;
pub use messages::{Action, Command, Down, Status, Up};
pub use signing::{Ed25519Signer, PublicKey, Sign, Signed};
pub use telemetry::{LatencyHistogram, TelemetryWindow};
pub use trust::{KeyList, Role, TrustError, TrustState};
