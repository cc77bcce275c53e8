//! Running a job's hook, and checking what it produced.
//!
//! # The job JSON ([`HookJob`])
//!
//! Every hook gets the same document: on stdin and in the file named by
//! `DROVER_JOB_FILE` (exec), or as the POST body (webhook):
//!
//! ```json
//! {
//!   "schema": "drover.retrain.job/v1",
//!   "job_id": 7,
//!   "model": "sensor-clf",
//!   "base_version": 3,
//!   "task": "classification",
//!   "feature_names": ["temp", "vibration", "current", "humidity"],
//!   "classes": ["fault", "normal", "warning"],
//!   "label_column": "label",
//!   "dataset": {
//!     "path": "/var/lib/drover/datasets/7.csv",
//!     "rows": 2400, "labelled_rows": 1900, "captured_rows": 400,
//!     "reference_rows": 2000, "sha256": "9f2c…"
//!   },
//!   "base_model_path": "/var/lib/drover/retrain/7/base.onnx",
//!   "job_dir": "/var/lib/drover/retrain/7",
//!   "output_path": "/var/lib/drover/retrain/7/model.onnx",
//!   "metrics_path": "/var/lib/drover/retrain/7/metrics.json",
//!   "trigger": { "kind": "drift", "reason": "`temp` PSI 0.31 > 0.1 for 2 consecutive windows",
//!                "at": 1767225600000, "cohort": {"key": "region", "value": "eu"},
//!                "report": { "features": [...], "fleet_score": 0.31, ... } }
//! }
//! ```
//!
//! The dataset format is described in [`crate::core::retraining::dataset`]; `classes` lists
//! the labels present, in the order the model's outputs must follow.
//! Webhooks also get `"dataset_csv"`, the file's text, unless
//! `inline_dataset = false`.
//!
//! # exec
//!
//! Runs `command args…` in the job directory (or `working_dir`) in its own
//! process group, with the controller's environment plus the hook's `env`
//! and `DROVER_JOB_FILE`, `DROVER_JOB_DIR`, `DROVER_OUTPUT` (where to write
//! the ONNX model), `DROVER_METRICS` (where to write optional metrics: a
//! JSON object of numbers), `DROVER_DATASET`, `DROVER_BASE_MODEL`,
//! `DROVER_JOB_ID`, `DROVER_MODEL`. stdout and stderr are kept (the last
//! `max_log_bytes` of each). Exit 0 means success. A non-zero exit fails
//! the job with the code and the last lines of stderr; running past
//! `timeout` kills the whole process group and fails the job with
//! "timeout after …". When the hook exits, whatever it left running in its
//! process group is killed too, so nothing outlives the job.
//!
//! # webhook
//!
//! `POST url` with the job JSON (`Content-Type: application/json`) and the
//! configured headers; the whole exchange must finish within `timeout`. A
//! 2xx reply must be JSON:
//!
//! ```json
//! { "model_base64": "<the ONNX file, standard base64>",
//!   "metrics": { "holdout_accuracy": 0.91 },
//!   "log": "optional text kept in the job's hook log" }
//! ```
//!
//! or `"model_path"` instead of `"model_base64"`: a file on the
//! controller's disk (shared storage). Anything else fails the job.
//!
//! # builtin
//!
//! [`crate::train`] on the dataset's labelled rows, in process (on the
//! blocking pool), warm-started from the base model when the reference
//! trainer wrote it and it has the same features and classes. Regression
//! models need an exec or webhook hook.
//!
//! # Validation
//!
//! Whatever the hook, its output must exist, be non-empty, load and
//! optimise in tract with the base model's number of input features, run
//! one row, and (for classifiers) output one probability per class in
//! `classes`. Otherwise the job fails and nothing reaches the fleet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::registry::inspect::LoadedModel;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use crate::core::retraining::config::{BuiltinHook, ExecHook, HookConfig, WebhookHook};
use crate::core::retraining::dataset::labelled_only;
use crate::core::retraining::job::JobTrigger;
use crate::train::{Dataset, TrainError, load_base_from_onnx, to_onnx, train};

/// `schema` of the job JSON.
pub(crate) const JOB_SCHEMA: &str = "drover.retrain.job/v1";
/// Largest model a hook may produce (and a webhook reply may carry).
pub(crate) const MAX_MODEL_BYTES: u64 = 256 * 1024 * 1024;
/// Lines of stderr quoted in a failure reason.
const STDERR_LINES_IN_REASON: usize = 5;
/// How long to wait for the output pipes after the hook exited: a
/// grandchild that left the process group may hold them open forever.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// The dataset part of the job JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HookDataset {
    /// Absolute path of the CSV.
    pub path: String,
    /// Data rows.
    pub rows: u64,
    /// Rows with a label.
    pub labelled_rows: u64,
    /// Rows from captured samples (first).
    pub captured_rows: u64,
    /// Rows from the reference CSV (after the captured ones).
    pub reference_rows: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
}

/// The job description every hook receives (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HookJob {
    /// [`JOB_SCHEMA`].
    pub schema: String,
    /// Job id.
    pub job_id: u64,
    /// Model name.
    pub model: String,
    /// Version retrained from.
    pub base_version: u64,
    /// `classification` or `regression`.
    pub task: String,
    /// Feature names, in input order.
    pub feature_names: Vec<String>,
    /// Class names in output order (classification; empty otherwise).
    pub classes: Vec<String>,
    /// Label column of the dataset.
    pub label_column: String,
    /// The dataset.
    pub dataset: HookDataset,
    /// The base version's ONNX file.
    pub base_model_path: Option<String>,
    /// A directory the hook may use.
    pub job_dir: String,
    /// Where the hook writes the model.
    pub output_path: String,
    /// Where the hook may write metrics (JSON object of numbers).
    pub metrics_path: String,
    /// Why the job exists (with the drift report).
    pub trigger: JobTrigger,
    /// The dataset's text (webhooks with `inline_dataset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_csv: Option<String>,
}

impl HookJob {
    /// Whether the model is a classifier.
    pub(crate) fn is_classification(&self) -> bool {
        self.task == "classification"
    }
}

/// What a hook produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HookOutput {
    /// The model file (the job's `output_path`).
    pub model_path: PathBuf,
    /// Evaluation metrics reported by the hook.
    pub metrics: BTreeMap<String, f64>,
}

/// How a hook run ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HookResult {
    /// stdout/stderr (exec), reply log (webhook) or training summary
    /// (builtin), bounded.
    pub log: String,
    /// Process exit code (exec).
    pub exit_code: Option<i32>,
    /// The output, or why there is none.
    pub outcome: Result<HookOutput, String>,
}

impl HookResult {
    fn failed(log: String, exit_code: Option<i32>, reason: impl Into<String>) -> HookResult {
        HookResult {
            log,
            exit_code,
            outcome: Err(reason.into()),
        }
    }
}

/// Runs the configured hook for `job` (whose JSON is already at
/// `job_file`). Never panics and never returns early without a result:
/// every failure is an `Err` outcome with a reason for the job.
pub(crate) async fn run_hook(config: &HookConfig, job: &HookJob, job_file: &Path) -> HookResult {
    match config {
        HookConfig::Builtin(cfg) => run_builtin(cfg, job).await,
        HookConfig::Exec(cfg) => run_exec(cfg, job, job_file).await,
        HookConfig::Webhook(cfg) => run_webhook(cfg, job).await,
    }
}

/// The last `limit` bytes written to it, and how many came before.
#[derive(Debug)]
struct Tail {
    limit: usize,
    buf: Vec<u8>,
    dropped: u64,
}

impl Tail {
    fn new(limit: usize) -> Tail {
        Tail {
            limit,
            buf: Vec::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > self.limit {
            let excess = self.buf.len() - self.limit;
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn text(&self) -> String {
        let body = String::from_utf8_lossy(&self.buf);
        if self.dropped > 0 {
            format!("[… {} earlier bytes dropped …]\n{body}", self.dropped)
        } else {
            body.into_owned()
        }
    }
}

async fn read_tail(mut pipe: impl AsyncRead + Unpin, limit: usize) -> Tail {
    let mut tail = Tail::new(limit);
    let mut chunk = vec![0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => tail.push(chunk.get(..n).unwrap_or_default()),
        }
    }
}

async fn kill_process_group(pgid: u32) {
    // The crate has no libc binding (and denies unsafe), so kill(1) does it.
    // A group with no process left answers ESRCH, which is fine.
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = killed {
        tracing::warn!(pgid, error = %e, "cannot run kill(1); the hook's children may survive it");
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn exec_log(stdout: &Tail, stderr: &Tail) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout.text().trim_end(),
        stderr.text().trim_end()
    )
}

async fn run_exec(cfg: &ExecHook, job: &HookJob, job_file: &Path) -> HookResult {
    let job_json = match serde_json::to_vec_pretty(job) {
        Ok(j) => j,
        Err(e) => return HookResult::failed(String::new(), None, format!("job JSON: {e}")),
    };
    let mut cmd = tokio::process::Command::new(&cfg.command);
    cmd.args(&cfg.args)
        .envs(&cfg.env)
        .env("DROVER_JOB_FILE", job_file)
        .env("DROVER_JOB_DIR", &job.job_dir)
        .env("DROVER_OUTPUT", &job.output_path)
        .env("DROVER_METRICS", &job.metrics_path)
        .env("DROVER_DATASET", &job.dataset.path)
        .env("DROVER_JOB_ID", job.job_id.to_string())
        .env("DROVER_MODEL", &job.model)
        .current_dir(
            cfg.working_dir
                .as_deref()
                .unwrap_or(Path::new(&job.job_dir)),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own group, so a timeout kills the hook's children too.
        .process_group(0);
    if let Some(base) = &job.base_model_path {
        cmd.env("DROVER_BASE_MODEL", base);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return HookResult::failed(
                String::new(),
                None,
                format!("cannot start hook `{}`: {e}", cfg.command),
            );
        }
    };
    let pgid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that never reads stdin must not block us on a full pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(&job_json).await;
            let _ = stdin.shutdown().await;
        });
    }
    let limit = cfg.max_log_bytes;
    let stdout = child
        .stdout
        .take()
        .map(|p| tokio::spawn(read_tail(p, limit)));
    let stderr = child
        .stderr
        .take()
        .map(|p| tokio::spawn(read_tail(p, limit)));

    let waited = tokio::time::timeout(cfg.timeout, child.wait()).await;
    // Whatever happened, nothing the hook started outlives it. (After a
    // normal exit the leader is reaped, but its id stays reserved while any
    // member of the group lives, so this cannot hit an unrelated group in
    // practice.)
    if let Some(pgid) = pgid {
        kill_process_group(pgid).await;
    }
    if waited.is_err() {
        let _ = child.kill().await;
    }
    let collect = |task: Option<tokio::task::JoinHandle<Tail>>| async move {
        let Some(task) = task else {
            return Tail::new(limit);
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(PIPE_GRACE, task).await {
            Ok(Ok(tail)) => tail,
            _ => {
                abort.abort();
                Tail::new(limit)
            }
        }
    };
    let (out, err) = (collect(stdout).await, collect(stderr).await);
    let log = exec_log(&out, &err);
    let status = match waited {
        Err(_) => {
            return HookResult::failed(
                log,
                None,
                format!(
                    "timeout after {}",
                    drover_protocol::duration::format(cfg.timeout)
                ),
            );
        }
        Ok(Err(e)) => return HookResult::failed(log, None, format!("waiting for the hook: {e}")),
        Ok(Ok(status)) => status,
    };
    if !status.success() {
        let stderr_tail = last_lines(&err.text(), STDERR_LINES_IN_REASON);
        let how = match status.code() {
            Some(code) => format!("hook exited with code {code}"),
            None => "hook was killed by a signal".to_owned(),
        };
        let reason = if stderr_tail.is_empty() {
            how
        } else {
            format!("{how}: {stderr_tail}")
        };
        return HookResult::failed(log, status.code(), reason);
    }
    let mut log = log;
    let metrics = read_metrics(Path::new(&job.metrics_path), &mut log).await;
    HookResult {
        log,
        exit_code: status.code(),
        outcome: Ok(HookOutput {
            model_path: PathBuf::from(&job.output_path),
            metrics,
        }),
    }
}

/// Numbers of a JSON object; other values are skipped with a note in `log`.
fn numeric_metrics(
    map: serde_json::Map<String, serde_json::Value>,
    log: &mut String,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        match v.as_f64().filter(|x| x.is_finite()) {
            Some(x) => {
                out.insert(k, x);
            }
            None => log.push_str(&format!("\n[drover] metric `{k}` is not a number; ignored")),
        }
    }
    out
}

async fn read_metrics(path: &Path, log: &mut String) -> BTreeMap<String, f64> {
    let Ok(text) = tokio::fs::read_to_string(path).await else {
        return BTreeMap::new();
    };
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text) {
        Ok(map) => numeric_metrics(map, log),
        Err(e) => {
            log.push_str(&format!(
                "\n[drover] {} is not a JSON object ({e}); metrics ignored",
                path.display()
            ));
            BTreeMap::new()
        }
    }
}

/// The reply a webhook sends (see the module docs).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WebhookReply {
    model_base64: Option<String>,
    model_path: Option<String>,
    metrics: serde_json::Map<String, serde_json::Value>,
    log: Option<String>,
}

async fn run_webhook(cfg: &WebhookHook, job: &HookJob) -> HookResult {
    let timeout_reason = || {
        format!(
            "timeout after {}",
            drover_protocol::duration::format(cfg.timeout)
        )
    };
    let mut job = job.clone();
    if cfg.inline_dataset {
        match tokio::fs::read_to_string(&job.dataset.path).await {
            Ok(text) => job.dataset_csv = Some(text),
            Err(e) => {
                return HookResult::failed(
                    String::new(),
                    None,
                    format!("cannot read the dataset {}: {e}", job.dataset.path),
                );
            }
        }
    }
    let client = match reqwest::Client::builder().timeout(cfg.timeout).build() {
        Ok(c) => c,
        Err(e) => return HookResult::failed(String::new(), None, format!("HTTP client: {e}")),
    };
    let mut request = client.post(&cfg.url).json(&job);
    for (k, v) in &cfg.headers {
        request = request.header(k, v);
    }
    let exchange = async {
        let mut response = request.send().await?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            // base64 inflates by 4/3; allow for that and the JSON around it.
            if body.len() as u64 > MAX_MODEL_BYTES / 3 * 4 + 1024 * 1024 {
                return Ok((status, None));
            }
        }
        Ok::<_, reqwest::Error>((status, Some(body)))
    };
    let (status, body) = match tokio::time::timeout(cfg.timeout, exchange).await {
        Err(_) => return HookResult::failed(String::new(), None, timeout_reason()),
        Ok(Err(e)) if e.is_timeout() => {
            return HookResult::failed(String::new(), None, timeout_reason());
        }
        Ok(Err(e)) => {
            return HookResult::failed(String::new(), None, format!("webhook request failed: {e}"));
        }
        Ok(Ok(r)) => r,
    };
    let Some(body) = body else {
        return HookResult::failed(String::new(), None, "webhook reply is too large");
    };
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        let excerpt: String = text.chars().take(500).collect();
        return HookResult::failed(
            excerpt.clone(),
            None,
            format!("webhook returned HTTP {}: {excerpt}", status.as_u16()),
        );
    }
    let reply: WebhookReply = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return HookResult::failed(
                String::new(),
                None,
                format!("webhook reply is not the expected JSON: {e}"),
            );
        }
    };
    let mut log = reply.log.unwrap_or_default();
    if log.len() > 64 * 1024 {
        let cut = log.len() - 64 * 1024;
        let cut = (cut..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log = format!("[… {cut} earlier bytes dropped …]\n{}", &log[cut..]);
    }
    let output = PathBuf::from(&job.output_path);
    let written = match (reply.model_base64, reply.model_path) {
        (Some(b64), _) => match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
            Ok(bytes) => tokio::fs::write(&output, bytes)
                .await
                .map_err(|e| format!("writing {}: {e}", output.display())),
            Err(e) => Err(format!("webhook reply: model_base64 is not base64: {e}")),
        },
        (None, Some(path)) => tokio::fs::copy(&path, &output)
            .await
            .map(|_| ())
            .map_err(|e| format!("webhook reply: cannot copy model_path {path}: {e}")),
        (None, None) => Err("webhook reply has neither `model_base64` nor `model_path`".into()),
    };
    if let Err(reason) = written {
        return HookResult::failed(log, None, reason);
    }
    let metrics = numeric_metrics(reply.metrics, &mut log);
    HookResult {
        log,
        exit_code: None,
        outcome: Ok(HookOutput {
            model_path: output,
            metrics,
        }),
    }
}

async fn run_builtin(cfg: &BuiltinHook, job: &HookJob) -> HookResult {
    if !job.is_classification() {
        return HookResult::failed(
            String::new(),
            None,
            "the builtin trainer only trains classifiers; configure an exec or webhook hook \
             for this regression model",
        );
    }
    let csv = match tokio::fs::read_to_string(&job.dataset.path).await {
        Ok(c) => c,
        Err(e) => {
            return HookResult::failed(
                String::new(),
                None,
                format!("cannot read the dataset {}: {e}", job.dataset.path),
            );
        }
    };
    let base = match (&job.base_model_path, cfg.warm_start) {
        (Some(path), true) => tokio::fs::read(path).await.ok(),
        _ => None,
    };
    let opts = cfg.options();
    let label_column = job.label_column.clone();
    let output = PathBuf::from(&job.output_path);
    let metrics_path = PathBuf::from(&job.metrics_path);
    let work = tokio::task::spawn_blocking(move || {
        train_builtin(
            &csv,
            &label_column,
            base.as_deref(),
            &opts,
            &output,
            &metrics_path,
        )
    });
    match tokio::time::timeout(cfg.timeout, work).await {
        Err(_) => HookResult::failed(
            String::new(),
            None,
            format!(
                "timeout after {}",
                drover_protocol::duration::format(cfg.timeout)
            ),
        ),
        Ok(Err(e)) => HookResult::failed(String::new(), None, format!("trainer task failed: {e}")),
        Ok(Ok((log, Err(reason)))) => HookResult::failed(log, None, reason),
        Ok(Ok((log, Ok(metrics)))) => HookResult {
            log,
            exit_code: None,
            outcome: Ok(HookOutput {
                model_path: PathBuf::from(&job.output_path),
                metrics,
            }),
        },
    }
}

/// Trains on the labelled rows; returns the log and the metrics (or why not).
fn train_builtin(
    csv: &str,
    label_column: &str,
    base_onnx: Option<&[u8]>,
    opts: &crate::train::TrainOptions,
    output: &Path,
    metrics_path: &Path,
) -> (String, Result<BTreeMap<String, f64>, String>) {
    let mut log = String::new();
    let data = match Dataset::from_csv_reader(labelled_only(csv).as_bytes(), label_column) {
        Ok(d) => d,
        Err(TrainError::NoRows) => {
            return (
                log,
                Err("the dataset has no labelled rows to train on".into()),
            );
        }
        Err(e) => return (log, Err(format!("dataset: {e}"))),
    };
    log.push_str(&format!(
        "{} labelled rows, {} features, classes {:?}\n",
        data.rows.len(),
        data.feature_names.len(),
        data.classes
    ));
    let base = base_onnx.and_then(|bytes| match load_base_from_onnx(bytes) {
        Ok(m) if m.classes == data.classes && m.feature_names.len() == data.feature_names.len() => {
            Some(m)
        }
        Ok(m) => {
            log.push_str(&format!(
                "base model has classes {:?}; training from scratch\n",
                m.classes
            ));
            None
        }
        Err(e) => {
            log.push_str(&format!("no warm start: {e}\n"));
            None
        }
    });
    // The dataset's column names are the manifest's; a trainer-made base
    // may name them differently (e.g. after a rename), which is harmless.
    let base = base.map(|mut m| {
        m.feature_names = data.feature_names.clone();
        m
    });
    let warm = base.is_some();
    let report = match train(&data, base.as_ref(), opts) {
        Ok(r) => r,
        Err(e) => return (log, Err(format!("training failed: {e}"))),
    };
    log.push_str(&format!(
        "{} epochs{}: train accuracy {:.4}, holdout accuracy {:.4} on {} rows, loss {:.4}\n",
        report.epochs,
        if warm { " (warm start)" } else { "" },
        report.train_accuracy,
        report.holdout_accuracy,
        report.holdout_rows,
        report.train_loss
    ));
    let mut metrics = BTreeMap::from([
        ("train_accuracy".to_owned(), report.train_accuracy),
        ("train_loss".to_owned(), report.train_loss),
        ("train_rows".to_owned(), report.train_rows as f64),
        ("holdout_rows".to_owned(), report.holdout_rows as f64),
        ("epochs".to_owned(), report.epochs as f64),
        ("warm_start".to_owned(), if warm { 1.0 } else { 0.0 }),
    ]);
    if report.holdout_accuracy.is_finite() {
        metrics.insert("holdout_accuracy".to_owned(), report.holdout_accuracy);
    }
    if let Err(e) = std::fs::write(output, to_onnx(&report.model)) {
        return (log, Err(format!("writing {}: {e}", output.display())));
    }
    if let Ok(json) = serde_json::to_vec_pretty(&metrics) {
        // Informational copy for operators; the job records the metrics.
        let _ = std::fs::write(metrics_path, json);
    }
    (log, Ok(metrics))
}

/// What validation learned about a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelCheck {
    /// Size in bytes.
    pub bytes: u64,
    /// Widths of the rank-2 outputs for one row (`[1, C]`), in graph order.
    pub output_widths: Vec<usize>,
}

/// Checks a hook's output: exists, non-empty, at most [`MAX_MODEL_BYTES`],
/// loads through the registry's loader (drover-onnx) with `features` inputs per row, runs one row, and (when
/// `classes` is given) has a `[N, classes]` output.
pub(crate) fn validate_model(
    path: &Path,
    features: usize,
    classes: Option<usize>,
) -> Result<ModelCheck, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("the hook wrote no model at {}: {e}", path.display()))?;
    if meta.len() == 0 {
        return Err(format!("the hook's model {} is empty", path.display()));
    }
    if meta.len() > MAX_MODEL_BYTES {
        return Err(format!(
            "the hook's model is {} bytes; the limit is {MAX_MODEL_BYTES}",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let check = check_onnx(&bytes, features, classes).map_err(|e| format!("invalid model: {e}"))?;
    Ok(check)
}

fn check_onnx(bytes: &[u8], features: usize, classes: Option<usize>) -> Result<ModelCheck, String> {
    // The registry's loader, so a model that passes here pushes too.
    let model = LoadedModel::load(bytes).map_err(|e| e.to_string())?;
    let [input] = model.inputs.as_slice() else {
        return Err(format!(
            "the model has {} inputs; a retrained model takes the base model's one input",
            model.inputs.len()
        ));
    };
    // Catch a wrong width with a clear message before a shape error.
    if input.shape.len() == 2
        && let Some(Some(declared)) = input.shape.get(1)
        && *declared as usize != features
    {
        return Err(format!(
            "input `{}` takes {declared} features per row; the base model takes {features}",
            input.name
        ));
    }
    let outputs = model
        .run(&[vec![0.0; features]])
        .map_err(|e| format!("running one row failed: {e}"))?;
    let output_widths: Vec<usize> = outputs
        .iter()
        .filter(|t| t.rank() == 2)
        .filter_map(|t| t.shape().get(1).copied())
        .collect();
    if let Some(classes) = classes {
        if !output_widths.contains(&classes) {
            return Err(format!(
                "a classifier for {classes} classes needs a [N, {classes}] output; \
                 the model's 2-D outputs have widths {output_widths:?}"
            ));
        }
    }
    Ok(ModelCheck {
        bytes: bytes.len() as u64,
        output_widths,
    })
}
