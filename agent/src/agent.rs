//! The [`Agent`] handle: start from an [`AgentConfig`], infer, feedback,
//! status, shutdown. No process-wide state: many agents run in one process
//! (the fleet simulator does).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use drover_protocol::messages::Hello;
use drover_protocol::{ModelRef, PublicKey, TrustState};

use crate::api;
use crate::clock::Clock;
use crate::config::{AgentConfig, ConfigError};
use crate::driver::files::load_installed;
use crate::driver::{Control, Driver, Restored};
pub use crate::infer::{FeedbackError, FeedbackLabel};
use crate::infer::{InferError, InferRequest, InferResponse};
use crate::link::{self, LinkConfig};
use crate::metrics::Metrics;
use crate::runtime::{LoadedModel, Runtime};
use crate::shadow::Shadow;
use crate::shared::Shared;
use crate::status::AgentStatus;
use crate::store::{Pointers, Store, StoreError, StoreHandle};
use crate::version::agent_version;

/// Why the agent could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory's database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The data directory pins a different root key than the config.
    #[error(
        "the data directory pins root key {pinned}, the config says {configured}; \
         refusing to re-pin (use a fresh data directory)"
    )]
    RootKeyMismatch {
        /// Key in the data directory.
        pinned: PublicKey,
        /// Key in the config.
        configured: PublicKey,
    },
    /// The data directory belongs to another device.
    #[error("the data directory belongs to {stored}, the config says {configured}")]
    IdentityMismatch {
        /// Identity recorded in the data directory.
        stored: String,
        /// Identity from the config.
        configured: String,
    },
    /// The HTTP API could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Api {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A background task failed.
    #[error("agent task failed: {0}")]
    Task(String),
}

/// A running agent.
///
/// Dropping it without [`shutdown`](Agent::shutdown) stops its tasks
/// abruptly, like a crash: no final window, no Offline status (the broker's
/// last will says Offline instead).
#[derive(Debug)]
pub struct Agent {
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
    driver: Option<JoinHandle<()>>,
    api: Option<api::Server>,
}

fn initial_hello(cfg: &AgentConfig, p: &Pointers, trust: &TrustState, depth: usize) -> Hello {
    Hello {
        agent_version: agent_version().to_string(),
        arch: std::env::consts::ARCH.to_string(),
        hardware: cfg.hardware.clone(),
        labels: cfg.labels.clone(),
        active: p.active.clone(),
        previous: p.previous.clone(),
        shadow: p.shadow.clone(),
        last_command_seq: trust.last_command_seq(),
        key_list_version: trust.key_list().map_or(0, |k| k.version),
        outbox_depth: depth as u64,
    }
}

impl Agent {
    /// Opens the data directory, restores trust state, models, outbox and
    /// downloads, binds the HTTP API (if configured) and connects to the
    /// broker in the background. Must run inside a tokio runtime.
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        config.validate()?;
        let broker = config.broker_addr()?;
        let clock = sim_clock().unwrap_or_default();
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))??;
        let store = StoreHandle::new(store);

        let identity = format!("{}/{}", config.fleet, config.device_id);
        let (root, device) = (config.root_key, config.device_id.clone());
        let id = identity.clone();
        let (
            stored_identity,
            trust,
            pointers,
            settings,
            outbox_seqs,
            next_seq,
            pending,
            unfinished,
        ) = store
            .call(move |s| {
                let stored = s.identity()?;
                if stored.is_none() {
                    s.set_identity(&id)?;
                }
                let trust = match s.trust()? {
                    Some(t) => t,
                    None => {
                        let t = TrustState::new(root, device);
                        s.save_trust(&t)?;
                        t
                    }
                };
                Ok((
                    stored,
                    trust,
                    s.pointers()?,
                    s.settings()?,
                    s.outbox_seqs()?,
                    s.next_window_seq()?,
                    s.pending()?,
                    s.accepted_command()?,
                ))
            })
            .await?;
        if let Some(stored) = stored_identity
            && stored != identity
        {
            return Err(AgentError::IdentityMismatch {
                stored,
                configured: identity,
            });
        }
        if trust.root() != &config.root_key {
            return Err(AgentError::RootKeyMismatch {
                pinned: *trust.root(),
                configured: config.root_key,
            });
        }

        let runtime = Arc::new(Runtime::new(clock));
        runtime.set_extra_latency_us(config.simulated_extra_latency_us);
        let mut pointers = pointers;
        let mut lost = false;
        let active = restore(&store, &config, &mut pointers.active, &mut lost).await;
        let previous = restore(&store, &config, &mut pointers.previous, &mut lost).await;
        let candidate = restore(&store, &config, &mut pointers.shadow, &mut lost).await;
        if lost {
            let p = pointers.clone();
            store.call(move |s| s.set_pointers(&p)).await?;
        }
        if let Some(pm) = settings.capture_per_mille {
            for m in [&active, &previous].into_iter().flatten() {
                m.recorder().set_capture_per_mille(pm);
            }
        }
        runtime.set_active(active);
        runtime.set_previous(previous);
        let shadow = match candidate {
            Some(c) => {
                match Shadow::start(c, pointers.shadow_per_mille, config.shadow_queue, clock) {
                    Ok(s) => {
                        runtime.set_shadow(Some(s.clone()));
                        Some(s)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the shadow worker");
                        None
                    }
                }
            }
            None => None,
        };

        let metrics = Arc::new(Metrics::default());
        let status = AgentStatus {
            device: config.device_id.to_string(),
            fleet: config.fleet.to_string(),
            agent_version: agent_version().to_string(),
            ..AgentStatus::default()
        };
        let shared = Arc::new(Shared {
            config: config.clone(),
            runtime,
            metrics: metrics.clone(),
            status: RwLock::new(status),
            restart: tokio::sync::watch::channel(false).0,
        });

        let api = match config.api {
            Some(addr) => Some(
                api::Server::start(addr, shared.clone())
                    .await
                    .map_err(|source| AgentError::Api { addr, source })?,
            ),
            None => None,
        };

        let (hello_tx, hello_rx) =
            watch::channel(initial_hello(&config, &pointers, &trust, outbox_seqs.len()));
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let link = link::spawn(
            LinkConfig {
                host: broker.host,
                port: broker.port,
                fleet: config.fleet.clone(),
                device: config.device_id.clone(),
                username: config.username.clone(),
                password: config.password.clone(),
                device_key: config.device_signer()?.map(Arc::new),
                keep_alive: config.keep_alive(),
                reconnect_min: Duration::from_millis(config.reconnect_min_ms),
                reconnect_max: Duration::from_millis(config.reconnect_max_ms),
                tls: crate::tls::client_config(&config)?,
            },
            hello_rx,
            ev_tx,
            metrics,
        );
        let restored = Restored {
            trust,
            pointers,
            settings,
            outbox_seqs,
            next_window_seq: next_seq,
            pending,
            shadow,
            unfinished,
        };
        let driver = Driver::new(config, shared.clone(), store, link, hello_tx, restored);
        let (control, control_rx) = mpsc::channel(4);
        let driver = tokio::spawn(driver.run(ev_rx, control_rx));
        Ok(Agent {
            shared,
            control,
            driver: Some(driver),
            api,
        })
    }

    /// Runs one inference on the active model, on the calling thread.
    pub fn infer(&self, req: InferRequest) -> Result<InferResponse, InferError> {
        self.shared.runtime.infer(req)
    }

    /// Records ground truth for an earlier request. `Ok(correct)`: for a
    /// classifier whether the prediction was right (always true for
    /// regressors and for repeated feedback, which is not counted twice).
    pub fn feedback(&self, request_id: u64, label: FeedbackLabel) -> Result<bool, FeedbackError> {
        self.shared.feedback(request_id, &label)
    }

    /// Resolves at the next change the agent publishes: the driver's state
    /// after any event or timer (pointers, downloads, outbox, windows), or
    /// the link going up or down. Inference counters alone do not wake it.
    /// To wait for a condition without a race, `enable()` the returned future
    /// (pinned) before checking the condition, then await it.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.metrics.changed.notified()
    }

    /// Resolves once a new agent binary is staged and this process should
    /// exit so the service manager starts it (`drover-agent run` does).
    pub async fn restart_requested(&self) {
        let mut rx = self.shared.restart.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// A snapshot of the agent's state and counters.
    pub fn status(&self) -> AgentStatus {
        self.shared.status()
    }

    /// The serving model.
    pub fn active_model(&self) -> Option<ModelRef> {
        self.shared
            .runtime
            .active()
            .map(|m: Arc<LoadedModel>| m.model_ref().clone())
    }

    /// Prometheus text, as `GET /metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics_text()
    }

    /// Where the HTTP API listens (the real port when configured with port 0).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(api::Server::addr)
    }

    /// Simulation hook (cargo feature `sim`): adds `extra` to every measured
    /// inference latency (telemetry and `latency_us`) without sleeping, so a
    /// simulated slow device costs no wall time. Zero turns it off.
    #[cfg(feature = "sim")]
    pub fn set_simulated_extra_latency(&self, extra: Duration) {
        self.shared
            .runtime
            .set_extra_latency_us(u64::try_from(extra.as_micros()).unwrap_or(u64::MAX));
    }

    /// Stops serving HTTP, closes the open telemetry window into the outbox,
    /// publishes Offline and disconnects.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(15), rx).await;
        }
        if let Some(d) = self.driver.take() {
            d.await.map_err(|e| AgentError::Task(e.to_string()))?;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
        if let Some(api) = self.api.take() {
            api.abort();
        }
    }
}

/// Feature `sim`: `DROVER_SIM_CLOCK_OFFSET_MS` (signed) sets this process's
/// agent clock that far from the system clock, so the fault matrix can run a
/// device whose clock is hours ahead or behind. Without the feature: `None`.
fn sim_clock() -> Option<Clock> {
    #[cfg(feature = "sim")]
    {
        let off: i64 = std::env::var("DROVER_SIM_CLOCK_OFFSET_MS")
            .ok()?
            .parse()
            .ok()?;
        let now = drover_protocol::Timestamp::from_system(std::time::SystemTime::now());
        Some(Clock::anchored(drover_protocol::Timestamp(
            now.0.saturating_add_signed(off),
        )))
    }
    #[cfg(not(feature = "sim"))]
    {
        None
    }
}

/// Loads the model a pointer names; clears the pointer if it cannot.
async fn restore(
    store: &StoreHandle,
    cfg: &AgentConfig,
    pointer: &mut Option<ModelRef>,
    lost: &mut bool,
) -> Option<Arc<LoadedModel>> {
    let r = pointer.clone()?;
    let cfg = cfg.clone();
    let rr = r.clone();
    let loaded = store
        .call(move |s| {
            let Some(inst) = s.model(&rr)? else {
                return Ok(Err(format!("{rr} is not in the store")));
            };
            let manifest = match inst.manifest.decode_unverified() {
                Ok(m) => m,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let path = s.model_path(&inst.sha256);
            Ok(load_installed(&path, manifest, &cfg).map_err(|r| r.to_string()))
        })
        .await;
    match loaded {
        Ok(Ok(m)) => Some(Arc::new(m)),
        Ok(Err(e)) => {
            tracing::error!(model = %r, error = %e, "cannot restore a model; forgetting it");
            *pointer = None;
            *lost = true;
            None
        }
        Err(e) => {
            tracing::error!(model = %r, error = %e, "cannot restore a model");
            *pointer = None;
            *lost = true;
            None
        }
    }
}
