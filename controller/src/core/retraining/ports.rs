//! The ports: what retraining needs from the rest of the controller, as small
//! object-safe traits. The controller implements them over its registry,
//! device inventory, telemetry store, command sender and rollout engine;
//! tests implement them with in-memory fakes.
//!
//! Every method returns a boxed future ([`PortFuture`]) so the traits stay
//! usable as `Arc<dyn Trait>` without an `async-trait` dependency. An
//! implementation is usually `Box::pin(async move { ... })`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use drover_protocol::manifest::ModelManifest;
use drover_protocol::{DeviceId, ModelName, ModelRef, Version};
use serde::{Deserialize, Serialize};

use crate::core::drift::ObservedWindow;
use crate::core::rollout::RolloutSpec;

/// What a port call returns.
pub type PortFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PortError>> + Send + 'a>>;

/// Why a port call failed. Adapters map their own errors onto these three,
/// which is all retraining needs to decide between "report and go on" and
/// "this input is wrong".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The thing asked for does not exist (model, version, device).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request was refused as invalid (e.g. the registry rejected a model).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Anything else: storage, network, a disconnected broker.
    #[error("{0}")]
    Failed(String),
}

/// Devices whose label `key` has the value `value`: one validated label
/// (serialised as `{"key", "value"}`).
pub(crate) type CohortFilter = drover_protocol::labels::Label;

/// Which telemetry to merge: one model version's *active* (not shadow)
/// windows that ended in `[from_ms, to_ms)`, optionally only from one cohort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryQuery {
    /// Model name.
    pub model: ModelName,
    /// Model version.
    pub version: Version,
    /// Only devices in this cohort (by their current labels).
    pub cohort: Option<CohortFilter>,
    /// Windows ending at or after this (Unix ms).
    pub from_ms: u64,
    /// Windows ending before this (Unix ms).
    pub to_ms: u64,
}

/// Merged feature and output histograms for a [`TelemetryQuery`].
///
/// Histograms are the raw per-bin counts of the telemetry windows (feature
/// `i` on the manifest's edges for feature `i`, plus under- and overflow;
/// outputs as class counts or bins of the reference output edges), summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetrySlice {
    /// Windows merged.
    pub windows: u64,
    /// Everything merged. Empty (`ObservedWindow::default()`) when no window
    /// matched.
    pub merged: ObservedWindow,
    /// The same per device id, when asked for; empty otherwise.
    pub devices: BTreeMap<String, ObservedWindow>,
}

/// Labelled inferences in one time bucket, for the accuracy trend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccuracyBucket {
    /// Bucket start (Unix ms, inclusive; windows are placed by their end).
    pub start_ms: u64,
    /// Bucket end (Unix ms, exclusive).
    pub end_ms: u64,
    /// Inferences that received ground truth.
    pub labelled: u64,
    /// Of those, how many were right.
    pub correct: u64,
}

/// Merged telemetry, read as windows arrive or from storage.
///
/// Implementations must merge as they read (one histogram set per device at
/// most, never one per window), so memory stays bounded by the number of
/// devices, not of windows.
pub trait TelemetrySource: Send + Sync {
    /// Feature and output histograms for `query`: merged, and per device
    /// when `per_device` is set (drift share and capture sampling need it).
    fn observed(&self, query: TelemetryQuery, per_device: bool) -> PortFuture<'_, TelemetrySlice>;

    /// Labelled and correct counts for `query` in consecutive buckets of
    /// `bucket_ms` from `query.from_ms` (the last one may be shorter), in
    /// time order; buckets with no windows are included with zero counts.
    fn accuracy(
        &self,
        query: TelemetryQuery,
        bucket_ms: u64,
    ) -> PortFuture<'_, Vec<AccuracyBucket>>;
}

/// One device, as the inventory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDevice {
    /// Device id.
    pub id: DeviceId,
    /// Operator labels (region, site, ...).
    pub labels: BTreeMap<String, String>,
    /// Connected now.
    pub online: bool,
    /// The model it serves.
    pub active: Option<ModelRef>,
}

/// A retrained model to add to the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushModel {
    /// Model name (same as the base).
    pub name: ModelName,
    /// The validated ONNX file.
    pub onnx: Vec<u8>,
    /// CSV (header + numeric feature columns, no label column) the registry
    /// builds the new version's reference profile and health checks from:
    /// the captured rows, i.e. the traffic the new version will see.
    pub reference_csv: Vec<u8>,
    /// Class names in output order (classifiers), so the registry does not
    /// have to guess them from a CSV without labels.
    pub labels: Option<Vec<String>>,
    /// Lineage: the version it was trained from.
    pub parent: Version,
    /// Lineage: the retraining job.
    pub retrain_job: u64,
    /// Lineage: hex SHA-256 of the job's dataset file (exactly the bytes
    /// the hook was given). Record this, not the hash of `reference_csv`.
    pub dataset_sha256: String,
    /// Lineage: a free-form training run id, e.g. `retrain-7/builtin`.
    pub training_run: String,
    /// Lineage: the hook's evaluation metrics.
    pub eval_metrics: BTreeMap<String, f64>,
    /// Alias to point at the new version (`candidate`); never `production`,
    /// which only a completed rollout should move.
    pub alias: Option<String>,
}

/// Device inventory, commands, registry writes and rollouts.
pub trait FleetOps: Send + Sync {
    /// Every known device (the caller filters by model, cohort and online).
    fn devices(&self) -> PortFuture<'_, Vec<FleetDevice>>;

    /// Sends a signed `Action::Capture { max_samples, max_bytes }` to
    /// `device`; returns the command's sequence number, which the device's
    /// `Up::Capture` uploads carry.
    fn request_capture(
        &self,
        device: DeviceId,
        max_samples: u32,
        max_bytes: u32,
    ) -> PortFuture<'_, u64>;

    /// Registers, signs and stores a new version; returns its number.
    fn push_model(&self, model: PushModel) -> PortFuture<'_, Version>;

    /// Starts a staged rollout; returns its id (normally `spec.id`).
    fn start_rollout(&self, spec: RolloutSpec) -> PortFuture<'_, String>;
}

/// Registry reads.
pub trait ModelSource: Send + Sync {
    /// The version drift is measured on: the `production` alias (or whatever
    /// the controller considers the fleet's current version); `None` when
    /// the model has no such version yet.
    fn production_version(&self, model: ModelName) -> PortFuture<'_, Option<Version>>;

    /// The manifest of `model@version`.
    fn manifest(&self, model: ModelName, version: Version) -> PortFuture<'_, ModelManifest>;

    /// The ONNX artifact of `model@version`.
    fn artifact(&self, model: ModelName, version: Version) -> PortFuture<'_, Vec<u8>>;

    /// The reference CSV `model@version` was pushed with, if the registry
    /// kept it. Used to top up a dataset with too few labelled rows.
    fn reference_csv(&self, model: ModelName, version: Version) -> PortFuture<'_, Option<Vec<u8>>>;
}
