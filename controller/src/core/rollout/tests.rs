//! Fake-clock scenarios over thousands of simulated devices.
//!
//! [`Fleet`] owns a [`Rollout`], a table of simulated devices that answer
//! commands after a per-command delay (or fail, or stay mute), a quality model
//! per model version from which it synthesises the merged telemetry each
//! metrics request asks for, and the fake clock. Like quinn's test `Pair`,
//! `drive_*` jumps to the earliest wake-up (a device report or the rollout's
//! `poll_timeout`) and fails a run that never settles.

use std::collections::{BTreeMap, BTreeSet};

use drover_protocol::{DeviceId, LatencyHistogram, ModelName, Timestamp, Version};

use super::plan;
use super::*;

const T0: Timestamp = Timestamp(1_700_000_000_000);
const OLD: Version = Version(1);
const NEW: Version = Version(2);
const MIN: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Good,
    /// Never answers a command.
    Mute,
    /// Fails this many times with a retryable error, then succeeds.
    FailRetryable(u32),
    /// Fails with a non-retryable error.
    FailHard,
}

#[derive(Debug, Clone)]
struct SimDevice {
    labels: BTreeMap<String, String>,
    online: bool,
    version: Option<Version>,
    shadow: Option<Version>,
    behaviour: Behaviour,
}

#[derive(Debug, Clone, Copy)]
struct Quality {
    latency_us: u64,
    error_rate: f64,
    accuracy: f64,
    dist: [f64; 4],
    agree: f64,
}

const GOOD: Quality = Quality {
    latency_us: 10_000,
    error_rate: 0.001,
    accuracy: 0.90,
    dist: [0.4, 0.3, 0.2, 0.1],
    agree: 0.99,
};

/// Merged metrics of `devices` devices running a model of quality `q` for
/// `n` inferences in total. Latency is built by merging a 1000-sample
/// histogram, so millions of samples cost microseconds.
fn cohort(q: &Quality, n: u64, devices: u64) -> CohortMetrics {
    let spread = q.latency_us / 5 + 1;
    let sample = |i: u64| q.latency_us - q.latency_us / 10 + (i * 7919) % spread;
    let mut base = LatencyHistogram::default();
    for i in 0..1000 {
        base.record(sample(i));
    }
    let mut m = CohortMetrics {
        devices,
        count: n,
        errors: (n as f64 * q.error_rate).round() as u64,
        ..CohortMetrics::default()
    };
    for _ in 0..n / 1000 {
        m.latency.merge(&base);
    }
    for i in 0..n % 1000 {
        m.latency.record(sample(i));
    }
    m.labelled = n / 5;
    m.correct = (m.labelled as f64 * q.accuracy).round() as u64;
    m.outputs = q
        .dist
        .iter()
        .map(|p| (p * n as f64).round() as u64)
        .collect();
    m.shadow_compared = n;
    m.shadow_agreed = (n as f64 * q.agree).round() as u64;
    m
}

fn id(i: usize) -> DeviceId {
    DeviceId::new(format!("dev-{i:05}")).unwrap()
}

/// 9 cohorts of uneven size: region by `i % 10`, hardware by `(i / 10) % 7`.
fn labels_for(i: usize) -> BTreeMap<String, String> {
    let region = match i % 10 {
        0..=5 => "eu",
        6..=8 => "us",
        _ => "ap",
    };
    let hardware = match (i / 10) % 7 {
        0..=3 => "pi4",
        4 | 5 => "jetson",
        _ => "x86",
    };
    [
        ("region", region),
        ("hardware", hardware),
        ("fleet", "main"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn base_spec() -> RolloutSpec {
    let mut s = RolloutSpec::new("r1", ModelName::new("sensor").unwrap(), NEW);
    s.selector = "fleet=main".parse().unwrap();
    s
}

struct Fleet {
    now: Timestamp,
    rollout: Rollout,
    devices: BTreeMap<DeviceId, SimDevice>,
    inbox: BTreeMap<(Timestamp, u64), (DeviceId, DeployOutcome)>,
    seq: u64,
    sent: Vec<(Timestamp, RolloutAction)>,
    audit: Vec<AuditEvent>,
    requests: Vec<MetricsRequest>,
    quality: BTreeMap<Version, Quality>,
    /// Inferences per second per device.
    rate: f64,
    answer_metrics: bool,
    steps: usize,
}

impl Fleet {
    fn new(n: usize) -> Fleet {
        Fleet::build(n, |_| {}, |_, _| {}, BTreeSet::new())
    }

    fn build(
        n: usize,
        spec: impl FnOnce(&mut RolloutSpec),
        device: impl Fn(usize, &mut SimDevice),
        failed: BTreeSet<Version>,
    ) -> Fleet {
        let mut s = base_spec();
        spec(&mut s);
        let mut devices = BTreeMap::new();
        for i in 0..n {
            let mut d = SimDevice {
                labels: labels_for(i),
                online: true,
                version: Some(OLD),
                shadow: None,
                behaviour: Behaviour::Good,
            };
            device(i, &mut d);
            devices.insert(id(i), d);
        }
        let views: Vec<DeviceView> = devices.iter().map(|(id, d)| view_of(id, d, T0)).collect();
        let rollout = Rollout::new(s, views, failed, T0).unwrap();
        let mut quality = BTreeMap::new();
        quality.insert(Version(0), GOOD);
        quality.insert(OLD, GOOD);
        quality.insert(NEW, GOOD);
        Fleet {
            now: T0,
            rollout,
            devices,
            inbox: BTreeMap::new(),
            seq: 0,
            sent: Vec::new(),
            audit: Vec::new(),
            requests: Vec::new(),
            quality,
            rate: 1.0,
            answer_metrics: true,
            steps: 0,
        }
    }

    fn view(&self, id: &DeviceId) -> DeviceView {
        view_of(id, &self.devices[id], self.now)
    }

    /// Changes a simulated device and tells the rollout, as the inventory would.
    fn change(&mut self, id: &DeviceId, f: impl FnOnce(&mut SimDevice)) -> Membership {
        let d = self.devices.get_mut(id).unwrap();
        f(d);
        let v = self.view(id);
        self.rollout.handle_device(self.now, v).unwrap()
    }

    fn report(&mut self, device: &DeviceId, outcome: DeployOutcome) {
        self.seq += 1;
        let delay = 1_000 + (self.seq * 7_919) % 20_000;
        self.inbox.insert(
            (self.now.plus_ms(delay), self.seq),
            (device.clone(), outcome),
        );
    }

    fn apply(&mut self, action: RolloutAction) {
        self.sent.push((self.now, action.clone()));
        let dev = action.device().clone();
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        if !d.online || d.behaviour == Behaviour::Mute {
            return;
        }
        let outcome = match action {
            RolloutAction::Deploy { version, .. } => match d.behaviour {
                Behaviour::FailRetryable(k) if k > 0 => {
                    d.behaviour = Behaviour::FailRetryable(k - 1);
                    DeployOutcome::Failed {
                        version,
                        reason: "download interrupted".into(),
                        retryable: true,
                    }
                }
                Behaviour::FailHard => DeployOutcome::Failed {
                    version,
                    reason: "sha256 mismatch".into(),
                    retryable: false,
                },
                _ => {
                    d.version = Some(version);
                    d.shadow = None;
                    DeployOutcome::Active { version }
                }
            },
            RolloutAction::Shadow { version, .. } => {
                d.shadow = Some(version);
                DeployOutcome::Shadowing { version }
            }
            RolloutAction::StopShadow { .. } => {
                d.shadow = None;
                return;
            }
            RolloutAction::Rollback { to, .. } => {
                d.version = Some(to);
                DeployOutcome::RolledBack {
                    to: Some(to),
                    reason: "commanded".into(),
                }
            }
        };
        self.report(&dev, outcome);
    }

    /// The shell's job: merge telemetry of the requested cohorts.
    fn measure(&self, req: &MetricsRequest) -> (CohortMetrics, CohortMetrics) {
        let secs = req.until.ms_since(req.since) as f64 / 1000.0;
        let side = |ids: &[DeviceId], shadow: bool| {
            let mut by_version: BTreeMap<Version, u64> = BTreeMap::new();
            for i in ids {
                let d = &self.devices[i];
                let v = if shadow { d.shadow } else { d.version };
                if let Some(v) = v {
                    *by_version.entry(v).or_default() += 1;
                }
            }
            let mut m = CohortMetrics::default();
            for (v, k) in by_version {
                let n = (k as f64 * secs * self.rate).round() as u64;
                m.merge(&cohort(&self.quality[&v], n, k));
                m.devices += k;
            }
            m
        };
        let shadow = req.kind == MetricsKind::Shadow;
        (side(&req.canary, shadow), side(&req.control, false))
    }

    /// Does everything due at `now`; true if anything happened.
    fn pump(&mut self) -> bool {
        let phase_before = self.rollout.phase().name();
        let audit_before = self.audit.len();
        let mut any = false;
        while let Some((&(at, seq), _)) = self.inbox.first_key_value() {
            if at > self.now {
                break;
            }
            let (dev, outcome) = self.inbox.remove(&(at, seq)).unwrap();
            self.rollout
                .handle_deploy_report(self.now, &dev, outcome)
                .unwrap();
            any = true;
        }
        while let Some(a) = self.rollout.poll_action(self.now) {
            self.apply(a);
            any = true;
        }
        while let Some(r) = self.rollout.poll_metrics_request(self.now) {
            self.requests.push(r.clone());
            if self.answer_metrics {
                let (canary, control) = self.measure(&r);
                self.rollout
                    .handle_metrics(self.now, r.id, canary, control)
                    .unwrap();
            }
            any = true;
        }
        while let Some(e) = self.rollout.poll_audit() {
            self.audit.push(e);
        }
        // Every transition is audited.
        if self.rollout.phase().name() != phase_before {
            assert!(
                self.audit.len() > audit_before,
                "{phase_before} -> {} without an audit event",
                self.rollout.phase().name()
            );
        }
        any
    }

    fn next_wake(&self) -> Option<Timestamp> {
        let inbox = self.inbox.keys().next().map(|k| k.0);
        let timer = self.rollout.poll_timeout().map(|t| t.0);
        match (inbox, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs until nothing is due before `deadline` (then sets the clock to
    /// it); panics after `bound` steps: a run that never settles is a bug.
    fn drive_until(&mut self, deadline: Timestamp, bound: usize) {
        for _ in 0..bound {
            self.steps += 1;
            self.pump();
            if self.steps % 32 == 0 {
                self.rollout.check_invariants();
            }
            match self.next_wake() {
                Some(t) if t <= deadline => self.now = self.now.max(t),
                _ => {
                    if deadline != Timestamp(u64::MAX) {
                        self.now = self.now.max(deadline);
                        self.pump();
                    }
                    self.rollout.check_invariants();
                    return;
                }
            }
        }
        panic!(
            "run did not settle within {bound} steps: phase {:?}, next wake {:?}",
            self.rollout.phase(),
            self.rollout.poll_timeout()
        );
    }

    fn drive_until_idle(&mut self, bound: usize) {
        self.drive_until(Timestamp(u64::MAX), bound);
    }

    fn drive_for(&mut self, ms: u64) {
        let deadline = self.now.plus_ms(ms);
        self.drive_until(deadline, 100_000);
    }

    /// Drives until `pred` holds (checked after every step).
    fn drive_until_phase(&mut self, bound: usize, pred: impl Fn(&Phase) -> bool) {
        for _ in 0..bound {
            if pred(self.rollout.phase()) {
                return;
            }
            self.pump();
            if pred(self.rollout.phase()) {
                return;
            }
            match self.next_wake() {
                Some(t) => self.now = self.now.max(t),
                None => break,
            }
        }
        panic!("phase never reached; now {:?}", self.rollout.phase());
    }

    fn deploys_to(&self, dev: &DeviceId) -> usize {
        self.sent
            .iter()
            .filter(|(_, a)| matches!(a, RolloutAction::Deploy { device, .. } if device == dev))
            .count()
    }

    fn kinds(&self) -> Vec<String> {
        self.audit.iter().map(kind_of).collect()
    }

    fn wave_of(&self, dev: &DeviceId) -> u32 {
        self.rollout.device_wave(dev).unwrap()
    }

    fn ids_in_wave(&self, wave: u32) -> Vec<DeviceId> {
        self.devices
            .keys()
            .filter(|d| self.rollout.device_wave(d) == Some(wave))
            .cloned()
            .collect()
    }

    fn rollbacks(&self) -> Vec<(Timestamp, DeviceId, Version)> {
        self.sent
            .iter()
            .filter_map(|(t, a)| match a {
                RolloutAction::Rollback { device, to } => Some((*t, device.clone(), *to)),
                _ => None,
            })
            .collect()
    }
}

fn view_of(id: &DeviceId, d: &SimDevice, now: Timestamp) -> DeviceView {
    DeviceView {
        id: id.clone(),
        labels: d.labels.clone(),
        online: d.online,
        version: d.version,
        last_seen: now,
    }
}

fn kind_of(e: &AuditEvent) -> String {
    serde_json::to_value(&e.event).unwrap()["kind"]
        .as_str()
        .unwrap()
        .to_string()
}

fn is_completed(p: &Phase) -> bool {
    matches!(p, Phase::Completed { .. })
}

// ----- plan -------------------------------------------------------------

#[test]
fn waves_follow_percentages_and_every_wave_gets_a_device() {
    let f = Fleet::new(3000);
    let st = f.rollout.status();
    let targeted: Vec<u64> = st.waves.iter().map(|w| w.targeted).collect();
    assert_eq!(targeted, vec![30, 270, 1200, 1500]);
    assert_eq!(st.devices, 3000);

    // Four devices, four waves: one each, and a full run completes.
    let mut f = Fleet::build(4, |s| s.min_samples = 100, |_, _| {}, BTreeSet::new());
    f.rate = 5.0;
    let targeted: Vec<u64> = f
        .rollout
        .status()
        .waves
        .iter()
        .map(|w| w.targeted)
        .collect();
    assert_eq!(targeted, vec![1, 1, 1, 1]);
    f.drive_until_idle(10_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    // The last wave had no control devices and used the baseline.
    let last = f.rollout.status().waves[3].gates.clone();
    assert!(!last.is_empty());
    assert!(
        last.iter()
            .all(|g| matches!(g.control, ControlSource::Baseline { wave: 2, .. })),
        "{last:?}"
    );

    // Fewer than two matching devices: refused with the reason.
    let views = vec![DeviceView {
        id: id(0),
        labels: labels_for(0),
        online: true,
        version: Some(OLD),
        last_seen: T0,
    }];
    let err = Rollout::new(base_spec(), views, BTreeSet::new(), T0).unwrap_err();
    assert!(err.to_string().contains("matches 1 device"), "{err}");
    // A target that failed before is refused.
    let views: Vec<DeviceView> = (0..10)
        .map(|i| DeviceView {
            id: id(i),
            labels: labels_for(i),
            online: true,
            version: Some(OLD),
            last_seen: T0,
        })
        .collect();
    let err = Rollout::new(base_spec(), views, [NEW].into(), T0).unwrap_err();
    assert_eq!(err, RolloutError::TargetFailed(NEW));
}

#[test]
fn device_order_is_stable_across_runs_input_order_and_restore() {
    let a = Fleet::new(2000);
    let views: Vec<DeviceView> = a
        .devices
        .iter()
        .rev()
        .map(|(id, d)| view_of(id, d, T0))
        .collect();
    let b = Rollout::new(base_spec(), views.clone(), BTreeSet::new(), T0).unwrap();
    let restored = Rollout::from_json(&a.rollout.to_json().unwrap()).unwrap();
    for dev in a.devices.keys() {
        let w = a.rollout.device_wave(dev);
        assert_eq!(w, b.device_wave(dev));
        assert_eq!(w, restored.device_wave(dev));
    }
    assert_eq!(restored, a.rollout);
    // Another rollout id gives another canary.
    let mut other = base_spec();
    other.id = "r2".into();
    let c = Rollout::new(other, views, BTreeSet::new(), T0).unwrap();
    let canary_a: BTreeSet<_> = a.ids_in_wave(0).into_iter().collect();
    let canary_c: BTreeSet<_> = a
        .devices
        .keys()
        .filter(|d| c.device_wave(d) == Some(0))
        .cloned()
        .collect();
    assert_eq!(canary_a.len(), canary_c.len());
    assert_ne!(canary_a, canary_c);
    // Waves beyond the canary follow the hash order.
    let mut wave1: Vec<u64> = a
        .ids_in_wave(1)
        .iter()
        .map(|d| plan::device_hash("r1", d))
        .collect();
    let wave3_min = a
        .ids_in_wave(3)
        .iter()
        .map(|d| plan::device_hash("r1", d))
        .min()
        .unwrap();
    wave1.sort_unstable();
    assert!(wave1.last().unwrap() < &wave3_min);
}

#[test]
fn canary_is_stratified_across_cohorts() {
    // 2000 devices in 9 cohorts, plus a tiny 10th cohort of three devices.
    let f = Fleet::build(
        2003,
        |_| {},
        |i, d| {
            if i >= 2000 {
                d.labels.insert("region".into(), "sa".into());
            }
        },
        BTreeSet::new(),
    );
    let keys = base_spec().cohort_keys;
    let all: BTreeSet<String> = f
        .devices
        .values()
        .map(|d| plan::cohort_of(&d.labels, &keys))
        .collect();
    assert_eq!(all.len(), 10);
    let canary = f.ids_in_wave(0);
    assert_eq!(canary.len(), 21);
    let covered: BTreeMap<String, usize> = canary.iter().fold(BTreeMap::new(), |mut m, d| {
        *m.entry(plan::cohort_of(&f.devices[d].labels, &keys))
            .or_default() += 1;
        m
    });
    assert_eq!(
        covered.len(),
        10,
        "every cohort has a canary device: {covered:?}"
    );
    assert!(covered.keys().any(|k| k.starts_with("region=sa")));
    // Proportional beyond one each: the largest cohort gets the most.
    let largest = covered.iter().max_by_key(|(_, n)| **n).unwrap().0;
    assert_eq!(largest, "region=eu/hardware=pi4");
    // The Created audit event records the canary cohorts.
    let mut f = f;
    f.pump();
    match &f.audit[0].event {
        AuditKind::Created { canary_cohorts, .. } => assert_eq!(canary_cohorts.len(), 10),
        other => panic!("{other:?}"),
    }
}

// ----- full runs --------------------------------------------------------

#[test]
fn good_version_is_promoted_through_every_wave() {
    let mut f = Fleet::new(5000);
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    for (dev, d) in &f.devices {
        assert_eq!(d.version, Some(NEW), "{dev}");
        assert_eq!(f.deploys_to(dev), 1, "{dev} deployed once");
    }
    let st = f.rollout.status();
    for w in &st.waves {
        assert_eq!(w.updated, w.targeted);
        assert_eq!(w.failed + w.silent + w.pending + w.in_flight, 0);
        assert!(w.gates.iter().all(|g| g.decision == Decision::Pass));
        assert!(w.passed_at.unwrap() >= w.bake_since.unwrap().plus_ms(10 * MIN));
    }
    // Live control for waves 1-3, the recorded baseline for the last.
    assert!(
        st.waves[2]
            .gates
            .iter()
            .all(|g| g.control == ControlSource::Live)
    );
    assert!(
        st.waves[3]
            .gates
            .iter()
            .all(|g| matches!(g.control, ControlSource::Baseline { wave: 2, .. }))
    );
    let kinds = f.kinds();
    for k in [
        "created",
        "stage_started",
        "bake_started",
        "gates_evaluated",
        "stage_passed",
        "completed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing {k}");
    }
    assert_eq!(kinds.iter().filter(|k| *k == "stage_passed").count(), 4);
    // Every audited decision carries its numbers.
    for e in &f.audit {
        assert!(
            e.message.chars().any(|c| c.is_ascii_digit()),
            "{}",
            e.message
        );
        if let AuditKind::GatesEvaluated { results, .. } = &e.event {
            for r in results {
                assert!(r.canary_samples > 0 && r.why.contains("samples"), "{r:?}");
            }
        }
    }
    // Canary requests named the wave's devices and a disjoint control.
    let req = &f.requests[0];
    assert_eq!(req.stage, Stage::Wave(0));
    assert_eq!(req.canary.len(), 50);
    assert_eq!(req.control.len(), 4950);
    assert_eq!(req.old_versions, vec![OLD]);
    // Completed is terminal and reported in JSON.
    let json = serde_json::to_value(f.rollout.status()).unwrap();
    assert_eq!(json["phase"]["phase"], "completed");
}

#[test]
fn latency_regression_fails_the_canary_and_rolls_it_back_rate_limited() {
    let mut f = Fleet::build(
        2000,
        |s| s.rollback_rate_per_min = 60,
        |_, _| {},
        BTreeSet::new(),
    );
    f.quality.insert(
        NEW,
        Quality {
            latency_us: 15_000,
            ..GOOD
        },
    );
    f.drive_until_idle(50_000);
    assert!(
        matches!(f.rollout.phase(), Phase::RolledBack { .. }),
        "{:?}",
        f.rollout.phase()
    );
    let canary: BTreeSet<DeviceId> = f.ids_in_wave(0).into_iter().collect();
    let rb = f.rollbacks();
    assert_eq!(rb.len(), canary.len());
    assert!(rb.iter().all(|(_, d, to)| canary.contains(d) && *to == OLD));
    for pair in rb.windows(2) {
        assert!(pair[1].0.ms_since(pair[0].0) >= 1_000, "rate limit broken");
    }
    // No device outside the canary was ever touched.
    assert_eq!(
        f.sent
            .iter()
            .filter(|(_, a)| matches!(a, RolloutAction::Deploy { .. }))
            .count(),
        canary.len()
    );
    assert!(f.devices.values().all(|d| d.version == Some(OLD)));
    // The failing gate is recorded with its numbers, and the target is failed.
    let failed = f
        .audit
        .iter()
        .find_map(|e| match &e.event {
            AuditKind::StageFailed { stage, reason, .. } => Some((*stage, reason.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(failed.0, Stage::Wave(0));
    assert!(failed.1.contains("p95_latency_ratio"), "{}", failed.1);
    assert!(f.rollout.failed_versions().contains(&NEW));
    let g = &f.rollout.status().waves[0].gates;
    let p95 = g
        .iter()
        .find(|r| r.gate.metric == Metric::P95LatencyRatio)
        .unwrap();
    assert_eq!(p95.decision, Decision::Fail);
    assert!(p95.value.unwrap() > 1.4);
    assert!(f.kinds().contains(&"rolled_back".to_string()));
}

#[test]
fn late_regression_rolls_back_in_reverse_wave_order() {
    let mut f = Fleet::build(
        2000,
        |s| s.rollback_rate_per_min = 1200,
        |_, _| {},
        BTreeSet::new(),
    );
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(2),
                ..
            }
        )
    });
    // The candidate degrades once the 50 % wave is on it.
    f.quality.insert(
        NEW,
        Quality {
            error_rate: 0.05,
            ..GOOD
        },
    );
    f.drive_until_idle(50_000);
    assert!(matches!(f.rollout.phase(), Phase::RolledBack { .. }));
    let waves: Vec<u32> = f.rollbacks().iter().map(|(_, d, _)| f.wave_of(d)).collect();
    assert_eq!(waves.len(), 1000);
    assert!(
        waves.windows(2).all(|w| w[0] >= w[1]),
        "not reverse wave order"
    );
    assert_eq!(waves.first(), Some(&2));
    assert_eq!(waves.last(), Some(&0));
    let order: Vec<u32> = f
        .audit
        .iter()
        .filter_map(|e| match e.event {
            AuditKind::RollbackWave { wave, .. } => Some(wave),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![2, 1, 0]);
    // 1000 devices at 1200/min take at least 50 s.
    let rb = f.rollbacks();
    assert!(rb.last().unwrap().0.ms_since(rb[0].0) >= 49_950);
    assert!(f.ids_in_wave(3).iter().all(|d| f.deploys_to(d) == 0));
}

#[test]
fn accuracy_regression_fails_and_pauses_when_asked_to() {
    let mut f = Fleet::build(
        2000,
        |s| {
            s.on_fail = OnFail::Pause;
            s.gates = vec![
                "accuracy_delta>=-0.02".parse().unwrap(),
                "p95_latency_ratio<=1.2".parse().unwrap(),
            ];
        },
        |_, _| {},
        BTreeSet::new(),
    );
    f.quality.insert(
        NEW,
        Quality {
            accuracy: 0.85,
            ..GOOD
        },
    );
    f.drive_until_idle(50_000);
    match f.rollout.phase() {
        Phase::Paused { cause, reason, .. } => {
            assert_eq!(*cause, PauseCause::GateFailed);
            assert!(reason.contains("accuracy_delta"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(f.rollbacks().is_empty());
    let acc = f.rollout.status().last_gates[0].clone();
    assert_eq!(acc.decision, Decision::Fail);
    assert!((acc.value.unwrap() + 0.05).abs() < 0.01);
    // Labelled samples only: a fifth of the inferences.
    assert!(acc.canary_samples >= 500);
    // Resume re-bakes the wave; it fails again rather than advancing.
    let evals = f.rollout.status().waves[0].evaluations;
    f.rollout
        .handle_command(f.now, RolloutCommand::Resume)
        .unwrap();
    f.drive_until_idle(50_000);
    assert!(
        matches!(
            f.rollout.phase(),
            Phase::Paused {
                cause: PauseCause::GateFailed,
                ..
            }
        ),
        "{:?}",
        f.rollout.phase()
    );
    assert!(f.rollout.status().waves[0].evaluations > evals);
    assert!(f.ids_in_wave(1).iter().all(|d| f.deploys_to(d) == 0));
}

#[test]
fn silent_devices_never_count_as_success() {
    // A few mute devices per wave, within max_silent.
    let probe = Fleet::new(3000);
    let canary = probe.ids_in_wave(0);
    let mute: BTreeSet<DeviceId> = canary
        .iter()
        .take(1)
        .cloned()
        .chain(probe.ids_in_wave(2).into_iter().take(40))
        .chain(probe.ids_in_wave(3).into_iter().take(50))
        .collect();
    let mute_c = mute.clone();
    let mut f = Fleet::build(
        3000,
        |_| {},
        move |i, d| {
            if mute_c.contains(&id(i)) {
                d.behaviour = Behaviour::Mute;
            }
        },
        BTreeSet::new(),
    );
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()));
    let st = f.rollout.status();
    assert_eq!(st.waves[0].silent, 1);
    assert_eq!(st.waves[2].silent, 40);
    assert_eq!(st.waves[3].silent, 50);
    for w in &st.waves {
        assert_eq!(w.updated + w.silent + w.failed, w.targeted);
    }
    // Gates only ever saw devices that reported success.
    for r in &f.requests {
        assert!(r.canary.iter().all(|d| !mute.contains(d)));
    }
    match &f.audit.last().unwrap().event {
        AuditKind::Completed {
            updated, silent, ..
        } => {
            assert_eq!(*silent, 91);
            assert_eq!(*updated, 3000 - 91);
        }
        other => panic!("{other:?}"),
    }
    assert!(f.kinds().contains(&"device_silent".to_string()));
}

#[test]
fn too_many_silent_devices_pause_instead_of_advancing() {
    let probe = Fleet::new(3000);
    let mute: BTreeSet<DeviceId> = probe.ids_in_wave(0).into_iter().take(3).collect();
    let mut f = Fleet::build(
        3000,
        |_| {},
        move |i, d| {
            if mute.contains(&id(i)) {
                d.behaviour = Behaviour::Mute;
            }
        },
        BTreeSet::new(),
    );
    f.drive_until_idle(50_000);
    match f.rollout.phase() {
        Phase::Paused { cause, reason, .. } => {
            assert_eq!(*cause, PauseCause::TooManySilent);
            assert!(reason.contains("3 of 30 devices silent"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(f.ids_in_wave(1).iter().all(|d| f.deploys_to(d) == 0));
    assert!(
        f.requests.is_empty(),
        "no gate evaluation on an unhealthy wave"
    );
}

#[test]
fn inconclusive_never_advances_and_pauses_at_the_limit() {
    let mut f = Fleet::new(2000);
    // 20 canary devices at 0.02 inferences/s: 240 samples per 10 min.
    f.rate = 0.02;
    f.drive_until_idle(50_000);
    let bake_start = f.rollout.status().waves[0].bake_since.unwrap();
    match f.rollout.phase() {
        Phase::Paused {
            cause,
            reason,
            since,
            ..
        } => {
            assert_eq!(*cause, PauseCause::Inconclusive);
            assert!(reason.contains("samples needed"), "{reason}");
            assert!(since.ms_since(bake_start) >= 30 * MIN);
        }
        other => panic!("{other:?}"),
    }
    let decisions: Vec<Decision> = f
        .audit
        .iter()
        .filter_map(|e| match e.event {
            AuditKind::GatesEvaluated { decision, .. } => Some(decision),
            _ => None,
        })
        .collect();
    assert!(decisions.len() >= 30, "kept baking: {}", decisions.len());
    assert!(decisions.iter().all(|d| *d == Decision::Inconclusive));
    assert!(f.ids_in_wave(1).iter().all(|d| f.deploys_to(d) == 0));
    assert!(!f.kinds().contains(&"stage_passed".to_string()));

    // No metrics answers at all: pause at the limit too, saying so.
    let mut f = Fleet::new(500);
    f.answer_metrics = false;
    f.drive_until_idle(50_000);
    assert!(matches!(
        f.rollout.phase(),
        Phase::Paused {
            cause: PauseCause::NoMetrics,
            ..
        }
    ));
}

#[test]
fn rollback_never_lands_on_a_failed_version() {
    // Pre-rollout versions: v1 (fine), v0 (failed an earlier rollout), none.
    let mut f = Fleet::build(
        2000,
        |s| s.rollback_rate_per_min = 6000,
        |i, d| {
            d.version = match i % 4 {
                0 => Some(Version(0)),
                1 => None,
                _ => Some(OLD),
            }
        },
        [Version(0)].into(),
    );
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(2),
                ..
            }
        )
    });
    f.rollout
        .handle_command(f.now, RolloutCommand::Rollback)
        .unwrap();
    f.drive_until_idle(50_000);
    assert!(matches!(f.rollout.phase(), Phase::RolledBack { .. }));
    let rb = f.rollbacks();
    assert!(!rb.is_empty());
    assert!(rb.iter().all(|(_, _, to)| *to == OLD), "only to v1");
    let st = f.rollout.status();
    let report = st.rollback.unwrap();
    let exposed = 1000;
    assert_eq!(
        report.counts.done as usize + report.no_target.len(),
        exposed
    );
    assert!(report.no_target.len() > 400);
    for (dev, why) in &report.no_target {
        let i: usize = dev.as_str()[4..].parse().unwrap();
        assert!(i % 4 < 2, "{dev}");
        assert!(why.contains("failed") || why.contains("unknown"), "{why}");
        assert_eq!(f.devices[dev].version, Some(NEW), "left on the target");
    }
    assert!(f.kinds().contains(&"no_rollback_target".to_string()));
}

#[test]
fn a_version_failing_mid_rollback_is_no_longer_a_target() {
    let mut f = Fleet::build(
        1000,
        |s| s.rollback_rate_per_min = 60,
        |_, _| {},
        BTreeSet::new(),
    );
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(1),
                ..
            }
        )
    });
    f.rollout
        .handle_command(f.now, RolloutCommand::Rollback)
        .unwrap();
    f.drive_for(10_500);
    let before = f.rollbacks().len();
    assert!((10..=12).contains(&before), "{before}");
    f.rollout.handle_failed_version(f.now, OLD);
    f.drive_until_idle(50_000);
    assert_eq!(f.rollbacks().len(), before);
    assert!(matches!(f.rollout.phase(), Phase::RolledBack { .. }));
    let report = f.rollout.status().rollback.unwrap();
    assert_eq!(report.no_target.len(), 100 - before);
}

#[test]
fn devices_that_join_or_come_back_get_their_waves_version() {
    // 1 % of the fleet is offline from the start.
    let mut f = Fleet::build(
        3000,
        |_| {},
        |i, d| {
            if i % 100 == 7 {
                d.online = false;
            }
        },
        BTreeSet::new(),
    );
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(1),
                ..
            }
        )
    });
    // Offline devices of started waves are silent, never commanded.
    let offline: Vec<DeviceId> = (0..3000).filter(|i| i % 100 == 7).map(id).collect();
    let early_offline: Vec<&DeviceId> = offline.iter().filter(|d| f.wave_of(d) <= 1).collect();
    assert!(!early_offline.is_empty());
    assert!(early_offline.iter().all(|d| f.deploys_to(d) == 0));
    let silent: u64 = f.rollout.status().waves[..2].iter().map(|w| w.silent).sum();
    assert_eq!(silent, early_offline.len() as u64);

    // New devices join: those whose wave has started get the candidate now.
    let mut joined = BTreeMap::new();
    for i in 5000..5300 {
        let dev = id(i);
        f.devices.insert(
            dev.clone(),
            SimDevice {
                labels: labels_for(i),
                online: true,
                version: Some(OLD),
                shadow: None,
                behaviour: Behaviour::Good,
            },
        );
        let m = f.rollout.handle_device(f.now, f.view(&dev)).unwrap();
        let Membership::Joined { wave } = m else {
            panic!("{m:?}")
        };
        assert!(wave >= 1, "joiners never enter the canary");
        joined.insert(dev, wave);
    }
    // A device outside the selector is ignored.
    let mut outsider = labels_for(9999);
    outsider.insert("fleet".into(), "other".into());
    let m = f
        .rollout
        .handle_device(
            f.now,
            DeviceView {
                id: id(9999),
                labels: outsider,
                online: true,
                version: Some(OLD),
                last_seen: f.now,
            },
        )
        .unwrap();
    assert_eq!(m, Membership::Ignored);
    f.pump();
    let mut later = 0;
    for (dev, wave) in &joined {
        if *wave <= 1 {
            assert_eq!(f.deploys_to(dev), 1, "{dev} joined started wave {wave}");
        } else {
            assert_eq!(f.deploys_to(dev), 0, "{dev} waits for wave {wave}");
            later += 1;
        }
    }
    assert!(later > 200, "joiners spread over the waves by hash");

    // A device leaves the selector: left alone, no longer counted.
    let leaver = f.ids_in_wave(3)[0].clone();
    let m = f.change(&leaver, |d| {
        d.labels.insert("fleet".into(), "retired".into());
    });
    assert_eq!(m, Membership::Departed);

    // The first offline devices come back while the rollout is still going.
    for d in early_offline.iter().take(3) {
        f.change(d, |s| s.online = true);
    }
    f.pump();
    for d in early_offline.iter().take(3) {
        assert_eq!(f.deploys_to(d), 1, "{d} caught up when back");
    }
    f.drive_until_idle(50_000);
    // Too many silent in no wave (1 %), so the rollout completes; the rest
    // come back afterwards and still catch up.
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    for d in &offline {
        if f.devices[d].online {
            continue;
        }
        f.change(d, |s| s.online = true);
    }
    f.drive_until_idle(50_000);
    for d in offline.iter().chain(joined.keys()) {
        assert_eq!(f.devices[d].version, Some(NEW), "{d}");
        assert_eq!(f.deploys_to(d), 1, "{d}");
    }
    assert_eq!(f.deploys_to(&leaver), 0);
    assert_eq!(f.devices[&leaver].version, Some(OLD));
    let st = f.rollout.status();
    assert_eq!(st.departed, 1);
    assert_eq!(st.devices, 3299);
    assert!(
        st.waves
            .iter()
            .all(|w| w.silent == 0 && w.updated == w.targeted)
    );
}

#[test]
fn retryable_failures_back_off_then_fail_for_good() {
    let probe = Fleet::new(3000);
    let wave3 = probe.ids_in_wave(3);
    let flaky: Vec<DeviceId> = wave3[..5].to_vec();
    let broken = wave3[5].clone();
    let hard = wave3[6].clone();
    let (fl, br, hd) = (flaky.clone(), broken.clone(), hard.clone());
    let mut f = Fleet::build(
        3000,
        |_| {},
        move |i, d| {
            let dev = id(i);
            if fl.contains(&dev) {
                d.behaviour = Behaviour::FailRetryable(2);
            } else if dev == br {
                d.behaviour = Behaviour::FailRetryable(100);
            } else if dev == hd {
                d.behaviour = Behaviour::FailHard;
            }
        },
        BTreeSet::new(),
    );
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()));
    let times = |dev: &DeviceId| -> Vec<Timestamp> {
        f.sent
            .iter()
            .filter(|(_, a)| matches!(a, RolloutAction::Deploy { device, .. } if device == dev))
            .map(|(t, _)| *t)
            .collect()
    };
    for dev in &flaky {
        let t = times(dev);
        assert_eq!(t.len(), 3, "{dev}");
        // Backoff 30 s, then 60 s, each after the device's report delay.
        assert!(t[1].ms_since(t[0]) >= 31_000);
        assert!(t[2].ms_since(t[1]) >= 61_000);
        assert_eq!(f.devices[dev].version, Some(NEW));
    }
    assert_eq!(times(&broken).len(), 3, "max_attempts bounds retries");
    assert_eq!(times(&hard).len(), 1, "non-retryable is not retried");
    let st = f.rollout.status();
    assert_eq!(st.waves[3].failed, 2);
    let retries = f.kinds().iter().filter(|k| *k == "device_retry").count();
    assert_eq!(retries, 5 * 2 + 2);
    assert_eq!(
        f.kinds().iter().filter(|k| *k == "device_failed").count(),
        2
    );
}

#[test]
fn too_many_failed_installs_fail_the_wave() {
    let probe = Fleet::new(2000);
    let bad: BTreeSet<DeviceId> = probe.ids_in_wave(0).into_iter().take(3).collect();
    let b = bad.clone();
    let mut f = Fleet::build(
        2000,
        |_| {},
        move |i, d| {
            if b.contains(&id(i)) {
                d.behaviour = Behaviour::FailHard;
            }
        },
        BTreeSet::new(),
    );
    f.drive_until_idle(50_000);
    assert!(matches!(f.rollout.phase(), Phase::RolledBack { .. }));
    // Failed installs still run the old version: only the others roll back
    // (the wave fails at the second failure; the third device was still in
    // flight, so it may run the candidate and is rolled back too).
    let rb: BTreeSet<DeviceId> = f.rollbacks().into_iter().map(|r| r.1).collect();
    assert_eq!(rb.len(), 18);
    assert_eq!(rb.intersection(&bad).count(), 1);
    let reason = f
        .audit
        .iter()
        .find_map(|e| match &e.event {
            AuditKind::StageFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("installs failed"), "{reason}");
}

#[test]
fn pause_resume_and_abort() {
    let mut f = Fleet::build(
        2000,
        |s| s.deploy_rate_per_min = Some(600),
        |_, _| {},
        BTreeSet::new(),
    );
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Deploying {
                stage: Stage::Wave(1),
                ..
            }
        )
    });
    f.drive_for(5_000);
    f.rollout
        .handle_command(f.now, RolloutCommand::Pause)
        .unwrap();
    let sent = f.sent.len();
    let requests = f.requests.len();
    f.drive_for(60 * MIN);
    assert!(matches!(
        f.rollout.phase(),
        Phase::Paused {
            cause: PauseCause::Operator,
            ..
        }
    ));
    assert_eq!(f.sent.len(), sent, "nothing sent while paused");
    assert_eq!(f.requests.len(), requests);
    assert!(f.rollout.poll_timeout().is_none());
    assert!(matches!(
        f.rollout.handle_command(f.now, RolloutCommand::Pause),
        Err(RolloutError::NotAllowed { .. })
    ));
    f.rollout
        .handle_command(f.now, RolloutCommand::Resume)
        .unwrap();
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()));
    assert!(f.devices.keys().all(|d| f.deploys_to(d) == 1));
    assert!(f.kinds().contains(&"resumed".to_string()));
    // Deploys respected the rate: 100 ms apart.
    let deploys: Vec<Timestamp> = f.sent.iter().map(|(t, _)| *t).collect();
    assert!(deploys.windows(2).all(|w| w[1].ms_since(w[0]) >= 100));

    // Abort: stop, leave devices as they are.
    let mut f = Fleet::new(2000);
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(1),
                ..
            }
        )
    });
    f.rollout
        .handle_command(f.now, RolloutCommand::Abort)
        .unwrap();
    let sent = f.sent.len();
    f.drive_until_idle(50_000);
    assert!(matches!(f.rollout.phase(), Phase::Aborted { .. }));
    assert_eq!(f.sent.len(), sent);
    assert_eq!(
        f.devices
            .values()
            .filter(|d| d.version == Some(NEW))
            .count(),
        200
    );
    assert!(!f.rollout.is_active());
    for c in [
        RolloutCommand::Resume,
        RolloutCommand::Pause,
        RolloutCommand::Abort,
    ] {
        assert!(f.rollout.handle_command(f.now, c).is_err(), "{c:?}");
    }
}

#[test]
fn manual_rollback_and_pausing_it() {
    let mut f = Fleet::build(
        2000,
        |s| s.rollback_rate_per_min = 600,
        |_, _| {},
        BTreeSet::new(),
    );
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(2),
                ..
            }
        )
    });
    f.rollout
        .handle_command(f.now, RolloutCommand::Rollback)
        .unwrap();
    f.drive_for(10_000);
    f.rollout
        .handle_command(f.now, RolloutCommand::Pause)
        .unwrap();
    let n = f.rollbacks().len();
    f.drive_for(10 * MIN);
    assert_eq!(f.rollbacks().len(), n, "a paused rollback sends nothing");
    f.rollout
        .handle_command(f.now, RolloutCommand::Resume)
        .unwrap();
    f.drive_until_idle(50_000);
    assert!(matches!(f.rollout.phase(), Phase::RolledBack { .. }));
    assert_eq!(f.rollbacks().len(), 1000);
    assert!(f.devices.values().all(|d| d.version == Some(OLD)));
    assert!(
        f.rollout
            .handle_command(f.now, RolloutCommand::Rollback)
            .is_err()
    );
}

#[test]
fn resumes_after_a_restart_mid_wave_without_resending_finished_work() {
    let mut f = Fleet::build(
        3000,
        |s| s.deploy_rate_per_min = Some(1200),
        |_, _| {},
        BTreeSet::new(),
    );
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Deploying {
                stage: Stage::Wave(2),
                ..
            }
        )
    });
    f.drive_for(30_000);
    // kill -9: the persisted state survives; reports in flight are lost.
    let json = f.rollout.to_json().unwrap();
    let updated_before: BTreeSet<DeviceId> = f
        .devices
        .iter()
        .filter(|(d, s)| s.version == Some(NEW) && !f.inbox.values().any(|(x, _)| x == *d))
        .map(|(d, _)| d.clone())
        .collect();
    let sent_before = f.sent.len();
    let wave2_evals = f.rollout.status().waves[1].evaluations;
    f.inbox.clear();
    f.now = f.now.plus_ms(5_000);
    f.rollout = Rollout::from_json(&json).unwrap();
    f.rollout.check_invariants();
    assert_eq!(f.rollout.status().waves[1].evaluations, wave2_evals);
    f.rollout.handle_restart(f.now);
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()));
    for d in &updated_before {
        assert_eq!(f.deploys_to(d), 1, "{d} was updated before the restart");
    }
    let resent = f.sent[sent_before..]
        .iter()
        .filter(|(_, a)| updated_before.contains(a.device()))
        .count();
    assert_eq!(resent, 0);
    // The wave that was deploying was still gated after the restart.
    let gated = f.audit.iter().any(|e| {
        matches!(
            e.event,
            AuditKind::GatesEvaluated {
                stage: Stage::Wave(2),
                decision: Decision::Pass,
                ..
            }
        )
    });
    assert!(gated);
    assert!(f.kinds().contains(&"restarted".to_string()));
    assert!(f.devices.values().all(|d| d.version == Some(NEW)));
}

#[test]
fn resumes_after_a_restart_while_baking_without_skipping_the_gate() {
    let mut f = Fleet::new(2000);
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(1),
                ..
            }
        )
    });
    f.drive_for(3 * MIN);
    // A request goes out and the controller dies before answering it.
    f.answer_metrics = false;
    f.drive_for(MIN);
    let lost = f.requests.last().unwrap().id;
    let json = f.rollout.to_json().unwrap();
    let evals = f.rollout.status().waves[1].evaluations;
    assert!(evals >= 2, "evaluations before the crash are recorded");
    let mut r = Rollout::from_json(&json).unwrap();
    let now = f.now.plus_ms(1_000);
    r.handle_restart(now);
    assert_eq!(r.status().waves[1].evaluations, evals);
    assert!(matches!(
        r.handle_metrics(
            now,
            lost,
            CohortMetrics::default(),
            CohortMetrics::default()
        ),
        Err(RolloutError::StaleMetrics(_))
    ));
    let req = r.poll_metrics_request(now).expect("fresh request at once");
    assert_eq!(req.stage, Stage::Wave(1));
    f.rollout = r;
    f.now = now;
    let (canary, control) = f.measure(&req);
    f.rollout
        .handle_metrics(now, req.id, canary, control)
        .unwrap();
    f.answer_metrics = true;
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()));
    let w = &f.rollout.status().waves[1];
    assert!(w.passed_at.unwrap() >= w.bake_since.unwrap().plus_ms(10 * MIN));
}

#[test]
fn shadow_phase_is_gated_on_agreement() {
    let shadow_spec = |s: &mut RolloutSpec| s.shadow_ms = Some(5 * MIN);
    let mut f = Fleet::build(2000, shadow_spec, |_, _| {}, BTreeSet::new());
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()));
    let canary = f.ids_in_wave(0);
    for d in &canary {
        let kinds: Vec<&RolloutAction> = f
            .sent
            .iter()
            .filter(|(_, a)| a.device() == d)
            .map(|(_, a)| a)
            .collect();
        assert!(matches!(kinds[0], RolloutAction::Shadow { .. }));
        assert!(matches!(kinds[1], RolloutAction::Deploy { .. }));
    }
    let st = f.rollout.status();
    let shadow = st.shadow.unwrap();
    let shadowing = f.audit.iter().find_map(|e| match e.event {
        AuditKind::StagePassed {
            stage: Stage::Shadow,
            counts,
        } => Some(counts.done),
        _ => None,
    });
    assert_eq!(shadowing, Some(20));
    assert_eq!(shadow.gates[0].gate.metric, Metric::ShadowAgreement);
    assert_eq!(shadow.gates[0].decision, Decision::Pass);
    assert_eq!(f.requests[0].kind, MetricsKind::Shadow);
    // No deploy before the shadow phase passed.
    let passed = shadow.passed_at.unwrap();
    assert!(
        f.sent
            .iter()
            .filter(|(_, a)| matches!(a, RolloutAction::Deploy { .. }))
            .all(|(t, _)| *t >= passed)
    );

    // Poor agreement: shadows stopped, nothing to roll back, never deployed.
    let mut f = Fleet::build(2000, shadow_spec, |_, _| {}, BTreeSet::new());
    f.quality.insert(
        NEW,
        Quality {
            agree: 0.80,
            ..GOOD
        },
    );
    f.drive_until_idle(50_000);
    assert!(matches!(f.rollout.phase(), Phase::RolledBack { .. }));
    let stops = f
        .sent
        .iter()
        .filter(|(_, a)| matches!(a, RolloutAction::StopShadow { .. }))
        .count();
    assert_eq!(stops, 20);
    assert!(f.rollbacks().is_empty());
    assert!(
        f.devices
            .values()
            .all(|d| d.shadow.is_none() && d.version == Some(OLD))
    );
    let why = &f.rollout.status().shadow.unwrap().gates[0].why;
    assert!(why.contains("shadow comparisons"), "{why}");
}

#[test]
fn conflicting_rollouts_are_detected() {
    let mut f = Fleet::new(1000);
    let views: Vec<DeviceView> = f.devices.keys().map(|d| f.view(d)).collect();
    let mut same = base_spec();
    same.id = "r2".into();
    same.target = Version(3);
    same.selector = "region=eu".parse().unwrap();
    let c = f.rollout.overlaps(&same, &views).unwrap();
    assert_eq!(c.devices, 600);
    assert_eq!(c.examples.len(), 5);
    assert!(
        c.reason.contains("r1") && c.reason.contains("600"),
        "{}",
        c.reason
    );
    let mut other_model = same.clone();
    other_model.model = ModelName::new("other").unwrap();
    assert!(f.rollout.overlaps(&other_model, &views).is_none());
    let mut disjoint = same.clone();
    disjoint.selector = "fleet=lab".parse().unwrap();
    assert!(f.rollout.overlaps(&disjoint, &views).is_none());
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()));
    assert!(
        f.rollout.overlaps(&same, &views).is_none(),
        "completed frees devices"
    );
}

#[test]
fn stale_inputs_are_refused_without_changing_state() {
    let mut f = Fleet::new(500);
    f.pump();
    let before = f.rollout.clone();
    assert_eq!(
        f.rollout.handle_metrics(
            f.now,
            99,
            CohortMetrics::default(),
            CohortMetrics::default()
        ),
        Err(RolloutError::StaleMetrics(99))
    );
    let stranger = DeviceId::new("nobody").unwrap();
    assert_eq!(
        f.rollout
            .handle_deploy_report(f.now, &stranger, DeployOutcome::Active { version: NEW }),
        Err(RolloutError::UnknownDevice(stranger))
    );
    assert_eq!(f.rollout, before);
    assert!(matches!(
        f.rollout.handle_command(f.now, RolloutCommand::Resume),
        Err(RolloutError::NotAllowed {
            command: "resume",
            phase: "deploying"
        })
    ));
}

#[test]
fn a_local_guard_rollback_counts_as_a_failed_install() {
    let mut f = Fleet::new(2000);
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(0),
                ..
            }
        )
    });
    // Two canary devices' agents roll back on their own: 2 of 20 > 5 %.
    for d in f.ids_in_wave(0).into_iter().take(2) {
        f.devices.get_mut(&d).unwrap().version = Some(OLD);
        f.rollout
            .handle_deploy_report(
                f.now,
                &d,
                DeployOutcome::RolledBack {
                    to: Some(OLD),
                    reason: "latency budget broken".into(),
                },
            )
            .unwrap();
    }
    f.drive_until_idle(50_000);
    assert!(matches!(f.rollout.phase(), Phase::RolledBack { .. }));
    assert_eq!(f.rollbacks().len(), 18);
}

#[test]
fn state_and_status_round_trip_through_json() {
    let mut f = Fleet::new(1000);
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(1),
                ..
            }
        )
    });
    f.drive_for(2 * MIN);
    let json = f.rollout.to_json().unwrap();
    let back = Rollout::from_json(&json).unwrap();
    assert_eq!(back, f.rollout);
    back.check_invariants();
    let status = serde_json::to_string(&f.rollout.status()).unwrap();
    let parsed: RolloutStatus = serde_json::from_str(&status).unwrap();
    assert_eq!(parsed, f.rollout.status());
    assert!(status.contains("\"phase\":\"baking\""), "{status}");
    // A few hundred bytes per device at most.
    assert!(json.len() < 1000 * 400, "{} bytes", json.len());
}

#[test]
fn first_install_advances_on_installs_and_bake_without_comparisons() {
    let mut f = Fleet::build(
        400,
        |s| s.initial = true,
        |_, d| d.version = None,
        BTreeSet::new(),
    );
    f.drive_until_idle(20_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    for (dev, d) in &f.devices {
        assert_eq!(d.version, Some(NEW), "{dev}");
    }
    for w in &f.rollout.status().waves {
        assert!(w.gates.is_empty(), "no comparison gates on a first install");
        assert!(w.passed_at.unwrap() >= w.bake_since.unwrap().plus_ms(10 * MIN));
    }
    // Gates cannot be asked for on a first install.
    let mut s = base_spec();
    s.initial = true;
    s.gates = vec!["p95_latency_ratio<=1.2".parse().unwrap()];
    assert_eq!(s.validate(), Err(SpecError::InitialWithGates));
}

mod agent;
mod links;
