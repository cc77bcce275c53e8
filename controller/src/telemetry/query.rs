//! The one reader of the telemetry table, for the API, the rollout engine
//! and drift/retraining: `for_each_window` streams the windows of a set of
//! devices / model versions over `[from, to)` so callers merge them as they
//! are read (one histogram per aggregate, never one per window). Undecodable
//! rows are skipped and counted the same way for every caller, and device
//! lists are bound in chunks under SQLite's bound-parameter limit.

use std::collections::{BTreeMap, BTreeSet};

use drover_protocol::codec;
use drover_protocol::telemetry::{LatencyHistogram, TelemetryWindow};
use drover_protocol::{DeviceId, Version};
use serde::{Deserialize, Serialize};

use crate::core::rollout::{CohortMetrics, MetricsKind, MetricsRequest};

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
/// their own statistics (rollout gates, drift). Also the stored form of a
/// rollup row (`rollup`), hence serde.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Stored windows in range that did not decode (skipped).
    pub undecodable_windows: u64,
}

fn add_counts64(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a = a.saturating_add(*b);
    }
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

    /// Merges another aggregate in (exactly what adding its windows one by
    /// one would have given).
    pub fn merge(&mut self, o: &Aggregate) {
        self.windows += o.windows;
        self.count = self.count.saturating_add(o.count);
        self.errors = self.errors.saturating_add(o.errors);
        self.latency.merge(&o.latency);
        if self.features.len() < o.features.len() {
            self.features.resize(o.features.len(), Vec::new());
        }
        for (a, b) in self.features.iter_mut().zip(&o.features) {
            add_counts64(a, b);
        }
        add_counts64(&mut self.outputs, &o.outputs);
        add_counts64(&mut self.confidence, &o.confidence);
        self.labelled = self.labelled.saturating_add(o.labelled);
        self.correct = self.correct.saturating_add(o.correct);
        self.abs_error_sum += o.abs_error_sum;
        self.shadow_compared += o.shadow_compared;
        self.shadow_agreed += o.shadow_agreed;
        self.shadow_errors += o.shadow_errors;
        self.shadow_latency.merge(&o.shadow_latency);
        self.evicted_windows += o.evicted_windows;
        self.first_start = match (self.first_start, o.first_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_end = match (self.last_end, o.last_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.undecodable_windows += o.undecodable_windows;
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
            undecodable_windows: self.undecodable_windows,
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
    /// Stored windows in range that did not decode (skipped).
    #[serde(default)]
    pub undecodable_windows: u64,
}

/// Which stored windows to read: every field narrows, `None` means any.
/// Windows are selected by their end time in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WindowScan {
    /// Model name.
    pub(crate) model: Option<String>,
    /// Any of these versions.
    pub(crate) versions: Option<Vec<u64>>,
    /// `active` or `shadow`.
    pub(crate) role: Option<String>,
    /// Windows ending at or after this (ms).
    pub(crate) from_ms: Option<u64>,
    /// Windows ending before this (ms).
    pub(crate) to_ms: Option<u64>,
    /// `from_ms`/`to_ms` bound when the controller received a window, not
    /// when the device says it ended: what rollout gates use, so a device
    /// whose clock is hours off still counts for the wave it is in.
    pub(crate) by_receipt: bool,
    /// Only these devices (a wave can hold thousands: they are bound
    /// [`DEVICE_CHUNK`] at a time).
    pub(crate) devices: Option<Vec<String>>,
}

/// Most device ids bound in one statement. SQLite builds before 3.32 allow
/// 999 bound parameters per statement; this leaves room for the others.
pub(crate) const DEVICE_CHUNK: usize = 500;

/// What a scan read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ScanStats {
    /// Windows decoded and handed to the callback.
    pub(crate) windows: u64,
    /// Stored rows that did not decode: skipped, and counted here (callers
    /// add them to `drover_malformed_payloads_total{kind="stored_window"}`).
    pub(crate) undecodable: u64,
}

/// Streams every stored window `scan` selects to `f` as `(device, window)`,
/// one at a time, so callers merge as they read. The one reader of the
/// telemetry table: the API, rollouts and retraining all go through it.
pub(crate) fn for_each_window(
    conn: &rusqlite::Connection,
    scan: &WindowScan,
    mut f: impl FnMut(&str, &TelemetryWindow),
) -> rusqlite::Result<ScanStats> {
    use rusqlite::types::Value;
    let mut sql = String::from("SELECT device, window FROM telemetry WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(m) = &scan.model {
        args.push(Value::Text(m.clone()));
        sql.push_str(&format!(" AND model = ?{}", args.len()));
    }
    if let Some(versions) = &scan.versions {
        if versions.is_empty() {
            return Ok(ScanStats::default());
        }
        let mut marks = Vec::new();
        for v in versions {
            args.push(Value::Integer(i64::try_from(*v).unwrap_or(i64::MAX)));
            marks.push(format!("?{}", args.len()));
        }
        sql.push_str(&format!(" AND version IN ({})", marks.join(", ")));
    }
    if let Some(r) = &scan.role {
        args.push(Value::Text(r.clone()));
        sql.push_str(&format!(" AND role = ?{}", args.len()));
    }
    let time = if scan.by_receipt {
        "received_at"
    } else {
        "end_ms"
    };
    if let Some(t) = scan.from_ms {
        args.push(Value::Integer(i64::try_from(t).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" AND {time} >= ?{}", args.len()));
    }
    if let Some(t) = scan.to_ms {
        args.push(Value::Integer(i64::try_from(t).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" AND {time} < ?{}", args.len()));
    }
    let mut stats = ScanStats::default();
    let mut run = |sql: &str, args: Vec<Value>| -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(row) = rows.next()? {
            let device: String = row.get(0)?;
            let blob: Vec<u8> = row.get(1)?;
            match codec::decode::<TelemetryWindow>(&blob, codec::MAX_UP_PAYLOAD) {
                Ok(w) => {
                    stats.windows += 1;
                    f(&device, &w);
                }
                Err(e) => {
                    stats.undecodable += 1;
                    tracing::warn!(%device, error = %e, "stored telemetry window does not decode; skipped");
                }
            }
        }
        Ok(())
    };
    match &scan.devices {
        None => run(&sql, args)?,
        Some(devices) => {
            // Deduplicated, so no window is read twice across chunks.
            let devices: std::collections::BTreeSet<&String> = devices.iter().collect();
            let devices: Vec<&String> = devices.into_iter().collect();
            for chunk in devices.chunks(DEVICE_CHUNK) {
                let mut chunk_args = args.clone();
                let mut marks = Vec::with_capacity(chunk.len());
                for d in chunk {
                    chunk_args.push(Value::Text((*d).clone()));
                    marks.push(format!("?{}", chunk_args.len()));
                }
                let chunk_sql = format!("{sql} AND device IN ({})", marks.join(", "));
                run(&chunk_sql, chunk_args)?;
            }
        }
    }
    Ok(stats)
}

/// Reads matching windows and merges them: `(merged, per device)`.
pub fn aggregate(
    conn: &rusqlite::Connection,
    f: &TelemetryFilter,
) -> Result<(Aggregate, BTreeMap<String, Aggregate>), DbError> {
    let scan = WindowScan {
        model: f.model.clone(),
        versions: f.version.map(|v| vec![v]),
        role: f.role.clone(),
        from_ms: f.from_ms,
        to_ms: f.to_ms,
        by_receipt: false,
        devices: f.devices.clone(),
    };
    let mut merged = Aggregate::default();
    let mut per: BTreeMap<String, Aggregate> = BTreeMap::new();
    let stats = for_each_window(conn, &scan, |device, w| {
        merged.add(w);
        if f.per_device {
            per.entry(device.to_owned()).or_default().add(w);
        }
    })?;
    merged.undecodable_windows = stats.undecodable;
    Ok((merged, per))
}

/// Canary and control metrics for a rollout's metrics request: the
/// canary's windows of the new version (shadow role for a shadow phase),
/// the control's active windows of the old versions, both over
/// `[since, until)`.
pub(crate) fn rollout_metrics(
    conn: &rusqlite::Connection,
    req: &MetricsRequest,
) -> rusqlite::Result<(CohortMetrics, CohortMetrics, ScanStats)> {
    let canary_role = match req.kind {
        MetricsKind::Shadow => "shadow",
        MetricsKind::Wave => "active",
    };
    let (canary, a) = cohort(conn, req, &[req.new_version], canary_role, &req.canary)?;
    let (control, b) = cohort(conn, req, &req.old_versions, "active", &req.control)?;
    Ok((
        canary,
        control,
        ScanStats {
            windows: a.windows + b.windows,
            undecodable: a.undecodable + b.undecodable,
        },
    ))
}

fn cohort(
    conn: &rusqlite::Connection,
    req: &MetricsRequest,
    versions: &[Version],
    role: &str,
    devices: &[DeviceId],
) -> rusqlite::Result<(CohortMetrics, ScanStats)> {
    let mut m = CohortMetrics::default();
    if devices.is_empty() {
        return Ok((m, ScanStats::default()));
    }
    // An agent rollout compares devices, whatever model they serve: its
    // versions are agent versions, which no window names.
    let scan = WindowScan {
        model: (!req.any_model).then(|| req.model.as_str().to_owned()),
        versions: (!req.any_model).then(|| versions.iter().map(|v| v.0).collect()),
        role: Some(role.to_owned()),
        from_ms: Some(req.since.0),
        to_ms: Some(req.until.0),
        by_receipt: true,
        devices: Some(devices.iter().map(|d| d.as_str().to_owned()).collect()),
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let stats = for_each_window(conn, &scan, |device, w| {
        m.add_window(w);
        if !seen.contains(device) {
            seen.insert(device.to_owned());
        }
    })?;
    m.devices = seen.len() as u64;
    Ok((m, stats))
}

#[cfg(test)]
mod tests {
    use drover_protocol::testkit::realistic_window;
    use drover_protocol::{DeviceId, Timestamp};

    use super::*;

    /// Far more device ids than SQLite binds in one statement, and one
    /// stored row that no longer decodes: skipped and counted, once.
    #[test]
    fn long_device_lists_are_chunked_and_undecodable_rows_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("t.db")).unwrap();
        let items: Vec<(DeviceId, TelemetryWindow)> = (0..40)
            .map(|i| (DeviceId::new(format!("d{i}")).unwrap(), realistic_window(1)))
            .collect();
        crate::telemetry::ingest::store_batch(&mut db.lock(), &items, Timestamp(5)).unwrap();
        db.lock()
            .execute(
                "UPDATE telemetry SET window = x'00ff' WHERE device = 'd7'",
                [],
            )
            .unwrap();
        // 40 real ids among 3,000, some twice.
        let mut devices: Vec<String> = (0..3_000).map(|i| format!("d{i}")).collect();
        devices.push("d1".into());
        let f = TelemetryFilter {
            model: Some("sensor".into()),
            devices: Some(devices.clone()),
            per_device: true,
            ..Default::default()
        };
        let (merged, per) = aggregate(&db.lock(), &f).unwrap();
        assert_eq!(merged.windows, 39);
        assert_eq!(merged.undecodable_windows, 1);
        assert_eq!(per.len(), 39);
        assert!(!per.contains_key("d7"));
        let scan = WindowScan {
            devices: Some(devices),
            ..Default::default()
        };
        let mut seen = 0;
        let stats = for_each_window(&db.lock(), &scan, |_, _| seen += 1).unwrap();
        assert_eq!((seen, stats.windows, stats.undecodable), (39, 39, 1));
        const { assert!(3_000 / DEVICE_CHUNK > 1) };
    }
}
