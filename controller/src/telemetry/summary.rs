//! What `GET /v1/telemetry` answers: merged statistics for a filter, from
//! the per-minute rollups when they answer it exactly, else from the raw
//! windows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::query::{AggregateView, TelemetryFilter, aggregate};
use super::rollup::{self, MinutePoint};
use crate::db::DbError;

/// Merged and (optionally) per-device statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySummary {
    /// The filter applied.
    pub filter: TelemetryFilter,
    /// All matching windows merged.
    pub merged: AggregateView,
    /// Per device (when asked for), by id.
    pub devices: BTreeMap<String, AggregateView>,
    /// What answered: `rollups` (fleet-level over whole minutes: the
    /// per-minute rollup rows) or `windows` (the raw per-device windows).
    #[serde(default)]
    pub source: String,
    /// From rollups: per cohort (`region=eu/hardware=pi4`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cohorts: BTreeMap<String, AggregateView>,
    /// From rollups: one point per minute with windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub minutes: Vec<MinutePoint>,
}

/// Merged statistics as API views: from the rollups when they answer `f`
/// exactly ([`rollup::answers`]), else from the raw windows ([`aggregate`]).
pub fn summarize(
    conn: &rusqlite::Connection,
    f: &TelemetryFilter,
) -> Result<TelemetrySummary, DbError> {
    if rollup::answers(f) {
        let rollup::RollupRead {
            total: mut merged,
            cohorts,
            minutes,
            stats,
        } = rollup::read(conn, f, None)?;
        merged.undecodable_windows = stats.undecodable;
        return Ok(TelemetrySummary {
            filter: f.clone(),
            merged: merged.view(),
            devices: BTreeMap::new(),
            source: "rollups".into(),
            cohorts: cohorts.into_iter().map(|(k, v)| (k, v.view())).collect(),
            minutes,
        });
    }
    let (merged, per) = aggregate(conn, f)?;
    Ok(TelemetrySummary {
        filter: f.clone(),
        merged: merged.view(),
        devices: per.into_iter().map(|(k, v)| (k, v.view())).collect(),
        source: "windows".into(),
        cohorts: BTreeMap::new(),
        minutes: Vec::new(),
    })
}
