//! What systemd does with `drover-agent.service`, for tests with real agent
//! processes: run the packaged binary's `boot-check` (ExecStartPre), then
//! `<data_dir>/bin/current run --boot-checked` (ExecStart), and start again
//! whenever it exits (`Restart=on-failure`, with no delay). Counts the
//! starts whose binary could not even be executed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The agent version `drover-sim-agent-next` runs as: the next patch after
/// this build's (`tests/src/bin/sim_agent_next.rs`).
pub const NEXT_AGENT_VERSION: &str = "0.1.1";

/// A running "unit": one agent restarted like systemd restarts it.
pub struct AgentService {
    stop: Arc<Notify>,
    exec_failures: Arc<AtomicU32>,
    starts: Arc<AtomicU32>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl AgentService {
    /// Starts the loop: `packaged boot-check --config CONFIG`, then
    /// `current run --boot-checked --config CONFIG` with stderr appended to
    /// `log`, again and again until [`AgentService::stop`].
    pub fn start(
        packaged: PathBuf,
        current: PathBuf,
        config: PathBuf,
        log: PathBuf,
    ) -> AgentService {
        let stop = Arc::new(Notify::new());
        let exec_failures = Arc::new(AtomicU32::new(0));
        let starts = Arc::new(AtomicU32::new(0));
        let (s, e, n) = (stop.clone(), exec_failures.clone(), starts.clone());
        let task = tokio::spawn(async move {
            loop {
                let pre = tokio::process::Command::new(&packaged)
                    .arg("boot-check")
                    .arg("--config")
                    .arg(&config)
                    .status()
                    .await
                    .context("running boot-check")?;
                anyhow::ensure!(pre.success(), "boot-check failed: {pre:?}");
                let logfile = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?;
                n.fetch_add(1, Ordering::SeqCst);
                let child = tokio::process::Command::new(&current)
                    .arg("run")
                    .arg("--boot-checked")
                    .arg("--config")
                    .arg(&config)
                    .env("RUST_LOG", "info")
                    .stdout(std::process::Stdio::null())
                    .stderr(logfile)
                    .kill_on_drop(true)
                    .spawn();
                let mut child = match child {
                    Ok(c) => c,
                    Err(_) => {
                        // The binary cannot even execute: a failed start.
                        e.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                tokio::select! {
                    _ = child.wait() => {}
                    () = s.notified() => {
                        let _ = child.kill().await;
                        return Ok(());
                    }
                }
            }
        });
        AgentService {
            stop,
            exec_failures,
            starts,
            task,
        }
    }

    /// Starts whose binary could not be executed.
    pub fn exec_failures(&self) -> u32 {
        self.exec_failures.load(Ordering::SeqCst)
    }

    /// Every start of `current` so far (executed or not).
    pub fn starts(&self) -> u32 {
        self.starts.load(Ordering::SeqCst)
    }

    /// Whether the loop is still going (it ends only on stop or an error).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Kills the running agent and ends the loop.
    pub async fn stop(self) -> anyhow::Result<()> {
        // notify_one keeps the permit if the loop is between starts.
        self.stop.notify_one();
        self.task.await.context("service loop panicked")?
    }
}
