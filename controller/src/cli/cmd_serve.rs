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
    /// `embedded` (rumqttd on --mqtt-listen) or mqtt://HOST:PORT.
    #[arg(long, default_value = "embedded")]
    pub broker: String,
    /// Where the embedded broker listens.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: String,
    /// Fleet name (topic prefix drover/FLEET/...).
    #[arg(long, default_value = crate::serve::DEFAULT_FLEET)]
    pub fleet: String,
    /// MQTT username (external broker).
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT password (external broker).
    #[arg(long, env = "DROVER_MQTT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Global cap on artifact chunk traffic, bytes per second.
    #[arg(long, default_value_t = crate::fleet::artifacts::DEFAULT_RATE_BYTES_PER_SEC)]
    pub chunk_rate: u64,
    /// Days of telemetry to keep.
    #[arg(long, default_value_t = 7)]
    pub retention_days: u64,
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
    c.broker = broker;
    c.fleet = fleet;
    c.username = a.username.clone();
    c.password = a.password.clone();
    c.chunk_rate_bytes_per_sec = a.chunk_rate;
    c.telemetry_retention_days = a.retention_days;
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
