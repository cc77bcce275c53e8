//! HTTP routes for drift and retraining, merged into the controller's API:
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/drift?model=N[@V]&cohort=KEY&window=1h` | `{"reports": [DriftOverview…]}`: one per model (every model with a retrain policy when `model` is absent); `V` defaults to the production version, `window` to the model's configured window, `cohort` to its `cohort_key` |
//! | `GET /v1/retrain?model=N&limit=50` | `{"jobs": [JobSummary…]}`, newest first |
//! | `GET /v1/drift/history?model=N&limit=500` | `{"model", "points": [DriftPoint…]}`: the scheduler's drift evaluations of `N`, oldest first (at, version, fleet_score, share_drifting, scope, verdict); kept per model: the last 4,000 |
//! | `GET /v1/retrain/{id}` | the full [`RetrainJob`](super::RetrainJob) (trigger with drift report, dataset, hook log, resulting version) |
//! | `POST /v1/retrain` `{"model": "N"}` | `202` and the new job (manual trigger) |
//!
//! Errors are `{"error": code, "detail": text}`: `400 invalid_request`,
//! `404 not_found`, `409 conflict`, `422 unprocessable` (e.g. no reference
//! profile), `502 upstream` (a port failed), `500 internal`.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use drover_protocol::{ModelName, Version};
use serde::{Deserialize, Serialize};

use crate::core::retraining::job::{JobSummary, RetrainJob};
use crate::core::retraining::ports::PortError;
use crate::core::retraining::report::DriftOverview;
use crate::http::ApiError;
use crate::retraining::runner::{DriftRequest, RetrainError, RetrainRunner};

/// Most jobs one list returns.
pub(crate) const MAX_LIST: usize = 1_000;

/// The routes' state.
#[derive(Debug, Clone)]
pub(crate) struct RetrainApi {
    /// The retraining service.
    pub runner: RetrainRunner,
}

/// The routes above, with their state applied, so the result merges into
/// any router (`router.merge(retrain::http::routes(runner))`).
pub(crate) fn routes<S>(runner: RetrainRunner) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/v1/drift", get(drift))
        .route("/v1/drift/history", get(drift_history))
        .route("/v1/retrain", get(list).post(run))
        .route("/v1/retrain/{id}", get(show))
        .with_state(RetrainApi { runner })
}

/// `GET /v1/drift` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DriftResponse {
    /// One per model.
    pub reports: Vec<DriftOverview>,
}

/// `GET /v1/retrain` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobList {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
}

/// `POST /v1/retrain` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunBody {
    /// Model to retrain.
    pub model: String,
}

type ApiResult<T> = Result<T, ApiError>;

impl From<RetrainError> for ApiError {
    fn from(e: RetrainError) -> ApiError {
        let detail = e.to_string();
        let (status, code) = match &e {
            RetrainError::NotFound(_) | RetrainError::Port(PortError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            RetrainError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            RetrainError::Invalid(_) | RetrainError::Drift(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable")
            }
            RetrainError::Port(PortError::Invalid(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            RetrainError::Port(PortError::Failed(_)) => (StatusCode::BAD_GATEWAY, "upstream"),
            RetrainError::Store(_) | RetrainError::Db(_) | RetrainError::Job(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %detail, "retrain request failed");
        }
        ApiError::new(status, code, detail)
    }
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", detail)
}

fn model_name(s: &str) -> ApiResult<ModelName> {
    ModelName::new(s).map_err(|e| bad(e.to_string()))
}

/// `N` or `N@V` (`V` a number, or `production` for the default).
pub(crate) fn parse_model_arg(s: &str) -> Result<(ModelName, Option<Version>), String> {
    let (name, version) = match s.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    let name = ModelName::new(name).map_err(|e| e.to_string())?;
    let version = match version {
        None | Some("production") => None,
        Some(v) => Some(Version(v.parse().map_err(|_| {
            format!("version {v:?} must be a number (or `production`)")
        })?)),
    };
    Ok((name, version))
}

async fn drift(
    State(api): State<RetrainApi>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<DriftResponse>> {
    let (model, version) = match q.get("model").filter(|m| !m.is_empty()) {
        Some(m) => {
            let (name, version) = parse_model_arg(m).map_err(bad)?;
            (Some(name), version)
        }
        None => (None, None),
    };
    let window_ms = q
        .get("window")
        .map(|w| {
            drover_protocol::duration::parse(w)
                .map(drover_protocol::duration::millis)
                .map_err(|e| bad(e.to_string()))
        })
        .transpose()?;
    if window_ms == Some(0) {
        return Err(bad("window must be > 0"));
    }
    let reports = api
        .runner
        .drift(DriftRequest {
            model,
            version,
            cohort_key: q.get("cohort").filter(|c| !c.is_empty()).cloned(),
            window_ms,
        })
        .await?;
    Ok(Json(DriftResponse { reports }))
}

/// `GET /v1/drift/history` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DriftHistory {
    /// The model.
    pub model: String,
    /// Scheduled evaluations, oldest first.
    pub points: Vec<crate::retraining::DriftPoint>,
}

async fn drift_history(
    State(api): State<RetrainApi>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<DriftHistory>> {
    let model = model_name(
        q.get("model")
            .map(String::as_str)
            .ok_or_else(|| bad("model is required"))?,
    )?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<u32>()
            .map_err(|_| bad(format!("limit {l:?} is not a number")))?,
        None => 500,
    }
    .clamp(1, crate::retraining::store::DRIFT_HISTORY_KEEP);
    let points = api.runner.drift_history(&model, limit).await?;
    Ok(Json(DriftHistory {
        model: model.to_string(),
        points,
    }))
}

async fn list(
    State(api): State<RetrainApi>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<JobList>> {
    let model = q.get("model").map(|m| model_name(m)).transpose()?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| bad(format!("limit {l:?} is not a number")))?,
        None => 50,
    }
    .min(MAX_LIST);
    let jobs = api.runner.jobs(model, limit).await?;
    Ok(Json(JobList { jobs }))
}

async fn show(
    State(api): State<RetrainApi>,
    Path(id): Path<String>,
) -> ApiResult<Json<RetrainJob>> {
    let id: u64 = id
        .parse()
        .map_err(|_| bad(format!("job id {id:?} is not a number")))?;
    let job = api
        .runner
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no retrain job {id}")))?;
    Ok(Json(job))
}

pub(crate) async fn run(
    State(api): State<RetrainApi>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<RetrainJob>)> {
    let body: RunBody = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("body must be {{\"model\": NAME}}: {e}")))?;
    let model = model_name(&body.model)?;
    let job = api.runner.run_manual(&model).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_args() {
        let (n, v) = parse_model_arg("sensor-clf@3").unwrap();
        assert_eq!((n.as_str(), v), ("sensor-clf", Some(Version(3))));
        assert_eq!(parse_model_arg("m").unwrap().1, None);
        assert_eq!(parse_model_arg("m@production").unwrap().1, None);
        assert!(parse_model_arg("m@x").unwrap_err().contains("number"));
        assert!(parse_model_arg("Bad").is_err());
    }
}
