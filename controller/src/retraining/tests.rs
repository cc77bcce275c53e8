//! End-to-end tests of the retraining service against in-memory ports, a
//! real SQLite store, real files and real hook processes, with a fake clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_protocol::manifest::{BinnedProfile, FeatureProfile, ModelManifest, Task};
use drover_protocol::messages::{CaptureUpload, CapturedSample, Label};
use drover_protocol::{DeviceId, ModelName, ModelRef, Sha256, Timestamp, Version, testkit};

use super::runner::{DriftRequest, Ports, RetrainRunner};
use crate::clock::{FakeClock, SharedClock};
use crate::core::drift::{
    DriftPolicyConfig, Evaluation, FeatureReference, Histogram, ObservedWindow, ReferenceProfile,
};
use crate::core::retraining::config::{
    AutoRolloutConfig, CaptureConfig, DatasetConfig, ExecHook, HookConfig, ModelRetrainConfig,
    RetrainConfig, WebhookHook,
};
use crate::core::retraining::job::{JobState, RetrainJob, TriggerKind};
use crate::core::retraining::ports::{
    AccuracyBucket, FleetDevice, FleetOps, ModelSource, PortError, PortFuture, PushModel,
    TelemetryQuery, TelemetrySlice, TelemetrySource,
};
use crate::core::retraining::report::reference_profile;
use crate::core::rollout::RolloutSpec;
use crate::db::Db;
use crate::train::Dataset;

const MIN: u64 = 60_000;
const START: u64 = 1_800_000_000_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn sensor_csv() -> PathBuf {
    fixtures().join("data/sensor_reference.csv")
}

fn model() -> ModelName {
    ModelName::new("sensor").unwrap()
}

/// The v1 fixture's manifest with a real reference profile (deciles of
/// the fixture CSV) and sorted class names.
fn sensor_manifest() -> ModelManifest {
    let artifact = std::fs::read(fixtures().join("models/sensor_clf_v1.onnx")).unwrap();
    let data = Dataset::from_csv_path(&sensor_csv(), "label").unwrap();
    let mut m = testkit::manifest("sensor", 1, &artifact, Timestamp(0));
    m.reference.features = data
        .feature_names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let samples: Vec<f64> = data.rows.iter().map(|r| f64::from(r[j])).collect();
            let r = FeatureReference::from_samples(name.as_str(), &samples, 10).unwrap();
            FeatureProfile {
                name: name.clone(),
                bins: BinnedProfile {
                    edges: r.edges.iter().map(|e| *e as f32).collect(),
                    frequencies: r.frequencies.iter().map(|f| *f as f32).collect(),
                },
            }
        })
        .collect();
    let mut counts = vec![0f32; data.classes.len()];
    for l in &data.labels {
        counts[*l] += 1.0;
    }
    m.reference.output = BinnedProfile {
        edges: Vec::new(),
        frequencies: counts
            .iter()
            .map(|c| c / data.labels.len() as f32)
            .collect(),
    };
    m.task = Task::Classification {
        labels: data.classes.clone(),
        probabilities: "probabilities".into(),
        label: Some("label".into()),
    };
    m
}

/// `n` samples per distribution following the reference, except that
/// `shift` of feature 0's mass is moved into its top bin.
fn window(profile: &ReferenceProfile, n: u64, shift: f64) -> ObservedWindow {
    let counts = |r: &FeatureReference, shift: f64| {
        let mut c: Vec<u64> = r
            .frequencies
            .iter()
            .map(|f| (f * (1.0 - shift) * n as f64).round() as u64)
            .collect();
        if let Some(last) = c.last_mut() {
            *last += (shift * n as f64).round() as u64;
        }
        Histogram::from_counts(c)
    };
    ObservedWindow {
        features: profile
            .features
            .iter()
            .enumerate()
            .map(|(i, r)| counts(r, if i == 0 { shift } else { 0.0 }))
            .collect(),
        output: profile.output.as_ref().map(|r| counts(r, 0.0)),
    }
}

/// In-memory ports recording every fleet-touching call.
struct Fake {
    manifest: ModelManifest,
    artifact: Vec<u8>,
    reference_csv: Option<Vec<u8>>,
    production: Mutex<Option<Version>>,
    devices: Mutex<Vec<FleetDevice>>,
    /// Per cohort value (`None` = the whole fleet): merged and per device.
    slices: Mutex<BTreeMap<Option<String>, TelemetrySlice>>,
    captures: Mutex<Vec<(String, u32, u32, u64)>>,
    pushes: Mutex<Vec<PushModel>>,
    rollouts: Mutex<Vec<RolloutSpec>>,
    next_seq: AtomicU64,
}

impl Fake {
    fn new() -> Arc<Fake> {
        let manifest = sensor_manifest();
        Arc::new(Fake {
            artifact: std::fs::read(fixtures().join("models/sensor_clf_v1.onnx")).unwrap(),
            reference_csv: Some(std::fs::read(sensor_csv()).unwrap()),
            production: Mutex::new(Some(Version(1))),
            devices: Mutex::new(Vec::new()),
            slices: Mutex::new(BTreeMap::new()),
            captures: Mutex::new(Vec::new()),
            pushes: Mutex::new(Vec::new()),
            rollouts: Mutex::new(Vec::new()),
            next_seq: AtomicU64::new(100),
            manifest,
        })
    }

    fn profile(&self) -> ReferenceProfile {
        reference_profile(&self.manifest).unwrap()
    }

    fn ports(self: &Arc<Fake>) -> Ports {
        Ports {
            telemetry: self.clone(),
            fleet: self.clone(),
            models: self.clone(),
        }
    }

    /// Devices `(id, region, shift, samples)`, all online on sensor@1;
    /// telemetry per device, per region and for the fleet.
    fn set_fleet(&self, devices: &[(&str, &str, f64, u64)]) {
        let profile = self.profile();
        let mut slices: BTreeMap<Option<String>, TelemetrySlice> = BTreeMap::new();
        let mut fleet = Vec::new();
        for (id, region, shift, n) in devices {
            fleet.push(FleetDevice {
                id: DeviceId::new(*id).unwrap(),
                labels: BTreeMap::from([("region".to_owned(), (*region).to_owned())]),
                online: true,
                active: Some(ModelRef {
                    name: model(),
                    version: Version(1),
                }),
            });
            let w = window(&profile, *n, *shift);
            for key in [None, Some((*region).to_owned())] {
                let slice = slices.entry(key).or_default();
                slice.windows += 1;
                slice.merged.merge(&w).unwrap();
                slice.devices.insert((*id).to_owned(), w.clone());
            }
        }
        *self.devices.lock().unwrap() = fleet;
        *self.slices.lock().unwrap() = slices;
    }

    fn pushes(&self) -> Vec<PushModel> {
        self.pushes.lock().unwrap().clone()
    }

    fn rollouts(&self) -> Vec<RolloutSpec> {
        self.rollouts.lock().unwrap().clone()
    }

    fn captures(&self) -> Vec<(String, u32, u32, u64)> {
        self.captures.lock().unwrap().clone()
    }
}

impl TelemetrySource for Fake {
    fn observed(&self, query: TelemetryQuery, per_device: bool) -> PortFuture<'_, TelemetrySlice> {
        let key = query.cohort.map(|c| c.value().to_owned());
        let mut slice = self
            .slices
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .unwrap_or_default();
        if !per_device {
            slice.devices.clear();
        }
        Box::pin(async move { Ok(slice) })
    }

    fn accuracy(
        &self,
        query: TelemetryQuery,
        bucket_ms: u64,
    ) -> PortFuture<'_, Vec<AccuracyBucket>> {
        let buckets = (0..4)
            .map(|i| AccuracyBucket {
                start_ms: query.from_ms + i * bucket_ms,
                end_ms: query.from_ms + (i + 1) * bucket_ms,
                labelled: 100,
                correct: 90 - 5 * i,
            })
            .collect();
        Box::pin(async move { Ok(buckets) })
    }
}

impl FleetOps for Fake {
    fn devices(&self) -> PortFuture<'_, Vec<FleetDevice>> {
        let devices = self.devices.lock().unwrap().clone();
        Box::pin(async move { Ok(devices) })
    }

    fn request_capture(
        &self,
        device: DeviceId,
        max_samples: u32,
        max_bytes: u32,
    ) -> PortFuture<'_, u64> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.captures
            .lock()
            .unwrap()
            .push((device.to_string(), max_samples, max_bytes, seq));
        Box::pin(async move { Ok(seq) })
    }

    fn push_model(&self, model: PushModel) -> PortFuture<'_, Version> {
        let mut pushes = self.pushes.lock().unwrap();
        pushes.push(model);
        let version = Version(1 + pushes.len() as u64);
        Box::pin(async move { Ok(version) })
    }

    fn start_rollout(&self, spec: RolloutSpec) -> PortFuture<'_, String> {
        let id = spec.id.clone();
        self.rollouts.lock().unwrap().push(spec);
        Box::pin(async move { Ok(id) })
    }
}

impl ModelSource for Fake {
    fn production_version(&self, _model: ModelName) -> PortFuture<'_, Option<Version>> {
        let v = *self.production.lock().unwrap();
        Box::pin(async move { Ok(v) })
    }

    fn manifest(&self, model: ModelName, version: Version) -> PortFuture<'_, ModelManifest> {
        let m = self.manifest.clone();
        Box::pin(async move {
            if version == Version(1) {
                Ok(m)
            } else {
                Err(PortError::NotFound(format!("{model}@{version}")))
            }
        })
    }

    fn artifact(&self, _model: ModelName, _version: Version) -> PortFuture<'_, Vec<u8>> {
        let a = self.artifact.clone();
        Box::pin(async move { Ok(a) })
    }

    fn reference_csv(
        &self,
        _model: ModelName,
        _version: Version,
    ) -> PortFuture<'_, Option<Vec<u8>>> {
        let r = self.reference_csv.clone();
        Box::pin(async move { Ok(r) })
    }
}

/// A runner over `fake` with its own data dir and database.
struct Harness {
    dir: tempfile::TempDir,
    fake: Arc<Fake>,
    clock: Arc<FakeClock>,
    config: RetrainConfig,
    runner: RetrainRunner,
}

impl Harness {
    async fn new(fake: Arc<Fake>, config: RetrainConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(Timestamp(START));
        let runner = open(&fake, dir.path(), &clock, &config).await;
        Harness {
            dir,
            fake,
            clock,
            config,
            runner,
        }
    }

    fn advance(&self, ms: u64) {
        self.clock.advance(ms);
    }

    /// Drops the runner and opens a new one on the same files (a restart).
    async fn restart(&mut self) {
        self.runner = open(&self.fake, self.dir.path(), &self.clock, &self.config).await;
    }

    /// Manual run with no device online: the dataset comes from the
    /// reference CSV; then the hook.
    async fn manual_job(&self) -> RetrainJob {
        let job = self.runner.run_manual(&model()).await.unwrap();
        let tick = self.runner.tick().await;
        assert_eq!(tick.ready, [job.id], "{tick:?}");
        self.runner.train_job(job.id).await.unwrap()
    }
}

async fn open(
    fake: &Arc<Fake>,
    dir: &Path,
    clock: &Arc<FakeClock>,
    config: &RetrainConfig,
) -> RetrainRunner {
    let db = Db::open(&dir.join("controller.db")).unwrap();
    let clock: SharedClock = clock.clone();
    RetrainRunner::open(fake.ports(), db, dir.to_path_buf(), config.clone(), clock)
        .await
        .unwrap()
}

fn exec(script: &str, timeout: Duration) -> HookConfig {
    HookConfig::Exec(ExecHook {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::new(),
        timeout,
        max_log_bytes: 4096,
        working_dir: None,
    })
}

fn config_with(f: impl FnOnce(&mut ModelRetrainConfig)) -> RetrainConfig {
    let mut cfg = ModelRetrainConfig {
        policy: DriftPolicyConfig {
            consecutive: 2,
            cooldown: Duration::from_secs(3600),
            ..DriftPolicyConfig::default()
        },
        interval: Duration::from_secs(600),
        window: Duration::from_secs(3600),
        dataset: DatasetConfig {
            max_reference_rows: 300,
            ..DatasetConfig::default()
        },
        ..ModelRetrainConfig::default()
    };
    f(&mut cfg);
    RetrainConfig {
        models: BTreeMap::from([(model(), cfg)]),
    }
}

fn copy_v2_hook() -> HookConfig {
    let v2 = fixtures().join("models/sensor_clf_v2.onnx");
    exec(
        &format!(
            "cat > stdin.json && cmp -s stdin.json \"$DROVER_JOB_FILE\" || exit 3\n\
             cp '{}' \"$DROVER_OUTPUT\"\n\
             echo '{{\"holdout_accuracy\": 0.88, \"note\": \"x\"}}' > \"$DROVER_METRICS\"\n\
             echo trained job $DROVER_JOB_ID",
            v2.display()
        ),
        Duration::from_secs(30),
    )
}

/// Labelled fixture rows as a device's capture upload.
fn upload(seq: u64, rows: std::ops::Range<usize>, labelled: bool) -> CaptureUpload {
    let data = Dataset::from_csv_path(&sensor_csv(), "label").unwrap();
    CaptureUpload {
        seq,
        model: ModelRef {
            name: model(),
            version: Version(1),
        },
        part: 0,
        last: true,
        samples: rows
            .map(|i| CapturedSample {
                input: data.rows[i].clone(),
                label: labelled.then(|| Label::Class(data.labels[i] as u32)),
            })
            .collect(),
    }
}

fn no_fleet_touched(fake: &Fake) {
    assert!(fake.pushes().is_empty(), "a failed job must not push");
    assert!(fake.rollouts().is_empty(), "a failed job must not roll out");
}

/// The fleet of the drift scenario: region eu drifts (d1 most, d2 less),
/// region us is stable.
const DRIFTING_EU: [(&str, &str, f64, u64); 6] = [
    ("d1", "eu", 0.9, 500),
    ("d2", "eu", 0.5, 400),
    ("d3", "eu", 0.0, 400),
    ("d4", "eu", 0.0, 400),
    ("d5", "us", 0.0, 800),
    ("d6", "us", 0.0, 800),
];

const STABLE: [(&str, &str, f64, u64); 4] = [
    ("d1", "eu", 0.0, 800),
    ("d2", "eu", 0.0, 800),
    ("d5", "us", 0.0, 800),
    ("d6", "us", 0.0, 800),
];

#[tokio::test]
async fn stationary_fleet_never_creates_a_job() {
    let fake = Fake::new();
    fake.set_fleet(&STABLE);
    let h = Harness::new(
        fake.clone(),
        config_with(|c| c.cohort_key = Some("region".into())),
    )
    .await;
    for _ in 0..12 {
        h.advance(10 * MIN);
        let tick = h.runner.tick().await;
        assert!(tick.errors.is_empty(), "{tick:?}");
        assert_eq!(tick.evaluations.len(), 1);
        assert!(
            matches!(tick.evaluations[0].1, Some(Evaluation::Stable { .. })),
            "{tick:?}"
        );
        assert!(tick.jobs_created.is_empty());
    }
    assert!(h.runner.jobs(None, 10).await.unwrap().is_empty());
    assert!(fake.captures().is_empty());
    no_fleet_touched(&fake);
}

#[tokio::test]
async fn drift_in_one_cohort_retrains_pushes_with_lineage_and_rolls_out() {
    let fake = Fake::new();
    fake.set_fleet(&DRIFTING_EU);
    let config = config_with(|c| {
        c.cohort_key = Some("region".into());
        c.capture = CaptureConfig {
            devices: 2,
            samples_per_device: 100,
            ..CaptureConfig::default()
        };
        c.hook = copy_v2_hook();
        c.auto_rollout = AutoRolloutConfig {
            enabled: true,
            waves: vec![10.0, 100.0],
            bake: Duration::from_secs(300),
            gates: vec!["output_psi<=0.3".into()],
            ..AutoRolloutConfig::default()
        };
    });
    let h = Harness::new(fake.clone(), config).await;

    // Nothing is due before the first interval.
    assert!(h.runner.tick().await.evaluations.is_empty());
    h.advance(10 * MIN);
    let tick = h.runner.tick().await;
    assert!(
        matches!(
            tick.evaluations[0].1,
            Some(Evaluation::Drifting { run: 1, .. })
        ),
        "{tick:?}"
    );
    assert!(
        tick.jobs_created.is_empty(),
        "one drifting window is not enough"
    );
    h.advance(10 * MIN);
    let tick = h.runner.tick().await;
    assert!(matches!(
        tick.evaluations[0].1,
        Some(Evaluation::Triggered { .. })
    ));
    let [job_id] = tick.jobs_created[..] else {
        panic!("{tick:?}")
    };

    // The drifting cohort's drifting devices were asked, worst first.
    let captures = fake.captures();
    let asked: Vec<&str> = captures.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(asked, ["d1", "d2"]);
    assert_eq!((captures[0].1, captures[0].2), (100, 256 * 1024));
    let job = h.runner.job(job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Capturing);
    assert_eq!(job.trigger.kind, TriggerKind::Drift);
    assert_eq!(job.trigger.cohort.as_ref().unwrap().value(), "eu");
    assert!(
        job.trigger.reason.contains("temp"),
        "{}",
        job.trigger.reason
    );
    assert!(job.trigger.report.as_ref().unwrap().drifting);

    // Uploads: d1 sends 60 labelled rows; d2 20 unlabelled ones; a stray
    // upload with a wrong sequence is ignored.
    let (seq1, seq2) = (captures[0].3, captures[1].3);
    let d1 = DeviceId::new("d1").unwrap();
    let d2 = DeviceId::new("d2").unwrap();
    assert!(
        h.runner
            .handle_capture(&d1, &upload(999, 0..5, true))
            .is_some()
    );
    h.runner.handle_capture(&d1, &upload(seq1, 0..60, true));
    assert!(
        h.runner.tick().await.ready.is_empty(),
        "d2 has not answered"
    );
    h.runner.handle_capture(&d2, &upload(seq2, 60..80, false));
    let tick = h.runner.tick().await;
    assert_eq!(tick.ready, [job_id]);

    let job = h.runner.job(job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Training);
    let dataset = job.dataset.clone().unwrap();
    assert_eq!(dataset.captured_rows, 80);
    // 60 labelled < 200: topped up with 300 reference rows.
    assert_eq!(dataset.reference_rows, 300);
    assert_eq!(dataset.labelled_rows, 360);
    assert_eq!(dataset.classes, ["fault", "normal", "warning"]);
    let csv = std::fs::read(&dataset.path).unwrap();
    assert_eq!(Sha256::of(&csv).to_hex(), dataset.sha256);
    let text = String::from_utf8(csv).unwrap();
    assert!(text.starts_with("temp,vibration,current,humidity,label\n"));
    assert_eq!(
        Path::new(&dataset.path),
        h.dir.path().join("datasets").join(format!("{job_id}.csv"))
    );

    let job = h.runner.train_job(job_id).await.unwrap();
    assert_eq!(job.state, JobState::RolledOut, "{:?}", job.failure);
    let hook = job.hook.as_ref().unwrap();
    assert_eq!(hook.exit_code, Some(0));
    assert!(
        hook.log.contains(&format!("trained job {job_id}")),
        "{}",
        hook.log
    );
    assert!(hook.log.contains("`note` is not a number"), "{}", hook.log);

    let pushes = fake.pushes();
    let [push] = &pushes[..] else { panic!() };
    assert_eq!(push.name, model());
    assert_eq!(push.parent, Version(1));
    assert_eq!(push.retrain_job, job_id);
    assert_eq!(push.dataset_sha256, dataset.sha256);
    assert_eq!(push.eval_metrics["holdout_accuracy"], 0.88);
    assert_eq!(push.labels.as_deref(), Some(&dataset.classes[..]));
    assert_eq!(push.alias.as_deref(), Some("candidate"));
    assert_eq!(
        push.onnx,
        std::fs::read(fixtures().join("models/sensor_clf_v2.onnx")).unwrap()
    );
    // The new reference profile describes the captured traffic: 80 rows
    // are fewer than 100, so every dataset row, features only.
    let profile = String::from_utf8(push.reference_csv.clone()).unwrap();
    assert!(profile.starts_with("temp,vibration,current,humidity\n"));
    assert_eq!(profile.lines().count(), 1 + 380);

    assert_eq!(job.result_version, Some(Version(2)));
    let rollouts = fake.rollouts();
    let [spec] = &rollouts[..] else { panic!() };
    assert_eq!(spec.target, Version(2));
    assert_eq!(spec.model, model());
    assert_eq!(spec.waves, vec![10.0, 100.0]);
    assert_eq!(spec.bake_ms, 300_000);
    assert_eq!(spec.gates.len(), 1);
    assert_eq!(job.rollout_id.as_deref(), Some(spec.id.as_str()));

    // The policy heard the job succeeded; the run starts over, and the
    // cooldown (1 h from the trigger) holds back a new trigger.
    h.advance(10 * MIN);
    let tick = h.runner.tick().await;
    assert!(
        matches!(
            tick.evaluations[0].1,
            Some(Evaluation::Drifting { run: 1, .. })
        ),
        "{tick:?}"
    );
    h.advance(10 * MIN);
    let tick = h.runner.tick().await;
    assert!(
        matches!(tick.evaluations[0].1, Some(Evaluation::Suppressed { .. })),
        "{tick:?}"
    );
    assert!(tick.jobs_created.is_empty());
    // Past the cooldown, persistent drift triggers a second job.
    for _ in 0..3 {
        h.advance(10 * MIN);
        assert!(h.runner.tick().await.jobs_created.is_empty());
    }
    h.advance(10 * MIN);
    let tick = h.runner.tick().await;
    assert_eq!(tick.jobs_created.len(), 1, "{tick:?}");
    assert_eq!(h.runner.jobs(Some(model()), 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn restart_resumes_policy_state_and_jobs() {
    let fake = Fake::new();
    fake.set_fleet(&DRIFTING_EU);
    let config = config_with(|c| {
        c.capture.devices = 1;
        c.hook = copy_v2_hook();
    });
    let mut h = Harness::new(fake.clone(), config).await;

    h.advance(10 * MIN);
    h.runner.tick().await;
    // Restart between two drifting evaluations: the run survives.
    h.restart().await;
    h.advance(10 * MIN);
    let tick = h.runner.tick().await;
    assert!(
        matches!(
            tick.evaluations[0].1,
            Some(Evaluation::Triggered { run: 2, .. })
        ),
        "{tick:?}"
    );
    // Both scheduled evaluations are in the stored drift history, across
    // the restart, oldest first, with the judged scope's score.
    let model = tick.evaluations[0].0.clone();
    let history = h.runner.drift_history(&model, 10).await.unwrap();
    let verdicts: Vec<&str> = history.iter().map(|p| p.verdict.as_str()).collect();
    assert_eq!(verdicts, ["drifting", "triggered"], "{history:?}");
    assert!(history[0].at < history[1].at);
    assert!(
        history
            .iter()
            .all(|p| p.fleet_score.is_some_and(|s| s > 0.0))
    );
    let job_id = tick.jobs_created[0];
    assert_eq!(fake.captures().len(), 1);

    // Restart while capturing: the device is asked again, with a new
    // sequence; the old command's upload no longer counts.
    h.restart().await;
    let captures = fake.captures();
    assert_eq!(captures.len(), 2);
    assert_eq!(captures[0].0, captures[1].0);
    let device = DeviceId::new(&captures[1].0).unwrap();
    h.runner
        .handle_capture(&device, &upload(captures[0].3, 0..10, true));
    assert!(h.runner.tick().await.ready.is_empty());
    h.runner
        .handle_capture(&device, &upload(captures[1].3, 0..250, true));
    let tick = h.runner.tick().await;
    assert_eq!(tick.ready, [job_id]);
    let job = h.runner.job(job_id).await.unwrap().unwrap();
    let dataset = job.dataset.as_ref().unwrap();
    assert_eq!(dataset.captured_rows, 250);
    assert_eq!(dataset.reference_rows, 0, "250 labels are enough");

    // Restart while training: the hook runs after the restart.
    h.restart().await;
    let tick = h.runner.tick().await;
    assert_eq!(tick.ready, [job_id]);
    let job = h.runner.train_job(job_id).await.unwrap();
    assert_eq!(job.state, JobState::Pushed, "{:?}", job.failure);
    assert!(fake.rollouts().is_empty(), "auto rollout is off by default");
    // Enough captured rows: the profile is theirs alone.
    let profile = String::from_utf8(fake.pushes()[0].reference_csv.clone()).unwrap();
    assert_eq!(profile.lines().count(), 1 + 250);

    // The policy state persisted the trigger and the job's success.
    h.restart().await;
    let tick = {
        h.advance(10 * MIN);
        h.runner.tick().await
    };
    assert!(
        matches!(
            tick.evaluations[0].1,
            Some(Evaluation::Drifting { run: 1, .. })
        ),
        "run reset by the successful job: {tick:?}"
    );
    let history: Vec<JobState> = h
        .runner
        .job(job_id)
        .await
        .unwrap()
        .unwrap()
        .history
        .iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(
        history,
        [
            JobState::Queued,
            JobState::Capturing,
            JobState::Capturing,
            JobState::Training,
            JobState::Pushed
        ]
    );
}

#[tokio::test]
async fn capture_deadline_uses_what_arrived() {
    let fake = Fake::new();
    fake.set_fleet(&DRIFTING_EU);
    let config = config_with(|c| {
        c.capture.devices = 2;
        c.capture.timeout = Duration::from_secs(120);
        c.dataset.min_labelled_rows = 10;
    });
    let h = Harness::new(fake.clone(), config).await;
    let job = h.runner.run_manual(&model()).await.unwrap();
    assert_eq!(job.state, JobState::Capturing);
    // Manual: no drift report, so online devices by id.
    let captures = fake.captures();
    assert_eq!(
        captures.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["d1", "d2"]
    );
    let err = h.runner.run_manual(&model()).await.unwrap_err();
    assert!(err.to_string().contains("still running"), "{err}");
    h.runner.handle_capture(
        &DeviceId::new("d1").unwrap(),
        &upload(captures[0].3, 0..30, true),
    );
    assert!(h.runner.tick().await.ready.is_empty());
    h.advance(2 * MIN);
    let tick = h.runner.tick().await;
    assert_eq!(tick.ready, [job.id]);
    let job = h.runner.job(job.id).await.unwrap().unwrap();
    let capture = job.capture.unwrap();
    assert_eq!(capture.completed, ["d1"]);
    assert_eq!(capture.samples, 30);
    assert_eq!(job.dataset.unwrap().rows, 30);
}

#[tokio::test]
async fn failing_hook_fails_the_job_with_stderr_and_leaves_the_fleet() {
    let fake = Fake::new();
    let config = config_with(|c| {
        c.hook = exec(
            "echo starting; echo 'line one' >&2; echo 'boom: no GPU' >&2; exit 1",
            Duration::from_secs(30),
        );
        c.auto_rollout.enabled = true;
    });
    let h = Harness::new(fake.clone(), config).await;
    let job = h.manual_job().await;
    assert_eq!(job.state, JobState::Failed);
    let failure = job.failure.unwrap();
    assert!(failure.contains("exited with code 1"), "{failure}");
    assert!(failure.contains("boom: no GPU"), "{failure}");
    let hook = job.hook.unwrap();
    assert_eq!(hook.exit_code, Some(1));
    assert!(hook.log.contains("starting"), "{}", hook.log);
    assert!(hook.log.contains("line one"), "{}", hook.log);
    no_fleet_touched(&fake);
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie (reparented to an init that does not reap) is dead too.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn hanging_hook_is_killed_at_the_timeout() {
    let fake = Fake::new();
    let config = config_with(|c| {
        c.hook = exec(
            "echo $$ > hook.pid; sleep 100 & echo $! > child.pid; wait",
            Duration::from_secs(1),
        );
        c.auto_rollout.enabled = true;
    });
    let h = Harness::new(fake.clone(), config).await;
    let started = std::time::Instant::now();
    let job = h.manual_job().await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.failure.as_deref(), Some("timeout after 1s"));
    let dir = h.dir.path().join("retrain").join(job.id.to_string());
    for file in ["hook.pid", "child.pid"] {
        let pid: u32 = std::fs::read_to_string(dir.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut gone = false;
        for _ in 0..100 {
            if process_gone(pid) {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone, "{file} ({pid}) still running");
    }
    no_fleet_touched(&fake);
}

#[tokio::test]
async fn invalid_models_fail_the_job() {
    let three_features = {
        let data =
            Dataset::from_csv_path(&fixtures().join("data/sensor_reference_3cols.csv"), "label")
                .unwrap();
        let opts = crate::train::TrainOptions {
            epochs: 1,
            ..Default::default()
        };
        crate::train::to_onnx(&crate::train::train(&data, None, &opts).unwrap().model)
    };
    let scratch = tempfile::tempdir().unwrap();
    let narrow = scratch.path().join("narrow.onnx");
    std::fs::write(&narrow, three_features).unwrap();
    let cases = [
        ("true", "the hook wrote no model"),
        (": > \"$DROVER_OUTPUT\"", "is empty"),
        ("echo 'not onnx' > \"$DROVER_OUTPUT\"", "invalid model"),
        (
            &*format!("cp '{}' \"$DROVER_OUTPUT\"", narrow.display()),
            "takes 3 features per row; the base model takes 4",
        ),
        (
            &*format!(
                "cp '{}' \"$DROVER_OUTPUT\"",
                fixtures().join("models/unknown_op.onnx").display()
            ),
            "unsupported operator `FusedMatMul`",
        ),
    ];
    for (script, expected) in cases {
        let fake = Fake::new();
        let config = config_with(|c| {
            c.hook = exec(script, Duration::from_secs(30));
            c.auto_rollout.enabled = true;
        });
        let h = Harness::new(fake.clone(), config).await;
        let job = h.manual_job().await;
        assert_eq!(job.state, JobState::Failed, "{script}");
        let failure = job.failure.unwrap();
        assert!(failure.contains(expected), "{script}: {failure}");
        no_fleet_touched(&fake);
    }
}

#[tokio::test]
async fn builtin_trainer_closes_the_loop() {
    let fake = Fake::new();
    let h = Harness::new(
        fake.clone(),
        config_with(|c| c.dataset.max_reference_rows = 600),
    )
    .await;
    let job = h.manual_job().await;
    assert_eq!(job.state, JobState::Pushed, "{:?}", job.failure);
    let hook = job.hook.as_ref().unwrap();
    assert_eq!(hook.kind, "builtin");
    // The v1 fixture is an sklearn export: no warm start.
    assert!(hook.log.contains("no warm start"), "{}", hook.log);
    assert!(
        job.eval_metrics["train_accuracy"] > 0.7,
        "{:?}",
        job.eval_metrics
    );
    let push = &fake.pushes()[0];
    let model = crate::train::load_base_from_onnx(&push.onnx).unwrap();
    assert_eq!(model.classes, ["fault", "normal", "warning"]);
    assert_eq!(
        model.feature_names,
        ["temp", "vibration", "current", "humidity"]
    );
    assert_eq!(push.training_run, format!("retrain-{}/builtin", job.id));
}

#[tokio::test]
async fn builtin_trainer_warm_starts_from_its_own_models() {
    let fake = Arc::new({
        let mut f = Arc::try_unwrap(Fake::new()).ok().unwrap();
        f.artifact = std::fs::read(fixtures().join("models/trained_by_drover.onnx")).unwrap();
        f
    });
    let h = Harness::new(
        fake.clone(),
        config_with(|c| c.dataset.max_reference_rows = 400),
    )
    .await;
    let job = h.manual_job().await;
    assert_eq!(job.state, JobState::Pushed, "{:?}", job.failure);
    assert_eq!(job.eval_metrics["warm_start"], 1.0);
}

#[tokio::test]
async fn webhook_hook_round_trip_and_failure() {
    use axum::routing::post;
    use base64::Engine as _;

    let model_bytes = std::fs::read(fixtures().join("models/sensor_clf_v2.onnx")).unwrap();
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let seen_in = seen.clone();
    let app = axum::Router::new()
        .route(
            "/ok",
            post(move |axum::Json(job): axum::Json<serde_json::Value>| {
                let seen = seen_in.clone();
                let b64 = base64::engine::general_purpose::STANDARD.encode(&model_bytes);
                async move {
                    seen.lock().unwrap().push(job);
                    axum::Json(serde_json::json!({
                        "model_base64": b64,
                        "metrics": {"f1": 0.8},
                        "log": "trained remotely"
                    }))
                }
            }),
        )
        .route(
            "/broken",
            post(|| async {
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "out of quota",
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let webhook = |path: &str| {
        HookConfig::Webhook(WebhookHook {
            url: format!("http://{addr}{path}"),
            timeout: Duration::from_secs(30),
            headers: BTreeMap::from([("x-token".to_owned(), "t".to_owned())]),
            inline_dataset: true,
        })
    };
    let fake = Fake::new();
    let h = Harness::new(fake.clone(), config_with(|c| c.hook = webhook("/ok"))).await;
    let job = h.manual_job().await;
    assert_eq!(job.state, JobState::Pushed, "{:?}", job.failure);
    assert_eq!(job.eval_metrics["f1"], 0.8);
    assert!(job.hook.unwrap().log.contains("trained remotely"));
    let sent = seen.lock().unwrap()[0].clone();
    assert_eq!(sent["schema"], "drover.retrain.job/v1");
    assert_eq!(sent["job_id"], job.id);
    assert!(
        sent["dataset_csv"]
            .as_str()
            .unwrap()
            .starts_with("temp,vibration")
    );

    let fake = Fake::new();
    let h = Harness::new(fake.clone(), config_with(|c| c.hook = webhook("/broken"))).await;
    let job = h.manual_job().await;
    assert_eq!(job.state, JobState::Failed);
    let failure = job.failure.unwrap();
    assert!(
        failure.contains("HTTP 500") && failure.contains("out of quota"),
        "{failure}"
    );
    no_fleet_touched(&fake);
}

#[tokio::test]
async fn no_data_and_no_reference_fails_cleanly() {
    let fake = Arc::new({
        let mut f = Arc::try_unwrap(Fake::new()).ok().unwrap();
        f.reference_csv = None;
        f
    });
    let h = Harness::new(fake.clone(), config_with(|_| {})).await;
    let job = h.runner.run_manual(&model()).await.unwrap();
    let tick = h.runner.tick().await;
    assert!(tick.ready.is_empty());
    let job = h.runner.job(job.id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    let failure = job.failure.unwrap();
    assert!(failure.contains("dataset is empty"), "{failure}");
    assert!(failure.contains("no reference CSV"), "{failure}");
    no_fleet_touched(&fake);
}

#[tokio::test]
async fn drift_report_per_cohort_with_accuracy() {
    let fake = Fake::new();
    fake.set_fleet(&DRIFTING_EU);
    let h = Harness::new(fake.clone(), RetrainConfig::default()).await;
    let reports = h
        .runner
        .drift(DriftRequest {
            model: Some(model()),
            cohort_key: Some("region".into()),
            window_ms: Some(60 * MIN),
            ..DriftRequest::default()
        })
        .await
        .unwrap();
    let [o] = &reports[..] else { panic!() };
    assert_eq!(o.version, Version(1));
    assert_eq!(o.to_ms - o.from_ms, 60 * MIN);
    assert_eq!(o.cohorts.len(), 2);
    let eu = &o.cohorts[0];
    assert_eq!(eu.cohort.as_ref().unwrap().value(), "eu");
    assert!(eu.is_drifting());
    assert!(!o.cohorts[1].is_drifting());
    let devices = eu.report.as_ref().unwrap().devices.as_ref().unwrap();
    assert_eq!(devices.worst[0].device, "d1");
    assert_eq!(devices.drifting, 2);
    assert!(o.fleet.accuracy.slope_per_hour.unwrap() < 0.0);
    assert_eq!(o.fleet.accuracy.buckets.len(), 4);
    // Without a model: every configured one (none here).
    assert!(
        h.runner
            .drift(DriftRequest::default())
            .await
            .unwrap()
            .is_empty()
    );
    *fake.production.lock().unwrap() = None;
    let err = h
        .runner
        .drift(DriftRequest {
            model: Some(model()),
            ..DriftRequest::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no production version"), "{err}");
}

#[tokio::test]
async fn http_routes() {
    let fake = Fake::new();
    fake.set_fleet(&STABLE);
    let h = Harness::new(fake.clone(), config_with(|_| {})).await;
    let app: axum::Router = crate::http::retrain::routes(h.runner.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let r = client
        .post(format!("{base}/v1/retrain"))
        .json(&serde_json::json!({"model": "sensor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: RetrainJob = r.json().await.unwrap();
    assert_eq!(job.state, JobState::Capturing);

    let r = client
        .post(format!("{base}/v1/retrain"))
        .json(&serde_json::json!({"model": "sensor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "conflict");

    let r = client
        .post(format!("{base}/v1/retrain"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let list: serde_json::Value = client
        .get(format!("{base}/v1/retrain?model=sensor"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"][0]["id"], job.id);
    assert_eq!(list["jobs"][0]["state"], "capturing");

    let r = client
        .get(format!("{base}/v1/retrain/{}", job.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/v1/retrain/999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    let drift: serde_json::Value = client
        .get(format!(
            "{base}/v1/drift?model=sensor@1&cohort=region&window=1h"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report = &drift["reports"][0];
    assert_eq!(report["version"], 1);
    assert_eq!(report["cohorts"].as_array().unwrap().len(), 2);
    assert_eq!(report["fleet"]["verdict"]["verdict"], "stable");

    for (query, status) in [
        ("model=sensor@9", 404),
        ("model=Bad", 400),
        ("model=sensor&window=soon", 400),
    ] {
        let r = client
            .get(format!("{base}/v1/drift?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{query}");
    }
}

#[tokio::test]
async fn run_loop_drives_a_manual_job_to_the_end() {
    let fake = Fake::new();
    let h = Harness::new(fake.clone(), config_with(|c| c.hook = copy_v2_hook())).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = h.runner.clone();
    let task = tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));
    let job = h.runner.run_manual(&model()).await.unwrap();
    let mut state = job.state;
    for _ in 0..500 {
        state = h.runner.job(job.id).await.unwrap().unwrap().state;
        if !state.is_active() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, JobState::Pushed);
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// The example Python hook, end to end through the runner (tract validates
/// its export). Needs python3 with scikit-learn, skl2onnx and onnx:
/// `cargo test -p drover-controller --lib retrain::tests::sklearn_example_hook -- --ignored`
#[tokio::test]
#[ignore = "needs python3 with scikit-learn, skl2onnx and onnx"]
async fn sklearn_example_hook() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hooks/sklearn_hook.py");
    let fake = Fake::new();
    let config = config_with(|c| {
        c.hook = HookConfig::Exec(ExecHook {
            command: "python3".into(),
            args: vec![script.display().to_string()],
            env: BTreeMap::new(),
            timeout: Duration::from_secs(300),
            max_log_bytes: 64 * 1024,
            working_dir: None,
        });
        c.dataset.max_reference_rows = 2_000;
    });
    let h = Harness::new(fake.clone(), config).await;
    let job = h.manual_job().await;
    assert_eq!(
        job.state,
        JobState::Pushed,
        "{:?}\n{}",
        job.failure,
        job.hook.map(|h| h.log).unwrap_or_default()
    );
    assert!(
        job.eval_metrics["holdout_accuracy"] > 0.8,
        "{:?}",
        job.eval_metrics
    );
    assert_eq!(fake.pushes().len(), 1);
}

#[tokio::test]
async fn cli_commands_against_a_live_api() {
    use crate::cli::cmd_drift::{DriftArgs, run_drift};
    use crate::cli::cmd_retrain::{RetrainCmd, run_retrain};
    use crate::cli::cmd_train::{TrainArgs, run_train};
    use crate::cli::{ApiClient, Output};

    let fake = Fake::new();
    fake.set_fleet(&DRIFTING_EU);
    let h = Harness::new(fake.clone(), config_with(|c| c.hook = copy_v2_hook())).await;
    let app: axum::Router = crate::http::retrain::routes(h.runner.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = ApiClient::new(&base).unwrap();

    for out in [Output::Table, Output::Json] {
        run_drift(
            DriftArgs {
                model: Some("sensor@1".into()),
                cohort: Some("region".into()),
                window: Some(std::time::Duration::from_secs(3600)),
            },
            &client,
            out,
        )
        .await
        .unwrap();
    }
    // A bad --window is refused by the flag's value parser, naming the flag.
    let err = <crate::cli::Cli as clap::Parser>::try_parse_from([
        "drover", "drift", "sensor", "--window", "soon",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("--window"), "{err}");

    run_retrain(
        RetrainCmd::Run {
            model: "sensor".into(),
        },
        &client,
        Output::Table,
    )
    .await
    .unwrap();
    let job = h.runner.jobs(None, 1).await.unwrap()[0].id;
    h.advance(20 * MIN);
    let tick = h.runner.tick().await;
    assert_eq!(tick.ready, [job]);
    h.runner.train_job(job).await.unwrap();
    for out in [Output::Table, Output::Json] {
        run_retrain(
            RetrainCmd::List {
                model: Some("sensor".into()),
                limit: 10,
            },
            &client,
            out,
        )
        .await
        .unwrap();
        run_retrain(RetrainCmd::Show { id: job }, &client, out)
            .await
            .unwrap();
    }
    let err = run_retrain(RetrainCmd::Show { id: 999 }, &client, Output::Table)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not_found"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let metrics = dir.path().join("m.json");
    run_train(
        TrainArgs {
            data: sensor_csv(),
            base: Some(
                fixtures()
                    .join("models/trained_by_drover.onnx")
                    .display()
                    .to_string(),
            ),
            out: out.clone(),
            label_column: "label".into(),
            epochs: Some(20),
            seed: None,
            metrics: Some(metrics.clone()),
        },
        &client,
        Output::Table,
    )
    .await
    .unwrap();
    assert!(super::hook::validate_model(&out, 4, Some(3)).is_ok());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    assert_eq!(summary["warm_start"], true);
    let err = run_train(
        TrainArgs {
            data: sensor_csv(),
            base: Some("sensor@1".into()),
            out,
            label_column: "label".into(),
            epochs: Some(1),
            seed: None,
            metrics: None,
        },
        &client,
        Output::Json,
    )
    .await
    .unwrap_err();
    // This test's API has no artifact route: the fetch fails with its status.
    assert!(err.to_string().contains("HTTP 404"), "{err:#}");
}

/// One meaning for a bare number: `600` is ten minutes on `/v1/drift`,
/// `/v1/rollouts` (number or text) and the CLI flags alike.
#[tokio::test]
async fn six_hundred_means_ten_minutes_on_every_route_and_flag() {
    let ten_minutes = std::time::Duration::from_secs(600);
    let fake = Fake::new();
    fake.set_fleet(&STABLE);
    let h = Harness::new(fake.clone(), config_with(|_| {})).await;
    let app: axum::Router = crate::http::retrain::routes(h.runner.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    for window in ["600", "10m"] {
        let drift: serde_json::Value = client
            .get(format!("{base}/v1/drift?model=sensor@1&window={window}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let report = &drift["reports"][0];
        let span = report["to_ms"].as_u64().unwrap() - report["from_ms"].as_u64().unwrap();
        assert_eq!(span, 600_000, "window={window}: {report}");
    }

    for body in [
        serde_json::json!({"model": "m@2", "bake": 600, "device_timeout": "600"}),
        serde_json::json!({"model": "m@2", "bake": "10m", "device_timeout": "600s"}),
    ] {
        let start: crate::http::rollouts::StartBody = serde_json::from_value(body).unwrap();
        let spec = start.to_spec().unwrap();
        assert_eq!(spec.bake_ms, 600_000);
        assert_eq!(spec.device_timeout_ms, 600_000);
    }

    use clap::Parser as _;
    let cli = crate::cli::Cli::try_parse_from(["drover", "drift", "--window", "600"]).unwrap();
    let crate::cli::Command::Drift(d) = cli.command else {
        panic!("not drift");
    };
    assert_eq!(d.window, Some(ten_minutes));
    let cli = crate::cli::Cli::try_parse_from([
        "drover",
        "rollout",
        "start",
        "m@2",
        "--bake",
        "600",
        "--shadow",
        "600",
        "--latency-floor",
        "2ms",
    ])
    .unwrap();
    let crate::cli::Command::Rollout(crate::cli::cmd_rollout::RolloutCmd::Start(s)) = cli.command
    else {
        panic!("not rollout start");
    };
    assert_eq!(s.bake, Some(ten_minutes));
    assert_eq!(s.shadow, Some(ten_minutes));
    assert_eq!(s.latency_floor, Some(std::time::Duration::from_millis(2)));
}
