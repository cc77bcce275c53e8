//! Telemetry queries for the API, the rollout engine and drift: windows of a
//! set of devices / a model version over `[from, to)` merged into
//! aggregates as they are read (one histogram per aggregate, never one per
//! window).

use std::collections::BTreeMap;

use drover_protocol::codec;
use drover_protocol::telemetry::{LatencyHistogram, TelemetryWindow};
use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// Which windows to merge. Every field narrows; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryFilter {
    /// Model name.
    pub model: Option<String>,
    /// Model version (with `model`).
    pub version: Option<u64>,
    /// Only these devices.
    pub devices: Option<Vec<String>>,
    /// `active` or `shadow`.
    pub role: Option<String>,
    /// Windows ending at or after this (ms).
    pub from_ms: Option<u64>,
    /// Windows ending before this (ms).
    pub to_ms: Option<u64>,
    /// Also break the aggregate down per device.
    pub per_device: bool,
}

/// Merged telemetry (raw counts and histograms) for callers that compute
/// their own statistics (rollout gates, drift).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    /// Windows merged.
    pub windows: u64,
    /// Inferences.
    pub count: u64,
    /// Failed inferences.
    pub errors: u64,
    /// Latency.
    pub latency: LatencyHistogram,
    /// Per feature, counts per bin.
    pub features: Vec<Vec<u64>>,
    /// Output class counts or bins.
    pub outputs: Vec<u64>,
    /// Confidence bins.
    pub confidence: Vec<u64>,
    /// Inferences with ground truth.
    pub labelled: u64,
    /// Of those, right.
    pub correct: u64,
    /// Sum of absolute errors (regression).
    pub abs_error_sum: f64,
    /// Shadow comparisons.
    pub shadow_compared: u64,
    /// Shadow agreements.
    pub shadow_agreed: u64,
    /// Shadow errors.
    pub shadow_errors: u64,
    /// Shadow latency.
    pub shadow_latency: LatencyHistogram,
    /// Windows evicted from device outboxes.
    pub evicted_windows: u64,
    /// Earliest window start (ms).
    pub first_start: Option<u64>,
    /// Latest window end (ms).
    pub last_end: Option<u64>,
}

fn add_counts(into: &mut Vec<u64>, from: &[u32]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a = a.saturating_add(u64::from(*b));
    }
}

impl Aggregate {
    /// Merges one window in.
    pub fn add(&mut self, w: &TelemetryWindow) {
        self.windows += 1;
        self.count = self.count.saturating_add(w.count);
        self.errors = self.errors.saturating_add(w.errors);
        self.latency.merge(&w.latency);
        if self.features.len() < w.features.len() {
            self.features.resize(w.features.len(), Vec::new());
        }
        for (a, b) in self.features.iter_mut().zip(&w.features) {
            add_counts(a, b);
        }
        add_counts(&mut self.outputs, &w.outputs);
        add_counts(&mut self.confidence, &w.confidence);
        self.labelled = self.labelled.saturating_add(w.labelled);
        self.correct = self.correct.saturating_add(w.correct);
        self.abs_error_sum += w.abs_error_sum;
        if let Some(s) = &w.shadow {
            self.shadow_compared += s.compared;
            self.shadow_agreed += s.agreed;
            self.shadow_errors += s.errors;
            self.shadow_latency.merge(&s.latency);
        }
        self.evicted_windows += w.evicted_windows;
        self.first_start = Some(self.first_start.map_or(w.start.0, |s| s.min(w.start.0)));
        self.last_end = Some(self.last_end.map_or(w.end.0, |e| e.max(w.end.0)));
    }

    /// The JSON view.
    pub fn view(&self) -> AggregateView {
        let total_out: u64 = self.outputs.iter().sum();
        AggregateView {
            windows: self.windows,
            count: self.count,
            errors: self.errors,
            error_rate: (self.count > 0).then(|| self.errors as f64 / self.count as f64),
            p50_us: self.latency.quantile(0.50),
            p95_us: self.latency.quantile(0.95),
            p99_us: self.latency.quantile(0.99),
            mean_us: (self.latency.count() > 0).then(|| self.latency.mean()),
            labelled: self.labelled,
            correct: self.correct,
            accuracy: (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64),
            mean_abs_error: (self.labelled > 0).then(|| self.abs_error_sum / self.labelled as f64),
            outputs: self.outputs.clone(),
            output_distribution: self
                .outputs
                .iter()
                .map(|c| {
                    if total_out == 0 {
                        0.0
                    } else {
                        *c as f64 / total_out as f64
                    }
                })
                .collect(),
            confidence: self.confidence.clone(),
            features: self.features.clone(),
            shadow_compared: self.shadow_compared,
            shadow_agreement: (self.shadow_compared > 0)
                .then(|| self.shadow_agreed as f64 / self.shadow_compared as f64),
            shadow_p95_us: self.shadow_latency.quantile(0.95),
            evicted_windows: self.evicted_windows,
            first_start: self.first_start,
            last_end: self.last_end,
        }
    }
}

/// Aggregate statistics as served by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateView {
    /// Windows merged.
    pub windows: u64,
    /// Inferences.
    pub count: u64,
    /// Failed inferences.
    pub errors: u64,
    /// errors / count.
    pub error_rate: Option<f64>,
    /// Median latency (µs).
    pub p50_us: Option<u64>,
    /// p95 latency (µs).
    pub p95_us: Option<u64>,
    /// p99 latency (µs).
    pub p99_us: Option<u64>,
    /// Mean latency (µs).
    pub mean_us: Option<f64>,
    /// Labelled inferences.
    pub labelled: u64,
    /// Correct among labelled.
    pub correct: u64,
    /// correct / labelled.
    pub accuracy: Option<f64>,
    /// Regression: mean absolute error over labelled.
    pub mean_abs_error: Option<f64>,
    /// Output counts.
    pub outputs: Vec<u64>,
    /// Output shares.
    pub output_distribution: Vec<f64>,
    /// Confidence bins.
    pub confidence: Vec<u64>,
    /// Feature bin counts.
    pub features: Vec<Vec<u64>>,
    /// Shadow comparisons.
    pub shadow_compared: u64,
    /// Shadow agreement share.
    pub shadow_agreement: Option<f64>,
    /// Shadow p95 latency (µs).
    pub shadow_p95_us: Option<u64>,
    /// Windows evicted from outboxes.
    pub evicted_windows: u64,
    /// Earliest window start.
    pub first_start: Option<u64>,
    /// Latest window end.
    pub last_end: Option<u64>,
}

/// Merged and (optionally) per-device statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySummary {
    /// The filter applied.
    pub filter: TelemetryFilter,
    /// All matching windows merged.
    pub merged: AggregateView,
    /// Per device (when asked for), by id.
    pub devices: BTreeMap<String, AggregateView>,
}

/// Reads matching windows and merges them: `(merged, per device)`.
pub fn aggregate(
    conn: &rusqlite::Connection,
    f: &TelemetryFilter,
) -> Result<(Aggregate, BTreeMap<String, Aggregate>), DbError> {
    let mut sql = String::from("SELECT device, window FROM telemetry WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    use rusqlite::types::Value;
    if let Some(m) = &f.model {
        args.push(Value::Text(m.clone()));
        sql.push_str(&format!(" AND model = ?{}", args.len()));
    }
    if let Some(v) = f.version {
        args.push(Value::Integer(v as i64));
        sql.push_str(&format!(" AND version = ?{}", args.len()));
    }
    if let Some(r) = &f.role {
        args.push(Value::Text(r.clone()));
        sql.push_str(&format!(" AND role = ?{}", args.len()));
    }
    if let Some(t) = f.from_ms {
        args.push(Value::Integer(t as i64));
        sql.push_str(&format!(" AND end_ms >= ?{}", args.len()));
    }
    if let Some(t) = f.to_ms {
        args.push(Value::Integer(t.min(i64::MAX as u64) as i64));
        sql.push_str(&format!(" AND end_ms < ?{}", args.len()));
    }
    if let Some(devs) = &f.devices {
        if devs.is_empty() {
            return Ok((Aggregate::default(), BTreeMap::new()));
        }
        let mut marks = Vec::new();
        for d in devs {
            args.push(Value::Text(d.clone()));
            marks.push(format!("?{}", args.len()));
        }
        sql.push_str(&format!(" AND device IN ({})", marks.join(", ")));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut merged = Aggregate::default();
    let mut per = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let device: String = row.get(0)?;
        let blob: Vec<u8> = row.get(1)?;
        let w: TelemetryWindow = match codec::decode(&blob, codec::MAX_UP_PAYLOAD) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(%device, error = %e, "stored telemetry window does not decode; skipped");
                continue;
            }
        };
        merged.add(&w);
        if f.per_device {
            per.entry(device).or_insert_with(Aggregate::default).add(&w);
        }
    }
    Ok((merged, per))
}

/// [`aggregate`] as API views.
pub fn summarize(
    conn: &rusqlite::Connection,
    f: &TelemetryFilter,
) -> Result<TelemetrySummary, DbError> {
    let (merged, per) = aggregate(conn, f)?;
    Ok(TelemetrySummary {
        filter: f.clone(),
        merged: merged.view(),
        devices: per.into_iter().map(|(k, v)| (k, v.view())).collect(),
    })
}
