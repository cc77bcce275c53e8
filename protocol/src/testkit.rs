//! Builders for keys, key lists, manifests, commands and telemetry windows
//! with fixed seeds: used by this crate's tests, the agent and controller
//! tests, the simulator and the fuzzers' seed corpora.
//!
//! Builders take names from test code, never from the network, so they panic
//! on an invalid one rather than thread errors through every test.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;

use crate::ids::{DeviceId, FleetId, ModelName, ModelRef, Sha256, Timestamp, Version};
use crate::manifest::{
    AgentVersion, Artifact, BinnedProfile, DType, FeatureProfile, HealthChecks, HealthSample,
    Lineage, ModelManifest, ReferenceProfile, Task, TensorSpec,
};
use crate::messages::{Action, Command};
use crate::release::{AgentRelease, Arch};
use crate::signing::{Ed25519Signer, Sign, Signed};
use crate::telemetry::{LatencyHistogram, ModelRole, ShadowStats, TelemetryWindow};
use crate::trust::{KeyEntry, KeyList, Role};

/// A root, a models, a commands and an agents key derived from one seed byte.
pub struct TestKeys {
    /// Root key (signs key lists).
    pub root: Ed25519Signer,
    /// Models key.
    pub models: Ed25519Signer,
    /// Commands key.
    pub commands: Ed25519Signer,
    /// Agents key (signs agent releases).
    pub agents: Ed25519Signer,
}

impl TestKeys {
    /// Deterministic keys for `seed`.
    pub fn new(seed: u8) -> TestKeys {
        TestKeys {
            root: Ed25519Signer::from_seed([seed; 32]),
            models: Ed25519Signer::from_seed([seed.wrapping_add(1); 32]),
            commands: Ed25519Signer::from_seed([seed.wrapping_add(2); 32]),
            agents: Ed25519Signer::from_seed([seed.wrapping_add(3); 32]),
        }
    }

    /// The key list naming the models, commands and agents keys, root-signed.
    pub fn key_list(&self, version: u64, expires_at: Timestamp) -> Signed<KeyList> {
        let list = KeyList {
            version,
            expires_at,
            keys: vec![
                KeyEntry {
                    public_key: self.models.public_key(),
                    roles: vec![Role::Models],
                },
                KeyEntry {
                    public_key: self.commands.public_key(),
                    roles: vec![Role::Commands],
                },
                KeyEntry {
                    public_key: self.agents.public_key(),
                    roles: vec![Role::Agents],
                },
            ],
        };
        sign_or_unreachable(&list, &self.root)
    }

    /// Signs a manifest with the models key.
    pub fn sign_manifest(&self, m: &ModelManifest) -> Signed<ModelManifest> {
        sign_or_unreachable(m, &self.models)
    }

    /// Signs a command with the commands key.
    pub fn sign_command(&self, c: &Command) -> Signed<Command> {
        sign_or_unreachable(c, &self.commands)
    }

    /// Signs an agent release with the agents key.
    pub fn sign_release(&self, r: &AgentRelease) -> Signed<AgentRelease> {
        sign_or_unreachable(r, &self.agents)
    }
}

/// An agent release `version` (`major.minor.patch`) for `arch` describing
/// `binary`, valid for a year from `now`.
pub fn release(version: &str, arch: Arch, binary: &[u8], now: Timestamp) -> AgentRelease {
    AgentRelease {
        version: AgentVersion::parse(version).expect("fixture versions are valid"),
        arch,
        artifact: Artifact {
            sha256: Sha256::of(binary),
            size: binary.len() as u64,
        },
        created_at: now,
        expires_at: now.plus_ms(365 * 24 * 3600 * 1000),
    }
}

fn sign_or_unreachable<T: crate::signing::SignedPayload>(value: &T, key: &dyn Sign) -> Signed<T> {
    Signed::sign(value, key).expect("fixtures encode")
}

/// A 4-feature, 3-class manifest for `artifact`.
pub fn manifest(name: &str, version: u64, artifact: &[u8], now: Timestamp) -> ModelManifest {
    let features = ["temp", "vibration", "current", "humidity"]
        .iter()
        .map(|n| FeatureProfile {
            name: (*n).to_string(),
            bins: BinnedProfile {
                edges: vec![-1.0, 0.0, 1.0],
                frequencies: vec![0.16, 0.34, 0.34, 0.16],
            },
        })
        .collect();
    ModelManifest {
        name: model_name(name),
        version: Version(version),
        artifact: Artifact {
            sha256: Sha256::of(artifact),
            size: artifact.len() as u64,
        },
        inputs: vec![TensorSpec {
            name: "input".into(),
            dtype: DType::F32,
            shape: vec![None, Some(4)],
        }],
        outputs: vec![
            TensorSpec {
                name: "label".into(),
                dtype: DType::I64,
                shape: vec![None],
            },
            TensorSpec {
                name: "probabilities".into(),
                dtype: DType::F32,
                shape: vec![None, Some(3)],
            },
        ],
        task: Task::Classification {
            labels: vec!["normal".into(), "warning".into(), "fault".into()],
            probabilities: "probabilities".into(),
            label: Some("label".into()),
        },
        reference: ReferenceProfile {
            features,
            output: BinnedProfile {
                edges: vec![],
                frequencies: vec![0.7, 0.2, 0.1],
            },
            sources: vec![],
        },
        health_checks: HealthChecks {
            samples: vec![HealthSample {
                input: vec![0.0; 4],
                expected: vec![0.7, 0.2, 0.1],
                inputs: vec![],
            }],
            tolerance: 1e-3,
        },
        latency_budget_us: Some(50_000),
        lineage: Lineage::default(),
        created_at: now,
        expires_at: now.plus_ms(365 * 24 * 3600 * 1000),
        min_agent_version: AgentVersion::default(),
        load: Default::default(),
    }
}

fn model_name(name: &str) -> ModelName {
    ModelName::new(name).expect("fixture model names are valid")
}

/// A command for `device` with sequence `seq`, valid for an hour from `now`.
pub fn command(device: &DeviceId, seq: u64, now: Timestamp, action: Action) -> Command {
    Command {
        fleet: FleetId::new("test").expect("valid fleet"),
        target: device.clone(),
        seq,
        issued_at: now,
        expires_at: now.plus_ms(3_600_000),
        action,
    }
}

/// A realistic window: 10 features × 20 bins, 6,000 inferences with
/// log-normal-ish latencies around 800 µs, 3 classes, labels on 5 %.
pub fn realistic_window(seq: u64) -> TelemetryWindow {
    let mut rng = SplitMix(seq.wrapping_add(42));
    let mut latency = LatencyHistogram::default();
    let mut features = vec![vec![0u32; 20]; 10];
    let mut outputs = vec![0u32; 3];
    let mut confidence = vec![0u32; 10];
    for _ in 0..6000 {
        let z = rng.normal();
        latency.record((800.0 * (0.25 * z).exp()) as u64);
        for f in features.iter_mut() {
            let b = ((rng.normal() * 3.0 + 10.0).clamp(0.0, 19.0)) as usize;
            if let Some(c) = f.get_mut(b) {
                *c += 1;
            }
        }
        let class = (rng.next_u64() % 10) as usize;
        let class = if class < 7 {
            0
        } else if class < 9 {
            1
        } else {
            2
        };
        if let Some(c) = outputs.get_mut(class) {
            *c += 1;
        }
        let conf = (5 + rng.next_u64() % 5) as usize;
        if let Some(c) = confidence.get_mut(conf) {
            *c += 1;
        }
    }
    TelemetryWindow {
        seq,
        model: ModelRef {
            name: model_name("sensor"),
            version: Version(3),
        },
        role: ModelRole::Active,
        start: Timestamp(1_700_000_000_000),
        end: Timestamp(1_700_000_010_000),
        count: 6000,
        errors: 2,
        latency,
        features,
        outputs,
        confidence,
        labelled: 300,
        correct: 281,
        abs_error_sum: 0.0,
        shadow: None,
        evicted_windows: 0,
    }
}

/// A window with shadow stats filled in.
pub fn window_with_shadow(seq: u64) -> TelemetryWindow {
    let mut w = realistic_window(seq);
    let mut latency = LatencyHistogram::default();
    latency.record(900);
    w.shadow = Some(ShadowStats {
        compared: 60,
        agreed: 58,
        dropped: 1,
        errors: 0,
        latency,
    });
    w
}

/// Labels map for Hello fixtures.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Tiny deterministic PRNG for fixtures (splitmix64).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
