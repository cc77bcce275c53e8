//! SQLite persistence of retraining jobs and of each model's drift policy
//! state, so both resume after a restart.
//!
//! Functions take a `&rusqlite::Connection`, so they run on the
//! controller's own connection (inside its `Db::call`). The tables are
//! created by [`MIGRATIONS`], which the controller appends to its migration
//! list; [`migrate`] applies the same statements idempotently for tests and
//! tools that open a bare connection.
//!
//! A job is stored as its JSON plus the columns lists are filtered and
//! ordered by; the JSON is the source of truth.

use std::collections::BTreeMap;

use drover_protocol::ModelName;
use rusqlite::{Connection, OptionalExtension, params};

use crate::core::drift::DriftPolicyState;
use crate::core::retraining::job::{JobState, JobSummary, RetrainJob};

/// The retraining tables, one statement batch per schema step. Every
/// statement is `IF NOT EXISTS`, so applying them twice is harmless.
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE IF NOT EXISTS retrain_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    model       TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    job         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS retrain_jobs_by_model ON retrain_jobs (model, id);
CREATE INDEX IF NOT EXISTS retrain_jobs_by_state ON retrain_jobs (state);
CREATE TABLE IF NOT EXISTS retrain_policy (
    model       TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE IF NOT EXISTS drift_history (
    model       TEXT NOT NULL,
    at          INTEGER NOT NULL,
    point       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drift_history_by_model ON drift_history (model, at);
"#,
];

/// Drift points kept per model: one per scheduled evaluation, so at the
/// default 5-minute interval about two weeks.
pub(crate) const DRIFT_HISTORY_KEEP: u32 = 4_000;

/// One scheduled drift evaluation, as the fleet drift chart shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DriftPoint {
    /// When it was evaluated (ms since the epoch).
    pub at: u64,
    /// The version evaluated.
    pub version: u64,
    /// The judged scope's fleet score (max PSI over features), `None` when
    /// the telemetry did not fit the profile.
    pub fleet_score: Option<f64>,
    /// The share of evaluated devices drifting, when per-device drift ran.
    pub share_drifting: Option<f64>,
    /// The scope judged: `fleet` or the worst cohort (`key=value`).
    pub scope: String,
    /// The policy's verdict: `inconclusive`, `stable`, `drifting`,
    /// `suppressed` or `triggered`.
    pub verdict: String,
}

/// Appends `point` to `model`'s history and drops the oldest beyond `keep`.
pub(crate) fn record_drift_point(
    conn: &Connection,
    model: &ModelName,
    point: &DriftPoint,
    keep: u32,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(point)
        .map_err(|e| StoreError::Corrupt(format!("drift point of {model}: {e}")))?;
    conn.execute(
        "INSERT INTO drift_history (model, at, point) VALUES (?1, ?2, ?3)",
        params![model.as_str(), to_i64(point.at), json],
    )?;
    conn.execute(
        "DELETE FROM drift_history WHERE model = ?1 AND at < (
             SELECT at FROM drift_history WHERE model = ?1 ORDER BY at DESC LIMIT 1 OFFSET ?2)",
        params![model.as_str(), i64::from(keep.saturating_sub(1))],
    )?;
    Ok(())
}

/// `model`'s latest `limit` drift points, oldest first.
pub(crate) fn drift_points(
    conn: &Connection,
    model: &ModelName,
    limit: u32,
) -> Result<Vec<DriftPoint>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT point FROM drift_history WHERE model = ?1 ORDER BY at DESC, rowid DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![model.as_str(), i64::from(limit)], |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for row in rows {
        let json = row?;
        out.push(
            serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("drift point of {model}: {e}")))?,
        );
    }
    out.reverse();
    Ok(out)
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not decode (or a job does not encode).
    #[error("retrain store: corrupt row: {0}")]
    Corrupt(String),
    /// No job with this id.
    #[error("no retrain job {0}")]
    NotFound(u64),
}

/// Applies [`MIGRATIONS`] (idempotent).
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    for sql in MIGRATIONS {
        conn.execute_batch(sql)?;
    }
    Ok(())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn encode(job: &RetrainJob) -> Result<String, StoreError> {
    serde_json::to_string(job).map_err(|e| StoreError::Corrupt(format!("job {}: {e}", job.id)))
}

fn decode(id: i64, json: &str) -> Result<RetrainJob, StoreError> {
    let mut job: RetrainJob =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))?;
    // The row id is authoritative (the JSON was written before it existed
    // for the first insert).
    job.id = u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("job id {id}")))?;
    Ok(job)
}

/// Stores a new job, assigning its id (the job's own `id` is ignored);
/// returns the stored job.
pub(crate) fn insert_job(conn: &Connection, job: &RetrainJob) -> Result<RetrainJob, StoreError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO retrain_jobs (model, state, created_at, updated_at, job) \
         VALUES (?1, ?2, ?3, ?4, '{}')",
        params![
            job.model.as_str(),
            job.state.as_str(),
            to_i64(job.created_at),
            to_i64(job.updated_at)
        ],
    )?;
    let id = tx.last_insert_rowid();
    let mut stored = job.clone();
    stored.id = u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("job id {id}")))?;
    tx.execute(
        "UPDATE retrain_jobs SET job = ?1 WHERE id = ?2",
        params![encode(&stored)?, id],
    )?;
    tx.commit()?;
    Ok(stored)
}

/// Overwrites a stored job.
pub(crate) fn update_job(conn: &Connection, job: &RetrainJob) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE retrain_jobs SET model = ?1, state = ?2, updated_at = ?3, job = ?4 WHERE id = ?5",
        params![
            job.model.as_str(),
            job.state.as_str(),
            to_i64(job.updated_at),
            encode(job)?,
            to_i64(job.id)
        ],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(job.id));
    }
    Ok(())
}

/// One job.
pub(crate) fn get_job(conn: &Connection, id: u64) -> Result<Option<RetrainJob>, StoreError> {
    conn.query_row(
        "SELECT id, job FROM retrain_jobs WHERE id = ?1",
        params![to_i64(id)],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )
    .optional()?
    .map(|(id, json)| decode(id, &json))
    .transpose()
}

/// The newest `limit` jobs (of `model`, when given), newest first.
pub(crate) fn list_jobs(
    conn: &Connection,
    model: Option<&ModelName>,
    limit: usize,
) -> Result<Vec<JobSummary>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare(
        "SELECT id, job FROM retrain_jobs WHERE (?1 IS NULL OR model = ?1) \
         ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![model.map(ModelName::as_str), limit], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, json) = row?;
        out.push(JobSummary::from(&decode(id, &json)?));
    }
    Ok(out)
}

/// Jobs with work left (queued, capturing, training), oldest first.
pub(crate) fn active_jobs(conn: &Connection) -> Result<Vec<RetrainJob>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT id, job FROM retrain_jobs WHERE state IN (?1, ?2, ?3) ORDER BY id ASC")?;
    let rows = stmt.query_map(
        params![
            JobState::Queued.as_str(),
            JobState::Capturing.as_str(),
            JobState::Training.as_str()
        ],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (id, json) = row?;
        out.push(decode(id, &json)?);
    }
    Ok(out)
}

/// Pushed jobs whose rollout neither started nor failed: a controller that
/// died between starting a job's automatic rollout and recording it leaves
/// one (see `RetrainService::resume`), oldest first.
pub(crate) fn pushed_without_rollout(conn: &Connection) -> Result<Vec<RetrainJob>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT id, job FROM retrain_jobs WHERE state = ?1 ORDER BY id ASC")?;
    let rows = stmt.query_map(params![JobState::Pushed.as_str()], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, json) = row?;
        let job = decode(id, &json)?;
        if job.rollout_id.is_none() && job.rollout_error.is_none() {
            out.push(job);
        }
    }
    Ok(out)
}

/// Saves `model`'s drift policy state.
pub(crate) fn save_policy_state(
    conn: &Connection,
    model: &ModelName,
    state: &DriftPolicyState,
    now: u64,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(state)
        .map_err(|e| StoreError::Corrupt(format!("policy state of {model}: {e}")))?;
    conn.execute(
        "INSERT INTO retrain_policy (model, state, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (model) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        params![model.as_str(), json, to_i64(now)],
    )?;
    Ok(())
}

/// Every saved policy state, by model. Rows for names that are no longer
/// valid model names are skipped.
pub(crate) fn load_policy_states(
    conn: &Connection,
) -> Result<BTreeMap<ModelName, DriftPolicyState>, StoreError> {
    let mut stmt = conn.prepare("SELECT model, state FROM retrain_policy")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (model, json) = row?;
        let Ok(name) = ModelName::new(model.as_str()) else {
            continue;
        };
        let state = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("policy state of {model}: {e}")))?;
        out.insert(name, state);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use drover_protocol::Version;

    use super::*;
    use crate::core::drift::{DriftPolicy, DriftPolicyConfig};
    use crate::core::retraining::job::{CaptureSummary, JobTrigger, TriggerKind};

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        conn
    }

    fn job(model: &str, now: u64) -> RetrainJob {
        RetrainJob::new(
            0,
            ModelName::new(model).unwrap(),
            Version(1),
            JobTrigger {
                kind: TriggerKind::Manual,
                reason: "manual".into(),
                at: now,
                cohort: None,
                report: None,
            },
            now,
        )
    }

    #[test]
    fn drift_history_keeps_the_newest_points_per_model() {
        let conn = conn();
        let (a, b) = (ModelName::new("a").unwrap(), ModelName::new("b").unwrap());
        let point = |at| DriftPoint {
            at,
            version: 1,
            fleet_score: Some(at as f64 / 100.0),
            share_drifting: None,
            scope: "fleet".into(),
            verdict: "stable".into(),
        };
        for at in 1..=5 {
            record_drift_point(&conn, &a, &point(at), 3).unwrap();
        }
        record_drift_point(&conn, &b, &point(9), 3).unwrap();
        let got: Vec<u64> = drift_points(&conn, &a, 10)
            .unwrap()
            .iter()
            .map(|p| p.at)
            .collect();
        assert_eq!(got, [3, 4, 5]);
        let got: Vec<u64> = drift_points(&conn, &a, 2)
            .unwrap()
            .iter()
            .map(|p| p.at)
            .collect();
        assert_eq!(got, [4, 5]);
        assert_eq!(drift_points(&conn, &b, 10).unwrap(), [point(9)]);
    }

    #[test]
    fn jobs_round_trip_and_list() {
        let conn = conn();
        let a = insert_job(&conn, &job("a", 10)).unwrap();
        let b = insert_job(&conn, &job("b", 20)).unwrap();
        let mut c = insert_job(&conn, &job("a", 30)).unwrap();
        assert_eq!((a.id, b.id, c.id), (1, 2, 3));
        assert_eq!(get_job(&conn, 1).unwrap().unwrap(), a);
        assert_eq!(get_job(&conn, 99).unwrap(), None);

        c.handle_capture_started(31, CaptureSummary::default())
            .unwrap();
        c.handle_failed(32, "no data").unwrap();
        update_job(&conn, &c).unwrap();
        assert_eq!(get_job(&conn, 3).unwrap().unwrap(), c);

        let all = list_jobs(&conn, None, 10).unwrap();
        assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), [3, 2, 1]);
        let of_a = list_jobs(&conn, Some(&ModelName::new("a").unwrap()), 10).unwrap();
        assert_eq!(of_a.iter().map(|j| j.id).collect::<Vec<_>>(), [3, 1]);
        assert_eq!(of_a[0].failure.as_deref(), Some("no data"));
        assert_eq!(list_jobs(&conn, None, 1).unwrap().len(), 1);

        let active = active_jobs(&conn).unwrap();
        assert_eq!(active.iter().map(|j| j.id).collect::<Vec<_>>(), [1, 2]);

        let mut ghost = c.clone();
        ghost.id = 42;
        assert!(matches!(
            update_job(&conn, &ghost),
            Err(StoreError::NotFound(42))
        ));
    }

    #[test]
    fn policy_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let model = ModelName::new("m").unwrap();
        let mut policy = DriftPolicy::new(DriftPolicyConfig::default()).unwrap();
        policy.handle_job_finished(5, true);
        {
            let conn = Connection::open(&path).unwrap();
            migrate(&conn).unwrap();
            save_policy_state(&conn, &model, policy.state(), 5).unwrap();
            save_policy_state(&conn, &model, policy.state(), 6).unwrap();
            insert_job(&conn, &job("m", 5)).unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        migrate(&conn).unwrap();
        let states = load_policy_states(&conn).unwrap();
        assert_eq!(states.len(), 1);
        assert_eq!(&states[&model], policy.state());
        assert_eq!(active_jobs(&conn).unwrap().len(), 1);
    }

    #[test]
    fn corrupt_rows_are_reported() {
        let conn = conn();
        conn.execute(
            "INSERT INTO retrain_jobs (model, state, created_at, updated_at, job) \
             VALUES ('m', 'queued', 0, 0, 'not json')",
            [],
        )
        .unwrap();
        assert!(matches!(get_job(&conn, 1), Err(StoreError::Corrupt(_))));
    }
}
