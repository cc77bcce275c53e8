//! `drover serve` as a library: [`ServeConfig`] → [`start`] →
//! [`RunningController`]. Startup runs in phases — check config, open
//! state, bind ports, spawn tasks — and [`RunningController::shutdown`]
//! drains with a grace timeout. `main` and in-process tests call the same.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_protocol::FleetId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::clock::{SharedClock, SystemClock};
use crate::controller::{Controller, ControllerConfig, ControllerError};
use crate::fleet::artifacts::{self, ChunkConfig};
use crate::fleet::broker::{self, BrokerChoice, BrokerError, InternalCredential};
use crate::fleet::gate::{self, GateCounters};
use crate::fleet::link::{self, LinkSettings};
use crate::rollouts::RolloutService;

/// Everything `drover serve` takes.
#[derive(Clone)]
pub struct ServeConfig {
    /// State directory (`drover.db`, `keys/`, `artifacts/`).
    pub data_dir: PathBuf,
    /// HTTP API address (`127.0.0.1:0` picks a free port).
    pub http: SocketAddr,
    /// Embedded broker or an external one.
    pub broker: BrokerChoice,
    /// Fleet served (second topic segment).
    pub fleet: FleetId,
    /// MQTT username for an external broker.
    pub username: Option<String>,
    /// MQTT password for an external broker.
    pub password: Option<String>,
    /// Global cap on artifact chunk bytes per second.
    pub chunk_rate_bytes_per_sec: u64,
    /// Memory for hot artifacts.
    pub artifact_cache_bytes: usize,
    /// Telemetry windows older than this many days are pruned.
    pub telemetry_retention_days: u64,
    /// Days of per-minute telemetry rollups to keep (they are small).
    pub rollup_retention_days: u64,
    /// Read device uplinks through the shared subscription
    /// `$share/GROUP/…` (an external broker with shared subscriptions,
    /// e.g. Mosquitto 2 or EMQX), so controllers of one group each get a
    /// share of the uplinks instead of all of them.
    pub mqtt_shared_group: Option<String>,
    /// How long shutdown waits for tasks to drain.
    pub shutdown_grace: Duration,
    /// How long startup waits for the MQTT subscription.
    pub mqtt_ready_timeout: Duration,
    /// Time source.
    pub clock: SharedClock,
    /// Controller config file (`[retrain.<model>]` policies); default
    /// `DATA_DIR/controller.toml` when it exists.
    pub retrain_config: Option<PathBuf>,
    /// PEM certificate chain for HTTPS on the API (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS on the API (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// Header-read and TLS handshake timeouts of the API server.
    pub http_limits: crate::http::server::ServerLimits,
    /// Largest model upload, bytes.
    pub max_upload_bytes: u64,
    /// Bytes of model uploads in flight at once; more is refused with 503.
    pub upload_budget_bytes: u64,
    /// An upload sending nothing for this long is cut off.
    pub upload_idle_timeout: Duration,
    /// Replay window, clock skew and per-device rate limit of uplinks.
    pub uplink_policy: crate::core::uplink::UplinkPolicy,
    /// Allow the embedded broker to listen in plaintext on a non-loopback
    /// address (`--insecure-mqtt`): device passwords then cross the network
    /// in clear text.
    pub insecure_mqtt: bool,
    /// PBKDF2-SHA512 iterations for device password hashes.
    pub device_kdf_iterations: u32,
    /// The embedded broker's gate drops a client that has not sent its
    /// CONNECT within this.
    pub mqtt_connect_timeout: Duration,
    /// The embedded broker speaks TLS (`mqtts://`) with a server certificate
    /// from the fleet CA (`--mqtt-tls`).
    pub mqtt_tls: bool,
    /// Extra DNS names or IPs for that certificate (localhost, 127.0.0.1,
    /// ::1 and the listen address are always in it).
    pub mqtt_tls_names: Vec<String>,
    /// PEM CA of an external `mqtts://` broker (also put into device bundles).
    pub broker_ca: Option<PathBuf>,
    /// PEM client certificate + key for an external broker that requires one.
    pub broker_cert: Option<(PathBuf, PathBuf)>,
    /// How long a signed command stays valid (its `expires_at`); one hour.
    pub command_validity: Duration,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("data_dir", &self.data_dir)
            .field("http", &self.http)
            .field("broker", &self.broker)
            .field("fleet", &self.fleet)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The default fleet name.
pub const DEFAULT_FLEET: &str = "default";

impl ServeConfig {
    /// Defaults: HTTP on 127.0.0.1:8080, embedded broker on 127.0.0.1:1883,
    /// fleet `default`, 50 MB/s chunk cap, 7 days of telemetry.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            data_dir: data_dir.into(),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            broker: BrokerChoice::Embedded {
                listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            },
            fleet: FleetId::new(DEFAULT_FLEET).unwrap_or_else(|_| unreachable_fleet()),
            username: None,
            password: None,
            chunk_rate_bytes_per_sec: artifacts::DEFAULT_RATE_BYTES_PER_SEC,
            artifact_cache_bytes: 256 * 1024 * 1024,
            telemetry_retention_days: 7,
            rollup_retention_days: 90,
            mqtt_shared_group: None,
            shutdown_grace: Duration::from_secs(5),
            mqtt_ready_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            retrain_config: None,
            tls_cert: None,
            tls_key: None,
            http_limits: crate::http::server::ServerLimits::default(),
            max_upload_bytes: crate::http::MAX_UPLOAD_BYTES,
            upload_budget_bytes: 1024 * 1024 * 1024,
            upload_idle_timeout: crate::http::limits::UPLOAD_IDLE_TIMEOUT,
            uplink_policy: Default::default(),
            insecure_mqtt: false,
            device_kdf_iterations: crate::fleet::credentials::DEFAULT_KDF_ITERATIONS,
            mqtt_connect_timeout: Duration::from_secs(10),
            mqtt_tls: false,
            mqtt_tls_names: Vec::new(),
            broker_ca: None,
            broker_cert: None,
            command_validity: Duration::from_secs(3600),
        }
    }

    /// For tests and simulations: free ports everywhere (HTTP and embedded
    /// broker on 127.0.0.1:0) and a cheap device password KDF
    /// ([`crate::fleet::credentials::SIMULATION_KDF_ITERATIONS`]): they
    /// enroll hundreds of devices at once on one machine.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> ServeConfig {
        let mut c = ServeConfig::new(data_dir);
        c.device_kdf_iterations = crate::fleet::credentials::SIMULATION_KDF_ITERATIONS;
        c.http = SocketAddr::from(([127, 0, 0, 1], 0));
        c.broker = BrokerChoice::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        c
    }
}

#[allow(clippy::panic)]
fn unreachable_fleet() -> FleetId {
    // DEFAULT_FLEET is a valid literal; this cannot run.
    panic!("invalid default fleet")
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration (exit code 64).
    #[error("configuration: {0}")]
    Config(String),
    /// Embedded broker problem (port taken, did not start).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The HTTP port is taken.
    #[error("cannot listen for HTTP on {addr}: {source}; pick another with --http 127.0.0.1:PORT")]
    Http {
        /// Address.
        addr: SocketAddr,
        /// Bind error.
        source: std::io::Error,
    },
    /// Opening state failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The MQTT link did not come up.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// A service on top of the controller (rollouts) failed to start.
    #[error("starting {what}: {detail}")]
    Service {
        /// Which service.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

impl ServeError {
    /// Process exit code: 64 (EX_USAGE) for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) | ServeError::Broker(BrokerError::BadUrl(_)) => 64,
            _ => 1,
        }
    }
}

/// A running controller.
pub struct RunningController {
    http_addr: SocketAddr,
    mqtt_url: String,
    fleet: FleetId,
    controller: Controller,
    rollouts: RolloutService,
    retrain: crate::retraining::RetrainRunner,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
    tls: bool,
    admin_token: Option<String>,
    gate: Option<Arc<GateCounters>>,
    internal_mqtt: Option<SocketAddr>,
}

impl std::fmt::Debug for RunningController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningController")
            .field("http_addr", &self.http_addr)
            .field("mqtt_url", &self.mqtt_url)
            .field("fleet", &self.fleet)
            .finish()
    }
}

impl RunningController {
    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    /// `http://ADDR` (or `https://` with TLS), for clients.
    pub fn http_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }
    /// The admin API token: the one created at this start, or the one the
    /// first start wrote to `DATA_DIR/admin.token` (None once that file is
    /// deleted). The simulator and tests call the API with it.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }
    /// What the embedded broker's gate accepted and refused (None with an
    /// external broker).
    pub fn gate_counters(&self) -> Option<Arc<GateCounters>> {
        self.gate.clone()
    }
    /// The embedded rumqttd's internal loopback address, behind the gate
    /// (it accepts only the controller's random internal credential). For
    /// tests that check it cannot be used to bypass the gate.
    pub fn internal_mqtt_addr(&self) -> Option<SocketAddr> {
        self.internal_mqtt
    }
    /// Broker URL agents should use (`mqtt://HOST:PORT`).
    pub fn mqtt_addr(&self) -> &str {
        &self.mqtt_url
    }
    /// The fleet served.
    pub fn fleet(&self) -> &FleetId {
        &self.fleet
    }
    /// The controller handle.
    pub fn handle(&self) -> Controller {
        self.controller.clone()
    }
    /// The retraining runner (drift policies, jobs).
    pub fn retrain(&self) -> crate::retraining::RetrainRunner {
        self.retrain.clone()
    }
    /// The rollout service (staged rollouts over this controller).
    pub fn rollouts(&self) -> RolloutService {
        self.rollouts.clone()
    }
    /// Stops everything at once, without draining: what `kill -9` leaves
    /// behind is what SQLite committed. For crash tests and simulations.
    pub fn kill(self) {
        self.rollouts.stop();
        for t in self.tasks {
            t.abort();
        }
        tracing::info!("controller killed");
    }

    /// Stops accepting work, lets tasks drain (ingest stores what it has
    /// queued) for up to the grace period, then aborts what is left.
    pub async fn shutdown(self) {
        self.rollouts.stop();
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
        tracing::info!("controller stopped");
    }
}

/// Starts the controller: state, broker, MQTT link, ingest, chunk server,
/// HTTP API. Returns once the MQTT subscription is in place (embedded
/// broker) and the HTTP port is bound.
pub async fn start(cfg: ServeConfig) -> Result<RunningController, ServeError> {
    // Phase 1: configuration (nothing bound yet).
    if cfg.username.is_some() != cfg.password.is_some() {
        return Err(ServeError::Config(
            "--username and --password go together".into(),
        ));
    }
    if cfg.chunk_rate_bytes_per_sec == 0 {
        return Err(ServeError::Config("the chunk rate must be positive".into()));
    }
    if let Some(g) = &cfg.mqtt_shared_group {
        link::check_group(g).map_err(|e| ServeError::Config(e.to_string()))?;
        if matches!(cfg.broker, BrokerChoice::Embedded { .. }) {
            return Err(ServeError::Config(
                "--mqtt-shared-group needs an external broker with shared subscriptions                  (--broker mqtt://HOST:PORT: Mosquitto 2, EMQX); the embedded broker serves                  one controller"
                    .into(),
            ));
        }
    }
    if let BrokerChoice::Embedded { listen } = &cfg.broker
        && !listen.ip().is_loopback()
        && !cfg.mqtt_tls
    {
        if !cfg.insecure_mqtt {
            return Err(ServeError::Config(format!(
                "--mqtt-listen {listen} is reachable from other machines, and the embedded \
                 broker speaks plaintext MQTT: device passwords would cross the network in \
                 clear text. Add --mqtt-tls (TLS with a certificate from the fleet CA), listen \
                 on 127.0.0.1, or accept the risk with --insecure-mqtt"
            )));
        }
        tracing::warn!(%listen, "--insecure-mqtt: device passwords cross the network in clear text");
    }
    let broker_tls = match &cfg.broker {
        BrokerChoice::External { tls: true, .. } => {
            let Some(ca) = &cfg.broker_ca else {
                return Err(ServeError::Config(
                    "an mqtts:// broker needs --broker-ca FILE (the CA that signed its \
                     certificate)"
                        .into(),
                ));
            };
            let cert = cfg
                .broker_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            Some(crate::fleet::mqtt_tls::client(ca, cert).map_err(ServeError::Config)?)
        }
        _ => None,
    };
    if cfg.device_kdf_iterations == 0 {
        return Err(ServeError::Config(
            "the device password KDF needs at least one iteration".into(),
        ));
    }

    if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
        return Err(ServeError::Config(
            "--tls-cert and --tls-key go together".into(),
        ));
    }
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            Some(crate::http::server::tls_acceptor(cert, key).map_err(ServeError::Config)?)
        }
        _ => None,
    };
    if tls.is_none() && !cfg.http.ip().is_loopback() {
        return Err(ServeError::Config(format!(
            "--http {} is reachable from other machines, and without TLS the API tokens \
             (and device credentials in responses) would cross the network in clear text. \
             Give --tls-cert FILE --tls-key FILE (PEM), or listen on 127.0.0.1 and put a \
             TLS-terminating proxy in front",
            cfg.http
        )));
    }

    // Phase 2: open state. The data directory holds the signing keys, the
    // token hashes and device credentials: owner only.
    crate::auth::perms::private_dir(&cfg.data_dir)
        .map_err(|e| ServeError::Config(format!("data dir {}: {e}", cfg.data_dir.display())))?;
    let (tokens, first_admin) = crate::auth::TokenStore::open(&cfg.data_dir)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let admin_token = match &first_admin {
        Some(t) => {
            let file = cfg.data_dir.join(crate::auth::ADMIN_TOKEN_FILE);
            tracing::warn!(file = %file.display(), "first start: created the admin API token; \
                 `drover login --token-file` with it, then keep it somewhere safe and delete the file");
            Some(t.token.clone())
        }
        None => std::fs::read_to_string(cfg.data_dir.join(crate::auth::ADMIN_TOKEN_FILE))
            .ok()
            .map(|s| s.trim().to_string()),
    };
    // The fleet CA: created on the first start; signs the embedded broker's
    // TLS certificate and devices' client certificates.
    let fleet_ca = crate::fleet::fleet_ca::FleetCa::open_or_create(&cfg.data_dir)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let mut ccfg = ControllerConfig::new(cfg.data_dir.clone(), cfg.fleet.clone());
    if let Some(u) = &cfg.username {
        ccfg.controller_username = u.clone();
    }
    ccfg.controller_password = cfg.password.clone();
    ccfg.uplink_policy = cfg.uplink_policy;
    ccfg.device_kdf_iterations = cfg.device_kdf_iterations;
    ccfg.command_validity_ms = u64::try_from(cfg.command_validity.as_millis()).unwrap_or(u64::MAX);

    // Phase 3: bind.
    let http = tokio::net::TcpListener::bind(cfg.http)
        .await
        .map_err(|source| ServeError::Http {
            addr: cfg.http,
            source,
        })?;
    let http_addr = http.local_addr().map_err(|source| ServeError::Http {
        addr: cfg.http,
        source,
    })?;
    let mut embedded = None;
    let (host, port, mqtt_url, credentials) = match &cfg.broker {
        BrokerChoice::Embedded { listen } => {
            let internal =
                InternalCredential::generate().map_err(|e| ServeError::Mqtt(e.to_string()))?;
            let internal_addr = broker::reserve(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let cred = internal.clone();
            tokio::task::spawn_blocking(move || broker::start_embedded(internal_addr, &cred))
                .await
                .map_err(|e| ServeError::Mqtt(e.to_string()))??;
            let public = tokio::net::TcpListener::bind(*listen)
                .await
                .map_err(|source| BrokerError::PortInUse {
                    addr: *listen,
                    source,
                })?;
            let addr = public
                .local_addr()
                .map_err(|source| BrokerError::PortInUse {
                    addr: *listen,
                    source,
                })?;
            let tls = if cfg.mqtt_tls {
                let mut names: Vec<String> =
                    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
                if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
                    names.push(addr.ip().to_string());
                }
                names.extend(cfg.mqtt_tls_names.iter().cloned());
                let issued = fleet_ca
                    .server_cert(&names)
                    .map_err(|e| ServeError::Config(e.to_string()))?;
                ccfg.broker_ca_pem = Some(fleet_ca.cert_pem().to_string());
                Some(crate::fleet::mqtt_tls::server(&issued).map_err(ServeError::Config)?)
            } else {
                None
            };
            let scheme = if tls.is_some() { "mqtts" } else { "mqtt" };
            tracing::info!(%addr, scheme, "embedded MQTT broker (3.1.1) listening; devices need their credentials");
            let creds = (internal.username.clone(), internal.password.clone());
            embedded = Some((public, internal_addr, internal, tls));
            (
                internal_addr.ip().to_string(),
                internal_addr.port(),
                format!("{scheme}://{addr}"),
                Some(creds),
            )
        }
        BrokerChoice::External { host, port, tls } => {
            if *tls && let Some(ca) = &cfg.broker_ca {
                ccfg.broker_ca_pem = Some(std::fs::read_to_string(ca).map_err(|e| {
                    ServeError::Config(format!("--broker-ca {}: {e}", ca.display()))
                })?);
            }
            let scheme = if *tls { "mqtts" } else { "mqtt" };
            (
                host.clone(),
                *port,
                format!("{scheme}://{host}:{port}"),
                cfg.username.clone().zip(cfg.password.clone()),
            )
        }
    };
    ccfg.broker_url = mqtt_url.clone();
    let clock = cfg.clock.clone();
    let controller = tokio::task::spawn_blocking(move || Controller::open(ccfg, clock))
        .await
        .map_err(|e| ServeError::Mqtt(e.to_string()))??;
    crate::auth::perms::harden(&cfg.data_dir)
        .map_err(|e| ServeError::Config(format!("data dir {}: {e}", cfg.data_dir.display())))?;
    crate::http::upload::clear_stale(&controller.uploads_dir());

    // Phase 4: spawn.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut nonce = [0u8; 4];
    let _ = getrandom::fill(&mut nonce);
    let settings = LinkSettings {
        host,
        port,
        client_id: format!("drover-controller-{}-{}", cfg.fleet, hex::encode(nonce)),
        credentials,
        tls: if embedded.is_some() { None } else { broker_tls },
    };
    let (client, eventloop) = link::client(&settings);
    controller.set_outbound_mqtt(client.clone());
    let (inbound_tx, inbound_rx) = mpsc::channel(8192);
    let (ingest_tx, ingest_rx) = mpsc::channel(4096);
    let (chunk_tx, chunk_rx) = mpsc::channel(8192);
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let mut gate_counters = None;
    let mut internal_mqtt = None;
    let mut tasks = Vec::new();
    if let Some((public, internal_addr, internal, tls)) = embedded {
        let counters = Arc::new(GateCounters::default());
        controller.metrics().set_gate(counters.clone());
        let gate_cfg = gate::GateConfig {
            fleet: cfg.fleet.clone(),
            upstream: internal_addr,
            internal: (internal.username, internal.password),
            max_packet: link::MAX_INCOMING_PACKET,
            connect_timeout: cfg.mqtt_connect_timeout,
            kdf_iterations: cfg.device_kdf_iterations,
            tls,
        };
        tasks.push(tokio::spawn(gate::run(
            public,
            gate_cfg,
            controller.db().clone(),
            counters.clone(),
            shutdown_rx.clone(),
        )));
        gate_counters = Some(counters);
        internal_mqtt = Some(internal_addr);
    }
    tasks.extend([
        tokio::spawn(link::poll_loop(
            eventloop,
            client,
            link::LinkTopics {
                fleet: cfg.fleet.clone(),
                shared_group: cfg.mqtt_shared_group.clone(),
            },
            inbound_tx,
            ready_tx,
            controller.metrics(),
            shutdown_rx.clone(),
        )),
        tokio::spawn(link::dispatcher(
            controller.clone(),
            inbound_rx,
            ingest_tx,
            chunk_tx,
            shutdown_rx.clone(),
        )),
        tokio::spawn(crate::telemetry::ingest::run(
            controller.clone(),
            ingest_rx,
            shutdown_rx.clone(),
        )),
        tokio::spawn(artifacts::run(
            controller.clone(),
            chunk_rx,
            ChunkConfig::with_rate(cfg.chunk_rate_bytes_per_sec),
            cfg.artifact_cache_bytes,
            shutdown_rx.clone(),
        )),
        tokio::spawn(crate::telemetry::ingest::retention(
            controller.clone(),
            cfg.telemetry_retention_days,
            cfg.rollup_retention_days,
            shutdown_rx.clone(),
        )),
    ]);
    // Rollouts resume from their persisted state before the API opens.
    let rollouts = match RolloutService::start(controller.clone()).await {
        Ok(r) => r,
        Err(e) => {
            let _ = shutdown_tx.send(true);
            return Err(ServeError::Service {
                what: "rollouts",
                detail: e.to_string(),
            });
        }
    };
    // Retraining: policies resume from their persisted state.
    let retrain_config = match crate::retraining::RetrainConfig::load_default(
        cfg.retrain_config.as_deref(),
        &cfg.data_dir,
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = shutdown_tx.send(true);
            return Err(ServeError::Config(e.to_string()));
        }
    };
    let retrain = match crate::retraining::RetrainRunner::open(
        crate::retraining::ports::ControllerPorts::new(controller.clone(), rollouts.clone())
            .ports(),
        controller.db().clone(),
        cfg.data_dir.clone(),
        retrain_config,
        cfg.clock.clone(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            let _ = shutdown_tx.send(true);
            return Err(ServeError::Service {
                what: "retraining",
                detail: e.to_string(),
            });
        }
    };
    {
        let sink = retrain.clone();
        controller.set_capture_sink(std::sync::Arc::new(move |device, upload| {
            sink.handle_capture(device, upload);
        }));
    }
    let mut retrain_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(retrain.clone().run(async move {
        let _ = retrain_shutdown.changed().await;
    })));
    let dashboard = crate::dashboard::Dashboard::new(
        controller.clone(),
        rollouts.clone(),
        retrain.clone(),
        tokens.clone(),
        tls.is_some(),
        shutdown_rx.clone(),
    );
    let router = crate::http::router(controller.clone())
        .merge(crate::http::rollouts::routes(rollouts.clone()))
        .merge(crate::http::agents::routes(controller.clone()))
        .merge(crate::http::retrain::routes(retrain.clone()))
        .merge(crate::auth::routes::routes(tokens.clone()))
        .layer(axum::middleware::from_fn_with_state(
            crate::http::limits::UploadLimits::new(cfg.max_upload_bytes, cfg.upload_budget_bytes)
                .with_idle_timeout(cfg.upload_idle_timeout),
            crate::http::limits::admit,
        ))
        .layer(axum::middleware::map_response(
            crate::http::errors::json_error_shape,
        ))
        // Outermost: nothing (not even the upload checks) runs for an
        // unauthenticated caller.
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            crate::auth::layer::require,
        ))
        // The dashboard checks its session cookie against the same route table.
        .merge(dashboard.routes());
    let scheme = if tls.is_some() { "https" } else { "http" };
    tasks.push(tokio::spawn(crate::http::server::serve(
        http,
        router,
        tls.clone(),
        cfg.http_limits,
        shutdown_rx.clone(),
    )));
    tracing::info!("http listening on {scheme}://{http_addr}");

    let ready = tokio::time::timeout(cfg.mqtt_ready_timeout, ready_rx.wait_for(|r| *r)).await;
    let running = RunningController {
        http_addr,
        mqtt_url,
        fleet: cfg.fleet.clone(),
        controller,
        rollouts,
        retrain,
        shutdown: shutdown_tx,
        tasks,
        grace: cfg.shutdown_grace,
        tls: tls.is_some(),
        admin_token,
        gate: gate_counters,
        internal_mqtt,
    };
    match (ready, &cfg.broker) {
        (Ok(Ok(_)), _) => {
            tracing::info!(broker = %running.mqtt_url, fleet = %running.fleet, "subscribed to device topics");
        }
        (_, BrokerChoice::Embedded { .. }) => {
            let url = running.mqtt_url.clone();
            running.shutdown().await;
            return Err(ServeError::Mqtt(format!(
                "could not subscribe on the embedded broker {url}"
            )));
        }
        (_, BrokerChoice::External { .. }) => {
            tracing::warn!(broker = %running.mqtt_url, "broker not reachable yet; retrying in the background");
        }
    }
    Ok(running)
}
