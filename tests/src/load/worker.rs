//! One worker: a few thousand emulated devices in one process (the
//! per-process open-file limit is what caps it), started at a bounded
//! connect rate, with their counters reported as [`WorkerStats`] every
//! interval. Stopping drains: no new windows, every sent window waits for
//! its acknowledgement (bounded by the drain timeout), then each device says
//! Offline and disconnects.
//!
//! As a child process (`drover-sim load-worker`) it reads its devices from
//! a bundle file (one JSON [`Bundle`] a line), writes one JSON
//! [`WorkerStats`] a line on stdout, and stops when its stdin closes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use drover_protocol::{DeviceId, Ed25519Signer, FleetId, ModelRef, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::device::{self, Identity};
use super::shared::{Counters, DeviceSettings, Phase, Shared};
use super::template::Templates;

/// What one device needs from its registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Device id.
    pub device_id: String,
    /// Fleet.
    pub fleet: String,
    /// Broker URL from the registration.
    pub broker: String,
    /// MQTT username.
    pub username: String,
    /// MQTT password.
    pub password: String,
    /// Root public key (hex).
    pub root_key: String,
    /// Device signing key (hex seed).
    pub device_key: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl From<drover_controller::fleet::devices::DeviceBundle> for Bundle {
    fn from(b: drover_controller::fleet::devices::DeviceBundle) -> Bundle {
        Bundle {
            device_id: b.device_id,
            fleet: b.fleet,
            broker: b.broker,
            username: b.username,
            password: b.password,
            root_key: b.root_key,
            device_key: b.device_key,
            labels: b.labels,
        }
    }
}

impl Bundle {
    fn identity(&self) -> anyhow::Result<Identity> {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(self.device_key.trim(), &mut seed)
            .with_context(|| format!("{}: device key is not a hex seed", self.device_id))?;
        Ok(Identity {
            fleet: FleetId::new(&self.fleet)?,
            device: DeviceId::new(&self.device_id)?,
            username: self.username.clone(),
            password: self.password.clone(),
            root: PublicKey::from_hex(&self.root_key)
                .with_context(|| format!("{}: root key", self.device_id))?,
            key: Ed25519Signer::from_seed(seed),
            labels: self.labels.clone(),
        })
    }
}

/// A snapshot of one worker (or, summed, of all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Devices this worker holds.
    pub devices: u64,
    /// Devices started so far.
    pub started: u64,
    /// See [`Counters`].
    pub connected: u64,
    /// See [`Counters`].
    pub connects: u64,
    /// See [`Counters`].
    pub disconnects: u64,
    /// See [`Counters`].
    pub connect_errors: u64,
    /// See [`Counters`].
    pub windows_created: u64,
    /// See [`Counters`].
    pub windows_resent: u64,
    /// See [`Counters`].
    pub windows_acked: u64,
    /// See [`Counters`].
    pub windows_evicted: u64,
    /// See [`Counters`].
    pub commands_accepted: u64,
    /// See [`Counters`].
    pub commands_refused: u64,
    /// See [`Counters`].
    pub deploys_done: u64,
    /// See [`Counters`].
    pub deploys_failed: u64,
    /// See [`Counters`].
    pub rollbacks: u64,
    /// See [`Counters`].
    pub chunks_received: u64,
    /// See [`Counters`].
    pub stray_chunks: u64,
    /// See [`Counters`].
    pub acks_refused: u64,
    /// See [`Counters`].
    pub dropped: u64,
    /// See [`Counters`].
    pub errors: u64,
    /// Resident memory of the worker's process, KiB (summed over processes).
    pub rss_kib: u64,
    /// The worker has stopped (final snapshot).
    pub done: bool,
}

impl WorkerStats {
    /// Windows sent and neither acknowledged nor evicted.
    pub fn unacked(&self) -> u64 {
        self.windows_created
            .saturating_sub(self.windows_acked)
            .saturating_sub(self.windows_evicted)
    }

    /// Adds `o` into `self` (`done` when both are).
    pub fn add(&mut self, o: &WorkerStats) {
        self.devices += o.devices;
        self.started += o.started;
        self.connected += o.connected;
        self.connects += o.connects;
        self.disconnects += o.disconnects;
        self.connect_errors += o.connect_errors;
        self.windows_created += o.windows_created;
        self.windows_resent += o.windows_resent;
        self.windows_acked += o.windows_acked;
        self.windows_evicted += o.windows_evicted;
        self.commands_accepted += o.commands_accepted;
        self.commands_refused += o.commands_refused;
        self.deploys_done += o.deploys_done;
        self.deploys_failed += o.deploys_failed;
        self.rollbacks += o.rollbacks;
        self.chunks_received += o.chunks_received;
        self.stray_chunks += o.stray_chunks;
        self.acks_refused += o.acks_refused;
        self.dropped += o.dropped;
        self.errors += o.errors;
        self.rss_kib += o.rss_kib;
        self.done = self.done && o.done;
    }
}

/// Resident set size of this process, KiB (0 where /proc is missing).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A worker's settings: the `load-worker` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Devices to emulate: one JSON bundle a line.
    #[arg(long)]
    pub bundles: PathBuf,
    /// Broker URL (`mqtt://HOST:PORT`); default: each bundle's own.
    #[arg(long)]
    pub broker: Option<String>,
    /// Telemetry window, milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub window_ms: u64,
    /// An unacknowledged window is sent again after this, milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub ack_timeout_ms: u64,
    /// New connections per second.
    #[arg(long, default_value_t = 200)]
    pub connect_rate: u32,
    /// Statistics line interval, milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub stats_ms: u64,
    /// Longest wait for outstanding acknowledgements when stopping, ms.
    #[arg(long, default_value_t = 30_000)]
    pub drain_ms: u64,
    /// Model named by the windows of a device that serves none.
    #[arg(long, default_value = "load-idle@1")]
    pub idle_model: String,
}

impl WorkerArgs {
    /// The arguments after `load-worker`, for spawning a child.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--bundles".to_string(),
            self.bundles.display().to_string(),
            format!("--window-ms={}", self.window_ms),
            format!("--ack-timeout-ms={}", self.ack_timeout_ms),
            format!("--connect-rate={}", self.connect_rate),
            format!("--stats-ms={}", self.stats_ms),
            format!("--drain-ms={}", self.drain_ms),
            format!("--idle-model={}", self.idle_model),
        ];
        if let Some(b) = &self.broker {
            a.push(format!("--broker={b}"));
        }
        a
    }
}

fn parse_broker(url: &str) -> anyhow::Result<(String, u16)> {
    if url.starts_with("mqtts://") {
        bail!("{url}: the load generator speaks plain MQTT only (no TLS yet)");
    }
    let rest = url.strip_prefix("mqtt://").unwrap_or(url);
    let (host, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("{url}: broker URL needs a port"))?;
    let port = port
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("{url}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

fn snapshot(shared: &Shared, devices: u64, started: u64, done: bool) -> WorkerStats {
    let c = &shared.counters;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    WorkerStats {
        devices,
        started,
        connected: g(&c.connected),
        connects: g(&c.connects),
        disconnects: g(&c.disconnects),
        connect_errors: g(&c.connect_errors),
        windows_created: g(&c.windows_created),
        windows_resent: g(&c.windows_resent),
        windows_acked: g(&c.windows_acked),
        windows_evicted: g(&c.windows_evicted),
        commands_accepted: g(&c.commands_accepted),
        commands_refused: g(&c.commands_refused),
        deploys_done: g(&c.deploys_done),
        deploys_failed: g(&c.deploys_failed),
        rollbacks: g(&c.rollbacks),
        chunks_received: g(&c.chunks_received),
        stray_chunks: g(&c.stray_chunks),
        acks_refused: g(&c.acks_refused),
        dropped: g(&c.dropped),
        errors: g(&c.errors),
        rss_kib: rss_kib(),
        done,
    }
}

/// Runs `bundles` as emulated devices until `stop` turns true (or its
/// sender is dropped), then drains and closes. `sink` gets a snapshot every
/// `stats_ms` and the final one, which is also returned.
pub async fn run(
    args: &WorkerArgs,
    bundles: Vec<Bundle>,
    mut stop: watch::Receiver<bool>,
    mut sink: impl FnMut(&WorkerStats),
) -> anyhow::Result<WorkerStats> {
    let broker = match (&args.broker, bundles.first()) {
        (Some(b), _) => b.clone(),
        (None, Some(b)) => b.broker.clone(),
        (None, None) => "mqtt://127.0.0.1:1883".to_string(),
    };
    let (host, port) = parse_broker(&broker)?;
    let idle_model: ModelRef = args
        .idle_model
        .parse()
        .map_err(|e| anyhow::anyhow!("--idle-model {}: {e}", args.idle_model))?;
    let ids = bundles
        .iter()
        .map(Bundle::identity)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let devices = ids.len() as u64;
    let shared = Arc::new(Shared {
        cfg: DeviceSettings {
            host,
            port,
            window_ms: args.window_ms,
            ack_timeout: Duration::from_millis(args.ack_timeout_ms.max(100)),
            idle_model,
        },
        counters: Counters::default(),
        templates: Templates::new(args.window_ms),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let mut set = JoinSet::new();
    let mut ids = ids.into_iter();
    let per_tick = (args.connect_rate as usize / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut stats = tokio::time::interval(Duration::from_millis(args.stats_ms.max(100)));
    let mut started = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick(), if ids.len() > 0 => {
                for id in ids.by_ref().take(per_tick) {
                    set.spawn(device::run(id, shared.clone(), phase_rx.clone()));
                    started += 1;
                }
            }
            _ = stats.tick() => sink(&snapshot(&shared, devices, started, false)),
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    let _ = phase_tx.send(Phase::Drain);
    let deadline = Instant::now() + Duration::from_millis(args.drain_ms);
    loop {
        tokio::select! {
            _ = stats.tick() => sink(&snapshot(&shared, devices, started, false)),
            joined = set.join_next() => if joined.is_none() { break },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = phase_tx.send(Phase::Close);
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    if closed.is_err() {
        set.abort_all();
    }
    let last = snapshot(&shared, devices, started, true);
    sink(&last);
    Ok(last)
}

/// `drover-sim load-worker`: devices from the bundle file, statistics as
/// JSON lines on stdout, stop when stdin closes.
pub async fn main(args: WorkerArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.bundles)
        .with_context(|| format!("reading {}", args.bundles.display()))?;
    let bundles = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Bundle>, _>>()
        .context("parsing the bundle file")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // tokio's stdin needs a feature the workspace leaves off: a plain
    // thread waits for EOF.
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let _ = stop_tx.send(true);
    });
    run(&args, bundles, stop_rx, |s| {
        if let Ok(line) = serde_json::to_string(s) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".to_string(), 1883)
        );
        assert_eq!(
            parse_broker("localhost:9").unwrap(),
            ("localhost".to_string(), 9)
        );
        assert!(parse_broker("mqtts://h:8883").is_err());
        assert!(parse_broker("mqtt://h").is_err());
    }

    #[test]
    fn stats_add_up() {
        let mut a = WorkerStats {
            windows_created: 10,
            windows_acked: 7,
            done: true,
            ..Default::default()
        };
        a.add(&WorkerStats {
            windows_created: 5,
            windows_acked: 5,
            windows_evicted: 0,
            done: false,
            ..Default::default()
        });
        assert_eq!(a.unacked(), 3);
        assert!(!a.done);
    }
}
