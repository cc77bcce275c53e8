//! Agent configuration: the TOML file `drover-agent init` writes, its
//! validation, and `DROVER_AGENT_<KEY>` environment overrides applied through
//! an injectable lookup (tests never touch the process environment).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use drover_protocol::codec::MAX_CHUNK_DATA;
use drover_protocol::{DeviceId, FleetId, PublicKey};

use crate::core::deploy::{DeployConfig, Limits};
use crate::core::guard::GuardConfig;
use crate::core::outbox::OutboxConfig;
use crate::core::window::RecorderConfig;

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys or wrong types.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A key has a value the agent cannot use.
    #[error("invalid value for `{key}`: {detail}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn invalid(key: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        detail: detail.into(),
    }
}

mod hex_key {
    use drover_protocol::PublicKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(k: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&k.to_hex())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::from_hex(&s).map_err(|_| {
            serde::de::Error::custom("root_key must be 64 hex characters of an ed25519 public key")
        })
    }
}

/// Everything the agent needs to run. Every key but the first five has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This device's id: `[a-z0-9_-]`, at most 64 bytes; the MQTT topics use it.
    pub device_id: DeviceId,
    /// The fleet this device belongs to.
    pub fleet: FleetId,
    /// MQTT broker, `mqtt://HOST[:PORT]` (port 1883 by default) or
    /// `mqtts://HOST[:PORT]` (TLS, port 8883 by default; needs `ca_file`).
    pub broker: String,
    /// The pinned root public key (64 hex characters) that signs key lists.
    #[serde(with = "hex_key")]
    pub root_key: PublicKey,
    /// Directory for the database, model files and downloads.
    pub data_dir: PathBuf,
    /// MQTT username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// MQTT password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// This device's ed25519 signing key (64 hex characters of its seed),
    /// written by `drover device add`. Every `up` message is signed with it;
    /// the controller refuses unsigned uplinks from registered devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (mqtts://),
    /// pinned: no system roots. Relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for brokers that require one (with
    /// `client_key_file`). Relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Operator labels (region, site, ...) reported in Hello.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Hardware class label reported in Hello.
    #[serde(default = "defaults::hardware")]
    pub hardware: String,
    /// Loopback address of the HTTP inference API; absent = no HTTP API.
    /// Port 0 picks a free port (see `Agent::api_addr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<SocketAddr>,
    /// Ceiling on an HTTP request body, bytes. `/v1/infer` sizes its limit
    /// from the active model's inputs (`drover_agent::input_limit`) up to
    /// this; other routes take at most 64 KiB (or this, if smaller).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Telemetry window length, ms.
    #[serde(default = "defaults::telemetry_window_ms")]
    pub telemetry_window_ms: u64,
    /// Windows kept in the outbox at most; the oldest are evicted (and counted).
    #[serde(default = "defaults::outbox_capacity")]
    pub outbox_capacity: usize,
    /// Windows published and not yet acknowledged, at most.
    #[serde(default = "defaults::outbox_max_in_flight")]
    pub outbox_max_in_flight: usize,
    /// An unacknowledged window is published again after this long, ms.
    #[serde(default = "defaults::outbox_retransmit_ms")]
    pub outbox_retransmit_ms: u64,
    /// Bytes asked for per chunk request.
    #[serde(default = "defaults::chunk_size")]
    pub chunk_size: u32,
    /// Chunk requests outstanding at most.
    #[serde(default = "defaults::chunk_window")]
    pub chunk_window: usize,
    /// A chunk request unanswered this long is sent again, ms.
    #[serde(default = "defaults::chunk_timeout_ms")]
    pub chunk_timeout_ms: u64,
    /// A download that gets no byte for this long while online fails, ms.
    #[serde(default = "defaults::download_stall_ms")]
    pub download_stall_ms: u64,
    /// Largest model artifact accepted, bytes.
    #[serde(default = "defaults::max_model_bytes")]
    pub max_model_bytes: u64,
    /// Largest agent binary (`drover agent` release) accepted, bytes.
    #[serde(default = "defaults::max_agent_bytes")]
    pub max_agent_bytes: u64,
    /// Model files (active, previous, shadow and a download) may use at most
    /// this much disk, bytes.
    #[serde(default = "defaults::disk_budget_bytes")]
    pub disk_budget_bytes: u64,
    /// Local guard: error rate above which a new model is rolled back.
    #[serde(default = "defaults::guard_max_error_rate")]
    pub guard_max_error_rate: f64,
    /// Local guard: inferences a window needs before it is judged.
    #[serde(default = "defaults::guard_min_samples")]
    pub guard_min_samples: u64,
    /// Local guard: windows to wait for enough traffic before giving up.
    #[serde(default = "defaults::guard_max_windows")]
    pub guard_max_windows: u32,
    /// Shadow queue length; inputs beyond it are dropped and counted.
    #[serde(default = "defaults::shadow_queue")]
    pub shadow_queue: usize,
    /// Input rows kept per model for Capture commands.
    #[serde(default = "defaults::capture_capacity")]
    pub capture_capacity: usize,
    /// Share of inputs kept for capture, per mille.
    #[serde(default = "defaults::capture_per_mille")]
    pub capture_per_mille: u16,
    /// Recent request ids remembered per model for feedback.
    #[serde(default = "defaults::feedback_capacity")]
    pub feedback_capacity: usize,
    /// Feedback for a request older than this is refused, ms.
    #[serde(default = "defaults::feedback_ttl_ms")]
    pub feedback_ttl_ms: u64,
    /// MQTT keep-alive, seconds.
    #[serde(default = "defaults::keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// First reconnect delay, ms (doubles per failure, with jitter).
    #[serde(default = "defaults::reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, ms.
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Simulation only: added to every measured inference latency without
    /// sleeping (the fleet simulator's "slow device" fault). 0 in production.
    #[serde(default)]
    pub simulated_extra_latency_us: u64,
}

mod defaults {
    pub(super) fn hardware() -> String {
        "generic".into()
    }
    pub(super) fn max_body_bytes() -> usize {
        64 << 20
    }
    pub(super) fn telemetry_window_ms() -> u64 {
        10_000
    }
    pub(super) fn outbox_capacity() -> usize {
        10_000
    }
    pub(super) fn outbox_max_in_flight() -> usize {
        32
    }
    pub(super) fn outbox_retransmit_ms() -> u64 {
        30_000
    }
    pub(super) fn chunk_size() -> u32 {
        64 * 1024
    }
    pub(super) fn chunk_window() -> usize {
        4
    }
    pub(super) fn chunk_timeout_ms() -> u64 {
        5_000
    }
    pub(super) fn download_stall_ms() -> u64 {
        300_000
    }
    pub(super) fn max_model_bytes() -> u64 {
        256 * 1024 * 1024
    }
    pub(super) fn max_agent_bytes() -> u64 {
        256 * 1024 * 1024
    }
    pub(super) fn disk_budget_bytes() -> u64 {
        1024 * 1024 * 1024
    }
    pub(super) fn guard_max_error_rate() -> f64 {
        0.05
    }
    pub(super) fn guard_min_samples() -> u64 {
        20
    }
    pub(super) fn guard_max_windows() -> u32 {
        30
    }
    pub(super) fn shadow_queue() -> usize {
        256
    }
    pub(super) fn capture_capacity() -> usize {
        1024
    }
    pub(super) fn capture_per_mille() -> u16 {
        1000
    }
    pub(super) fn feedback_capacity() -> usize {
        100_000
    }
    pub(super) fn feedback_ttl_ms() -> u64 {
        600_000
    }
    pub(super) fn keep_alive_secs() -> u64 {
        30
    }
    pub(super) fn reconnect_min_ms() -> u64 {
        200
    }
    pub(super) fn reconnect_max_ms() -> u64 {
        30_000
    }
}

/// How an environment value is parsed for a key.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Float,
    Labels,
}

/// Every key, how its env override parses, and its one-line doc for the
/// commented file `init` writes.
const KEYS: &[(&str, Kind, &str)] = &[
    (
        "device_id",
        Kind::Str,
        "This device's id ([a-z0-9_-], at most 64 bytes).",
    ),
    (
        "fleet",
        Kind::Str,
        "Fleet name; the second segment of every topic.",
    ),
    (
        "broker",
        Kind::Str,
        "MQTT broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS).",
    ),
    (
        "root_key",
        Kind::Str,
        "Pinned root public key (hex) that signs key lists.",
    ),
    (
        "data_dir",
        Kind::Str,
        "Database, model files and downloads live here.",
    ),
    ("username", Kind::Str, "MQTT username (optional)."),
    ("password", Kind::Str, "MQTT password (optional)."),
    (
        "device_key",
        Kind::Str,
        "Device signing key (hex seed) from `drover device add`.",
    ),
    (
        "ca_file",
        Kind::Str,
        "PEM CA pinned for an mqtts:// broker (relative: to this file).",
    ),
    (
        "client_cert_file",
        Kind::Str,
        "PEM client certificate, if the broker requires one.",
    ),
    ("client_key_file", Kind::Str, "PEM key of client_cert_file."),
    (
        "labels",
        Kind::Labels,
        "Operator labels reported in Hello (env: k=v,k2=v2).",
    ),
    (
        "hardware",
        Kind::Str,
        "Hardware class label reported in Hello.",
    ),
    (
        "api",
        Kind::Str,
        "Loopback HTTP API address; omit to disable, port 0 = any.",
    ),
    (
        "max_body_bytes",
        Kind::Int,
        "Ceiling on an HTTP request body, bytes; /v1/infer sizes its limit from the model's inputs up to this.",
    ),
    (
        "telemetry_window_ms",
        Kind::Int,
        "Telemetry window length, ms.",
    ),
    (
        "outbox_capacity",
        Kind::Int,
        "Windows kept at most; oldest evicted and counted.",
    ),
    (
        "outbox_max_in_flight",
        Kind::Int,
        "Windows published and not yet acknowledged, at most.",
    ),
    (
        "outbox_retransmit_ms",
        Kind::Int,
        "Unacknowledged windows are re-published after this long, ms.",
    ),
    ("chunk_size", Kind::Int, "Bytes per chunk request."),
    (
        "chunk_window",
        Kind::Int,
        "Chunk requests outstanding at most.",
    ),
    (
        "chunk_timeout_ms",
        Kind::Int,
        "Unanswered chunk requests are re-sent after this long, ms.",
    ),
    (
        "download_stall_ms",
        Kind::Int,
        "A download with no progress this long (online) fails, ms.",
    ),
    (
        "max_model_bytes",
        Kind::Int,
        "Largest model artifact accepted, bytes.",
    ),
    (
        "max_agent_bytes",
        Kind::Int,
        "Largest agent binary (self-update release) accepted, bytes.",
    ),
    (
        "disk_budget_bytes",
        Kind::Int,
        "Disk budget for model files, bytes.",
    ),
    (
        "guard_max_error_rate",
        Kind::Float,
        "Local guard: error rate that rolls a new model back.",
    ),
    (
        "guard_min_samples",
        Kind::Int,
        "Local guard: inferences a window needs to be judged.",
    ),
    (
        "guard_max_windows",
        Kind::Int,
        "Local guard: windows to wait for traffic before giving up.",
    ),
    (
        "shadow_queue",
        Kind::Int,
        "Shadow queue length; overflow is dropped and counted.",
    ),
    (
        "capture_capacity",
        Kind::Int,
        "Input rows kept per model for Capture commands.",
    ),
    (
        "capture_per_mille",
        Kind::Int,
        "Share of inputs kept for capture, per mille.",
    ),
    (
        "feedback_capacity",
        Kind::Int,
        "Recent request ids remembered per model for feedback.",
    ),
    (
        "feedback_ttl_ms",
        Kind::Int,
        "Feedback older than this is refused, ms.",
    ),
    ("keep_alive_secs", Kind::Int, "MQTT keep-alive, seconds."),
    (
        "reconnect_min_ms",
        Kind::Int,
        "First reconnect delay, ms (doubles, with jitter).",
    ),
    (
        "reconnect_max_ms",
        Kind::Int,
        "Longest reconnect delay, ms.",
    ),
    (
        "simulated_extra_latency_us",
        Kind::Int,
        "Simulation only: added to measured latency. Keep 0.",
    ),
];

/// A broker address parsed from `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`: TLS with the pinned `ca_file`.
    pub tls: bool,
}

/// Parses `mqtt://HOST[:PORT]` (also `tcp://`) or `mqtts://HOST[:PORT]`.
pub fn parse_broker(url: &str) -> Result<BrokerAddr, ConfigError> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true)
    } else {
        let r = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| {
                invalid(
                    "broker",
                    format!("{url:?} must start with mqtt:// or mqtts://"),
                )
            })?;
        (r, false)
    };
    let default_port = if tls { "8883" } else { "1883" };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(invalid(
            "broker",
            format!("{url:?} is not mqtt://HOST[:PORT]"),
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, default_port),
        Some((h, p)) => (h, p),
        None => (rest, default_port),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid("broker", format!("{url:?}: port must be 1-65535")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid("broker", format!("{url:?} has no host")));
    }
    Ok(BrokerAddr {
        host: host.to_string(),
        port,
        tls,
    })
}

impl AgentConfig {
    /// A config with every optional key at its default.
    pub fn new(
        device_id: DeviceId,
        fleet: FleetId,
        broker: impl Into<String>,
        root_key: PublicKey,
        data_dir: impl Into<PathBuf>,
    ) -> AgentConfig {
        AgentConfig {
            device_id,
            fleet,
            broker: broker.into(),
            root_key,
            data_dir: data_dir.into(),
            username: None,
            password: None,
            device_key: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            labels: BTreeMap::new(),
            hardware: defaults::hardware(),
            api: None,
            max_body_bytes: defaults::max_body_bytes(),
            telemetry_window_ms: defaults::telemetry_window_ms(),
            outbox_capacity: defaults::outbox_capacity(),
            outbox_max_in_flight: defaults::outbox_max_in_flight(),
            outbox_retransmit_ms: defaults::outbox_retransmit_ms(),
            chunk_size: defaults::chunk_size(),
            chunk_window: defaults::chunk_window(),
            chunk_timeout_ms: defaults::chunk_timeout_ms(),
            download_stall_ms: defaults::download_stall_ms(),
            max_model_bytes: defaults::max_model_bytes(),
            max_agent_bytes: defaults::max_agent_bytes(),
            disk_budget_bytes: defaults::disk_budget_bytes(),
            guard_max_error_rate: defaults::guard_max_error_rate(),
            guard_min_samples: defaults::guard_min_samples(),
            guard_max_windows: defaults::guard_max_windows(),
            shadow_queue: defaults::shadow_queue(),
            capture_capacity: defaults::capture_capacity(),
            capture_per_mille: defaults::capture_per_mille(),
            feedback_capacity: defaults::feedback_capacity(),
            feedback_ttl_ms: defaults::feedback_ttl_ms(),
            keep_alive_secs: defaults::keep_alive_secs(),
            reconnect_min_ms: defaults::reconnect_min_ms(),
            reconnect_max_ms: defaults::reconnect_max_ms(),
            simulated_extra_latency_us: 0,
        }
    }

    /// Parses and validates TOML.
    pub fn from_toml(text: &str) -> Result<AgentConfig, ConfigError> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Reads, parses and validates a config file. Relative TLS file paths
    /// are taken relative to the file's directory (a bundle is one directory).
    pub fn load(path: &std::path::Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Self::from_toml(&text)?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        for f in [
            &mut c.ca_file,
            &mut c.client_cert_file,
            &mut c.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        Ok(c)
    }

    /// Applies `DROVER_AGENT_<KEY>` overrides found by `lookup`, then
    /// re-validates. `lookup` is `|k| std::env::var(k).ok()` in `run`.
    pub fn apply_env(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let mut table =
            toml::Table::try_from(self).map_err(|e| ConfigError::Parse(e.to_string()))?;
        for (key, kind, _) in KEYS {
            let var = format!("DROVER_AGENT_{}", key.to_ascii_uppercase());
            let Some(raw) = lookup(&var) else { continue };
            let value =
                match kind {
                    Kind::Str => toml::Value::String(raw),
                    Kind::Int => toml::Value::Integer(raw.trim().parse().map_err(|_| {
                        ConfigError::Parse(format!("{var}={raw:?} is not an integer"))
                    })?),
                    Kind::Float => toml::Value::Float(raw.trim().parse().map_err(|_| {
                        ConfigError::Parse(format!("{var}={raw:?} is not a number"))
                    })?),
                    Kind::Labels => {
                        let mut t = toml::Table::new();
                        for (k, v) in parse_labels(&raw)? {
                            t.insert(k, toml::Value::String(v));
                        }
                        toml::Value::Table(t)
                    }
                };
            table.insert((*key).to_string(), value);
        }
        let c: AgentConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// The device signing key, if configured.
    pub fn device_signer(&self) -> Result<Option<drover_protocol::Ed25519Signer>, ConfigError> {
        let Some(hex_seed) = &self.device_key else {
            return Ok(None);
        };
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hex_seed.trim(), &mut seed)
            .map_err(|_| invalid("device_key", "must be 64 hex characters (an ed25519 seed)"))?;
        Ok(Some(drover_protocol::Ed25519Signer::from_seed(seed)))
    }

    /// Checks every value is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let broker = parse_broker(&self.broker)?;
        if broker.tls && self.ca_file.is_none() {
            return Err(invalid(
                "ca_file",
                "an mqtts:// broker needs ca_file (the fleet CA to pin)",
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(invalid(
                "client_cert_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if let Some(api) = self.api
            && !api.ip().is_loopback()
        {
            return Err(invalid(
                "api",
                format!(
                    "{api} is not a loopback address; the inference API serves local apps only"
                ),
            ));
        }
        drover_protocol::labels::check_labels(&self.labels)
            .map_err(|e| invalid("labels", e.to_string()))?;
        self.device_signer()?;
        let positive: [(&'static str, u64); 13] = [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("outbox_capacity", self.outbox_capacity as u64),
            ("outbox_max_in_flight", self.outbox_max_in_flight as u64),
            ("outbox_retransmit_ms", self.outbox_retransmit_ms),
            ("chunk_size", u64::from(self.chunk_size)),
            ("chunk_window", self.chunk_window as u64),
            ("chunk_timeout_ms", self.chunk_timeout_ms),
            ("download_stall_ms", self.download_stall_ms),
            ("max_model_bytes", self.max_model_bytes),
            ("max_agent_bytes", self.max_agent_bytes),
            ("shadow_queue", self.shadow_queue as u64),
            ("keep_alive_secs", self.keep_alive_secs),
            ("reconnect_min_ms", self.reconnect_min_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.chunk_size as usize > MAX_CHUNK_DATA {
            return Err(invalid(
                "chunk_size",
                format!("at most {MAX_CHUNK_DATA} (the protocol's chunk limit)"),
            ));
        }
        if !(50..=3_600_000).contains(&self.telemetry_window_ms) {
            return Err(invalid("telemetry_window_ms", "must be 50 ..= 3600000"));
        }
        if !(0.0..=1.0).contains(&self.guard_max_error_rate) {
            return Err(invalid("guard_max_error_rate", "must be within 0 ..= 1"));
        }
        if self.capture_per_mille > 1000 {
            return Err(invalid("capture_per_mille", "must be 0 ..= 1000"));
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(invalid("reconnect_max_ms", "must be >= reconnect_min_ms"));
        }
        if self.disk_budget_bytes < self.max_model_bytes {
            return Err(invalid(
                "disk_budget_bytes",
                "must be at least max_model_bytes",
            ));
        }
        Ok(())
    }

    /// The broker address.
    pub fn broker_addr(&self) -> Result<BrokerAddr, ConfigError> {
        parse_broker(&self.broker)
    }

    /// The config as TOML with a comment above every key (what `init` writes).
    pub fn to_commented_toml(&self) -> Result<String, ConfigError> {
        let table = toml::Table::try_from(self).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut out = String::from(
            "# drover-agent configuration.\n\
             # Every key can be overridden by the environment as DROVER_AGENT_<KEY>\n\
             # (for example DROVER_AGENT_BROKER=mqtt://10.0.0.1:1883).\n\n",
        );
        for (key, _, doc) in KEYS {
            out.push_str(&format!("# {doc}\n"));
            match table.get(*key) {
                Some(toml::Value::Table(t)) => {
                    let inline: Vec<String> = t
                        .iter()
                        .map(|(k, v)| format!("{} = {v}", toml_key(k)))
                        .collect();
                    out.push_str(&format!("{key} = {{ {} }}\n\n", inline.join(", ")));
                }
                Some(v) => out.push_str(&format!("{key} = {v}\n\n")),
                None => out.push_str(&format!("# {key} =\n\n")),
            }
        }
        Ok(out)
    }

    pub(crate) fn deploy(&self) -> DeployConfig {
        DeployConfig {
            chunk_size: self.chunk_size,
            window: self.chunk_window,
            request_timeout_ms: self.chunk_timeout_ms,
            progress_interval_ms: 1_000,
            stall_timeout_ms: self.download_stall_ms,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_model_bytes: self.max_model_bytes,
            disk_budget_bytes: self.disk_budget_bytes,
        }
    }

    pub(crate) fn guard(&self) -> GuardConfig {
        GuardConfig {
            max_error_rate: self.guard_max_error_rate,
            min_samples: self.guard_min_samples,
            max_windows: self.guard_max_windows,
        }
    }

    pub(crate) fn outbox(&self) -> OutboxConfig {
        OutboxConfig {
            capacity: self.outbox_capacity,
            max_in_flight: self.outbox_max_in_flight,
            retransmit_ms: self.outbox_retransmit_ms,
        }
    }

    pub(crate) fn recorder(&self) -> RecorderConfig {
        RecorderConfig {
            feedback_capacity: self.feedback_capacity,
            feedback_ttl_ms: self.feedback_ttl_ms,
            capture_capacity: self.capture_capacity,
            capture_per_mille: self.capture_per_mille,
        }
    }

    pub(crate) fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(5))
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// Parses `k=v,k2=v2` with the fleet-wide label rules
/// ([`drover_protocol::labels`]), so the controller can select what the
/// agent reports.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    drover_protocol::labels::parse_labels(s).map_err(|e| invalid("labels", e.to_string()))
}

#[cfg(test)]
mod tests;
