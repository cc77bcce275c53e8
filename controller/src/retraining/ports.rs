//! The retraining pipeline's ports ([`crate::core::retraining::ports`]) implemented
//! over the running controller: telemetry from SQLite, devices and commands
//! from the inventory, registry reads and writes, rollouts from the rollout
//! service.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_protocol::manifest::ModelManifest;
use drover_protocol::messages::Action;
use drover_protocol::telemetry::{ModelRole, TelemetryWindow};
use drover_protocol::{DeviceId, ModelName, ModelRef, Version};

use crate::controller::{Controller, ControllerError};
use crate::core::drift::{Histogram, ObservedWindow};
use crate::core::retraining::ports::{
    AccuracyBucket, FleetDevice, PortError, PortFuture, PushModel, TelemetryQuery, TelemetrySlice,
};
use crate::core::rollout::RolloutSpec;
use crate::registry::PushRequest;
use crate::retraining::{FleetOps, ModelSource, Ports, TelemetrySource};
use crate::rollouts::{RolloutService, RolloutServiceError};
use crate::telemetry::query::{self, WindowScan};
use drover_protocol::labels::Selector;

fn port_err(e: ControllerError) -> PortError {
    match e {
        ControllerError::NotFound(s) | ControllerError::UnknownDevice(s) => PortError::NotFound(s),
        ControllerError::Registry(r) => PortError::Invalid(r.to_string()),
        other => PortError::Failed(other.to_string()),
    }
}

/// The three ports over one controller.
#[derive(Clone)]
pub(crate) struct ControllerPorts {
    ctl: Controller,
    rollouts: RolloutService,
}

impl ControllerPorts {
    /// Builds the ports.
    pub(crate) fn new(ctl: Controller, rollouts: RolloutService) -> ControllerPorts {
        ControllerPorts { ctl, rollouts }
    }

    /// As the runner's [`Ports`].
    pub(crate) fn ports(self) -> Ports {
        let me = Arc::new(self);
        Ports {
            telemetry: me.clone(),
            fleet: me.clone(),
            models: me,
        }
    }

    /// Device id → labels, for cohort filters.
    async fn labels(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, PortError> {
        let devices = self
            .ctl
            .devices(&Selector::default())
            .await
            .map_err(port_err)?;
        Ok(devices.into_iter().map(|d| (d.id, d.labels)).collect())
    }
}

fn add_window(into: &mut ObservedWindow, w: &TelemetryWindow) {
    if into.features.len() < w.features.len() {
        into.features
            .resize_with(w.features.len(), || Histogram::new(0));
    }
    for (h, counts) in into.features.iter_mut().zip(&w.features) {
        add_counts(h, counts);
    }
    if !w.outputs.is_empty() {
        let h = into.output.get_or_insert_with(|| Histogram::new(0));
        add_counts(h, &w.outputs);
    }
}

fn add_counts(h: &mut Histogram, counts: &[u32]) {
    if h.counts.len() < counts.len() {
        h.counts.resize(counts.len(), 0);
    }
    for (a, b) in h.counts.iter_mut().zip(counts) {
        *a = a.saturating_add(u64::from(*b));
    }
}

/// Streams the active windows of `q` (in its cohort) to `f`, one at a time,
/// through the one telemetry reader; returns how many rows did not decode.
fn for_each_window(
    conn: &rusqlite::Connection,
    q: &TelemetryQuery,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
    mut f: impl FnMut(&str, &TelemetryWindow),
) -> rusqlite::Result<u64> {
    let scan = WindowScan {
        model: Some(q.model.as_str().to_owned()),
        versions: Some(vec![q.version.0]),
        role: Some("active".to_owned()),
        from_ms: Some(q.from_ms),
        to_ms: Some(q.to_ms),
        by_receipt: false,
        devices: None,
    };
    let stats = query::for_each_window(conn, &scan, |device, w| {
        let in_cohort = q
            .cohort
            .as_ref()
            .is_none_or(|c| labels.get(device).is_some_and(|l| c.matches(l)));
        if in_cohort && w.role == ModelRole::Active {
            f(device, w);
        }
    })?;
    Ok(stats.undecodable)
}

impl ControllerPorts {
    fn count_undecodable(&self, n: u64) {
        for _ in 0..n {
            self.ctl.metrics().malformed("stored_window");
        }
    }
}

impl TelemetrySource for ControllerPorts {
    fn observed(&self, query: TelemetryQuery, per_device: bool) -> PortFuture<'_, TelemetrySlice> {
        Box::pin(async move {
            let labels = self.labels().await?;
            self.ctl
                .db()
                .call(move |c| {
                    let mut slice = TelemetrySlice::default();
                    let undecodable = for_each_window(c, &query, &labels, |device, w| {
                        slice.windows += 1;
                        add_window(&mut slice.merged, w);
                        if per_device {
                            add_window(slice.devices.entry(device.to_string()).or_default(), w);
                        }
                    })?;
                    Ok((slice, undecodable))
                })
                .await
                .map(|(slice, undecodable)| {
                    self.count_undecodable(undecodable);
                    slice
                })
                .map_err(|e| PortError::Failed(e.to_string()))
        })
    }

    fn accuracy(
        &self,
        query: TelemetryQuery,
        bucket_ms: u64,
    ) -> PortFuture<'_, Vec<AccuracyBucket>> {
        Box::pin(async move {
            let labels = self.labels().await?;
            let bucket_ms = bucket_ms.max(1);
            self.ctl
                .db()
                .call(move |c| {
                    let mut buckets = Vec::new();
                    let mut start = query.from_ms;
                    while start < query.to_ms && buckets.len() < 10_000 {
                        let end = start.saturating_add(bucket_ms).min(query.to_ms);
                        buckets.push(AccuracyBucket {
                            start_ms: start,
                            end_ms: end,
                            labelled: 0,
                            correct: 0,
                        });
                        start = end;
                    }
                    let undecodable = for_each_window(c, &query, &labels, |_, w| {
                        let i = ((w.end.0.saturating_sub(query.from_ms)) / bucket_ms) as usize;
                        if let Some(b) = buckets.get_mut(i) {
                            b.labelled += w.labelled;
                            b.correct += w.correct;
                        }
                    })?;
                    Ok((buckets, undecodable))
                })
                .await
                .map(|(buckets, undecodable)| {
                    self.count_undecodable(undecodable);
                    buckets
                })
                .map_err(|e| PortError::Failed(e.to_string()))
        })
    }
}

impl FleetOps for ControllerPorts {
    fn devices(&self) -> PortFuture<'_, Vec<FleetDevice>> {
        Box::pin(async move {
            let devices = self
                .ctl
                .devices(&Selector::default())
                .await
                .map_err(port_err)?;
            Ok(devices
                .into_iter()
                .filter_map(|d| {
                    Some(FleetDevice {
                        id: DeviceId::new(d.id).ok()?,
                        labels: d.labels,
                        online: d.online,
                        active: d.active.as_deref().and_then(|a| a.parse::<ModelRef>().ok()),
                    })
                })
                .collect())
        })
    }

    fn request_capture(
        &self,
        device: DeviceId,
        max_samples: u32,
        max_bytes: u32,
    ) -> PortFuture<'_, u64> {
        Box::pin(async move {
            self.ctl
                .send_command(
                    &device,
                    Action::Capture {
                        max_samples,
                        max_bytes,
                    },
                )
                .await
                .inspect(|_| crate::fault::hit("retrain.capture"))
                .map_err(port_err)
        })
    }

    fn push_model(&self, model: PushModel) -> PortFuture<'_, Version> {
        Box::pin(async move {
            let dataset = drover_protocol::Sha256::from_hex(&model.dataset_sha256).ok();
            let req = PushRequest {
                name: Some(model.name),
                onnx: model.onnx,
                reference_csv: Some(model.reference_csv),
                dataset_sha256: dataset,
                labels: model.labels,
                parent: Some(model.parent),
                alias: model.alias,
                training_run: Some(model.training_run),
                retrain_job: Some(model.retrain_job),
                eval_metrics: model.eval_metrics,
                ..PushRequest::default()
            };
            // A controller that died between the push and recording it in
            // the job pushes again on resume: the version that job already
            // pushed is the answer, not a second, orphaned one.
            if let Some(v) = self.version_of_job(&req).await? {
                return Ok(v);
            }
            let stored = self.ctl.push_model(req).await.map_err(port_err)?;
            Ok(stored.manifest.version)
        })
    }

    fn start_rollout(&self, spec: RolloutSpec) -> PortFuture<'_, String> {
        Box::pin(async move {
            match self.rollouts.create(spec).await {
                Ok(s) => Ok(s.id),
                // Rollout ids of retraining jobs are derived from the job,
                // model and version: one that exists is this job's, started
                // before a restart that lost the job's record of it.
                Err(RolloutServiceError::Exists(id)) => Ok(id),
                Err(e) => Err(PortError::Invalid(e.to_string())),
            }
        })
    }
}

impl ControllerPorts {
    /// The version an earlier push of the same retraining job stored, if any.
    async fn version_of_job(&self, req: &PushRequest) -> Result<Option<Version>, PortError> {
        let (Some(name), Some(job)) = (&req.name, req.retrain_job) else {
            return Ok(None);
        };
        let parent = req.parent.map_or(0, |v| v.0);
        let newer: Vec<Version> = self
            .ctl
            .models()
            .await
            .map_err(port_err)?
            .into_iter()
            .filter(|m| m.name == name.as_str() && m.version > parent)
            .map(|m| Version(m.version))
            .collect();
        for v in newer {
            if let Some(stored) = self.ctl.model(name, v).await.map_err(port_err)?
                && stored.manifest.lineage.retrain_job == Some(job)
            {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

impl ModelSource for ControllerPorts {
    fn production_version(&self, model: ModelName) -> PortFuture<'_, Option<Version>> {
        Box::pin(async move {
            match self.ctl.resolve_model(&model, "production").await {
                Ok(m) => Ok(Some(m.manifest.version)),
                Err(_) => {
                    // No alias yet: the version most devices serve.
                    let devices = self
                        .ctl
                        .devices(&Selector::default())
                        .await
                        .map_err(port_err)?;
                    let mut count: BTreeMap<Version, usize> = BTreeMap::new();
                    for d in devices {
                        if let Some(r) =
                            d.active.as_deref().and_then(|a| a.parse::<ModelRef>().ok())
                            && r.name == model
                        {
                            *count.entry(r.version).or_default() += 1;
                        }
                    }
                    Ok(count
                        .into_iter()
                        .max_by_key(|(v, n)| (*n, *v))
                        .map(|(v, _)| v))
                }
            }
        })
    }

    fn manifest(&self, model: ModelName, version: Version) -> PortFuture<'_, ModelManifest> {
        Box::pin(async move {
            self.ctl
                .model(&model, version)
                .await
                .map_err(port_err)?
                .map(|m| m.manifest)
                .ok_or_else(|| PortError::NotFound(format!("{model}@{version}")))
        })
    }

    fn artifact(&self, model: ModelName, version: Version) -> PortFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let m = self
                .ctl
                .model(&model, version)
                .await
                .map_err(port_err)?
                .ok_or_else(|| PortError::NotFound(format!("{model}@{version}")))?;
            self.ctl
                .artifact(m.manifest.artifact.sha256)
                .await
                .map_err(port_err)
        })
    }

    fn reference_csv(&self, model: ModelName, version: Version) -> PortFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            let path = self.ctl.reference_csv_path(&model, version);
            match tokio::fs::read(&path).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(PortError::Failed(format!("{}: {e}", path.display()))),
            }
        })
    }
}
