//! The [`Controller`] handle: one cheap-to-clone entry point to the
//! registry, inventory, commands, telemetry and events, shared by the HTTP
//! layer, the MQTT link, the rollout engine, drift/retrain and the simulator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use drover_protocol::codec::{self, CodecError};
use drover_protocol::messages::{CommandAck, DeployStatus, Down, Hello};
use drover_protocol::topic::Topic;
use drover_protocol::trust::KeyList;
use drover_protocol::{
    DeviceId, FleetId, ModelManifest, ModelName, Sign, Signed, Timestamp, Version,
};
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::SharedClock;
use crate::db::{Db, DbError};
use drover_protocol::labels::{LabelError, Selector};

use crate::fleet::devices::{self, BrokerAcl, DeviceBundle, DeviceInfo};
use crate::keys::{self, KeyError, KeyInit, KeyStore, Keys};
use crate::metrics::Metrics;
use crate::registry::store::{ModelStore, StoredModel};
use crate::registry::{self, ManifestView, ModelSummary, PushRequest, RegistryError};
use crate::telemetry::query::TelemetryFilter;
use crate::telemetry::summary::TelemetrySummary;

/// Errors of controller operations (mapped to HTTP statuses in `http`).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Registry refusal or failure.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Database failure.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Key failure.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A selector did not parse.
    #[error(transparent)]
    BadSelector(#[from] LabelError),
    /// The device is not in the inventory.
    #[error("unknown device {0:?}: add it with `drover device add` (or wait until it connects)")]
    UnknownDevice(String),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No MQTT link (library use without a broker).
    #[error("not connected to the MQTT broker")]
    NotConnected,
    /// Publishing failed.
    #[error("MQTT publish failed: {0}")]
    Publish(String),
    /// Encoding a message failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A background task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// What in-process subscribers hear about devices.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    /// A device said Hello.
    Hello {
        /// Device (from the topic).
        device: DeviceId,
        /// What it said.
        hello: Hello,
    },
    /// Status topic: online.
    Online {
        /// Device.
        device: DeviceId,
    },
    /// Status topic: offline (clean disconnect or last will).
    Offline {
        /// Device.
        device: DeviceId,
    },
    /// A command was accepted or rejected.
    Ack {
        /// Device.
        device: DeviceId,
        /// The ack.
        ack: CommandAck,
    },
    /// Deploy progress.
    DeployStatus {
        /// Device.
        device: DeviceId,
        /// The report.
        status: DeployStatus,
    },
    /// Progress of an agent update, or a fallback the agent did by itself.
    AgentUpdate {
        /// Device.
        device: DeviceId,
        /// The report.
        status: drover_protocol::messages::AgentUpdateStatus,
    },
    /// A telemetry window was stored (not sent for duplicates).
    TelemetryStored {
        /// Device.
        device: DeviceId,
        /// The window's headline numbers.
        window: WindowSummary,
    },
}

/// Headline numbers of a stored telemetry window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    /// Window sequence.
    pub seq: u64,
    /// `name@version`.
    pub model: String,
    /// `active` or `shadow`.
    pub role: String,
    /// Window start (ms).
    pub start: u64,
    /// Window end (ms).
    pub end: u64,
    /// Inferences.
    pub count: u64,
    /// Failed inferences.
    pub errors: u64,
}

/// Static settings of a controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// State directory (db, keys, artifacts).
    pub data_dir: PathBuf,
    /// Fleet served.
    pub fleet: FleetId,
    /// Broker URL written into device bundles.
    pub broker_url: String,
    /// MQTT username of the controller (ACL generation).
    pub controller_username: String,
    /// The controller's MQTT password, if any (its hash goes into the ACL output).
    pub controller_password: Option<String>,
    /// Commands expire this long after issue.
    pub command_validity_ms: u64,
    /// Replay window, clock skew and per-device rate limits of uplinks.
    pub uplink_policy: crate::core::uplink::UplinkPolicy,
    /// PBKDF2-SHA512 iterations for device password hashes (`$7$`, shared
    /// with Mosquitto); see `fleet::credentials`.
    pub device_kdf_iterations: u32,
    /// The CA (PEM) device bundles pin for an `mqtts://` broker.
    pub broker_ca_pem: Option<String>,
}

impl ControllerConfig {
    /// Defaults for `data_dir` and `fleet`.
    pub fn new(data_dir: impl Into<PathBuf>, fleet: FleetId) -> ControllerConfig {
        ControllerConfig {
            data_dir: data_dir.into(),
            fleet,
            broker_url: "mqtt://127.0.0.1:1883".into(),
            controller_username: "drover-controller".into(),
            controller_password: None,
            command_validity_ms: 3_600_000,
            uplink_policy: Default::default(),
            device_kdf_iterations: crate::fleet::credentials::DEFAULT_KDF_ITERATIONS,
            broker_ca_pem: None,
        }
    }
}

pub(crate) struct KeyState {
    pub(crate) keys: Keys,
    pub(crate) key_list: Signed<KeyList>,
    pub(crate) version: u64,
}

pub(crate) enum Outbound {
    None,
    Mqtt(rumqttc::AsyncClient),
    /// Unit tests only: publishes go to a channel instead of a broker.
    #[cfg(test)]
    Capture(tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>),
}

pub(crate) struct Inner {
    pub(crate) cfg: ControllerConfig,
    pub(crate) db: Db,
    pub(crate) clock: SharedClock,
    pub(crate) store: ModelStore,
    pub(crate) key_store: KeyStore,
    pub(crate) keys: RwLock<KeyState>,
    pub(crate) events: broadcast::Sender<DeviceEvent>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) outbound: RwLock<Outbound>,
    pub(crate) capture_sink: RwLock<Option<CaptureSink>>,
    pub(crate) identity: crate::fleet::uplink::Identity,
    /// Model validations run one at a time: loading and profiling a model
    /// takes a few times its size in memory, so parallel pushes of large
    /// models would multiply that.
    pub(crate) validations: Arc<tokio::sync::Semaphore>,
}

/// Receives `Up::Capture` uploads (the retraining runner).
pub type CaptureSink =
    Arc<dyn Fn(&DeviceId, &drover_protocol::messages::CaptureUpload) + Send + Sync>;

/// The controller handle. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("fleet", &self.inner.cfg.fleet)
            .field("data_dir", &self.inner.cfg.data_dir)
            .finish()
    }
}

/// Result of a key rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateOutcome {
    /// Rotated role.
    pub role: String,
    /// New public key (hex).
    pub public_key: String,
    /// New key list version.
    pub key_list_version: u64,
    /// Devices the new list was published to.
    pub devices_notified: usize,
    /// Manifests re-signed (models rotation) or agent releases re-signed
    /// (agents rotation).
    pub manifests_resigned: usize,
}

/// Public keys and the key list version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysInfo {
    /// Root key agents pin (hex).
    pub root_public_key: String,
    /// Models key (hex).
    pub models_public_key: String,
    /// Commands key (hex).
    pub commands_public_key: String,
    /// Agents key (hex); empty from controllers older than agent releases.
    #[serde(default)]
    pub agents_public_key: String,
    /// Current key list version.
    pub key_list_version: u64,
    /// Key list expiry (ms).
    pub key_list_expires_at: u64,
}

pub(crate) fn lock_read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn lock_write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Opens the state in `cfg.data_dir`: database (migrated), keys (created
    /// if missing), the current key list (issued if missing, stale or
    /// expiring). No network. Blocking; call before spawning tasks.
    pub fn open(cfg: ControllerConfig, clock: SharedClock) -> Result<Controller, ControllerError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            ControllerError::Invalid(format!(
                "cannot create data dir {}: {e}",
                cfg.data_dir.display()
            ))
        })?;
        let db = Db::open(&cfg.data_dir.join("drover.db"))?;
        let key_store = KeyStore::new(&cfg.data_dir);
        if !key_store.exists() {
            let init = key_store.init()?;
            tracing::info!(
                root_public_key = %init.root_public_key,
                dir = %init.dir,
                "created signing keys (first start); agents pin this root key"
            );
        }
        let keys = key_store.load()?;
        let (version, key_list) = keys::current_key_list(&db, &keys, clock.now())?;
        let store = ModelStore::new(db.clone(), &cfg.data_dir)?;
        let identity =
            crate::fleet::uplink::Identity::load(&db.lock(), cfg.uplink_policy, clock.now())?;
        let (events, _) = broadcast::channel(4096);
        Ok(Controller {
            inner: Arc::new(Inner {
                cfg,
                db,
                clock,
                store,
                key_store,
                keys: RwLock::new(KeyState {
                    keys,
                    key_list,
                    version,
                }),
                events,
                metrics: Arc::new(Metrics::default()),
                outbound: RwLock::new(Outbound::None),
                capture_sink: RwLock::new(None),
                identity,
                validations: Arc::new(tokio::sync::Semaphore::new(1)),
            }),
        })
    }

    /// Now, from the injected clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Resolves once the injected clock may have reached `deadline` (see
    /// [`crate::clock::Clock::sleep_until`]).
    pub(crate) fn sleep_until(
        &self,
        deadline: Timestamp,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.inner.clock.sleep_until(deadline)
    }

    /// The fleet served.
    pub fn fleet(&self) -> &FleetId {
        &self.inner.cfg.fleet
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.inner.cfg.data_dir
    }

    /// The database, so other modules can run their own queries (their
    /// tables come from `crate::db::MIGRATIONS`).
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Subscribes to device events. Slow receivers lag (and are told so by
    /// `RecvError::Lagged`); they never block the controller.
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceEvent> {
        self.inner.events.subscribe()
    }

    pub(crate) fn emit(&self, e: DeviceEvent) {
        let _ = self.inner.events.send(e);
    }

    /// Sends every capture upload to `sink` from now on.
    pub fn set_capture_sink(&self, sink: CaptureSink) {
        *lock_write(&self.inner.capture_sink) = Some(sink);
    }

    /// Hands a device's capture upload to the sink, if one is set; returns
    /// whether it was taken.
    pub fn handle_capture(
        &self,
        device: &DeviceId,
        upload: &drover_protocol::messages::CaptureUpload,
    ) -> bool {
        let sink = lock_read(&self.inner.capture_sink).clone();
        match sink {
            Some(f) => {
                f(device, upload);
                true
            }
            None => false,
        }
    }

    pub(crate) fn set_outbound_mqtt(&self, client: rumqttc::AsyncClient) {
        *lock_write(&self.inner.outbound) = Outbound::Mqtt(client);
    }

    /// Routes every outgoing publish into the returned channel as (topic,
    /// payload) instead of MQTT. A test seam, compiled only into unit tests:
    /// integration tests and the simulator use a real broker.
    #[cfg(test)]
    pub(crate) fn capture_outbound(
        &self,
    ) -> tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *lock_write(&self.inner.outbound) = Outbound::Capture(tx);
        rx
    }

    /// Publishes a [`Down`] message to `device` (QoS 1, on `down` or `chunk`).
    pub async fn publish_down(&self, device: &DeviceId, msg: &Down) -> Result<(), ControllerError> {
        let payload = codec::encode_down(msg)?;
        let topic = Topic::new(self.fleet(), device, codec::down_channel(msg)).to_string();
        let client = match &*lock_read(&self.inner.outbound) {
            Outbound::None => return Err(ControllerError::NotConnected),
            #[cfg(test)]
            Outbound::Capture(tx) => {
                return tx
                    .send((topic, payload))
                    .map_err(|_| ControllerError::NotConnected);
            }
            Outbound::Mqtt(c) => c.clone(),
        };
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| ControllerError::Publish(e.to_string()))
    }

    // ---- keys ----

    /// Public keys and the key list version.
    pub fn keys_info(&self) -> KeysInfo {
        let k = lock_read(&self.inner.keys);
        let expires = k
            .key_list
            .decode_unverified()
            .map(|l| l.expires_at.0)
            .unwrap_or_default();
        KeysInfo {
            root_public_key: k.keys.root_public.to_hex(),
            models_public_key: k.keys.models.public_key().to_hex(),
            commands_public_key: k.keys.commands.public_key().to_hex(),
            agents_public_key: k.keys.agents.public_key().to_hex(),
            key_list_version: k.version,
            key_list_expires_at: expires,
        }
    }

    /// `keys init` against a running controller: keys always exist by then,
    /// so this reports them (created = false).
    pub fn keys_init(&self) -> Result<KeyInit, ControllerError> {
        Ok(self.inner.key_store.init()?)
    }

    /// The current root-signed key list and its version.
    pub fn key_list(&self) -> (u64, Signed<KeyList>) {
        let k = lock_read(&self.inner.keys);
        (k.version, k.key_list.clone())
    }

    pub(crate) fn models_signer(&self) -> Arc<drover_protocol::Ed25519Signer> {
        lock_read(&self.inner.keys).keys.models.clone()
    }

    pub(crate) fn commands_signer(&self) -> Arc<drover_protocol::Ed25519Signer> {
        lock_read(&self.inner.keys).keys.commands.clone()
    }

    pub(crate) fn agents_signer(&self) -> Arc<drover_protocol::Ed25519Signer> {
        lock_read(&self.inner.keys).keys.agents.clone()
    }

    // ---- registry ----

    /// Where the reference CSV of `name@version` is kept, if it was pushed with one.
    pub fn reference_csv_path(&self, name: &ModelName, version: Version) -> PathBuf {
        self.data_dir()
            .join("references")
            .join(format!("{name}@{version}.csv"))
    }

    /// Where streamed uploads are written before they are validated
    /// (`DATA_DIR/uploads`, on the same file system as the artifacts).
    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir().join("uploads")
    }

    /// Pushes a new model version (tract inspection, profile, signing,
    /// storage); runs on the blocking pool, one validation at a time. A
    /// request with [`PushRequest::onnx_file`] is read from that file, which
    /// is moved into the artifact store on success.
    pub async fn push_model(&self, req: PushRequest) -> Result<StoredModel, ControllerError> {
        // Held by the blocking task itself: it runs on even if the caller
        // goes away.
        let slot = self
            .inner
            .validations
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ControllerError::Task(e.to_string()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || -> Result<StoredModel, ControllerError> {
            let _slot = slot;
            let now = this.now();
            let template = registry::build_manifest(&req, now)?;
            let signer = this.models_signer();
            let alias = req.alias.as_deref();
            let stored = match &req.onnx_file {
                Some(f) => {
                    this.inner
                        .store
                        .insert_file(template, &f.path, signer.as_ref(), alias, now)?
                }
                None => {
                    this.inner
                        .store
                        .insert(template, &req.onnx, signer.as_ref(), alias, now)?
                }
            };
            tracing::info!(model = %stored.manifest.model_ref(), sha256 = %stored.manifest.artifact.sha256, "model pushed");
            // Keep the reference data next to the artifact: retraining tops
            // up small captured datasets from it.
            if let Some(csv) = &req.reference_csv {
                let path = this.reference_csv_path(&stored.manifest.name, stored.manifest.version);
                if let Err(e) = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&path, csv))
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot keep the reference CSV");
                }
            }
            Ok(stored)
        })
        .await
        .map_err(|e| ControllerError::Task(e.to_string()))?
    }

    /// One stored version.
    pub async fn model(
        &self,
        name: &ModelName,
        version: Version,
    ) -> Result<Option<StoredModel>, ControllerError> {
        let this = self.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || Ok(this.inner.store.get(&name, version)?))
            .await
            .map_err(|e| ControllerError::Task(e.to_string()))?
    }

    /// One version by number or alias.
    pub async fn resolve_model(
        &self,
        name: &ModelName,
        version_or_alias: &str,
    ) -> Result<StoredModel, ControllerError> {
        let this = self.clone();
        let name = name.clone();
        let v = version_or_alias.to_string();
        tokio::task::spawn_blocking(move || {
            let version = this.inner.store.resolve(&name, &v)?;
            this.inner
                .store
                .get(&name, version)?
                .ok_or_else(|| ControllerError::NotFound(format!("model {name}@{v}")))
        })
        .await
        .map_err(|e| ControllerError::Task(e.to_string()))?
    }

    /// The signed manifest of a version (what deploy commands carry).
    pub async fn manifest(
        &self,
        name: &ModelName,
        version: Version,
    ) -> Result<Signed<ModelManifest>, ControllerError> {
        self.model(name, version)
            .await?
            .map(|m| m.signed)
            .ok_or_else(|| ControllerError::NotFound(format!("model {name}@{version}")))
    }

    /// The manifest as shown by `drover model show`.
    pub fn manifest_view(stored: &StoredModel) -> ManifestView {
        ManifestView::new(
            &stored.manifest,
            stored.signed.key_id.to_string(),
            stored.aliases.clone(),
        )
    }

    /// Every version of every model.
    pub async fn models(&self) -> Result<Vec<ModelSummary>, ControllerError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || Ok(this.inner.store.list()?))
            .await
            .map_err(|e| ControllerError::Task(e.to_string()))?
    }

    /// Moves `alias` of `name` to `version`.
    pub async fn set_alias(
        &self,
        name: &ModelName,
        alias: &str,
        version: Version,
    ) -> Result<(), ControllerError> {
        let this = self.clone();
        let (name, alias) = (name.clone(), alias.to_string());
        tokio::task::spawn_blocking(move || {
            let now = this.now();
            Ok(this.inner.store.set_alias(&name, &alias, version, now)?)
        })
        .await
        .map_err(|e| ControllerError::Task(e.to_string()))?
    }

    /// Reads an artifact's bytes.
    pub async fn artifact(&self, sha: drover_protocol::Sha256) -> Result<Vec<u8>, ControllerError> {
        tokio::fs::read(self.inner.store.artifact_path(&sha))
            .await
            .map_err(|_| ControllerError::NotFound(format!("artifact {sha}")))
    }

    // ---- devices ----

    /// Registered devices matching `selector` (on their registry labels), by
    /// id. Devices only seen on the broker are never selected: see
    /// [`Controller::unregistered_devices`].
    pub async fn devices(&self, selector: &Selector) -> Result<Vec<DeviceInfo>, ControllerError> {
        let all = self.inner.db.call(|c| devices::load_all(c)).await?;
        Ok(all
            .into_iter()
            .filter(|d| d.registered && selector.matches(&d.labels))
            .collect())
    }

    /// Replaces the registry labels of a registered device (what selectors,
    /// rollouts and cohorts match on; agents cannot change them).
    pub async fn set_device_labels(
        &self,
        id: &DeviceId,
        labels: BTreeMap<String, String>,
    ) -> Result<DeviceInfo, ControllerError> {
        let id_s = id.to_string();
        let json =
            serde_json::to_string(&labels).map_err(|e| ControllerError::Task(e.to_string()))?;
        let found = self
            .inner
            .db
            .call(move |c| {
                let n = c.execute(
                    "UPDATE devices SET reg_labels = ?2 WHERE id = ?1 AND registered = 1",
                    params![id_s, json],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                devices::load_one(c, &id_s)
            })
            .await?;
        found.ok_or_else(|| ControllerError::UnknownDevice(id.to_string()))
    }

    /// One device.
    pub async fn device(&self, id: &DeviceId) -> Result<Option<DeviceInfo>, ControllerError> {
        let id = id.to_string();
        Ok(self
            .inner
            .db
            .call(move |c| devices::load_one(c, &id))
            .await?)
    }

    /// Registers a device: generated credentials (username = device id;
    /// only the password's `$7$` hash is stored), labels, and the agent
    /// config bundle. A device already registered is a conflict.
    pub async fn register_device(
        &self,
        id: &DeviceId,
        labels: BTreeMap<String, String>,
    ) -> Result<DeviceBundle, ControllerError> {
        self.enroll_device(id, labels, false).await
    }

    /// [`Controller::register_device`], with a client certificate (CN =
    /// device id, from the fleet CA) in the bundle when `client_cert`.
    pub async fn enroll_device(
        &self,
        id: &DeviceId,
        labels: BTreeMap<String, String>,
        client_cert: bool,
    ) -> Result<DeviceBundle, ControllerError> {
        if id.as_str() == self.inner.cfg.controller_username {
            return Err(ControllerError::Invalid(format!(
                "device id {id:?} is the controller's MQTT username"
            )));
        }
        let password =
            devices::generate_password().map_err(|e| ControllerError::Task(e.to_string()))?;
        let hash = {
            let (pw, iterations) = (password.clone(), self.inner.cfg.device_kdf_iterations);
            tokio::task::spawn_blocking(move || devices::mosquitto_hash(&pw, iterations))
                .await
                .map_err(|e| ControllerError::Task(e.to_string()))?
                .map_err(|e| ControllerError::Task(e.to_string()))?
        };
        let mut tls = devices::BundleTls {
            ca_pem: self.inner.cfg.broker_ca_pem.clone(),
            ..Default::default()
        };
        if client_cert {
            let (dir, cn) = (self.inner.cfg.data_dir.clone(), id.to_string());
            let issued = tokio::task::spawn_blocking(move || {
                crate::fleet::fleet_ca::FleetCa::open_or_create(&dir)?.client_cert(&cn)
            })
            .await
            .map_err(|e| ControllerError::Task(e.to_string()))?
            .map_err(|e| ControllerError::Task(e.to_string()))?;
            tls.client_cert_pem = Some(issued.cert_pem);
            tls.client_key_pem = Some(issued.key_pem);
        }
        // The device key: its private half goes only into the bundle (shown
        // once, like the password); the controller keeps the public half.
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ControllerError::Task(e.to_string()))?;
        let device_public = drover_protocol::Ed25519Signer::from_seed(seed).public_key();
        let mut bundle = devices::bundle(
            id,
            self.fleet(),
            &self.inner.cfg.broker_url,
            password,
            self.keys_info().root_public_key,
            labels.clone(),
            tls,
        )
        .map_err(|e| ControllerError::Task(e.to_string()))?;
        devices::add_device_key(&mut bundle, &hex::encode(seed))
            .map_err(|e| ControllerError::Task(e.to_string()))?;
        let key_hex = device_public.to_hex();
        let now = self.now();
        let id_s = id.to_string();
        let labels_json = serde_json::to_string(&labels).unwrap_or_else(|_| "{}".into());
        self.inner
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                // A device registered before device keys existed may be
                // enrolled again to get one.
                let registered: Option<(i64, Option<String>)> = tx
                    .query_row(
                        "SELECT registered, device_key FROM devices WHERE id = ?1",
                        params![id_s],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if matches!(registered, Some((1, Some(_)))) {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO devices (id, registered, password_hash, reg_labels, device_key,
                        uplink_counter, clock_offset_us, created_at)
                     VALUES (?1, 1, ?2, ?3, ?4, 0, 0, ?5)
                     ON CONFLICT (id) DO UPDATE SET registered = 1, password_hash = excluded.password_hash,
                        reg_labels = excluded.reg_labels, device_key = excluded.device_key,
                        uplink_counter = 0, clock_offset_us = 0",
                    params![id_s, hash, labels_json, key_hex, now.0 as i64],
                )?;
                tx.commit()?;
                Ok(true)
            })
            .await?
            .then(|| {
                self.set_device_key(id, device_public);
                bundle
            })
            .ok_or_else(|| ControllerError::Conflict(format!("device {id} is already registered")))
    }

    /// The Mosquitto password file and ACL for registered devices.
    pub async fn broker_acl(&self) -> Result<BrokerAcl, ControllerError> {
        let rows: Vec<(String, String)> = self
            .inner
            .db
            .call(|c| {
                let mut stmt = c.prepare(
                    "SELECT id, password_hash FROM devices WHERE registered = 1 AND password_hash IS NOT NULL ORDER BY id",
                )?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        let controller_hash = match &self.inner.cfg.controller_password {
            Some(p) => {
                let (pw, iterations) = (p.clone(), self.inner.cfg.device_kdf_iterations);
                let hash =
                    tokio::task::spawn_blocking(move || devices::mosquitto_hash(&pw, iterations))
                        .await
                        .map_err(|e| ControllerError::Task(e.to_string()))?
                        .map_err(|e| ControllerError::Task(e.to_string()))?;
                Some(hash)
            }
            None => None,
        };
        Ok(devices::broker_acl(
            self.fleet(),
            &rows,
            &self.inner.cfg.controller_username,
            controller_hash.as_deref(),
        ))
    }

    /// Counts devices online (for `/metrics`).
    pub async fn devices_online(&self) -> Result<(u64, u64), ControllerError> {
        Ok(self
            .inner
            .db
            .call(|c| {
                let (online, total): (i64, i64) = c.query_row(
                    "SELECT COALESCE(SUM(online), 0), COUNT(*) FROM devices",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Ok((online as u64, total as u64))
            })
            .await?)
    }

    // ---- telemetry ----

    /// Merged telemetry for a filter (see [`crate::telemetry::query`]).
    pub async fn telemetry_summary(
        &self,
        filter: TelemetryFilter,
    ) -> Result<TelemetrySummary, ControllerError> {
        let summary = self
            .inner
            .db
            .call(move |c| crate::telemetry::summary::summarize(c, &filter))
            .await?;
        for _ in 0..summary.merged.undecodable_windows {
            self.inner.metrics.malformed("stored_window");
        }
        Ok(summary)
    }

    /// The Prometheus text for `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let (online, total) = self.devices_online().await.unwrap_or_default();
        self.inner.metrics.render(&[
            (
                "drover_devices_online",
                "Devices whose status is online.",
                online,
            ),
            ("drover_devices_known", "Devices in the inventory.", total),
            (
                "drover_key_list_version",
                "Current key list version.",
                self.keys_info().key_list_version,
            ),
        ])
    }
}
