//! Shared pieces of the agent's integration tests: brokers, the scripted
//! controller peer, fixture manifests and agent configs.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

pub mod broker;
pub mod peer;
pub mod proxy;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_agent::core::window::RecorderConfig;
use drover_agent::runtime::LoadedModel;
use drover_agent::{Agent, AgentConfig};
use drover_protocol::manifest::{DType, HealthSample, Task, TensorSpec};
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::{DeviceId, FleetId, ModelManifest, Sign as _, Timestamp};

pub use broker::{Mosquitto, TestBroker};
pub use peer::{Peer, eventually, until};
pub use proxy::LinkProxy;

/// Wall-clock now.
pub fn now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// A fleet name no other test (or test run on a shared broker) uses.
pub fn unique_fleet(tag: &str) -> FleetId {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    FleetId::new(format!("t-{tag}-{}-{n}-{nanos}", std::process::id())).unwrap()
}

/// A fixture model's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/models")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Rows to run and health-check with (temp, vibration, current, humidity).
pub const ROWS: [[f32; 4]; 6] = [
    [58.3, 1.8, 11.3, 61.0],
    [55.9, 4.3, 8.4, 52.7],
    [70.0, 5.5, 16.0, 30.0],
    [50.0, 1.0, 9.0, 70.0],
    [62.0, 2.5, 12.0, 45.0],
    [66.0, 3.9, 14.5, 25.0],
];

/// A signed-ready manifest for a fixture classifier, with health checks
/// computed by tract (what the controller's registry does).
pub fn classifier_manifest(file: &str, version: u64) -> (ModelManifest, Vec<u8>) {
    let bytes = fixture(file);
    let mut m = testkit::manifest("sensor", version, &bytes, now());
    if let Task::Classification { labels, .. } = &mut m.task {
        *labels = vec!["fault".into(), "normal".into(), "warning".into()];
    }
    m.latency_budget_us = None;
    fill_health_checks(&mut m, &bytes);
    (m, bytes)
}

/// A manifest for the regressor fixture.
pub fn regressor_manifest(version: u64) -> (ModelManifest, Vec<u8>) {
    let bytes = fixture("regressor_v1.onnx");
    let mut m = testkit::manifest("risk", version, &bytes, now());
    m.outputs = vec![TensorSpec {
        name: "variable".into(),
        dtype: DType::F32,
        shape: vec![None, Some(1)],
    }];
    m.task = Task::Regression {
        output: "variable".into(),
    };
    m.reference.output.edges = vec![-1.0, 0.0, 1.0];
    m.reference.output.frequencies = vec![0.25; 4];
    m.latency_budget_us = None;
    fill_health_checks(&mut m, &bytes);
    (m, bytes)
}

/// Health-check expectations computed from `bytes` itself.
pub fn fill_health_checks(m: &mut ModelManifest, bytes: &[u8]) {
    m.health_checks.samples.clear();
    let probe = LoadedModel::load(bytes, m.clone(), RecorderConfig::default()).unwrap();
    m.health_checks.samples = ROWS[..2]
        .iter()
        .map(|r| HealthSample {
            input: r.to_vec(),
            expected: probe.primary_values(&probe.run(r).unwrap()).unwrap(),
            inputs: vec![],
        })
        .collect();
}

/// An agent config for tests: small windows, quick retries, API on a free port.
pub fn agent_config(
    url: &str,
    fleet: &FleetId,
    device: &DeviceId,
    keys: &TestKeys,
    dir: &Path,
) -> AgentConfig {
    let mut c = AgentConfig::new(
        device.clone(),
        fleet.clone(),
        url,
        keys.root.public_key(),
        dir,
    );
    c.api = Some("127.0.0.1:0".parse().unwrap());
    c.telemetry_window_ms = 300;
    c.chunk_timeout_ms = 1_000;
    c.outbox_retransmit_ms = 1_500;
    c.reconnect_min_ms = 50;
    c.reconnect_max_ms = 400;
    c.keep_alive_secs = 5;
    c.guard_min_samples = 5;
    c
}

/// Broker, peer, data dir and a running agent.
pub struct Setup {
    pub broker: Option<TestBroker>,
    pub peer: Peer,
    pub dir: tempfile::TempDir,
    pub config: AgentConfig,
    pub agent: Option<Agent>,
}

impl Setup {
    /// Embedded (or `DROVER_TEST_BROKER`) broker, peer, agent; waits until
    /// the agent has said Hello and installed the key list.
    pub async fn start(tag: &str) -> Setup {
        Self::start_with(tag, |_| {}).await
    }

    /// As [`start`](Self::start), with config tweaks.
    pub async fn start_with(tag: &str, tweak: impl FnOnce(&mut AgentConfig)) -> Setup {
        init_logs();
        let broker = TestBroker::start().await;
        let url = broker.url();
        let mut s = Self::start_on(&url, tag, tweak).await;
        s.broker = Some(broker);
        s
    }

    /// Peer and agent on an existing broker.
    pub async fn start_on(url: &str, tag: &str, tweak: impl FnOnce(&mut AgentConfig)) -> Setup {
        Self::start_split(url, url, tag, tweak).await
    }

    /// Peer on `peer_url`, agent on `agent_url` (e.g. through a [`LinkProxy`]).
    pub async fn start_split(
        peer_url: &str,
        agent_url: &str,
        tag: &str,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Setup {
        let url = peer_url;
        init_logs();
        let fleet = unique_fleet(tag);
        let device = DeviceId::new("dev-1").unwrap();
        let keys = TestKeys::new(7);
        let dir = tempfile::tempdir().unwrap();
        let mut config = agent_config(agent_url, &fleet, &device, &keys, dir.path());
        tweak(&mut config);
        let peer = Peer::start(url, &fleet, &device, keys).await;
        let agent = Agent::start(config.clone()).await.unwrap();
        let s = Setup {
            broker: None,
            peer,
            dir,
            config,
            agent: Some(agent),
        };
        s.wait_key_list().await;
        s
    }

    /// The running agent.
    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    /// Waits until the agent installed the peer's key list.
    pub async fn wait_key_list(&self) {
        let agent = self.agent();
        eventually("key list installed", Duration::from_secs(20), || async {
            (agent.status().key_list_version == 1).then_some(())
        })
        .await;
    }

    /// Deploys a fixture classifier and waits for Active.
    pub async fn deploy_classifier(&self, file: &str, version: u64) -> ModelManifest {
        let (m, bytes) = classifier_manifest(file, version);
        self.peer.add_artifact(&bytes);
        let seq = self.peer.deploy(&m).await;
        let phase = self.peer.outcome(seq).await;
        assert_eq!(
            phase,
            drover_protocol::messages::DeployPhase::Active,
            "deploying {file}"
        );
        m
    }

    /// The HTTP API base URL.
    pub fn api(&self) -> String {
        format!("http://{}", self.agent().api_addr().unwrap())
    }
}

/// True when the tests run under qemu-user (`cross/test.sh` sets
/// `DROVER_UNDER_QEMU=1`): timing-sensitive tests widen their budgets then.
pub fn under_qemu() -> bool {
    std::env::var_os("DROVER_UNDER_QEMU").is_some_and(|v| v == "1")
}

/// The command prefix that runs a target binary: `DROVER_TEST_RUNNER` split on
/// whitespace (`cross/test.sh` sets it to the qemu-user command line, e.g.
/// `qemu-arm-static -L /usr/arm-linux-gnueabihf`), or nothing (run natively).
fn runner() -> Vec<String> {
    std::env::var("DROVER_TEST_RUNNER")
        .map(|r| r.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A `std::process::Command` for the target binary `bin`, through
/// `DROVER_TEST_RUNNER` when that is set (so an ARM `drover-agent` runs under
/// qemu-user from an emulated test; the child's pid is then qemu's, which
/// forwards signals such as SIGTERM to the guest).
pub fn bin_command(bin: &str) -> std::process::Command {
    let mut runner = runner();
    if runner.is_empty() {
        return std::process::Command::new(bin);
    }
    let mut c = std::process::Command::new(runner.remove(0));
    c.args(runner).arg(bin);
    c
}

/// [`bin_command`] for tokio.
pub fn tokio_bin_command(bin: &str) -> tokio::process::Command {
    tokio::process::Command::from(bin_command(bin))
}
