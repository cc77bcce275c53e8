//! The fast tier: thousands of devices with a fake clock and an in-memory
//! router, driving the real sans-IO cores — the controller's rollout engine
//! and each agent's deploy job — without brokers, sockets or sleeps.
//!
//! Each device runs `drover_agent::core::deploy::DeployJob` for every command
//! (chunk requests under its window, chunk intake, digest check, activation
//! reports); the controller side runs `drover_controller::core::rollout::Rollout`
//! and a chunk server. Messages travel through a time-ordered queue with a
//! fixed one-way latency. Telemetry is synthesised per device from the
//! version it serves, so gates see a good or a regressed candidate.
//! Signatures are left out on purpose: this tier measures decision logic at
//! scale; the real-agent tier checks trust end to end.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use drover_agent::core::deploy::{DeployAction, DeployConfig, DeployJob, JobKind, RangeSet};
use drover_controller::core::rollout::{
    CohortMetrics, DeployOutcome, DeviceView, MetricsRequest, Rollout, RolloutAction, RolloutSpec,
};
use drover_protocol::messages::{Chunk, ChunkRequest, DeployPhase, DeployStatus};
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::{DeviceId, LatencyHistogram, ModelName, Sha256, Timestamp, Version};

/// How a simulated candidate behaves on devices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Median latency, µs.
    pub latency_us: u64,
    /// Error rate.
    pub error_rate: f64,
    /// Accuracy on labelled inferences.
    pub accuracy: f64,
}

/// Fast-tier settings.
#[derive(Debug, Clone)]
pub struct FastConfig {
    /// Devices.
    pub devices: usize,
    /// Artifact size, bytes.
    pub artifact_bytes: usize,
    /// One-way message latency, ms.
    pub latency_ms: u64,
    /// Inferences per second per device (synthetic telemetry).
    pub rate: f64,
    /// The candidate's behaviour.
    pub candidate: Quality,
    /// The current version's behaviour.
    pub current: Quality,
}

impl Default for FastConfig {
    fn default() -> Self {
        let good = Quality {
            latency_us: 1000,
            error_rate: 0.001,
            accuracy: 0.9,
        };
        FastConfig {
            devices: 10_000,
            artifact_bytes: 4096,
            latency_ms: 20,
            rate: 5.0,
            candidate: good,
            current: good,
        }
    }
}

enum Msg {
    /// Controller → device: a command.
    Command(DeviceId, RolloutAction),
    /// Device → controller: a chunk request.
    ChunkRequest(usize, ChunkRequest),
    /// Controller → device: a chunk.
    Chunk(usize, Chunk),
    /// Device → controller: a status report.
    Report(DeviceId, DeployStatus),
    /// The rollout asked to be woken.
    Wake,
}

struct Device {
    id: DeviceId,
    version: Option<Version>,
    job: Option<DeployJob>,
    buffer: Vec<u8>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum FastError {
    /// The run did not settle within the step bound.
    #[error("did not settle within {0} steps (phase {1})")]
    NeverSettled(usize, String),
    /// The engine refused something.
    #[error("rollout: {0}")]
    Rollout(String),
}

/// The simulated world.
pub struct FastFleet {
    now: Timestamp,
    rollout: Rollout,
    devices: Vec<Device>,
    index: BTreeMap<DeviceId, usize>,
    queue: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
    msgs: BTreeMap<usize, Msg>,
    next_msg: usize,
    seq: u64,
    artifact: Vec<u8>,
    sha: Sha256,
    manifest: drover_protocol::Signed<drover_protocol::ModelManifest>,
    decoded: drover_protocol::ModelManifest,
    cfg: FastConfig,
    templates: BTreeMap<Version, CohortMetrics>,
    wake_at: Option<Timestamp>,
    /// Messages delivered.
    pub delivered: u64,
    /// Commands sent by the rollout.
    pub commands: u64,
}

const OLD: Version = Version(1);
const NEW: Version = Version(2);

fn template(q: Quality) -> CohortMetrics {
    // 1,000 inferences' worth; scaled by repetition when answering.
    let mut m = CohortMetrics::default();
    let mut rng = testkit::SplitMix(q.latency_us);
    let mut latency = LatencyHistogram::default();
    for _ in 0..1000 {
        latency.record((q.latency_us as f64 * (0.2 * rng.normal()).exp()) as u64);
    }
    m.count = 1000;
    m.errors = (1000.0 * q.error_rate).round() as u64;
    m.latency = latency;
    m.labelled = 200;
    m.correct = (200.0 * q.accuracy).round() as u64;
    m.outputs = vec![700, 200, 100];
    m
}

impl FastFleet {
    /// Plans a rollout of a candidate over `cfg.devices` devices on v1.
    pub fn new(
        cfg: FastConfig,
        spec: impl FnOnce(&mut RolloutSpec),
    ) -> Result<FastFleet, FastError> {
        let now = Timestamp(1_700_000_000_000);
        let keys = TestKeys::new(7);
        let artifact: Vec<u8> = (0..cfg.artifact_bytes)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let decoded = testkit::manifest("sensor", NEW.0, &artifact, now);
        let manifest = keys.sign_manifest(&decoded);
        let regions = ["eu", "us", "apac", "sa"];
        let hardware = ["rpi4", "jetson", "x86"];
        let mut devices = Vec::with_capacity(cfg.devices);
        let mut views = Vec::with_capacity(cfg.devices);
        let mut index = BTreeMap::new();
        for i in 0..cfg.devices {
            let id =
                DeviceId::new(format!("d{i:05}")).map_err(|e| FastError::Rollout(e.to_string()))?;
            let mut labels = BTreeMap::new();
            labels.insert("region".into(), regions[i % regions.len()].to_string());
            labels.insert("hardware".into(), hardware[i % hardware.len()].to_string());
            views.push(DeviceView {
                id: id.clone(),
                labels,
                online: true,
                version: Some(OLD),
                last_seen: now,
            });
            index.insert(id.clone(), i);
            devices.push(Device {
                id,
                version: Some(OLD),
                job: None,
                buffer: Vec::new(),
            });
        }
        let mut s = RolloutSpec::new(
            "fast",
            ModelName::new("sensor").map_err(|e| FastError::Rollout(e.to_string()))?,
            NEW,
        );
        s.waves = vec![1.0, 10.0, 50.0, 100.0];
        s.bake_ms = 60_000;
        s.metrics_interval_ms = 10_000;
        spec(&mut s);
        let rollout = Rollout::new(s, views, Default::default(), now)
            .map_err(|e| FastError::Rollout(e.to_string()))?;
        let mut templates = BTreeMap::new();
        templates.insert(OLD, template(cfg.current));
        templates.insert(NEW, template(cfg.candidate));
        Ok(FastFleet {
            now,
            rollout,
            devices,
            index,
            queue: BinaryHeap::new(),
            msgs: BTreeMap::new(),
            next_msg: 0,
            seq: 0,
            sha: Sha256::of(&artifact),
            artifact,
            manifest,
            decoded,
            cfg,
            templates,
            wake_at: None,
            delivered: 0,
            commands: 0,
        })
    }

    fn send(&mut self, delay: u64, msg: Msg) {
        let id = self.next_msg;
        self.next_msg += 1;
        self.seq += 1;
        self.msgs.insert(id, msg);
        self.queue
            .push(Reverse((self.now.plus_ms(delay), self.seq, id)));
    }

    /// The rollout.
    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// Devices per active version.
    pub fn versions(&self) -> BTreeMap<Option<Version>, usize> {
        let mut out = BTreeMap::new();
        for d in &self.devices {
            *out.entry(d.version).or_insert(0) += 1;
        }
        out
    }

    fn metrics(&self, req: &MetricsRequest) -> (CohortMetrics, CohortMetrics) {
        let secs = req.until.ms_since(req.since) as f64 / 1000.0;
        let per_device = (self.cfg.rate * secs / 1000.0).round().max(0.0) as usize;
        let side = |ids: &[DeviceId]| {
            let mut m = CohortMetrics::default();
            for id in ids {
                let Some(v) = self.index.get(id).and_then(|i| self.devices[*i].version) else {
                    continue;
                };
                if let Some(t) = self.templates.get(&v) {
                    for _ in 0..per_device {
                        m.merge(t);
                    }
                }
            }
            m.devices = ids.len() as u64;
            m
        };
        (side(&req.canary), side(&req.control))
    }

    /// Drains the rollout's outputs into the router.
    fn pump_rollout(&mut self) {
        let now = self.now;
        while let Some(a) = self.rollout.poll_action(now) {
            self.commands += 1;
            let dev = a.device().clone();
            self.send(self.cfg.latency_ms, Msg::Command(dev, a));
        }
        while let Some(req) = self.rollout.poll_metrics_request(now) {
            let (canary, control) = self.metrics(&req);
            let _ = self.rollout.handle_metrics(now, req.id, canary, control);
        }
        while self.rollout.poll_audit().is_some() {}
        if let Some((t, _)) = self.rollout.poll_timeout()
            && self.wake_at != Some(t)
        {
            self.wake_at = Some(t);
            let delay = t.ms_since(now);
            self.send(delay, Msg::Wake);
        }
    }

    fn pump_job(&mut self, i: usize) {
        loop {
            let Some(action) = self.devices[i]
                .job
                .as_mut()
                .and_then(DeployJob::poll_action)
            else {
                return;
            };
            match action {
                DeployAction::RequestChunk(r) => {
                    self.send(self.cfg.latency_ms, Msg::ChunkRequest(i, r))
                }
                DeployAction::WriteChunk { offset, data } => {
                    let buf = &mut self.devices[i].buffer;
                    let end = offset as usize + data.len();
                    if buf.len() < end {
                        buf.resize(end, 0);
                    }
                    buf[offset as usize..end].copy_from_slice(&data);
                }
                DeployAction::Verify => {
                    let d = &mut self.devices[i];
                    let (sha, len) = (Sha256::of(&d.buffer), d.buffer.len() as u64);
                    if let Some(j) = d.job.as_mut() {
                        j.handle_digest(sha, len);
                    }
                }
                DeployAction::Load => {
                    if let Some(j) = self.devices[i].job.as_mut() {
                        j.handle_loaded(Ok(()));
                    }
                }
                DeployAction::RunHealthChecks => {
                    if let Some(j) = self.devices[i].job.as_mut() {
                        j.handle_health(Ok(()));
                    }
                }
                DeployAction::Activate => {
                    let d = &mut self.devices[i];
                    if let Some(j) = d.job.as_mut() {
                        d.version = Some(j.manifest().version);
                        j.handle_activated(Ok(()));
                    }
                }
                DeployAction::Report(status) => {
                    let id = self.devices[i].id.clone();
                    self.send(self.cfg.latency_ms, Msg::Report(id, status));
                }
                DeployAction::Discard => {
                    self.devices[i].buffer.clear();
                }
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        self.delivered += 1;
        let now = self.now;
        match msg {
            Msg::Wake => {
                self.wake_at = None;
                self.rollout.handle_timeout(now);
            }
            Msg::Command(dev, action) => {
                let Some(&i) = self.index.get(&dev) else {
                    return;
                };
                match action {
                    RolloutAction::Deploy { version, .. }
                        if self.devices[i].version == Some(version) =>
                    {
                        // Idempotent: already active, report it again.
                        let status = DeployStatus {
                            seq: 0,
                            model: self.decoded.model_ref(),
                            phase: DeployPhase::Active,
                        };
                        self.send(self.cfg.latency_ms, Msg::Report(dev, status));
                    }
                    RolloutAction::Deploy { .. } => {
                        let mut job = DeployJob::new(
                            self.seq,
                            JobKind::Deploy,
                            self.manifest.clone(),
                            self.decoded.clone(),
                            RangeSet::from_ranges([]),
                            DeployConfig {
                                chunk_size: 1024,
                                ..DeployConfig::default()
                            },
                            now,
                        );
                        job.handle_link(true, now);
                        self.devices[i].buffer.clear();
                        self.devices[i].job = Some(job);
                        self.pump_job(i);
                    }
                    RolloutAction::Rollback { to, .. } => {
                        self.devices[i].version = Some(to);
                        let mut model = self.decoded.model_ref();
                        model.version = to;
                        let status = DeployStatus {
                            seq: 0,
                            model,
                            phase: DeployPhase::Active,
                        };
                        self.send(self.cfg.latency_ms, Msg::Report(dev, status));
                    }
                    RolloutAction::Shadow { .. } | RolloutAction::StopShadow { .. } => {}
                }
            }
            Msg::ChunkRequest(i, r) => {
                if r.sha256 != self.sha {
                    return;
                }
                let start = (r.offset as usize).min(self.artifact.len());
                let end = (start + r.len as usize).min(self.artifact.len());
                let chunk = Chunk {
                    sha256: self.sha,
                    offset: r.offset,
                    total: self.artifact.len() as u64,
                    data: self.artifact[start..end].to_vec(),
                };
                self.send(self.cfg.latency_ms, Msg::Chunk(i, chunk));
            }
            Msg::Chunk(i, chunk) => {
                if let Some(j) = self.devices[i].job.as_mut() {
                    j.handle_chunk(chunk, now);
                }
                self.pump_job(i);
            }
            Msg::Report(dev, status) => {
                let outcome = match status.phase {
                    DeployPhase::Active => DeployOutcome::Active {
                        version: status.model.version,
                    },
                    DeployPhase::Failed(r) => DeployOutcome::Failed {
                        version: status.model.version,
                        reason: r.to_string(),
                        retryable: false,
                    },
                    _ => return,
                };
                let _ = self.rollout.handle_deploy_report(now, &dev, outcome);
            }
        }
    }

    /// Runs until nothing is queued (the rollout ended and every message was
    /// delivered), jumping the clock to each next event. Fails a run that is
    /// still busy after `max_steps` deliveries.
    pub fn run_until_idle(&mut self, max_steps: usize) -> Result<(), FastError> {
        self.pump_rollout();
        let mut steps = 0;
        while let Some(Reverse((at, _, id))) = self.queue.pop() {
            steps += 1;
            if steps > max_steps {
                return Err(FastError::NeverSettled(
                    max_steps,
                    self.rollout.phase().name().to_string(),
                ));
            }
            self.now = self.now.max(at);
            if let Some(msg) = self.msgs.remove(&id) {
                self.deliver(msg);
            }
            self.pump_rollout();
            if !self.rollout.is_active()
                && self
                    .queue
                    .iter()
                    .all(|Reverse((_, _, id))| matches!(self.msgs.get(id), Some(Msg::Wake)))
            {
                break;
            }
        }
        Ok(())
    }

    /// Fake time elapsed since the start.
    pub fn elapsed_ms(&self) -> u64 {
        self.now.ms_since(Timestamp(1_700_000_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_completes_a_rollout() {
        let mut f = FastFleet::new(
            FastConfig {
                devices: 300,
                ..FastConfig::default()
            },
            |_| {},
        )
        .unwrap();
        f.run_until_idle(1_000_000).unwrap();
        assert_eq!(f.rollout().phase().name(), "completed");
        assert_eq!(f.versions().get(&Some(NEW)), Some(&300));
    }

    #[test]
    fn a_slow_candidate_is_rolled_back() {
        let mut cfg = FastConfig {
            devices: 300,
            ..FastConfig::default()
        };
        cfg.candidate.latency_us = 2000;
        let mut f = FastFleet::new(cfg, |_| {}).unwrap();
        f.run_until_idle(1_000_000).unwrap();
        assert_eq!(f.rollout().phase().name(), "rolled_back");
        assert_eq!(f.versions().get(&Some(OLD)), Some(&300));
    }

    #[test]
    fn ten_thousand_devices_through_a_full_rollout() {
        let started = std::time::Instant::now();
        let mut f = FastFleet::new(FastConfig::default(), |_| {}).unwrap();
        f.run_until_idle(50_000_000).unwrap();
        assert_eq!(f.rollout().phase().name(), "completed");
        assert_eq!(f.versions().get(&Some(NEW)), Some(&10_000));
        assert_eq!(f.commands, 10_000, "one deploy per device");
        println!(
            "10,000 devices: {} messages, {:.1} fake minutes, {:.1} s wall",
            f.delivered,
            f.elapsed_ms() as f64 / 60_000.0,
            started.elapsed().as_secs_f64()
        );
    }

    #[test]
    fn a_run_that_never_settles_fails() {
        let mut f = FastFleet::new(
            FastConfig {
                devices: 50,
                ..FastConfig::default()
            },
            |_| {},
        )
        .unwrap();
        assert!(matches!(
            f.run_until_idle(10),
            Err(FastError::NeverSettled(10, _))
        ));
    }
}
