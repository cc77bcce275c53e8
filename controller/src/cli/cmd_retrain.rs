//! `drover drift`, `drover retrain list|show|run` (clients of the HTTP API)
//! and `drover train` (local, with [`crate::train`]).
//!
//! The lead mounts these in the `drover` command: add
//! `Drift(DriftArgs)`, `#[command(subcommand)] Retrain(RetrainCmd)` and
//! `Train(TrainArgs)` variants and call [`run_drift`], [`run_retrain`] and
//! [`run_train`] with the client and `--output`.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;

use crate::cli::ApiClient;
use crate::cli::output::{self, Output};
use crate::core::drift::Verdict;
use crate::core::retraining::config::{format_duration, parse_duration};
use crate::core::retraining::job::RetrainJob;
use crate::core::retraining::report::{DriftOverview, ScopeDrift};
use crate::http::retrain::{DriftResponse, JobList, RunBody, parse_model_arg};
use crate::train::{Dataset, TrainOptions, load_base_from_onnx, to_onnx, train};

/// `drover drift [N[@V]] [--cohort KEY] [--window 1h]`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriftArgs {
    /// Model, `NAME` or `NAME@VERSION`; default: every model with a retrain
    /// policy, at its production version.
    pub model: Option<String>,
    /// Also break the report down per value of this device label.
    #[arg(long, value_name = "LABEL_KEY")]
    pub cohort: Option<String>,
    /// Time range ending now (`30m`, `1h`, `1d`); default: the model's
    /// configured window.
    #[arg(long)]
    pub window: Option<String>,
}

/// `drover retrain …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RetrainCmd {
    /// Recent retraining jobs, newest first.
    List {
        /// Only this model's jobs.
        #[arg(long)]
        model: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One job: trigger, drift report, dataset, hook log, resulting version.
    Show {
        /// Job id.
        id: u64,
    },
    /// Retrain a model now, without waiting for drift.
    Run {
        /// Model name.
        model: String,
    },
}

/// `drover train --data FILE.csv [--base FILE.onnx|N@V] --out model.onnx`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Labelled CSV: a header, numeric feature columns and the label column.
    #[arg(long)]
    pub data: PathBuf,
    /// Warm start: an ONNX file written by `drover train`, or `NAME@VERSION`
    /// (fetched from the controller).
    #[arg(long)]
    pub base: Option<String>,
    /// Where to write the ONNX model.
    #[arg(long)]
    pub out: PathBuf,
    /// Name of the label column.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Gradient steps (default 200).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed of the holdout split.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn f4(v: f64) -> String {
    format!("{v:.4}")
}

/// Runs `drover drift`.
pub async fn run_drift(args: DriftArgs, client: &ApiClient, out: Output) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(m) = &args.model {
        parse_model_arg(m).map_err(|e| anyhow!("{m}: {e}"))?;
        query.push(("model", m.clone()));
    }
    if let Some(c) = &args.cohort {
        query.push(("cohort", c.clone()));
    }
    if let Some(w) = &args.window {
        parse_duration(w).map_err(|e| anyhow!("--window: {e}"))?;
        query.push(("window", w.clone()));
    }
    let response: DriftResponse = client.get("drift report", "/v1/drift", &query).await?;
    match out {
        Output::Json => output::json(&response),
        Output::Table => {
            if response.reports.is_empty() {
                output::line("no model has a retrain policy; name one: drover drift NAME");
            }
            for (i, report) in response.reports.iter().enumerate() {
                if i > 0 {
                    output::line("");
                }
                print_overview(report);
            }
            Ok(())
        }
    }
}

fn scope_name(s: &ScopeDrift) -> String {
    s.cohort
        .as_ref()
        .map_or_else(|| "fleet".to_owned(), |c| format!("{}={}", c.key, c.value))
}

fn verdict(s: &ScopeDrift) -> String {
    match &s.verdict {
        Some(Verdict::Stable) => "stable".into(),
        Some(Verdict::Drifting { .. }) => "DRIFTING".into(),
        Some(Verdict::Insufficient { samples }) => format!("insufficient ({samples})"),
        None => "error".into(),
    }
}

fn print_overview(o: &DriftOverview) {
    let window = format_duration(std::time::Duration::from_millis(
        o.to_ms.saturating_sub(o.from_ms),
    ));
    output::line(&format!(
        "{}@{} over the last {window} (drifting: PSI > {}{}, at least {} samples; device PSI > {})",
        o.model,
        o.version,
        o.thresholds.psi,
        o.thresholds
            .js
            .map_or_else(String::new, |js| format!(" or JS > {js}")),
        o.thresholds.min_samples,
        o.device_psi_threshold
    ));
    let scopes: Vec<&ScopeDrift> = std::iter::once(&o.fleet).chain(&o.cohorts).collect();
    let rows: Vec<Vec<String>> = scopes
        .iter()
        .map(|s| {
            let r = s.report.as_ref();
            let devices = r.and_then(|r| r.devices.as_ref());
            vec![
                scope_name(s),
                verdict(s),
                r.map_or("-".into(), |r| f4(r.fleet_score)),
                r.and_then(|r| r.worst.clone())
                    .unwrap_or_else(|| "-".into()),
                r.map_or("-".into(), |r| r.samples.to_string()),
                devices.map_or("-".into(), |d| {
                    format!(
                        "{}/{}{}",
                        d.drifting,
                        d.evaluated,
                        d.share
                            .map_or_else(String::new, |s| format!(" ({:.1}%)", s * 100.0))
                    )
                }),
                s.accuracy.accuracy.map_or("-".into(), f4),
                s.accuracy
                    .slope_per_hour
                    .map_or("-".into(), |v| format!("{v:+.4}")),
            ]
        })
        .collect();
    output::table(
        &[
            "SCOPE",
            "VERDICT",
            "SCORE",
            "WORST",
            "SAMPLES",
            "DEVICES_DRIFTING",
            "ACCURACY",
            "ACC/H",
        ],
        &rows,
    );
    for s in scopes {
        if let Some(Verdict::Drifting { reason }) = &s.verdict {
            output::line(&format!("{}: {reason}", scope_name(s)));
        }
        if let Some(e) = &s.error {
            output::line(&format!("{}: {e}", scope_name(s)));
        }
    }
    if let Some(r) = &o.fleet.report {
        output::line("");
        let rows: Vec<Vec<String>> = r
            .features
            .iter()
            .chain(r.output.as_ref())
            .map(|f| {
                let flag = if f.psi > o.thresholds.psi { "*" } else { "" };
                vec![
                    format!("{}{flag}", f.name),
                    f4(f.psi),
                    f4(f.js),
                    f.samples.to_string(),
                ]
            })
            .collect();
        output::table(&["FEATURE (fleet)", "PSI", "JS", "SAMPLES"], &rows);
        if let Some(worst) = r.devices.as_ref().filter(|d| !d.worst.is_empty()) {
            output::line("");
            let rows: Vec<Vec<String>> = worst
                .worst
                .iter()
                .map(|d| {
                    vec![
                        d.device.clone(),
                        f4(d.score),
                        d.feature.clone(),
                        d.samples.to_string(),
                    ]
                })
                .collect();
            output::table(&["WORST DEVICE", "PSI", "FEATURE", "SAMPLES"], &rows);
        }
    }
}

/// Runs `drover retrain list|show|run`.
pub async fn run_retrain(cmd: RetrainCmd, client: &ApiClient, out: Output) -> anyhow::Result<()> {
    match cmd {
        RetrainCmd::List { model, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(m) = model {
                query.push(("model", m));
            }
            let list: JobList = client.get("retrain jobs", "/v1/retrain", &query).await?;
            if out == Output::Json {
                return output::json(&list);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = list
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        format!("{}@{}", j.model, j.base_version),
                        j.state.to_string(),
                        format!("{:?}", j.trigger).to_lowercase(),
                        output::opt(&j.result_version),
                        output::opt(&j.rollout_id),
                        output::age(Some(j.created_at), now),
                        j.failure.clone().unwrap_or_else(|| j.reason.clone()),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID", "BASE", "STATE", "TRIGGER", "VERSION", "ROLLOUT", "CREATED", "REASON",
                ],
                &rows,
            );
            Ok(())
        }
        RetrainCmd::Show { id } => {
            let job: RetrainJob = client
                .get("retrain job", &format!("/v1/retrain/{id}"), &[])
                .await?;
            if out == Output::Json {
                return output::json(&job);
            }
            print_job(&job);
            Ok(())
        }
        RetrainCmd::Run { model } => {
            let job: RetrainJob = client
                .post("start retraining", "/v1/retrain", &RunBody { model })
                .await?;
            if out == Output::Json {
                return output::json(&job);
            }
            output::line(&format!(
                "retrain job {} started for {}@{} ({}); follow it with `drover retrain show {}`",
                job.id, job.model, job.base_version, job.state, job.id
            ));
            Ok(())
        }
    }
}

fn print_job(job: &RetrainJob) {
    let now = now_ms();
    let mut pairs = vec![
        ("job", job.id.to_string()),
        ("model", format!("{}@{}", job.model, job.base_version)),
        ("state", job.state.to_string()),
    ];
    if let Some(f) = &job.failure {
        pairs.push(("failure", f.clone()));
    }
    pairs.push((
        "trigger",
        format!("{:?}: {}", job.trigger.kind, job.trigger.reason).to_lowercase(),
    ));
    if let Some(c) = &job.trigger.cohort {
        pairs.push(("cohort", format!("{}={}", c.key, c.value)));
    }
    if let Some(r) = &job.trigger.report {
        pairs.push((
            "drift",
            format!(
                "fleet score {} (worst {}), {} samples",
                f4(r.fleet_score),
                r.worst.as_deref().unwrap_or("-"),
                r.samples
            ),
        ));
    }
    pairs.push(("created", output::age(Some(job.created_at), now)));
    pairs.push(("updated", output::age(Some(job.updated_at), now)));
    if let Some(c) = &job.capture {
        pairs.push((
            "capture",
            format!(
                "{} device(s) asked, {} done, {} samples ({} dropped){}",
                c.requested.len(),
                c.completed.len(),
                c.samples,
                c.dropped,
                if c.send_failures.is_empty() {
                    String::new()
                } else {
                    format!(", {} unreachable", c.send_failures.len())
                }
            ),
        ));
    }
    if let Some(d) = &job.dataset {
        pairs.push(("dataset", d.path.clone()));
        pairs.push((
            "rows",
            format!(
                "{} ({} labelled; {} captured, {} from the reference)",
                d.rows, d.labelled_rows, d.captured_rows, d.reference_rows
            ),
        ));
        pairs.push(("sha256", d.sha256.clone()));
    }
    if let Some(h) = &job.hook {
        pairs.push((
            "hook",
            format!(
                "{} ran {}{}",
                h.kind,
                format_duration(std::time::Duration::from_millis(
                    h.finished_at.saturating_sub(h.started_at)
                )),
                h.exit_code
                    .map_or_else(String::new, |c| format!(", exit code {c}"))
            ),
        ));
    }
    if let Some(v) = job.result_version {
        pairs.push(("version", format!("{}@{v}", job.model)));
    }
    if let Some(r) = &job.rollout_id {
        pairs.push(("rollout", r.clone()));
    }
    if let Some(r) = &job.rollout_error {
        pairs.push(("rollout error", r.clone()));
    }
    if !job.eval_metrics.is_empty() {
        let metrics: Vec<String> = job
            .eval_metrics
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        pairs.push(("metrics", metrics.join(" ")));
    }
    output::pairs(&pairs);
    output::line("");
    let rows: Vec<Vec<String>> = job
        .history
        .iter()
        .map(|t| {
            vec![
                output::age(Some(t.at), now),
                t.state.to_string(),
                t.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["WHEN", "STATE", "NOTE"], &rows);
    if let Some(h) = job.hook.as_ref().filter(|h| !h.log.trim().is_empty()) {
        output::line("");
        output::line("hook log:");
        output::line(h.log.trim_end());
    }
}

/// What `drover train` reports.
#[derive(Debug, Clone, Serialize)]
struct TrainSummary {
    out: String,
    rows: usize,
    features: Vec<String>,
    classes: Vec<String>,
    warm_start: bool,
    train_accuracy: f64,
    holdout_accuracy: Option<f64>,
    holdout_rows: usize,
    train_loss: f64,
    epochs: usize,
    dataset_sha256: String,
}

async fn fetch_base(base: &str, controller: &str) -> anyhow::Result<Vec<u8>> {
    let path = Path::new(base);
    if path.exists() || base.ends_with(".onnx") {
        return std::fs::read(path).with_context(|| format!("reading --base {base}"));
    }
    let (name, version) = base
        .split_once('@')
        .ok_or_else(|| anyhow!("--base {base:?} is neither a file nor NAME@VERSION"))?;
    parse_model_arg(name).map_err(|e| anyhow!("--base {base}: {e}"))?;
    let url = format!(
        "{}/v1/models/{name}/{version}/artifact",
        controller.trim_end_matches('/')
    );
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("fetching {url}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        bail!(
            "fetching {base} from the controller: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(bytes.to_vec())
}

/// Runs `drover train` locally; `controller` is only used to fetch
/// `--base NAME@VERSION`.
pub async fn run_train(args: TrainArgs, controller: &str, out: Output) -> anyhow::Result<()> {
    let data = Dataset::from_csv_path(&args.data, &args.label_column)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let base = match &args.base {
        Some(base) => {
            let bytes = fetch_base(base, controller).await?;
            Some(load_base_from_onnx(&bytes).with_context(|| {
                format!("--base {base} cannot seed training (only `drover train` models can)")
            })?)
        }
        None => None,
    };
    let defaults = TrainOptions::default();
    let opts = TrainOptions {
        epochs: args.epochs.unwrap_or(defaults.epochs),
        seed: args.seed.unwrap_or(defaults.seed),
        ..defaults
    };
    let report = tokio::task::spawn_blocking(move || {
        let report = train(&data, base.as_ref(), &opts);
        (data, report, base.is_some())
    })
    .await
    .context("training task")?;
    let (data, report, warm) = report;
    let report = report.context("training failed")?;
    std::fs::write(&args.out, to_onnx(&report.model))
        .with_context(|| format!("writing {}", args.out.display()))?;
    let summary = TrainSummary {
        out: args.out.display().to_string(),
        rows: data.rows.len(),
        features: data.feature_names.clone(),
        classes: data.classes.clone(),
        warm_start: warm,
        train_accuracy: report.train_accuracy,
        holdout_accuracy: report
            .holdout_accuracy
            .is_finite()
            .then_some(report.holdout_accuracy),
        holdout_rows: report.holdout_rows,
        train_loss: report.train_loss,
        epochs: report.epochs,
        dataset_sha256: report.dataset_sha256.clone(),
    };
    if let Some(path) = &args.metrics {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match out {
        Output::Json => output::json(&summary),
        Output::Table => {
            output::pairs(&[
                ("wrote", summary.out.clone()),
                (
                    "data",
                    format!(
                        "{} rows, {} features, classes {}",
                        summary.rows,
                        summary.features.len(),
                        summary.classes.join(",")
                    ),
                ),
                ("warm start", summary.warm_start.to_string()),
                ("train accuracy", f4(summary.train_accuracy)),
                (
                    "holdout accuracy",
                    summary.holdout_accuracy.map_or("-".into(), |a| {
                        format!("{} ({} rows)", f4(a), summary.holdout_rows)
                    }),
                ),
                ("dataset sha256", summary.dataset_sha256.clone()),
            ]);
            Ok(())
        }
    }
}
