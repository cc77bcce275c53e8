//! What an operator asks for: [`RolloutSpec`], its [`Selector`] and [`Gate`]s,
//! the defaults, validation, and parsers for the CLI's textual forms
//! (`region=eu,hw=pi4`, `p95_latency_ratio<=1.2`, `10m`, `5%`, `1,10,50,100`).

use std::fmt;
use std::str::FromStr;

use drover_protocol::labels::Selector;
use drover_protocol::manifest::AgentVersion;
use drover_protocol::{ModelName, Version};
use serde::{Deserialize, Serialize};

/// Default cumulative wave percentages.
pub const DEFAULT_WAVES: [f64; 4] = [1.0, 10.0, 50.0, 100.0];
/// Default bake time per wave: 10 minutes.
pub const DEFAULT_BAKE_MS: u64 = 10 * 60_000;
/// Default minimum sample size per gate and cohort.
pub const DEFAULT_MIN_SAMPLES: u64 = 500;
/// Default deadline for a device to report after a command: 5 minutes.
pub const DEFAULT_DEVICE_TIMEOUT_MS: u64 = 5 * 60_000;
/// Default largest share of a wave that may be silent and still advance.
pub const DEFAULT_MAX_SILENT: f64 = 0.05;
/// Default largest share of a wave whose install may fail before the wave fails.
pub const DEFAULT_MAX_FAILED: f64 = 0.05;
/// Default number of attempts (first try included) for a retryable failure.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default delay before the first retry; doubled for every further one.
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 30_000;
/// Longest delay between retries, however many attempts came before.
pub const MAX_RETRY_BACKOFF_MS: u64 = 60 * 60_000;
/// Default rollback rate: devices commanded per minute.
pub const DEFAULT_ROLLBACK_RATE_PER_MIN: u32 = 600;
/// Default inconclusive limit: a wave bakes at most this many bake times.
pub const DEFAULT_BAKE_LIMIT_FACTOR: u32 = 3;
/// Default interval between metrics requests while a stage bakes.
pub const DEFAULT_METRICS_INTERVAL_MS: u64 = 60_000;
/// Default label keys that define canary cohorts.
pub const DEFAULT_COHORT_KEYS: [&str; 2] = ["region", "hardware"];
/// Longest accepted rollout id.
pub const MAX_ROLLOUT_ID_LEN: usize = 64;

/// Why a spec, or one of its textual parts, was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// Rollout ids use the same alphabet as device ids: `[a-z0-9_-]`, 1..=64 bytes.
    #[error("rollout id {0:?} must be 1..=64 characters of a-z, 0-9, '_' or '-'")]
    BadId(String),
    /// The selector is not valid `k=v,...` labels.
    #[error(transparent)]
    Selector(#[from] drover_protocol::labels::LabelError),
    /// A gate expression did not parse.
    #[error(transparent)]
    Gate(#[from] GateParseError),
    /// No waves were given.
    #[error("at least two waves are needed (the canary needs a control cohort); got {0}")]
    TooFewWaves(usize),
    /// A wave percentage is not in (0, 100].
    #[error("wave {index} is {value}%; each wave must be in (0, 100]")]
    WaveOutOfRange {
        /// Position in the list.
        index: usize,
        /// The value given.
        value: f64,
    },
    /// Waves are cumulative, so each must exceed the one before.
    #[error("wave {index} ({value}%) does not exceed the wave before it ({previous}%)")]
    WavesNotIncreasing {
        /// Position in the list.
        index: usize,
        /// The value given.
        value: f64,
        /// The previous wave.
        previous: f64,
    },
    /// The last wave must cover every matching device.
    #[error("the last wave is {0}%; it must be 100")]
    LastWaveNot100(f64),
    /// A duration that must be positive is zero.
    #[error("{0} must be longer than 0 ms")]
    ZeroDuration(&'static str),
    /// A fraction is not in [0, 1).
    #[error("{field} is {value}; it must be a fraction in [0, 1)")]
    BadFraction {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A count that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A `shadow_agreement` gate without a shadow phase could never be measured.
    #[error("gate {0} needs a shadow phase (--shadow)")]
    ShadowGateWithoutShadow(String),
    /// Gates were given, but none applies to the waves.
    #[error("no gate applies to the waves (only shadow_agreement gates were given)")]
    NoWaveGates,
    /// A first install has no old version to compare with or to shadow.
    #[error(
        "a first install (no device runs the model yet) takes no gates and no shadow phase: there is nothing to compare against"
    )]
    InitialWithGates,
    /// A percentage or fraction string did not parse.
    #[error("{0:?} is not a percentage (5%) or a fraction (0.05)")]
    BadPercent(String),
    /// `--on-fail` is neither `rollback` nor `pause`.
    #[error("on-fail {0:?} must be rollback or pause")]
    BadOnFail(String),
    /// A wave list did not parse.
    #[error("wave list {0:?} is not a comma-separated list of percentages")]
    BadWaves(String),
    /// An agent rollout names a model.
    #[error("an agent rollout is of `agent`, not of model {0:?}")]
    AgentTarget(String),
    /// An agent has no shadow mode: two agents cannot share a device.
    #[error(
        "an agent rollout has no shadow phase (one agent runs per device); gate it on its waves"
    )]
    AgentShadow,
}

fn agent_target() -> ModelName {
    // A constant that validates: [a-z]+.
    ModelName::new(AGENT_TARGET).unwrap_or_else(|_| unreachable!("`agent` is a valid name"))
}

/// Why a gate expression did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateParseError {
    /// No comparison operator was found.
    #[error("gate {0:?} has no operator; expected METRIC<=X, <, >= or >")]
    MissingOperator(String),
    /// The metric name is not one of [`Metric::ALL`].
    #[error("unknown gate metric {name:?}; known: {known}")]
    UnknownMetric {
        /// The name given.
        name: String,
        /// The accepted names, comma-separated.
        known: String,
    },
    /// The threshold is not a finite number.
    #[error("gate threshold {0:?} is not a finite number")]
    BadThreshold(String),
}

/// What a gate measures. See the `rollout` module docs for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Canary p95 latency / control p95 latency.
    P95LatencyRatio,
    /// Canary p99 latency / control p99 latency.
    P99LatencyRatio,
    /// Canary error rate − control error rate.
    ErrorRateDelta,
    /// Canary accuracy − control accuracy, labelled inferences only.
    AccuracyDelta,
    /// PSI of the canary's output distribution against the control's.
    OutputPsi,
    /// Share of shadow comparisons where the candidate agreed with the active model.
    ShadowAgreement,
}

impl Metric {
    /// Every metric, in the order of their names in [`Metric::name`].
    pub const ALL: [Metric; 6] = [
        Metric::P95LatencyRatio,
        Metric::P99LatencyRatio,
        Metric::ErrorRateDelta,
        Metric::AccuracyDelta,
        Metric::OutputPsi,
        Metric::ShadowAgreement,
    ];

    /// The name used in gate expressions.
    pub fn name(self) -> &'static str {
        match self {
            Metric::P95LatencyRatio => "p95_latency_ratio",
            Metric::P99LatencyRatio => "p99_latency_ratio",
            Metric::ErrorRateDelta => "error_rate_delta",
            Metric::AccuracyDelta => "accuracy_delta",
            Metric::OutputPsi => "output_psi",
            Metric::ShadowAgreement => "shadow_agreement",
        }
    }

    /// True for the one metric measured in the shadow phase; all others gate waves.
    pub fn is_shadow(self) -> bool {
        matches!(self, Metric::ShadowAgreement)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A comparison between a measured value and a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `>`
    #[serde(rename = ">")]
    Gt,
}

impl Op {
    /// The operator as written in expressions.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Gt => ">",
        }
    }

    /// True when `value op threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Le => value <= threshold,
            Op::Lt => value < threshold,
            Op::Ge => value >= threshold,
            Op::Gt => value > threshold,
        }
    }
}

/// One pass/fail condition, e.g. `p95_latency_ratio<=1.2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// What is measured.
    pub metric: Metric,
    /// How it is compared.
    pub op: Op,
    /// With what.
    pub threshold: f64,
    /// Overrides [`RolloutSpec::min_samples`] for this gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
}

impl Gate {
    /// Builds a gate without a per-gate sample override.
    pub fn new(metric: Metric, op: Op, threshold: f64) -> Gate {
        Gate {
            metric,
            op,
            threshold,
            min_samples: None,
        }
    }

    /// Gates used when the operator gives none: `p95_latency_ratio<=1.2`,
    /// `p99_latency_ratio<=1.5`, `error_rate_delta<=0.01`, `output_psi<=0.2`,
    /// plus `shadow_agreement>=0.95` when there is a shadow phase.
    ///
    /// `accuracy_delta` is deliberately not a default: it needs ground-truth
    /// feedback, and a fleet without it would stay Inconclusive forever and
    /// every rollout would pause. Add `--gate 'accuracy_delta>=-0.02'` where
    /// applications send feedback.
    pub fn defaults(shadow: bool) -> Vec<Gate> {
        let mut gates = vec![
            Gate::new(Metric::P95LatencyRatio, Op::Le, 1.2),
            Gate::new(Metric::P99LatencyRatio, Op::Le, 1.5),
            Gate::new(Metric::ErrorRateDelta, Op::Le, 0.01),
            Gate::new(Metric::OutputPsi, Op::Le, 0.2),
        ];
        if shadow {
            gates.push(Gate::default_shadow());
        }
        gates
    }

    /// The shadow gate used when a shadow phase has no explicit one.
    pub fn default_shadow() -> Gate {
        Gate::new(Metric::ShadowAgreement, Op::Ge, 0.95)
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.metric, self.op.symbol(), self.threshold)
    }
}

impl FromStr for Gate {
    type Err = GateParseError;

    /// Parses `METRIC OP THRESHOLD` (spaces allowed), OP one of `<= < >= >`.
    fn from_str(s: &str) -> Result<Gate, GateParseError> {
        let pos = s
            .find(['<', '>'])
            .ok_or_else(|| GateParseError::MissingOperator(s.to_string()))?;
        let (name, rest) = s.split_at(pos);
        let (op, threshold) = if let Some(t) = rest.strip_prefix("<=") {
            (Op::Le, t)
        } else if let Some(t) = rest.strip_prefix(">=") {
            (Op::Ge, t)
        } else if let Some(t) = rest.strip_prefix('<') {
            (Op::Lt, t)
        } else if let Some(t) = rest.strip_prefix('>') {
            (Op::Gt, t)
        } else {
            return Err(GateParseError::MissingOperator(s.to_string()));
        };
        let name = name.trim();
        let metric = Metric::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| GateParseError::UnknownMetric {
                name: name.to_string(),
                known: Metric::ALL.map(Metric::name).join(", "),
            })?;
        let threshold = threshold.trim();
        let value: f64 = threshold
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| GateParseError::BadThreshold(threshold.to_string()))?;
        Ok(Gate::new(metric, op, value))
    }
}

/// What a failed wave leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// Staged rollback of every device that got the candidate.
    #[default]
    Rollback,
    /// Stop and wait for an operator.
    Pause,
}

impl FromStr for OnFail {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<OnFail, SpecError> {
        match s {
            "rollback" => Ok(OnFail::Rollback),
            "pause" => Ok(OnFail::Pause),
            _ => Err(SpecError::BadOnFail(s.to_string())),
        }
    }
}

/// What a rollout rolls out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutKind {
    /// A model version (`name@version`).
    #[default]
    Model,
    /// An agent release (`agent@major.minor.patch`): the spec's model is
    /// [`AGENT_TARGET`] and its versions are packed agent versions
    /// ([`AgentVersion::packed`]).
    Agent,
}

/// The name an agent rollout goes by (`agent@0.2.0`); the registry refuses
/// models of this name.
pub const AGENT_TARGET: &str = "agent";

/// Everything an operator decides about one rollout. Build with
/// [`RolloutSpec::new`] (all defaults), set fields, and [`RolloutSpec::validate`]
/// (which [`crate::core::rollout::Rollout::new`] also does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// Rollout id: `[a-z0-9_-]{1,64}`; also salts the device order.
    pub id: String,
    /// A model version, or an agent release.
    #[serde(default)]
    pub kind: RolloutKind,
    /// Model rolled out ([`AGENT_TARGET`] for an agent release).
    pub model: ModelName,
    /// Version rolled out.
    pub target: Version,
    /// Which devices take part.
    pub selector: Selector,
    /// Cumulative percentages of the matching devices, strictly increasing,
    /// each in (0, 100], the last 100, at least two.
    pub waves: Vec<f64>,
    /// How long each wave bakes before its gates may pass.
    pub bake_ms: u64,
    /// Length of the optional shadow phase on the first wave.
    pub shadow_ms: Option<u64>,
    /// Gates; empty means [`Gate::defaults`].
    pub gates: Vec<Gate>,
    /// Minimum samples per cohort for a gate to decide (see the module docs).
    pub min_samples: u64,
    /// A commanded device that has not reported by then is silent.
    pub device_timeout_ms: u64,
    /// What a failed wave leads to.
    pub on_fail: OnFail,
    /// Largest silent share of a wave that still lets it advance, in [0, 1).
    pub max_silent: f64,
    /// Largest failed-install share of a wave before the wave fails, in [0, 1).
    pub max_failed: f64,
    /// Attempts per device (first included) for retryable failures.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled per retry, capped at [`MAX_RETRY_BACKOFF_MS`].
    pub retry_backoff_ms: u64,
    /// Rollback commands per minute.
    pub rollback_rate_per_min: u32,
    /// Deploy commands per minute; `None` sends a wave's commands at once.
    pub deploy_rate_per_min: Option<u32>,
    /// Label keys whose values define the canary cohorts.
    pub cohort_keys: Vec<String>,
    /// Inconclusive limit: a stage bakes at most `bake × factor`, then pauses.
    pub bake_limit_factor: u32,
    /// Interval between metrics requests while a stage bakes.
    pub metrics_interval_ms: u64,
    /// Latency quantiles below this many microseconds count as this on
    /// both sides of a latency-ratio gate (`latency_floor`, default 1 ms;
    /// see [`LATENCY_RATIO_FLOOR_US`](super::gates::LATENCY_RATIO_FLOOR_US)).
    #[serde(default = "default_latency_floor_us")]
    pub latency_floor_us: u64,
    /// First install: no matching device runs any version of the model, so
    /// there is nothing to compare against. Waves advance on install success
    /// (failed and silent limits) and the full bake alone; comparison gates
    /// are refused. The shell sets this when it sees no installed version.
    #[serde(default)]
    pub initial: bool,
}

/// Default [`RolloutSpec::latency_floor_us`]: 1 ms (see
/// [`LATENCY_RATIO_FLOOR_US`](super::gates::LATENCY_RATIO_FLOOR_US) for why).
pub const DEFAULT_LATENCY_FLOOR_US: u64 = 1_000;

fn default_latency_floor_us() -> u64 {
    DEFAULT_LATENCY_FLOOR_US
}

impl RolloutSpec {
    /// A spec with every default: waves 1/10/50/100 %, bake 10 min, no shadow,
    /// default gates, 500 samples, 5 min device timeout, rollback on fail,
    /// 5 % silent, 5 % failed, 3 attempts from 30 s backoff, rollback at 600
    /// devices/min, unlimited deploy rate, cohorts by `region` and `hardware`,
    /// inconclusive limit 3 × bake, metrics every minute.
    pub fn new(id: impl Into<String>, model: ModelName, target: Version) -> RolloutSpec {
        RolloutSpec {
            id: id.into(),
            kind: RolloutKind::Model,
            model,
            target,
            selector: Selector::default(),
            waves: DEFAULT_WAVES.to_vec(),
            bake_ms: DEFAULT_BAKE_MS,
            shadow_ms: None,
            gates: Vec::new(),
            min_samples: DEFAULT_MIN_SAMPLES,
            device_timeout_ms: DEFAULT_DEVICE_TIMEOUT_MS,
            on_fail: OnFail::Rollback,
            max_silent: DEFAULT_MAX_SILENT,
            max_failed: DEFAULT_MAX_FAILED,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
            rollback_rate_per_min: DEFAULT_ROLLBACK_RATE_PER_MIN,
            deploy_rate_per_min: None,
            cohort_keys: DEFAULT_COHORT_KEYS.map(String::from).to_vec(),
            bake_limit_factor: DEFAULT_BAKE_LIMIT_FACTOR,
            metrics_interval_ms: DEFAULT_METRICS_INTERVAL_MS,
            latency_floor_us: default_latency_floor_us(),
            initial: false,
        }
    }

    /// A spec with every default for rolling out agent `version`.
    pub fn agent(id: impl Into<String>, version: AgentVersion) -> RolloutSpec {
        let mut spec = RolloutSpec::new(id, agent_target(), version.packed());
        spec.kind = RolloutKind::Agent;
        spec
    }

    /// `version` as operators write it: the number for a model, the
    /// `major.minor.patch` for an agent rollout.
    pub fn version_label(&self, version: Version) -> String {
        match self.kind {
            RolloutKind::Model => version.to_string(),
            RolloutKind::Agent => AgentVersion::from_packed(version)
                .map_or_else(|| version.to_string(), |v| v.to_string()),
        }
    }

    /// What is rolled out: `name@3`, `agent@0.2.0`.
    pub fn target_label(&self) -> String {
        format!("{}@{}", self.model, self.version_label(self.target))
    }

    /// Checks every rule listed on the fields; the first broken one is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ROLLOUT_ID_LEN
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !id_ok {
            return Err(SpecError::BadId(self.id.clone()));
        }
        if self.waves.len() < 2 {
            return Err(SpecError::TooFewWaves(self.waves.len()));
        }
        if self.kind == RolloutKind::Agent {
            if self.model.as_str() != AGENT_TARGET {
                return Err(SpecError::AgentTarget(self.model.to_string()));
            }
            if self.shadow_ms.is_some() {
                return Err(SpecError::AgentShadow);
            }
        }
        let mut previous = 0.0;
        for (index, &value) in self.waves.iter().enumerate() {
            if !(value > 0.0 && value <= 100.0) {
                return Err(SpecError::WaveOutOfRange { index, value });
            }
            if index > 0 && value <= previous {
                return Err(SpecError::WavesNotIncreasing {
                    index,
                    value,
                    previous,
                });
            }
            previous = value;
        }
        if previous != 100.0 {
            return Err(SpecError::LastWaveNot100(previous));
        }
        if self.bake_ms == 0 {
            return Err(SpecError::ZeroDuration("bake"));
        }
        if self.shadow_ms == Some(0) {
            return Err(SpecError::ZeroDuration("shadow"));
        }
        if self.device_timeout_ms == 0 {
            return Err(SpecError::ZeroDuration("device timeout"));
        }
        if self.latency_floor_us == 0 {
            return Err(SpecError::ZeroDuration("latency floor"));
        }
        if self.metrics_interval_ms == 0 {
            return Err(SpecError::ZeroDuration("metrics interval"));
        }
        for (field, value) in [
            ("max_silent", self.max_silent),
            ("max_failed", self.max_failed),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(SpecError::BadFraction { field, value });
            }
        }
        if self.max_attempts == 0 {
            return Err(SpecError::Zero("max_attempts"));
        }
        if self.rollback_rate_per_min == 0 {
            return Err(SpecError::Zero("rollback_rate_per_min"));
        }
        if self.deploy_rate_per_min == Some(0) {
            return Err(SpecError::Zero("deploy_rate_per_min"));
        }
        if self.bake_limit_factor == 0 {
            return Err(SpecError::Zero("bake_limit_factor"));
        }
        if self.min_samples == 0 {
            return Err(SpecError::Zero("min_samples"));
        }
        if self.initial && (!self.gates.is_empty() || self.shadow_ms.is_some()) {
            return Err(SpecError::InitialWithGates);
        }
        if !self.gates.is_empty() {
            if let Some(g) = self.gates.iter().find(|g| g.metric.is_shadow()) {
                if self.shadow_ms.is_none() {
                    return Err(SpecError::ShadowGateWithoutShadow(g.to_string()));
                }
            }
            if self.gates.iter().all(|g| g.metric.is_shadow()) {
                return Err(SpecError::NoWaveGates);
            }
            if let Some(g) = self.gates.iter().find(|g| !g.threshold.is_finite()) {
                return Err(GateParseError::BadThreshold(g.threshold.to_string()).into());
            }
        }
        Ok(())
    }

    /// Gates evaluated while a wave bakes (explicit, or the defaults); none
    /// for a first install.
    pub fn wave_gates(&self) -> Vec<Gate> {
        if self.initial {
            return Vec::new();
        }
        self.effective_gates()
            .into_iter()
            .filter(|g| !g.metric.is_shadow())
            .collect()
    }

    /// Gates evaluated at the end of the shadow phase: the explicit
    /// `shadow_agreement` gates, else [`Gate::default_shadow`].
    pub fn shadow_gates(&self) -> Vec<Gate> {
        let explicit: Vec<Gate> = self
            .gates
            .iter()
            .filter(|g| g.metric.is_shadow())
            .cloned()
            .collect();
        if explicit.is_empty() {
            vec![Gate::default_shadow()]
        } else {
            explicit
        }
    }

    fn effective_gates(&self) -> Vec<Gate> {
        if self.gates.is_empty() {
            Gate::defaults(self.shadow_ms.is_some())
        } else {
            self.gates.clone()
        }
    }

    /// The sample floor for `gate`: its own override, else the spec's.
    pub fn min_samples_for(&self, gate: &Gate) -> u64 {
        gate.min_samples.unwrap_or(self.min_samples)
    }
}

/// Parses `5%` as 0.05, or a bare fraction `0.05` as itself.
pub fn parse_fraction(s: &str) -> Result<f64, SpecError> {
    let t = s.trim();
    let bad = || SpecError::BadPercent(s.to_string());
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => t.parse::<f64>().map_err(|_| bad())?,
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(bad())
    }
}

/// Parses `1,10,50,100` (a `%` after each number is allowed). Validation of
/// the values is [`RolloutSpec::validate`]'s job.
pub fn parse_waves(s: &str) -> Result<Vec<f64>, SpecError> {
    s.split(',')
        .map(|w| {
            let w = w.trim();
            w.strip_suffix('%')
                .unwrap_or(w)
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| SpecError::BadWaves(s.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec::new("r1", ModelName::new("m").unwrap(), Version(2))
    }

    #[test]
    fn gates_parse_and_print() {
        for (s, m, op, t) in [
            (
                "p95_latency_ratio<=1.2",
                Metric::P95LatencyRatio,
                Op::Le,
                1.2,
            ),
            (
                "accuracy_delta>=-0.02",
                Metric::AccuracyDelta,
                Op::Ge,
                -0.02,
            ),
            (
                "error_rate_delta < 0.01",
                Metric::ErrorRateDelta,
                Op::Lt,
                0.01,
            ),
            ("output_psi<0.2", Metric::OutputPsi, Op::Lt, 0.2),
            (
                "shadow_agreement>0.95",
                Metric::ShadowAgreement,
                Op::Gt,
                0.95,
            ),
            (
                "p99_latency_ratio <= 1.5",
                Metric::P99LatencyRatio,
                Op::Le,
                1.5,
            ),
        ] {
            let g: Gate = s.parse().unwrap();
            assert_eq!((g.metric, g.op, g.threshold), (m, op, t), "{s}");
            assert_eq!(g.to_string().parse::<Gate>().unwrap(), g);
        }
    }

    #[test]
    fn gate_parse_errors_are_specific() {
        assert!(matches!(
            "p95_latency_ratio=1.2".parse::<Gate>(),
            Err(GateParseError::MissingOperator(_))
        ));
        let err = "p50_latency<=2".parse::<Gate>().unwrap_err();
        assert!(
            matches!(err, GateParseError::UnknownMetric { ref name, .. } if name == "p50_latency")
        );
        assert!(err.to_string().contains("shadow_agreement"));
        assert!(matches!(
            "output_psi<=abc".parse::<Gate>(),
            Err(GateParseError::BadThreshold(_))
        ));
        assert!(matches!(
            "output_psi<=inf".parse::<Gate>(),
            Err(GateParseError::BadThreshold(_))
        ));
    }

    #[test]
    fn validation_catches_each_rule() {
        assert_eq!(spec().validate(), Ok(()));
        type Mutate = Box<dyn Fn(&mut RolloutSpec)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (Box::new(|s| s.id = "Bad Id".into()), "rollout id"),
            (Box::new(|s| s.waves = vec![100.0]), "at least two"),
            (Box::new(|s| s.waves = vec![0.0, 100.0]), "(0, 100]"),
            (
                Box::new(|s| s.waves = vec![10.0, 10.0, 100.0]),
                "does not exceed",
            ),
            (Box::new(|s| s.waves = vec![10.0, 50.0]), "must be 100"),
            (Box::new(|s| s.bake_ms = 0), "bake"),
            (Box::new(|s| s.max_silent = 1.0), "max_silent"),
            (Box::new(|s| s.max_failed = -0.1), "max_failed"),
            (Box::new(|s| s.max_attempts = 0), "max_attempts"),
            (Box::new(|s| s.rollback_rate_per_min = 0), "rollback_rate"),
            (
                Box::new(|s| s.gates = vec!["shadow_agreement>=0.9".parse().unwrap()]),
                "needs a shadow phase",
            ),
            (
                Box::new(|s| {
                    s.shadow_ms = Some(1000);
                    s.gates = vec!["shadow_agreement>=0.9".parse().unwrap()];
                }),
                "no gate applies to the waves",
            ),
        ];
        for (mutate, needle) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn default_gates_and_shadow_gates() {
        let mut s = spec();
        assert_eq!(s.wave_gates().len(), 4);
        assert!(
            !s.wave_gates()
                .iter()
                .any(|g| g.metric == Metric::AccuracyDelta)
        );
        s.shadow_ms = Some(60_000);
        assert_eq!(s.shadow_gates(), vec![Gate::default_shadow()]);
        s.gates = vec![
            "accuracy_delta>=-0.02".parse().unwrap(),
            "shadow_agreement>=0.99".parse().unwrap(),
        ];
        assert_eq!(s.wave_gates().len(), 1);
        assert_eq!(s.shadow_gates()[0].threshold, 0.99);
    }

    #[test]
    fn cli_value_parsers() {
        // Durations: drover_protocol::duration's tests (one parser).
        assert_eq!(parse_fraction("5%"), Ok(0.05));
        assert_eq!(parse_fraction("0.1"), Ok(0.1));
        assert!(parse_fraction("x%").is_err());
        assert_eq!(parse_waves("1,10,50,100"), Ok(vec![1.0, 10.0, 50.0, 100.0]));
        assert_eq!(parse_waves("5%, 100%"), Ok(vec![5.0, 100.0]));
        assert!(parse_waves("1,,100").is_err());
    }
}
