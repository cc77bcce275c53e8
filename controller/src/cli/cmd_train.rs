//! `drover train`: the reference trainer, run locally ([`crate::train`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use serde::Serialize;

use crate::cli::output::{self, Output, f4};
use crate::http::retrain::parse_model_arg;
use crate::train::{Dataset, TrainOptions, load_base_from_onnx, to_onnx, train};

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

async fn fetch_base(base: &str, controller: &super::ApiClient) -> anyhow::Result<Vec<u8>> {
    let path = Path::new(base);
    if path.exists() || base.ends_with(".onnx") {
        return std::fs::read(path).with_context(|| format!("reading --base {base}"));
    }
    let (name, version) = base
        .split_once('@')
        .ok_or_else(|| anyhow!("--base {base:?} is neither a file nor NAME@VERSION"))?;
    parse_model_arg(name).map_err(|e| anyhow!("--base {base}: {e}"))?;
    controller
        .get_bytes(
            &format!("fetching {base} from the controller"),
            &format!("/v1/models/{name}/{version}/artifact"),
        )
        .await
}

/// Runs `drover train` locally; `controller` is only used to fetch
/// `--base NAME@VERSION`.
pub(crate) async fn run_train(
    args: TrainArgs,
    controller: &super::ApiClient,
    out: Output,
) -> anyhow::Result<()> {
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
