//! The retraining section of the controller's TOML config file.
//!
//! The file is `DATA_DIR/controller.toml` unless `--config` names another;
//! only its `[retrain.<model>]` tables are read here (other sections belong
//! to other parts of the controller and are ignored). A model without a
//! table is never evaluated on a schedule, but `drover retrain run` and
//! `drover drift` still work for it with [`ModelRetrainConfig::default`].
//!
//! ```toml
//! [retrain.sensor-clf]
//! # DriftPolicyConfig settings sit directly in the model's table
//! # (see crate::core::drift::DriftPolicyConfig for each one and its default).
//! psi_threshold = 0.1          # a window drifts when a PSI is above this
//! consecutive = 2              # drifting windows in a row that trigger
//! min_samples = 1000           # fewer samples: the window is inconclusive
//! cooldown_secs = 86400        # no new trigger for this long after one
//! interval = "10m"             # how often drift is evaluated
//! window = "1h"                # the time range each evaluation covers
//! cohort_key = "region"        # evaluate per value of this label; the worst cohort counts
//!
//! [retrain.sensor-clf.capture]
//! devices = 5                  # drifting devices asked for samples, worst first
//! samples_per_device = 500
//! max_bytes_per_device = 262144
//! timeout = "10m"              # stop waiting for uploads after this
//!
//! [retrain.sensor-clf.dataset]
//! label_column = "label"
//! min_labelled_rows = 200      # fewer captured labelled rows: top up from the reference CSV
//! max_reference_rows = 5000
//!
//! [retrain.sensor-clf.hook]
//! kind = "exec"                # "builtin" (default), "exec" or "webhook"
//! command = "python3"
//! args = ["examples/hooks/sklearn_hook.py"]
//! timeout = "30m"
//! env = { OMP_NUM_THREADS = "1" }
//!
//! [retrain.sensor-clf.auto_rollout]
//! enabled = true
//! waves = [1, 10, 50, 100]
//! bake = "10m"
//! gates = ["p95_latency_ratio<=1.2", "error_rate_delta<=0.01", "output_psi<=0.2"]
//! ```
//!
//! Durations are strings with a unit (`500ms`, `30s`, `10m`, `2h`, `1d`) or
//! plain integers meaning seconds. Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use drover_protocol::{ModelName, Version};
use serde::{Deserialize, Serialize};

use crate::core::drift::DriftPolicyConfig;
use crate::core::rollout::{Gate, RolloutSpec};
use crate::train::TrainOptions;

/// File name of the controller config inside the data dir.
pub(crate) const CONFIG_FILE: &str = "controller.toml";

/// Keys of a `[retrain.<model>]` table that are not drift policy settings.
const MODEL_KEYS: [&str; 7] = [
    "interval",
    "window",
    "cohort_key",
    "capture",
    "dataset",
    "hook",
    "auto_rollout",
];

/// Why the config was refused. Every message names the file and the table.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or `[retrain]` is not a table of tables.
    #[error("{origin}: {message}")]
    Syntax {
        /// The file, or `<config>` for a string.
        origin: String,
        /// What is wrong, with the line when TOML knows it.
        message: String,
    },
    /// One model's table is invalid.
    #[error("{origin}: [retrain.{model}]: {message}")]
    Model {
        /// The file, or `<config>` for a string.
        origin: String,
        /// The table's model name.
        model: String,
        /// What is wrong.
        message: String,
    },
}

/// The retraining policies, by model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RetrainConfig {
    /// One entry per `[retrain.<model>]` table.
    pub models: BTreeMap<ModelName, ModelRetrainConfig>,
}

impl RetrainConfig {
    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RetrainConfig, ConfigError> {
        let syntax = |message: String| ConfigError::Syntax {
            origin: origin.to_owned(),
            message,
        };
        let root: toml::Table = toml::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let Some(retrain) = root.get("retrain") else {
            return Ok(RetrainConfig::default());
        };
        let retrain = retrain.as_table().ok_or_else(|| {
            syntax("`retrain` must be a table of [retrain.<model>] tables".into())
        })?;
        let mut models = BTreeMap::new();
        for (name, value) in retrain {
            let model_err = |message: String| ConfigError::Model {
                origin: origin.to_owned(),
                model: name.clone(),
                message,
            };
            let model = ModelName::new(name.as_str()).map_err(|e| model_err(e.to_string()))?;
            let table = value
                .as_table()
                .ok_or_else(|| model_err("must be a table".into()))?;
            let config = ModelRetrainConfig::from_table(table).map_err(model_err)?;
            models.insert(model, config);
        }
        Ok(RetrainConfig { models })
    }

    /// The policy for `model`: its table, or the defaults.
    pub fn for_model(&self, model: &ModelName) -> ModelRetrainConfig {
        self.models.get(model).cloned().unwrap_or_default()
    }
}

/// Everything about retraining one model. See the module docs for the file
/// format; each field documents its default.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRetrainConfig {
    /// When drift triggers (thresholds, consecutive windows, minimum
    /// samples, cooldown, device share). Default [`DriftPolicyConfig::default`].
    pub policy: DriftPolicyConfig,
    /// Time between evaluations. Default 10 min.
    #[serde(with = "drover_protocol::duration::serde_text")]
    pub interval: Duration,
    /// Time range each evaluation covers, ending now. Default 1 h: long
    /// enough for `min_samples` on a modest fleet, short enough that drift
    /// shows within a few evaluations.
    #[serde(with = "drover_protocol::duration::serde_text")]
    pub window: Duration,
    /// If set, drift is evaluated per value of this device label and the
    /// worst cohort is what the policy sees, so drift confined to one region
    /// is not diluted by the rest of the fleet. Default none.
    pub cohort_key: Option<String>,
    /// Which devices are asked for samples, and how many.
    pub capture: CaptureConfig,
    /// How the job's dataset is assembled.
    pub dataset: DatasetConfig,
    /// What trains the new model. Default [`HookConfig::Builtin`].
    pub hook: HookConfig,
    /// Whether a pushed version is rolled out at once. Default off.
    pub auto_rollout: AutoRolloutConfig,
}

impl Default for ModelRetrainConfig {
    fn default() -> Self {
        Self {
            policy: DriftPolicyConfig::default(),
            interval: Duration::from_secs(10 * 60),
            window: Duration::from_secs(60 * 60),
            cohort_key: None,
            capture: CaptureConfig::default(),
            dataset: DatasetConfig::default(),
            hook: HookConfig::default(),
            auto_rollout: AutoRolloutConfig::default(),
        }
    }
}

/// The non-policy keys of a model table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelKeys {
    #[serde(default, with = "drover_protocol::duration::serde_text::option")]
    interval: Option<Duration>,
    #[serde(default, with = "drover_protocol::duration::serde_text::option")]
    window: Option<Duration>,
    cohort_key: Option<String>,
    capture: Option<CaptureConfig>,
    dataset: Option<DatasetConfig>,
    hook: Option<HookConfig>,
    auto_rollout: Option<AutoRolloutConfig>,
}

impl ModelRetrainConfig {
    /// Splits a model table into this module's keys and the drift policy's
    /// (which sit side by side in the file), parses both and validates.
    fn from_table(table: &toml::Table) -> Result<ModelRetrainConfig, String> {
        let (mine, policy): (toml::Table, toml::Table) = table
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| MODEL_KEYS.contains(&k.as_str()));
        let keys: ModelKeys = toml::Value::Table(mine)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        let policy: DriftPolicyConfig =
            toml::Value::Table(policy)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    format!(
                        "{}; the other keys of a model table are {}",
                        e.message().trim_end(),
                        MODEL_KEYS.join(", ")
                    )
                })?;
        let defaults = ModelRetrainConfig::default();
        let config = ModelRetrainConfig {
            policy,
            interval: keys.interval.unwrap_or(defaults.interval),
            window: keys.window.unwrap_or(defaults.window),
            cohort_key: keys.cohort_key,
            capture: keys.capture.unwrap_or_default(),
            dataset: keys.dataset.unwrap_or_default(),
            hook: keys.hook.unwrap_or_default(),
            auto_rollout: keys.auto_rollout.unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting; the message names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        self.policy.validate().map_err(|e| e.to_string())?;
        if self.interval < Duration::from_secs(1) {
            return Err("`interval` must be at least 1s".into());
        }
        if self.window < Duration::from_secs(1) {
            return Err("`window` must be at least 1s".into());
        }
        if self.cohort_key.as_deref().is_some_and(str::is_empty) {
            return Err("`cohort_key` must not be empty".into());
        }
        self.capture.validate()?;
        self.dataset.validate()?;
        self.hook.validate()?;
        self.auto_rollout.validate()?;
        Ok(())
    }

    /// The window length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        millis(self.window)
    }

    /// The interval in milliseconds.
    pub fn interval_ms(&self) -> u64 {
        millis(self.interval)
    }
}

/// Which devices are asked for captured samples when a job starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Devices asked: drifting ones worst first, then the next highest
    /// scores, then other online devices of the drifting cohort. Default 5.
    pub devices: usize,
    /// `max_samples` of each Capture command. Default 500.
    pub samples_per_device: u32,
    /// `max_bytes` of each Capture command; uploads beyond it are dropped.
    /// Default 256 KiB (≈ 500 rows of 100 features).
    pub max_bytes_per_device: u32,
    /// How long to wait for the devices' last parts. Default 10 min; what
    /// arrived by then is used.
    #[serde(with = "drover_protocol::duration::serde_text")]
    pub timeout: Duration,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            devices: 5,
            samples_per_device: 500,
            max_bytes_per_device: 256 * 1024,
            timeout: Duration::from_secs(10 * 60),
        }
    }
}

impl CaptureConfig {
    fn validate(&self) -> Result<(), String> {
        if self.devices > 1_000 {
            return Err(format!(
                "`capture.devices` is {}; at most 1000 devices are asked",
                self.devices
            ));
        }
        if self.samples_per_device == 0 || self.max_bytes_per_device == 0 {
            return Err(
                "`capture.samples_per_device` and `capture.max_bytes_per_device` must be > 0"
                    .into(),
            );
        }
        if self.timeout.is_zero() {
            return Err("`capture.timeout` must be > 0".into());
        }
        Ok(())
    }

    /// The timeout in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        millis(self.timeout)
    }
}

/// How a job's dataset is assembled from captured samples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    /// Name of the label column in the dataset CSV. Default `label`.
    pub label_column: String,
    /// When fewer captured rows than this carry a label, rows of the base
    /// version's reference CSV (when the registry kept it) are appended, so
    /// the trainer sees every class and enough labels. Default 200.
    pub min_labelled_rows: usize,
    /// At most this many reference rows are appended (evenly spaced over
    /// the file). Default 5,000.
    pub max_reference_rows: usize,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            label_column: "label".into(),
            min_labelled_rows: 200,
            max_reference_rows: 5_000,
        }
    }
}

impl DatasetConfig {
    fn validate(&self) -> Result<(), String> {
        let name = &self.label_column;
        if name.is_empty() || name.contains([',', '"', '\n', '\r']) {
            return Err(format!(
                "`dataset.label_column` {name:?} must be non-empty without commas or quotes"
            ));
        }
        Ok(())
    }
}

/// What trains the new model. The `kind` key picks the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HookConfig {
    /// Drover's reference trainer ([`crate::train`]), in process.
    Builtin(BuiltinHook),
    /// A command: job JSON on stdin and in `DROVER_JOB_FILE`, writes the
    /// model to `DROVER_OUTPUT`.
    Exec(ExecHook),
    /// An HTTP POST of the job JSON; the reply carries the model.
    Webhook(WebhookHook),
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig::Builtin(BuiltinHook::default())
    }
}

impl HookConfig {
    /// `builtin`, `exec` or `webhook`.
    pub fn kind(&self) -> &'static str {
        match self {
            HookConfig::Builtin(_) => "builtin",
            HookConfig::Exec(_) => "exec",
            HookConfig::Webhook(_) => "webhook",
        }
    }

    /// How long the hook may run.
    pub fn timeout(&self) -> Duration {
        match self {
            HookConfig::Builtin(h) => h.timeout,
            HookConfig::Exec(h) => h.timeout,
            HookConfig::Webhook(h) => h.timeout,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.timeout().is_zero() {
            return Err("`hook.timeout` must be > 0".into());
        }
        match self {
            HookConfig::Builtin(h) => h.options().validate_public(),
            HookConfig::Exec(h) => {
                if h.command.trim().is_empty() {
                    return Err("`hook.command` must not be empty".into());
                }
                if h.max_log_bytes < 1024 {
                    return Err("`hook.max_log_bytes` must be at least 1024".into());
                }
                Ok(())
            }
            HookConfig::Webhook(h) => {
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err(format!(
                        "`hook.url` {:?} must start with http:// or https://",
                        h.url
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Settings of the builtin trainer. Defaults are [`TrainOptions::default`]
/// plus warm start on and a 30 min timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltinHook {
    /// Gradient steps. Default 200.
    pub epochs: usize,
    /// Step size in units of 1/L. Default 0.5.
    pub learning_rate: f32,
    /// L2 penalty. Default 1e-4.
    pub l2: f32,
    /// Holdout share for the reported accuracy. Default 0.2.
    pub holdout_fraction: f32,
    /// Seed of the holdout split.
    pub seed: u64,
    /// Start from the base version's weights when it was written by this
    /// trainer (other models train from scratch). Default true.
    pub warm_start: bool,
    /// Default 30 min.
    #[serde(with = "drover_protocol::duration::serde_text")]
    pub timeout: Duration,
}

impl Default for BuiltinHook {
    fn default() -> Self {
        let t = TrainOptions::default();
        Self {
            epochs: t.epochs,
            learning_rate: t.learning_rate,
            l2: t.l2,
            holdout_fraction: t.holdout_fraction,
            seed: t.seed,
            warm_start: true,
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

impl BuiltinHook {
    /// The trainer options.
    pub fn options(&self) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs,
            learning_rate: self.learning_rate,
            l2: self.l2,
            seed: self.seed,
            holdout_fraction: self.holdout_fraction,
        }
    }
}

/// `TrainOptions` keeps its check private; the same rules, for config errors.
trait ValidatePublic {
    fn validate_public(&self) -> Result<(), String>;
}

impl ValidatePublic for TrainOptions {
    fn validate_public(&self) -> Result<(), String> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!(
                "`hook.learning_rate` {} must be > 0",
                self.learning_rate
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(format!("`hook.l2` {} must be >= 0", self.l2));
        }
        if !(0.0..1.0).contains(&self.holdout_fraction) {
            return Err(format!(
                "`hook.holdout_fraction` {} must be in [0, 1)",
                self.holdout_fraction
            ));
        }
        Ok(())
    }
}

/// A command run per job. See [`crate::retraining::hook`] for its contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecHook {
    /// Program (looked up on `PATH` when it has no slash).
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables (the controller's own are inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the process group and fail the job after this. Default 30 min.
    #[serde(
        default = "default_hook_timeout",
        with = "drover_protocol::duration::serde_text"
    )]
    pub timeout: Duration,
    /// Bytes kept of stdout and of stderr each (the tail). Default 64 KiB.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: usize,
    /// Working directory. Default: the job directory.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
}

/// An HTTP endpoint called per job. See [`crate::retraining::hook`] for the
/// request and reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookHook {
    /// `http://` URL (this build's HTTP client has no TLS; put an HTTPS
    /// endpoint behind a local proxy).
    pub url: String,
    /// Whole request, reply included. Default 30 min.
    #[serde(
        default = "default_hook_timeout",
        with = "drover_protocol::duration::serde_text"
    )]
    pub timeout: Duration,
    /// Extra request headers (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Send the dataset CSV inside the job JSON (`dataset_csv`), for
    /// trainers that cannot read the controller's disk. Default true.
    #[serde(default = "default_true")]
    pub inline_dataset: bool,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

fn default_max_log_bytes() -> usize {
    64 * 1024
}

fn default_true() -> bool {
    true
}

/// Whether and how a pushed version is rolled out by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoRolloutConfig {
    /// Default false: the new version is pushed (alias `candidate`) and an
    /// operator starts the rollout.
    pub enabled: bool,
    /// Cumulative wave percentages. Default 1, 10, 50, 100.
    pub waves: Vec<f64>,
    /// Bake time per wave. Default 10 min.
    #[serde(with = "drover_protocol::duration::serde_text")]
    pub bake: Duration,
    /// Optional shadow phase on the first wave.
    #[serde(with = "drover_protocol::duration::serde_text::option")]
    pub shadow: Option<Duration>,
    /// Gate expressions (`p95_latency_ratio<=1.2`); empty means the rollout
    /// engine's defaults.
    pub gates: Vec<String>,
}

impl Default for AutoRolloutConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            waves: crate::core::rollout::spec::DEFAULT_WAVES.to_vec(),
            bake: Duration::from_millis(crate::core::rollout::spec::DEFAULT_BAKE_MS),
            shadow: None,
            gates: Vec::new(),
        }
    }
}

impl AutoRolloutConfig {
    fn validate(&self) -> Result<(), String> {
        let probe = ModelName::new("probe").map_err(|e| e.to_string())?;
        self.rollout_spec("probe".into(), probe, Version(1), None)
            .map(|_| ())
            .map_err(|e| format!("auto_rollout: {e}"))
    }

    /// The rollout spec for `model@version`: these waves, bake, shadow and
    /// gates, everything else the rollout engine's defaults; `cohort_key`
    /// joins the canary's stratification keys.
    pub fn rollout_spec(
        &self,
        id: String,
        model: ModelName,
        version: Version,
        cohort_key: Option<&str>,
    ) -> Result<RolloutSpec, String> {
        let gates = self
            .gates
            .iter()
            .map(|g| g.parse::<Gate>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut spec = RolloutSpec::new(id, model, version);
        spec.waves = self.waves.clone();
        spec.bake_ms = millis(self.bake);
        spec.shadow_ms = self.shadow.map(millis);
        spec.gates = gates;
        if let Some(key) = cohort_key {
            if !spec.cohort_keys.iter().any(|k| k == key) {
                spec.cohort_keys.push(key.to_owned());
            }
        }
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

pub(crate) use drover_protocol::duration::millis;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RetrainConfig, ConfigError> {
        RetrainConfig::parse(text, "test.toml")
    }

    fn model(name: &str) -> ModelName {
        ModelName::new(name).unwrap()
    }

    #[test]
    fn empty_file_and_other_sections_mean_no_policies() {
        assert!(parse("").unwrap().models.is_empty());
        let c = parse("[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        assert!(c.models.is_empty());
        assert_eq!(c.for_model(&model("x")), ModelRetrainConfig::default());
    }

    #[test]
    fn an_empty_model_table_takes_every_default() {
        let c = parse("[retrain.sensor-clf]\n").unwrap();
        let m = &c.models[&model("sensor-clf")];
        assert_eq!(*m, ModelRetrainConfig::default());
        assert_eq!(m.interval, Duration::from_secs(600));
        assert_eq!(m.window, Duration::from_secs(3600));
        assert_eq!(m.policy, DriftPolicyConfig::default());
        assert_eq!(m.capture.devices, 5);
        assert_eq!(m.dataset.label_column, "label");
        assert!(matches!(&m.hook, HookConfig::Builtin(b) if b.warm_start && b.epochs == 200));
        assert!(!m.auto_rollout.enabled);
        assert_eq!(m.auto_rollout.waves, vec![1.0, 10.0, 50.0, 100.0]);
    }

    #[test]
    fn full_model_table() {
        let c = parse(
            r#"
[retrain.sensor-clf]
psi_threshold = 0.2
consecutive = 3
min_samples = 500
cooldown_secs = 3600
max_share_drifting = 0.1
interval = "5m"
window = 7200
cohort_key = "region"

[retrain.sensor-clf.capture]
devices = 3
samples_per_device = 100
timeout = "90s"

[retrain.sensor-clf.dataset]
min_labelled_rows = 50

[retrain.sensor-clf.hook]
kind = "exec"
command = "python3"
args = ["hook.py", "--fast"]
timeout = "2m"
env = { A = "1" }

[retrain.sensor-clf.auto_rollout]
enabled = true
waves = [5, 100]
bake = "1m"
gates = ["p95_latency_ratio<=1.5", "output_psi<=0.3"]

[retrain.other]
hook = { kind = "webhook", url = "http://trainer:9000/train" }
"#,
        )
        .unwrap();
        let m = &c.models[&model("sensor-clf")];
        assert_eq!(m.policy.psi_threshold, 0.2);
        assert_eq!(m.policy.consecutive, 3);
        assert_eq!(m.policy.min_samples, 500);
        assert_eq!(m.policy.cooldown, Duration::from_secs(3600));
        assert_eq!(m.policy.max_share_drifting, Some(0.1));
        assert_eq!(m.interval, Duration::from_secs(300));
        assert_eq!(m.window, Duration::from_secs(7200));
        assert_eq!(m.cohort_key.as_deref(), Some("region"));
        assert_eq!(m.capture.devices, 3);
        assert_eq!(m.capture.samples_per_device, 100);
        assert_eq!(m.capture.max_bytes_per_device, 256 * 1024);
        assert_eq!(m.capture.timeout, Duration::from_secs(90));
        assert_eq!(m.dataset.min_labelled_rows, 50);
        assert_eq!(m.dataset.max_reference_rows, 5_000);
        let HookConfig::Exec(exec) = &m.hook else {
            panic!("{:?}", m.hook)
        };
        assert_eq!(exec.command, "python3");
        assert_eq!(exec.args, ["hook.py", "--fast"]);
        assert_eq!(exec.timeout, Duration::from_secs(120));
        assert_eq!(exec.env["A"], "1");
        assert_eq!(exec.max_log_bytes, 64 * 1024);
        let spec = m
            .auto_rollout
            .rollout_spec("r-1".into(), model("sensor-clf"), Version(4), Some("site"))
            .unwrap();
        assert_eq!(spec.waves, vec![5.0, 100.0]);
        assert_eq!(spec.bake_ms, 60_000);
        assert_eq!(spec.gates.len(), 2);
        assert!(spec.cohort_keys.iter().any(|k| k == "site"));
        let HookConfig::Webhook(w) = &c.models[&model("other")].hook else {
            panic!()
        };
        assert_eq!(w.timeout, Duration::from_secs(1800));
        assert!(w.inline_dataset);
    }

    #[test]
    fn errors_name_the_file_table_and_key() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        let e = err("[retrain.m]\npsi_treshold = 0.2\n");
        assert!(e.starts_with("test.toml: [retrain.m]: "), "{e}");
        assert!(e.contains("psi_treshold"), "{e}");
        assert!(e.contains("interval"), "lists this module's keys too: {e}");
        let e = err("[retrain.m]\npsi_threshold = -1.0\n");
        assert!(e.contains("psi_threshold"), "{e}");
        let e = err("[retrain.m]\ninterval = \"10 parsecs\"\n");
        assert!(e.contains("not a duration"), "{e}");
        let e = err("[retrain.m.hook]\nkind = \"exec\"\n");
        assert!(e.contains("command"), "{e}");
        let e = err("[retrain.m.hook]\nkind = \"exec\"\ncommand = \"x\"\ntimeot = 5\n");
        assert!(e.contains("timeot"), "{e}");
        let e = err("[retrain.m.hook]\nkind = \"magic\"\n");
        assert!(e.contains("magic"), "{e}");
        let e = err("[retrain.m.hook]\nkind = \"webhook\"\nurl = \"ftp://x\"\n");
        assert!(e.contains("http://"), "{e}");
        let e = err("[retrain.m.auto_rollout]\nwaves = [50, 10]\n");
        assert!(e.contains("auto_rollout"), "{e}");
        let e = err("[retrain.m.auto_rollout]\ngates = [\"speed>3\"]\n");
        assert!(e.contains("speed"), "{e}");
        let e = err("[retrain.m.capture]\ndevices = 5000\n");
        assert!(e.contains("capture.devices"), "{e}");
        let e = err("[retrain.Bad_Name]\n");
        assert!(e.contains("[retrain.Bad_Name]"), "{e}");
        let e = err("retrain = 3\n");
        assert!(e.contains("table"), "{e}");
        let e = err("[retrain.m\n");
        assert!(e.starts_with("test.toml: "), "{e}");
    }
}
