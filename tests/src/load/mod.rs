//! `drover-sim load`: emulated devices for scale runs (issue #15).
//!
//! An emulated device ([`device`]) speaks the real protocol — retained
//! Online status with the Offline last will, Hello, sealed uplinks, signed
//! commands checked by the agent's `TrustState`, deploys through the agent's
//! `DeployJob` core (artifact hashed in memory, no tract), telemetry windows
//! pre-encoded ([`template`]) and kept until their signed acknowledgement —
//! without tract or a SQLite file, so one process holds thousands. A
//! [`worker`] process holds up to [`MAX_PER_PROCESS`] of them (the open-file
//! limit is per process); this module registers the devices (concurrently,
//! with a bound), hands each worker its slice of bundles in a temp file,
//! spawns `drover-sim load-worker` children, prints progress and sums up.
#![allow(clippy::print_stdout)]

pub mod device;
pub mod shared;
pub mod template;
pub mod worker;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use drover_controller::controller::Controller;
use drover_controller::fleet::devices::DeviceBundle;
use drover_controller::serve::{self, ServeConfig};
use drover_controller::telemetry::query::TelemetryFilter;
use drover_protocol::DeviceId;
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, ChildStdin};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use worker::{Bundle, WorkerArgs, WorkerStats};

/// Devices one worker process holds at most by default (the open-file
/// limit here is 20,000 per process; each device is one socket).
pub const MAX_PER_PROCESS: usize = 4_000;

/// `drover-sim load` options.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Emulated devices.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Worker processes (default: enough for at most 4,000 devices each).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Telemetry window of each device, milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub window_ms: u64,
    /// How long to run once the workers are started, seconds.
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// API of an existing `drover serve` (default: a controller on the
    /// embedded defaults in this process).
    #[arg(long, requires = "token")]
    pub controller: Option<String>,
    /// Admin API token for `--controller`.
    #[arg(long)]
    pub token: Option<String>,
    /// Broker URL the devices use (default: what registration says).
    #[arg(long)]
    pub broker: Option<String>,
    /// Device id prefix (default: `load-` and four random hex digits).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 64)]
    pub register_concurrency: usize,
    /// New connections per second per worker (the embedded broker's gate
    /// admits ~150-200/s on this 2-core machine; faster, connects queue past
    /// the 10 s connect timeout and are retried).
    #[arg(long, default_value_t = 200)]
    pub connect_rate: u32,
    /// An unacknowledged window is sent again after this, milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub ack_timeout_ms: u64,
    /// Print the summary as JSON (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Where devices get registered.
#[derive(Clone)]
pub enum Registrar {
    /// A controller in this process.
    InProcess(Controller),
    /// `POST /v1/devices` on a controller's API with an admin token.
    Http {
        /// API base URL.
        url: String,
        /// Bearer token.
        token: String,
    },
}

fn labels_for(i: usize) -> Vec<(String, String)> {
    let region = ["eu", "us", "apac"][i % 3];
    vec![
        ("region".to_string(), region.to_string()),
        ("hardware".to_string(), "load".to_string()),
    ]
}

/// Registers `n` devices `{prefix}-{i}`, at most `concurrency` at once;
/// bundles in index order.
pub async fn register(
    reg: &Registrar,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Bundle>> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let http = reqwest::Client::new();
    let mut set = JoinSet::new();
    for i in 0..n {
        let (sem, reg, http) = (sem.clone(), reg.clone(), http.clone());
        let id = format!("{prefix}-{i}");
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let labels = labels_for(i);
            let bundle: DeviceBundle = match &reg {
                Registrar::InProcess(ctl) => ctl
                    .register_device(&DeviceId::new(&id)?, labels.into_iter().collect())
                    .await
                    .with_context(|| format!("registering {id}"))?,
                Registrar::Http { url, token } => {
                    let labels = labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    http.post(format!("{}/v1/devices", url.trim_end_matches('/')))
                        .bearer_auth(token)
                        .json(&serde_json::json!({ "id": id, "labels": labels }))
                        .send()
                        .await
                        .with_context(|| format!("POST /v1/devices {id}"))?
                        .error_for_status()
                        .with_context(|| format!("POST /v1/devices {id}"))?
                        .json()
                        .await
                        .with_context(|| format!("POST /v1/devices {id}: reading the bundle"))?
                }
            };
            anyhow::Ok((i, Bundle::from(bundle)))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, b)| b).collect())
}

/// How workers run.
#[derive(Debug, Clone)]
pub enum Spawn {
    /// `EXE load-worker ...` child processes.
    Exe(PathBuf),
    /// Tasks in this process, through the same worker code.
    InProcess,
}

enum Worker {
    Child {
        child: Box<Child>,
        stdin: Option<ChildStdin>,
        reader: JoinHandle<()>,
    },
    Task {
        stop: watch::Sender<bool>,
        task: JoinHandle<anyhow::Result<WorkerStats>>,
    },
}

/// Running workers.
pub struct LoadRun {
    workers: Vec<Worker>,
    latest: Arc<Mutex<Vec<WorkerStats>>>,
    _files: Vec<tempfile::NamedTempFile>,
}

impl LoadRun {
    /// Splits `bundles` over `procs` workers and starts them. `args.bundles`
    /// is replaced by each worker's own file.
    pub async fn start(
        bundles: Vec<Bundle>,
        procs: usize,
        args: &WorkerArgs,
        spawn: Spawn,
    ) -> anyhow::Result<LoadRun> {
        let procs = procs.clamp(1, bundles.len().max(1));
        let per = bundles.len().div_ceil(procs).max(1);
        let latest = Arc::new(Mutex::new(vec![WorkerStats::default(); procs]));
        let mut workers = Vec::new();
        let mut files = Vec::new();
        for (i, slice) in bundles.chunks(per).enumerate() {
            match &spawn {
                Spawn::Exe(exe) => {
                    let mut file = tempfile::NamedTempFile::new()?;
                    {
                        use std::io::Write as _;
                        let mut w = std::io::BufWriter::new(file.as_file_mut());
                        for b in slice {
                            serde_json::to_writer(&mut w, b)?;
                            w.write_all(b"\n")?;
                        }
                        w.flush()?;
                    }
                    let mut a = args.clone();
                    a.bundles = file.path().to_path_buf();
                    let mut child = tokio::process::Command::new(exe)
                        .arg("load-worker")
                        .args(a.to_args())
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::inherit())
                        .kill_on_drop(true)
                        .spawn()
                        .with_context(|| format!("spawning {}", exe.display()))?;
                    let stdout = child.stdout.take().context("worker stdout")?;
                    let stdin = child.stdin.take();
                    let latest = latest.clone();
                    let reader = tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stdout).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if let Ok(s) = serde_json::from_str::<WorkerStats>(&line)
                                && let Ok(mut l) = latest.lock()
                                && let Some(slot) = l.get_mut(i)
                            {
                                *slot = s;
                            }
                        }
                    });
                    files.push(file);
                    workers.push(Worker::Child {
                        child: Box::new(child),
                        stdin,
                        reader,
                    });
                }
                Spawn::InProcess => {
                    let (stop, stop_rx) = watch::channel(false);
                    let (a, slice, latest) = (args.clone(), slice.to_vec(), latest.clone());
                    let task = tokio::spawn(async move {
                        worker::run(&a, slice, stop_rx, |s| {
                            if let Ok(mut l) = latest.lock()
                                && let Some(slot) = l.get_mut(i)
                            {
                                *slot = s.clone();
                            }
                        })
                        .await
                    });
                    workers.push(Worker::Task { stop, task });
                }
            }
        }
        Ok(LoadRun {
            workers,
            latest,
            _files: files,
        })
    }

    /// Workers started.
    pub fn procs(&self) -> usize {
        self.workers.len()
    }

    /// The latest snapshot of every worker, summed.
    pub fn stats(&self) -> WorkerStats {
        let mut sum = WorkerStats {
            done: true,
            ..Default::default()
        };
        if let Ok(l) = self.latest.lock() {
            for s in l.iter() {
                sum.add(s);
            }
        }
        sum
    }

    /// Stops every worker (they drain: outstanding windows wait for their
    /// acknowledgement) and returns the final counts. A worker not done
    /// within `timeout` is killed; the sum then says `done: false`.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<WorkerStats> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut failures = Vec::new();
        for w in std::mem::take(&mut self.workers) {
            match w {
                Worker::Child {
                    mut child,
                    stdin,
                    reader,
                } => {
                    drop(stdin);
                    match tokio::time::timeout_at(deadline, child.wait()).await {
                        Ok(Ok(st)) if st.success() => {}
                        Ok(Ok(st)) => failures.push(format!("worker exited with {st}")),
                        Ok(Err(e)) => failures.push(format!("waiting for a worker: {e}")),
                        Err(_) => {
                            let _ = child.start_kill();
                            let _ = child.wait().await;
                            failures.push("a worker did not stop in time".to_string());
                        }
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
                }
                Worker::Task { stop, task } => {
                    let _ = stop.send(true);
                    let abort = task.abort_handle();
                    match tokio::time::timeout_at(deadline, task).await {
                        Ok(Ok(Ok(_))) => {}
                        Ok(Ok(Err(e))) => failures.push(format!("worker: {e:#}")),
                        Ok(Err(e)) => failures.push(format!("worker task: {e}")),
                        Err(_) => {
                            abort.abort();
                            failures.push("a worker did not stop in time".to_string());
                        }
                    }
                }
            }
        }
        let sum = self.stats();
        if !failures.is_empty() {
            bail!("{} (last counts: {sum:?})", failures.join("; "));
        }
        Ok(sum)
    }
}

/// What `drover-sim load` reports at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadSummary {
    /// Devices emulated.
    pub devices: usize,
    /// Worker processes.
    pub procs: usize,
    /// Registration time, seconds.
    pub register_secs: f64,
    /// From workers started to every device connected, seconds.
    pub all_connected_secs: Option<f64>,
    /// Run time after the workers started, seconds.
    pub run_secs: f64,
    /// Most devices connected at once.
    pub peak_connected: u64,
    /// Windows acknowledged per second, over the run (ramp-up included).
    pub acked_per_sec: f64,
    /// Highest acknowledged windows per second over one progress interval.
    pub peak_acked_per_sec: f64,
    /// Windows stored by the in-process controller (None for `--controller`).
    pub controller_windows: Option<u64>,
    /// Resident memory of the parent (with an in-process controller), KiB.
    pub parent_rss_kib: u64,
    /// Resident memory per device in the workers, KiB (largest worker
    /// RSS seen over its devices).
    pub worker_kib_per_device: f64,
    /// The workers' final counts.
    pub totals: WorkerStats,
}

fn random_prefix() -> String {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    format!("load-{}", hex::encode(b))
}

/// Runs `drover-sim load`.
pub async fn run(args: LoadArgs) -> anyhow::Result<LoadSummary> {
    let say = |json: bool, s: String| {
        if json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    let dir = tempfile::tempdir()?;
    let (registrar, running) = match (&args.controller, &args.token) {
        (Some(url), Some(token)) => (
            Registrar::Http {
                url: url.clone(),
                token: token.clone(),
            },
            None,
        ),
        (Some(_), None) => bail!("--controller needs --token"),
        _ => {
            let running = serve::start(ServeConfig::ephemeral(dir.path().join("controller")))
                .await
                .context("starting the in-process controller")?;
            say(
                args.json,
                format!(
                    "controller (in-process): {} mqtt {}",
                    running.http_url(),
                    running.mqtt_addr()
                ),
            );
            (Registrar::InProcess(running.handle()), Some(running))
        }
    };
    let broker = args
        .broker
        .clone()
        .or_else(|| running.as_ref().map(|r| r.mqtt_addr().to_string()));
    let prefix = args.prefix.clone().unwrap_or_else(random_prefix);
    let procs = args
        .procs
        .unwrap_or_else(|| args.devices.div_ceil(MAX_PER_PROCESS))
        .max(1);
    let t = Instant::now();
    say(
        args.json,
        format!("registering {} devices ({prefix}-N)...", args.devices),
    );
    let bundles = register(&registrar, &prefix, args.devices, args.register_concurrency).await?;
    let register_secs = t.elapsed().as_secs_f64();
    say(
        args.json,
        format!("registered in {register_secs:.1} s; starting {procs} worker(s)"),
    );
    let wargs = WorkerArgs {
        bundles: PathBuf::new(),
        broker,
        window_ms: args.window_ms,
        ack_timeout_ms: args.ack_timeout_ms,
        connect_rate: args.connect_rate,
        stats_ms: 1_000,
        drain_ms: 30_000,
        idle_model: "load-idle@1".to_string(),
    };
    let exe = std::env::current_exe().context("locating drover-sim")?;
    let load = LoadRun::start(bundles, procs, &wargs, Spawn::Exe(exe)).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration_secs);
    let mut summary = LoadSummary {
        devices: args.devices,
        procs: load.procs(),
        register_secs,
        ..Default::default()
    };
    let mut prev = (Instant::now(), WorkerStats::default());
    let mut worker_rss_max = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(2).min(until - Instant::now())).await;
        let s = load.stats();
        let dt = prev.0.elapsed().as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        summary.peak_connected = summary.peak_connected.max(s.connected);
        summary.peak_acked_per_sec = summary
            .peak_acked_per_sec
            .max(rate(s.windows_acked, prev.1.windows_acked));
        worker_rss_max = worker_rss_max.max(s.rss_kib);
        if summary.all_connected_secs.is_none() && s.connected as usize >= args.devices {
            summary.all_connected_secs = Some(started.elapsed().as_secs_f64());
        }
        say(
            args.json,
            format!(
                "[{:>5.0}s] connected {}/{} | windows {:.0}/s sent, {:.0}/s acked, {} unacked, {} resent | commands {} (+{} refused), deploys {} ok {} failed, rollbacks {} | errors {} | workers {} MiB",
                started.elapsed().as_secs_f64(),
                s.connected,
                args.devices,
                rate(s.windows_created, prev.1.windows_created),
                rate(s.windows_acked, prev.1.windows_acked),
                s.unacked(),
                s.windows_resent,
                s.commands_accepted,
                s.commands_refused,
                s.deploys_done,
                s.deploys_failed,
                s.rollbacks,
                s.errors + s.connect_errors + s.acks_refused + s.dropped,
                s.rss_kib / 1024,
            ),
        );
        prev = (Instant::now(), s);
    }
    let run_secs = started.elapsed().as_secs_f64();
    let acked_before_drain = load.stats().windows_acked;
    say(args.json, "stopping: draining acknowledgements...".into());
    let totals = load.stop(Duration::from_secs(60)).await?;
    summary.run_secs = run_secs;
    summary.acked_per_sec = acked_before_drain as f64 / run_secs.max(1e-3);
    summary.worker_kib_per_device = worker_rss_max as f64 / args.devices.max(1) as f64;
    summary.parent_rss_kib = worker::rss_kib();
    if let Some(r) = &running {
        summary.controller_windows = Some(
            r.handle()
                .telemetry_summary(TelemetryFilter::default())
                .await?
                .merged
                .windows,
        );
    }
    summary.totals = totals;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if let Some(r) = running {
        r.shutdown().await;
    }
    Ok(summary)
}

fn print_summary(s: &LoadSummary) {
    let t = &s.totals;
    println!();
    println!(
        "drover-sim load: {} devices in {} worker(s)",
        s.devices, s.procs
    );
    let rows = [
        ("registration", format!("{:.1} s", s.register_secs)),
        (
            "all devices connected after",
            s.all_connected_secs
                .map_or("never".to_string(), |v| format!("{v:.1} s")),
        ),
        ("peak connected", s.peak_connected.to_string()),
        (
            "windows made / acked / resent / evicted",
            format!(
                "{} / {} / {} / {}",
                t.windows_created, t.windows_acked, t.windows_resent, t.windows_evicted
            ),
        ),
        (
            "windows acked per second (run / peak 2 s)",
            format!("{:.0} / {:.0}", s.acked_per_sec, s.peak_acked_per_sec),
        ),
        (
            "controller stored windows",
            s.controller_windows
                .map_or("(external)".to_string(), |v| v.to_string()),
        ),
        (
            "commands accepted / refused",
            format!("{} / {}", t.commands_accepted, t.commands_refused),
        ),
        (
            "deploys done / failed, rollbacks",
            format!("{} / {}, {}", t.deploys_done, t.deploys_failed, t.rollbacks),
        ),
        (
            "connects / disconnects / connect errors",
            format!("{} / {} / {}", t.connects, t.disconnects, t.connect_errors),
        ),
        (
            "errors / refused acks / dropped reports",
            format!("{} / {} / {}", t.errors, t.acks_refused, t.dropped),
        ),
        (
            "worker memory per device",
            format!("{:.0} KiB", s.worker_kib_per_device),
        ),
        (
            "parent RSS (with in-process controller)",
            format!("{} MiB", s.parent_rss_kib / 1024),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<42} {v}");
    }
}
