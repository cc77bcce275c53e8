//! Telemetry rollups: every window is merged, in the transaction that
//! stores it, into one row per `(model, version, role, cohort, minute)`, so
//! a fleet-level question ("sensor@3 over the last day", a dashboard chart)
//! reads a few rows per minute instead of one window per device and minute.
//!
//! - The cohort is the device's `region` and `hardware` labels (the rollout
//!   engine's default cohort keys), `region=eu/hardware=pi4`, `-` for a
//!   missing label; the minute is the window's end (ms / 60,000).
//! - Rows merge exactly (counts add, histograms merge bucket by bucket), and
//!   only windows stored now are merged (a duplicate is not), so a rollup
//!   counts every window once, like the raw table.
//! - Raw windows are pruned after `--retention-days`; rollups after
//!   `--rollup-retention-days` (longer: they are small).

use std::collections::{BTreeMap, BTreeSet};

use drover_protocol::codec;
use drover_protocol::telemetry::TelemetryWindow;
use drover_protocol::{DeviceId, Timestamp};
use rusqlite::{OptionalExtension as _, params};

use super::query::{Aggregate, ScanStats, TelemetryFilter};
use crate::core::rollout::plan::cohort_of;
use crate::core::rollout::spec::DEFAULT_COHORT_KEYS;
use crate::db::DbError;

/// One minute, the rollups' resolution.
pub const MINUTE_MS: u64 = 60_000;

/// A rollup row's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RollupKey {
    pub(crate) model: String,
    pub(crate) version: u64,
    pub(crate) role: &'static str,
    pub(crate) cohort: String,
    pub(crate) minute: u64,
}

/// The cohort of `device`, from its stored labels and reported hardware.
fn cohort(tx: &rusqlite::Transaction<'_>, device: &DeviceId) -> Result<String, DbError> {
    let row: Option<(String, Option<String>)> = tx
        .prepare_cached("SELECT labels, hardware FROM devices WHERE id = ?1")?
        .query_row(params![device.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (labels, hardware) = row.unwrap_or_else(|| ("{}".into(), None));
    let mut labels: BTreeMap<String, String> = serde_json::from_str(&labels).unwrap_or_default();
    if let Some(h) = hardware {
        labels.entry("hardware".into()).or_insert(h);
    }
    let keys: Vec<String> = DEFAULT_COHORT_KEYS.map(String::from).to_vec();
    Ok(cohort_of(&labels, &keys))
}

fn decode(blob: &[u8]) -> Result<Aggregate, DbError> {
    codec::decode(blob, usize::MAX).map_err(|e| DbError::Corrupt(format!("telemetry rollup: {e}")))
}

/// Merges `windows` (just stored, none a duplicate) into their rollup rows,
/// inside the storing transaction. Returns the rows touched.
pub(crate) fn add(
    tx: &rusqlite::Transaction<'_>,
    windows: &[(&DeviceId, &TelemetryWindow, &'static str)],
) -> Result<usize, DbError> {
    let mut cohorts: BTreeMap<&DeviceId, String> = BTreeMap::new();
    let mut batch: BTreeMap<RollupKey, Aggregate> = BTreeMap::new();
    for (device, w, role) in windows {
        if !cohorts.contains_key(device) {
            cohorts.insert(device, cohort(tx, device)?);
        }
        let key = RollupKey {
            model: w.model.name.to_string(),
            version: w.model.version.0,
            role,
            cohort: cohorts.get(device).cloned().unwrap_or_default(),
            minute: w.end.0 / MINUTE_MS,
        };
        batch.entry(key).or_default().add(w);
    }
    let mut select = tx.prepare_cached(
        "SELECT merged FROM telemetry_rollups
         WHERE model = ?1 AND version = ?2 AND role = ?3 AND cohort = ?4 AND minute = ?5",
    )?;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO telemetry_rollups (model, version, role, cohort, minute, windows, merged)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (model, version, role, cohort, minute)
         DO UPDATE SET windows = excluded.windows, merged = excluded.merged",
    )?;
    for (k, add) in &batch {
        let version = i64::try_from(k.version).unwrap_or(i64::MAX);
        let minute = i64::try_from(k.minute).unwrap_or(i64::MAX);
        let old: Option<Vec<u8>> = select
            .query_row(params![k.model, version, k.role, k.cohort, minute], |r| {
                r.get(0)
            })
            .optional()?;
        let mut merged = match old {
            Some(b) => decode(&b)?,
            None => Aggregate::default(),
        };
        merged.merge(add);
        let blob =
            codec::encode(&merged, usize::MAX).map_err(|e| DbError::Corrupt(e.to_string()))?;
        upsert.execute(params![
            k.model,
            version,
            k.role,
            k.cohort,
            minute,
            merged.windows as i64,
            blob
        ])?;
    }
    Ok(batch.len())
}

/// Whether `f` can be answered from rollups exactly: no device list, no
/// per-device breakdown, and time bounds on whole minutes (or none).
pub fn answers(f: &TelemetryFilter) -> bool {
    f.devices.is_none()
        && !f.per_device
        && f.from_ms.is_none_or(|t| t % MINUTE_MS == 0)
        && f.to_ms.is_none_or(|t| t % MINUTE_MS == 0)
}

/// One minute of a fleet-level series.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MinutePoint {
    /// Start of the minute (ms).
    pub minute_ms: u64,
    /// Windows that ended in it.
    pub windows: u64,
    /// Inferences.
    pub count: u64,
    /// Failed inferences.
    pub errors: u64,
    /// p95 latency (µs).
    pub p95_us: Option<u64>,
}

/// What [`read`] merged.
#[derive(Debug, Default)]
pub(crate) struct RollupRead {
    /// Everything selected.
    pub(crate) total: Aggregate,
    /// Per cohort.
    pub(crate) cohorts: BTreeMap<String, Aggregate>,
    /// Per minute with windows, in order.
    pub(crate) minutes: Vec<MinutePoint>,
    /// Windows merged, and rows that did not decode.
    pub(crate) stats: ScanStats,
}

/// Merges the rollup rows `f` selects: the total, per cohort, and per
/// minute. Windows ending in `[from_ms, to_ms)` (see [`answers`]).
pub(crate) fn read(
    conn: &rusqlite::Connection,
    f: &TelemetryFilter,
    cohorts: Option<&BTreeSet<String>>,
) -> Result<RollupRead, DbError> {
    use rusqlite::types::Value;
    let mut sql = String::from("SELECT cohort, minute, merged FROM telemetry_rollups WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    let int = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    if let Some(m) = &f.model {
        args.push(Value::Text(m.clone()));
        sql.push_str(&format!(" AND model = ?{}", args.len()));
    }
    if let Some(v) = f.version {
        args.push(int(v));
        sql.push_str(&format!(" AND version = ?{}", args.len()));
    }
    if let Some(r) = &f.role {
        args.push(Value::Text(r.clone()));
        sql.push_str(&format!(" AND role = ?{}", args.len()));
    }
    if let Some(t) = f.from_ms {
        args.push(int(t.div_ceil(MINUTE_MS)));
        sql.push_str(&format!(" AND minute >= ?{}", args.len()));
    }
    if let Some(t) = f.to_ms {
        args.push(int(t.div_ceil(MINUTE_MS)));
        sql.push_str(&format!(" AND minute < ?{}", args.len()));
    }
    sql.push_str(" ORDER BY minute");
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut total = Aggregate::default();
    let mut per_cohort: BTreeMap<String, Aggregate> = BTreeMap::new();
    let mut minutes: BTreeMap<u64, Aggregate> = BTreeMap::new();
    let mut stats = ScanStats::default();
    while let Some(row) = rows.next()? {
        let cohort: String = row.get(0)?;
        if cohorts.is_some_and(|c| !c.contains(&cohort)) {
            continue;
        }
        let minute = row.get::<_, i64>(1)?.max(0) as u64;
        let blob: Vec<u8> = row.get(2)?;
        match decode(&blob) {
            Ok(a) => {
                stats.windows += a.windows;
                total.merge(&a);
                per_cohort.entry(cohort).or_default().merge(&a);
                minutes.entry(minute).or_default().merge(&a);
            }
            Err(e) => {
                stats.undecodable += 1;
                tracing::warn!(cohort, minute, error = %e, "stored telemetry rollup does not decode; skipped");
            }
        }
    }
    let series = minutes
        .into_iter()
        .map(|(m, a)| MinutePoint {
            minute_ms: m * MINUTE_MS,
            windows: a.windows,
            count: a.count,
            errors: a.errors,
            p95_us: a.latency.quantile(0.95),
        })
        .collect();
    Ok(RollupRead {
        total,
        cohorts: per_cohort,
        minutes: series,
        stats,
    })
}

/// Deletes rollups of minutes that ended before `cutoff`; returns how many.
pub(crate) fn prune(conn: &rusqlite::Connection, cutoff: Timestamp) -> Result<usize, DbError> {
    Ok(conn.execute(
        "DELETE FROM telemetry_rollups WHERE minute < ?1",
        params![i64::try_from(cutoff.0 / MINUTE_MS).unwrap_or(i64::MAX)],
    )?)
}

#[cfg(test)]
mod tests {
    use drover_protocol::testkit::realistic_window;

    use super::*;
    use crate::telemetry::ingest::store_batch;
    use crate::telemetry::summary::summarize;

    fn label(db: &crate::db::Db, id: &str, labels: &str, hardware: Option<&str>) {
        db.lock()
            .execute(
                "INSERT INTO devices (id, labels, hardware, created_at) VALUES (?1, ?2, ?3, 0)",
                params![id, labels, hardware],
            )
            .unwrap();
    }

    /// Rollups count every stored window once (duplicates are not merged
    /// again), split by cohort and minute, and a fleet-level question over
    /// whole minutes reads them and gets what the raw windows give.
    #[test]
    fn rollups_merge_each_stored_window_once_by_cohort_and_minute() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("t.db")).unwrap();
        label(&db, "a", r#"{"region":"eu"}"#, Some("pi4"));
        label(
            &db,
            "b",
            r#"{"region":"us","hardware":"jetson"}"#,
            Some("pi4"),
        );
        let (a, b, c) = (
            DeviceId::new("a").unwrap(),
            DeviceId::new("b").unwrap(),
            DeviceId::new("c").unwrap(),
        );
        let mut late = realistic_window(3);
        late.start = Timestamp(late.start.0 + MINUTE_MS);
        late.end = Timestamp(late.end.0 + MINUTE_MS);
        let items = vec![
            (a.clone(), realistic_window(1)),
            (a.clone(), realistic_window(2)),
            (b.clone(), realistic_window(1)),
            (c.clone(), late.clone()),
            (a.clone(), realistic_window(1)),
        ];
        store_batch(&mut db.lock(), &items, Timestamp(5)).unwrap();
        // Resent (the agent did not get its ack): stored and rolled up once.
        store_batch(&mut db.lock(), &items[..3], Timestamp(6)).unwrap();

        let f = TelemetryFilter {
            model: Some("sensor".into()),
            ..TelemetryFilter::default()
        };
        assert!(answers(&f));
        let fleet = summarize(&db.lock(), &f).unwrap();
        assert_eq!(fleet.source, "rollups");
        assert_eq!(fleet.merged.windows, 4);
        assert_eq!(fleet.merged.count, 24_000);
        // The raw windows (a per-device question) say the same.
        let raw = summarize(
            &db.lock(),
            &TelemetryFilter {
                per_device: true,
                ..f.clone()
            },
        )
        .unwrap();
        assert_eq!(raw.source, "windows");
        assert_eq!(raw.merged, fleet.merged);

        // Cohorts from registry labels, then the Hello's hardware.
        let cohorts: Vec<(&str, u64)> = fleet
            .cohorts
            .iter()
            .map(|(k, v)| (k.as_str(), v.windows))
            .collect();
        assert_eq!(
            cohorts,
            [
                ("region=-/hardware=-", 1),
                ("region=eu/hardware=pi4", 2),
                ("region=us/hardware=jetson", 1)
            ]
        );
        let minutes: Vec<u64> = fleet.minutes.iter().map(|m| m.windows).collect();
        assert_eq!(minutes, [3, 1]);
        assert_eq!(
            fleet.minutes[1].minute_ms,
            late.end.0 / MINUTE_MS * MINUTE_MS
        );

        // Whole minutes: from the late window's minute on, only it.
        let from = late.end.0 / MINUTE_MS * MINUTE_MS;
        let later = TelemetryFilter {
            from_ms: Some(from),
            ..f.clone()
        };
        let s = summarize(&db.lock(), &later).unwrap();
        assert_eq!((s.source.as_str(), s.merged.windows), ("rollups", 1));
        // Not on a minute: the raw windows answer, exactly.
        let odd = TelemetryFilter {
            from_ms: Some(from + 1),
            ..f
        };
        assert!(!answers(&odd));
        assert_eq!(summarize(&db.lock(), &odd).unwrap().source, "windows");

        // One rollup row per (model, version, role, cohort, minute), and
        // its size (printed: the capacity note in README uses it).
        let (rows, bytes): (i64, i64) = db
            .lock()
            .query_row(
                "SELECT count(*), sum(length(merged)) FROM telemetry_rollups",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(rows, 3, "a's two windows share a row");
        eprintln!("rollup row: {} bytes merged", bytes / rows);
        assert!(
            bytes / rows < 4_096,
            "{} bytes per rollup row",
            bytes / rows
        );

        // Rollup retention is separate from the raw windows'.
        assert_eq!(prune(&db.lock(), Timestamp(from)).unwrap(), 2);
        assert_eq!(prune(&db.lock(), Timestamp(from + MINUTE_MS)).unwrap(), 1);
    }
}
