//! Real processes for the fault matrix: a `drover-agent` (or `drover
//! serve`) child built with the `sim` fault points, started with
//! `DROVER_SIM_FAULT=<point>` so it aborts at an exact phase, or killed with
//! SIGKILL at any moment, then started again on the same data directory.
//! The binaries are the tests crate's `drover-sim-agent` and
//! `drover-sim-controller`; integration tests pass their paths
//! (`env!("CARGO_BIN_EXE_...")`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use drover_agent::config::AgentConfig;
use drover_agent::status::AgentStatus;
use drover_controller::controller::Controller;
use drover_protocol::{DeviceId, PublicKey};
use tokio::process::{Child, Command};

use crate::net::free_port;

/// The exit of a process a fault point aborted (SIGABRT) or a test killed.
pub fn died_by_signal(status: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal().is_some()
}

/// One `drover-agent run` child and its config file.
pub struct ProcAgent {
    /// Device id.
    pub id: DeviceId,
    /// The agent's config (data dir, broker, API address).
    pub config: AgentConfig,
    /// Where the config file is.
    pub config_path: PathBuf,
    /// Where the agent's stderr goes (appended across restarts).
    pub log_path: PathBuf,
    /// Extra environment for every start (e.g. `DROVER_SIM_CLOCK_OFFSET_MS`).
    pub env: Vec<(String, String)>,
    bin: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl ProcAgent {
    /// Registers `id` with the controller and writes its config under `dir`
    /// (the agent's API on a loopback port picked now and kept across
    /// restarts). Does not start it.
    pub async fn register(
        ctl: &Controller,
        bin: &Path,
        dir: &Path,
        id: &str,
        broker_url: &str,
    ) -> anyhow::Result<ProcAgent> {
        let id = DeviceId::new(id)?;
        let root =
            PublicKey::from_hex(&ctl.keys_info().root_public_key).context("controller root key")?;
        let bundle = ctl
            .register_device(&id, [("region".to_string(), "eu".to_string())].into())
            .await?;
        std::fs::create_dir_all(dir)?;
        let mut config = AgentConfig::new(
            id.clone(),
            ctl.fleet().clone(),
            broker_url.to_string(),
            root,
            dir.join("data"),
        );
        config.username = Some(bundle.username.clone());
        config.password = Some(bundle.password.clone());
        config.device_key = Some(bundle.device_key.clone());
        config.labels = [("region".to_string(), "eu".to_string())].into();
        config.api = Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)));
        config.telemetry_window_ms = 500;
        config.reconnect_min_ms = 100;
        config.reconnect_max_ms = 1_000;
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config.to_commented_toml()?)?;
        Ok(ProcAgent {
            id,
            config,
            config_path,
            log_path: dir.join("agent.log"),
            env: Vec::new(),
            bin: bin.to_path_buf(),
            child: None,
            http: reqwest::Client::new(),
        })
    }

    /// Starts the agent; with `fault`, armed to abort at that point.
    pub async fn start(&mut self, fault: Option<&str>) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut c = Command::new(&self.bin);
        c.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        c.env_remove("DROVER_SIM_FAULT");
        if let Some(f) = fault {
            c.env("DROVER_SIM_FAULT", f);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(c.spawn().context("spawning drover-sim-agent")?);
        Ok(())
    }

    /// Waits for the child to exit on its own (a fault point aborting it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(c) = self.child.as_mut() else {
            bail!("{} is not running", self.id);
        };
        let st = tokio::time::timeout(timeout, c.wait())
            .await
            .with_context(|| {
                format!("{} did not reach its fault point in {timeout:?}", self.id)
            })??;
        self.child = None;
        Ok(st)
    }

    /// SIGKILL, then reaps the child.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Whether a child is running (not yet seen exiting).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `GET /v1/status`; `None` while the agent is down or not yet serving.
    pub async fn status(&self) -> Option<AgentStatus> {
        let addr = self.config.api?;
        let r = self
            .http
            .get(format!("http://{addr}/v1/status"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// `POST /v1/infer` with one row of features; whether it was served.
    pub async fn infer(&self, features: &[f32]) -> bool {
        let Some(addr) = self.config.api else {
            return false;
        };
        self.http
            .post(format!("http://{addr}/v1/infer"))
            .json(&serde_json::json!({ "data": features }))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The agent's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// One `drover serve` child on a data directory and an external broker.
pub struct ProcController {
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stderr goes.
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl ProcController {
    /// Starts `drover-sim-controller serve` on `data_dir` against `broker`
    /// (`mqtt://...`), HTTP on `http`; with `fault`, armed to abort there.
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        broker: &str,
        http: SocketAddr,
        fault: Option<&str>,
    ) -> anyhow::Result<ProcController> {
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut c = Command::new(bin);
        c.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http")
            .arg(http.to_string())
            .arg("--broker")
            .arg(broker)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        c.env_remove("DROVER_SIM_FAULT");
        if let Some(f) = fault {
            c.env("DROVER_SIM_FAULT", f);
        }
        let child = c.spawn().context("spawning drover-sim-controller")?;
        Ok(ProcController {
            data_dir: data_dir.to_path_buf(),
            log_path,
            child: Some(child),
        })
    }

    /// Waits for the child to exit on its own (a fault point aborting it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(c) = self.child.as_mut() else {
            bail!("the controller is not running");
        };
        let st = tokio::time::timeout(timeout, c.wait())
            .await
            .with_context(|| {
                format!(
                    "the controller did not reach its fault point in {timeout:?}; log:\n{}",
                    self.log()
                )
            })??;
        self.child = None;
        Ok(st)
    }

    /// SIGKILL, then reaps the child.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}
