//! A simulated fleet: N real agents (`drover_agent::Agent`, each with its own
//! MQTT connection and data dir) in one process, fed synthetic sensor
//! streams, with label feedback and fault injection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use drover_agent::config::AgentConfig;
use drover_agent::infer::InferRequest;
use drover_agent::{Agent, FeedbackLabel};
use drover_controller::controller::Controller;
use drover_protocol::testkit::SplitMix;
use drover_protocol::{DeviceId, PublicKey};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::data::{CLASSES, Drift, SensorStream, seed_of};
use crate::net::LinkProxy;

/// How to build a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Number of agents.
    pub agents: usize,
    /// `region` label values, assigned round-robin.
    pub regions: Vec<String>,
    /// `hardware` label values, assigned round-robin (offset from regions).
    pub hardware: Vec<String>,
    /// Inference requests per second per device.
    pub inferences_per_sec: f64,
    /// Share of inferences that get ground-truth feedback.
    pub feedback_rate: f64,
    /// Agent telemetry window.
    pub telemetry_window_ms: u64,
    /// Route each device through its own [`LinkProxy`] so its link can be cut.
    pub with_proxies: bool,
    /// Device id prefix.
    pub prefix: String,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            agents: 10,
            regions: vec!["eu".into(), "us".into(), "apac".into()],
            hardware: vec!["rpi4".into(), "jetson".into()],
            inferences_per_sec: 20.0,
            feedback_rate: 0.3,
            telemetry_window_ms: 2_000,
            with_proxies: false,
            prefix: "dev".into(),
        }
    }
}

/// What one simulated device has done.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Successful inferences.
    pub inferences: AtomicU64,
    /// Requests the model failed on (bad input or inference error).
    pub errors: AtomicU64,
    /// Requests made before any model was active.
    pub no_model: AtomicU64,
    /// Feedback sent.
    pub feedback: AtomicU64,
    /// Predictions that matched the true class.
    pub correct: AtomicU64,
}

/// One simulated device.
pub struct SimDevice {
    /// Device id.
    pub id: DeviceId,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The agent's configuration (same data dir across restarts).
    pub config: AgentConfig,
    /// Its link proxy, when the fleet has them.
    pub proxy: Option<LinkProxy>,
    /// What it did.
    pub counters: Arc<DeviceCounters>,
    agent: Arc<Mutex<Option<Agent>>>,
    stream: Arc<std::sync::Mutex<SensorStream>>,
    paused: Arc<AtomicBool>,
    driver: Option<JoinHandle<()>>,
}

impl SimDevice {
    /// Starts (or restarts) the agent on its data dir.
    pub async fn start_agent(&self) -> anyhow::Result<()> {
        let agent = Agent::start(self.config.clone())
            .await
            .with_context(|| format!("starting agent {}", self.id))?;
        *self.agent.lock().await = Some(agent);
        Ok(())
    }

    /// Kills the agent abruptly (no flush, no Offline message): a crash.
    pub async fn crash(&self) {
        let agent = self.agent.lock().await.take();
        drop(agent);
    }

    /// Stops the agent cleanly.
    pub async fn stop(&self) -> anyhow::Result<()> {
        if let Some(a) = self.agent.lock().await.take() {
            a.shutdown().await?;
        }
        Ok(())
    }

    /// Adds latency to every inference (a slow device).
    pub async fn set_slow(&self, extra: Duration) {
        if let Some(a) = self.agent.lock().await.as_ref() {
            a.set_simulated_extra_latency(extra);
        }
    }

    /// Starts or stops input drift on this device.
    pub fn set_drift(&self, drift: Option<Drift>) {
        if let Ok(mut s) = self.stream.lock() {
            s.set_drift(drift);
        }
    }

    /// Stops or resumes sending inference requests.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Runs `f` on the agent if it is running.
    pub async fn with_agent<R>(&self, f: impl FnOnce(&Agent) -> R) -> Option<R> {
        self.agent.lock().await.as_ref().map(f)
    }

    /// The active model as the agent reports it.
    pub async fn active(&self) -> Option<String> {
        self.with_agent(|a| a.active_model().map(|m| m.to_string()))
            .await
            .flatten()
    }
}

/// N simulated devices.
pub struct Fleet {
    /// The devices, in id order.
    pub devices: Vec<SimDevice>,
    _dir: Option<tempfile::TempDir>,
}

/// `host:port` of an `mqtt://host:port` URL.
pub fn mqtt_socket(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("mqtt://").unwrap_or(url);
    rest.parse()
        .with_context(|| format!("broker URL {url:?} is not mqtt://IP:PORT"))
}

impl Fleet {
    /// Registers `cfg.agents` devices with the controller, starts an agent
    /// for each (connecting to `broker_url`, through a proxy when asked) and
    /// starts its input stream.
    pub async fn start(
        ctl: &Controller,
        broker_url: &str,
        cfg: &FleetConfig,
        data_root: Option<PathBuf>,
    ) -> anyhow::Result<Fleet> {
        let (dir, root) = match data_root {
            Some(p) => (None, p),
            None => {
                let d = tempfile::tempdir()?;
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };
        let root_key = ctl.keys_info().root_public_key.clone();
        let root_key = PublicKey::from_hex(&root_key).context("controller root key")?;
        let upstream = mqtt_socket(broker_url)?;
        let mut devices = Vec::with_capacity(cfg.agents);
        for i in 0..cfg.agents {
            let id = DeviceId::new(format!("{}-{i:04}", cfg.prefix))?;
            let region = cfg
                .regions
                .get(i % cfg.regions.len().max(1))
                .cloned()
                .unwrap_or_default();
            let hw = cfg
                .hardware
                .get((i / cfg.regions.len().max(1)) % cfg.hardware.len().max(1))
                .cloned()
                .unwrap_or_default();
            let mut labels = BTreeMap::new();
            labels.insert("region".to_string(), region);
            labels.insert("hardware".to_string(), hw.clone());
            let bundle = ctl.register_device(&id, labels.clone()).await?;
            let proxy = if cfg.with_proxies {
                Some(LinkProxy::start(upstream).await?)
            } else {
                None
            };
            let broker = proxy
                .as_ref()
                .map_or_else(|| broker_url.to_string(), LinkProxy::url);
            let mut config = AgentConfig::new(
                id.clone(),
                ctl.fleet().clone(),
                broker,
                root_key,
                root.join(id.as_str()),
            );
            config.username = Some(bundle.username.clone());
            config.password = Some(bundle.password.clone());
            config.device_key = Some(bundle.device_key.clone());
            config.labels = labels.clone();
            config.hardware = hw;
            config.api = None;
            config.telemetry_window_ms = cfg.telemetry_window_ms;
            let dev = SimDevice {
                id: id.clone(),
                labels,
                config,
                proxy,
                counters: Arc::new(DeviceCounters::default()),
                agent: Arc::new(Mutex::new(None)),
                stream: Arc::new(std::sync::Mutex::new(SensorStream::new(seed_of(
                    id.as_str(),
                )))),
                paused: Arc::new(AtomicBool::new(false)),
                driver: None,
            };
            devices.push(dev);
        }
        // Start agents a few at a time: each opens a broker connection and a
        // SQLite file.
        for chunk in devices.chunks(16) {
            let starts = chunk.iter().map(SimDevice::start_agent);
            for r in futures_join_all(starts).await {
                r?;
            }
        }
        for dev in devices.iter_mut() {
            dev.driver = Some(spawn_driver(dev, cfg));
        }
        Ok(Fleet { devices, _dir: dir })
    }

    /// Devices whose label `key` equals `value`.
    pub fn with_label<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> impl Iterator<Item = &'a SimDevice> {
        self.devices
            .iter()
            .filter(move |d| d.labels.get(key).map(String::as_str) == Some(value))
    }

    /// Sums of every device's counters: (inferences, errors, feedback, correct).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        let mut t = (0, 0, 0, 0);
        for d in &self.devices {
            t.0 += d.counters.inferences.load(Ordering::Relaxed);
            t.1 += d.counters.errors.load(Ordering::Relaxed);
            t.2 += d.counters.feedback.load(Ordering::Relaxed);
            t.3 += d.counters.correct.load(Ordering::Relaxed);
        }
        t
    }

    /// Waits until `pred` holds for every device's active model, or fails.
    pub async fn wait_all_active(&self, model: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut missing = Vec::new();
            for d in &self.devices {
                if d.active().await.as_deref() != Some(model) {
                    missing.push(d.id.to_string());
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} devices not on {model} after {timeout:?}: {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every input stream and agent cleanly.
    pub async fn shutdown(mut self) {
        for d in self.devices.iter_mut() {
            if let Some(h) = d.driver.take() {
                h.abort();
            }
        }
        for d in &self.devices {
            let _ = d.stop().await;
        }
    }
}

async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.collect();
    let mut out = Vec::with_capacity(handles.len());
    for f in handles {
        out.push(f.await);
    }
    out
}

/// The input stream of one device: requests at the configured rate, with
/// ground truth fed back for a share of them.
fn spawn_driver(dev: &SimDevice, cfg: &FleetConfig) -> JoinHandle<()> {
    let agent = dev.agent.clone();
    let stream = dev.stream.clone();
    let counters = dev.counters.clone();
    let paused = dev.paused.clone();
    let period = Duration::from_secs_f64(1.0 / cfg.inferences_per_sec.max(0.01));
    let feedback_rate = cfg.feedback_rate;
    let mut rng = SplitMix(seed_of(dev.id.as_str()) ^ 0x5eed);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if paused.load(Ordering::SeqCst) {
                continue;
            }
            let Ok(sample) = stream.lock().map(|mut s| s.next_sample()) else {
                return;
            };
            let guard = agent.lock().await;
            let Some(a) = guard.as_ref() else { continue };
            match a.infer(InferRequest::new(sample.features.to_vec())) {
                Ok(resp) => {
                    counters.inferences.fetch_add(1, Ordering::Relaxed);
                    let truth = CLASSES.get(sample.label).copied().unwrap_or("normal");
                    if resp.label.as_deref() == Some(truth) {
                        counters.correct.fetch_add(1, Ordering::Relaxed);
                    }
                    if rng.uniform() < feedback_rate
                        && a.feedback(resp.request_id, FeedbackLabel::ClassName(truth.to_string()))
                            .is_ok()
                    {
                        counters.feedback.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(drover_agent::InferError::NoModel) => {
                    counters.no_model.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}
