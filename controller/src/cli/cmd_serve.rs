//! `drover serve`: flags → [`crate::serve::ServeConfig`], run until
//! SIGINT/SIGTERM, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use drover_protocol::FleetId;

use crate::fleet::broker::BrokerChoice;
use crate::serve::ServeConfig;

/// `drover serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// State directory (database, keys, artifacts).
    #[arg(long, env = "DROVER_DATA_DIR", default_value = "drover-data")]
    pub data_dir: PathBuf,
    /// HTTP API address (port 0 picks a free one; see the `http listening on` log line).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// `embedded` (rumqttd behind Drover's gate on --mqtt-listen),
    /// mqtt://HOST:PORT or mqtts://HOST:PORT (with --broker-ca).
    #[arg(long, default_value = "embedded")]
    pub broker: String,
    /// Where the embedded broker listens (plaintext MQTT; devices must give
    /// the credentials `drover device add` issued). A non-loopback address
    /// needs --insecure-mqtt.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: String,
    /// Let the embedded broker listen in plaintext on a non-loopback
    /// --mqtt-listen address (device passwords cross the network in clear).
    #[arg(long)]
    pub insecure_mqtt: bool,
    /// The embedded broker speaks TLS (mqtts://) with a certificate from the
    /// fleet CA (DATA_DIR/fleet-ca/ca.pem, which device bundles pin).
    #[arg(long)]
    pub mqtt_tls: bool,
    /// Extra DNS name or IP for the embedded broker's certificate (repeat).
    #[arg(long = "mqtt-tls-name")]
    pub mqtt_tls_names: Vec<String>,
    /// PEM CA of an mqtts:// --broker (also written into device bundles).
    #[arg(long)]
    pub broker_ca: Option<PathBuf>,
    /// PEM client certificate for an mqtts:// --broker that requires one.
    #[arg(long, requires = "broker_key")]
    pub broker_cert: Option<PathBuf>,
    /// PEM private key of --broker-cert.
    #[arg(long, requires = "broker_cert")]
    pub broker_key: Option<PathBuf>,
    /// Fleet name (topic prefix drover/FLEET/...).
    #[arg(long, default_value = crate::serve::DEFAULT_FLEET)]
    pub fleet: String,
    /// MQTT username (external broker).
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT password (external broker). Prefer DROVER_MQTT_PASSWORD or
    /// --password-file: a flag is visible to other users in `ps`.
    #[arg(long, env = "DROVER_MQTT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// File holding the MQTT password (external broker; first line).
    #[arg(long, env = "DROVER_MQTT_PASSWORD_FILE", conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    /// PBKDF2-SHA512 iterations for new device password hashes (the `$7$`
    /// hashes Mosquitto also verifies, on every connect: see README
    /// "Security" for the connect-storm trade-off).
    #[arg(long, default_value_t = crate::fleet::credentials::DEFAULT_KDF_ITERATIONS)]
    pub device_kdf_iterations: u32,
    /// Global cap on artifact chunk traffic, bytes per second.
    #[arg(long, default_value_t = crate::fleet::artifacts::DEFAULT_RATE_BYTES_PER_SEC)]
    pub chunk_rate: u64,
    /// Days of raw per-device telemetry windows to keep.
    #[arg(long, default_value_t = 7)]
    pub retention_days: u64,
    /// Days of per-minute telemetry rollups (by model, version and cohort)
    /// to keep; fleet-level queries read these.
    #[arg(long, default_value_t = 90)]
    pub rollup_retention_days: u64,
    /// With an external broker: read device uplinks through the shared
    /// subscription `$share/GROUP/drover/FLEET/d/+/up`, so each uplink
    /// reaches one controller of the group (Mosquitto 2, EMQX).
    #[arg(long, value_name = "GROUP")]
    pub mqtt_shared_group: Option<String>,
    /// Largest model upload, MiB (streamed to disk; a JSON push is capped
    /// at 16 MiB whatever this says).
    #[arg(long, default_value_t = crate::http::MAX_UPLOAD_BYTES / MIB)]
    pub max_upload_mib: u64,
    /// MiB of model uploads in flight at once; an upload that does not fit
    /// is refused with 503 and Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub upload_budget_mib: u64,
    /// Controller config file with `[retrain.<model>]` policies (default:
    /// DATA_DIR/controller.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// PEM certificate chain: serve the API over HTTPS (needs --tls-key).
    /// Required when --http is not a loopback address.
    #[arg(long, env = "DROVER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "DROVER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

const MIB: u64 = 1024 * 1024;

fn config(a: &ServeArgs) -> Result<ServeConfig, String> {
    let http: SocketAddr = a
        .http
        .parse()
        .map_err(|_| format!("--http {:?} is not an IP:PORT address", a.http))?;
    let listen: SocketAddr = a.mqtt_listen.parse().map_err(|_| {
        format!(
            "--mqtt-listen {:?} is not an IP:PORT address",
            a.mqtt_listen
        )
    })?;
    let broker = BrokerChoice::parse(&a.broker, listen).map_err(|e| e.to_string())?;
    let fleet = FleetId::new(&a.fleet).map_err(|e| format!("--fleet: {e}"))?;
    let mut c = ServeConfig::new(a.data_dir.clone());
    c.http = http;
    c.max_upload_bytes = a.max_upload_mib.saturating_mul(MIB);
    c.upload_budget_bytes = a.upload_budget_mib.saturating_mul(MIB);
    if c.upload_budget_bytes < c.max_upload_bytes {
        return Err(format!(
            "--upload-budget-mib {} is below --max-upload-mib {}: the largest upload could never start",
            a.upload_budget_mib, a.max_upload_mib
        ));
    }
    c.broker = broker;
    c.fleet = fleet;
    c.username = a.username.clone();
    c.password = match &a.password_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("--password-file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        None => a.password.clone(),
    };
    c.insecure_mqtt = a.insecure_mqtt;
    c.mqtt_tls = a.mqtt_tls;
    c.mqtt_tls_names = a.mqtt_tls_names.clone();
    c.broker_ca = a.broker_ca.clone();
    c.broker_cert = a.broker_cert.clone().zip(a.broker_key.clone());
    c.device_kdf_iterations = a.device_kdf_iterations;
    c.chunk_rate_bytes_per_sec = a.chunk_rate;
    c.telemetry_retention_days = a.retention_days;
    c.rollup_retention_days = a.rollup_retention_days;
    c.mqtt_shared_group = a.mqtt_shared_group.clone();
    c.retrain_config = a.config.clone();
    c.tls_cert = a.tls_cert.clone();
    c.tls_key = a.tls_key.clone();
    Ok(c)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `drover serve`; returns the process exit code.
pub(crate) fn main(args: ServeArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match crate::serve::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(e.exit_code());
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    #[test]
    fn defaults_hash_at_the_current_cost_and_read_password_files() {
        let t = T::try_parse_from(["t"]).unwrap();
        let c = config(&t.a).unwrap();
        assert_eq!(c.device_kdf_iterations, 600_000);
        assert!(!c.insecure_mqtt && !c.mqtt_tls);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let t = T::try_parse_from(["t", "--password-file", f.to_str().unwrap()]).unwrap();
        assert_eq!(config(&t.a).unwrap().password.as_deref(), Some("s3cret"));
        assert!(T::try_parse_from(["t", "--password", "x", "--password-file", "y"]).is_err());
    }
}
