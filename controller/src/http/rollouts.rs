//! Rollout routes, merged into the controller API:
//! `POST /v1/rollouts`, `GET /v1/rollouts`, `GET /v1/rollouts/{id}`,
//! `POST /v1/rollouts/{id}/{pause|resume|abort|rollback}`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use crate::auth::Actor;
use drover_protocol::ModelRef;
use drover_protocol::manifest::AgentVersion;
use serde::{Deserialize, Serialize};

use std::time::Duration;

use drover_protocol::duration::{millis, serde_text};

use crate::core::rollout::spec::{parse_fraction, parse_waves};
use drover_protocol::labels::Selector;

use crate::core::rollout::{Gate, OnFail, RolloutCommand, RolloutSpec, RolloutStatus};
use crate::http::ApiError;
use crate::rollouts::{RolloutDetail, RolloutService, RolloutServiceError, RolloutSummary};

/// `POST /v1/rollouts` body: the CLI's flags, as text, parsed here so the
/// API and the CLI accept exactly the same forms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartBody {
    /// `name@version`.
    pub model: String,
    /// Optional explicit id.
    #[serde(default)]
    pub id: Option<String>,
    /// `k=v,...`.
    #[serde(default)]
    pub selector: Option<String>,
    /// `1,10,50,100`.
    #[serde(default)]
    pub waves: Option<String>,
    /// Bake time per wave: `10m`, or a number of seconds (`600`).
    #[serde(default, with = "serde_text::option")]
    pub bake: Option<Duration>,
    /// Shadow phase: `5m`.
    #[serde(default, with = "serde_text::option")]
    pub shadow: Option<Duration>,
    /// `p95_latency_ratio<=1.2`, ...
    #[serde(default)]
    pub gates: Vec<String>,
    /// Minimum samples per gate and cohort.
    #[serde(default)]
    pub min_samples: Option<u64>,
    /// Device timeout: `5m`.
    #[serde(default, with = "serde_text::option")]
    pub device_timeout: Option<Duration>,
    /// `rollback` or `pause`.
    #[serde(default)]
    pub on_fail: Option<String>,
    /// `5%` or `0.05`.
    #[serde(default)]
    pub max_silent: Option<String>,
    /// Largest failed-install share of a wave before it fails (`5%`, `0.05`).
    #[serde(default)]
    pub max_failed: Option<String>,
    /// Interval between gate evaluations while baking (`1m`).
    #[serde(default, with = "serde_text::option")]
    pub metrics_interval: Option<Duration>,
    /// Rollback commands per minute.
    #[serde(default)]
    pub rollback_rate_per_min: Option<u32>,
    /// Latency-ratio gates compare quantiles from this floor (`1ms`).
    #[serde(default, with = "serde_text::option")]
    pub latency_floor: Option<Duration>,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("bad_rollout_spec", e.to_string())
}

impl StartBody {
    /// Builds the engine's spec from the textual fields.
    pub fn to_spec(&self) -> Result<RolloutSpec, ApiError> {
        let id = self.id.clone().unwrap_or_default();
        let mut spec = match self.model.strip_prefix("agent@") {
            // `agent@0.2.0`: a release of the agent itself.
            Some(v) => {
                let version = AgentVersion::parse(v).ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_rollout_spec",
                        format!("agent version {v:?} is not major.minor.patch (e.g. agent@0.2.0)"),
                    )
                })?;
                RolloutSpec::agent(id, version)
            }
            None => {
                let model: ModelRef = self.model.parse().map_err(bad)?;
                RolloutSpec::new(id, model.name, model.version)
            }
        };
        if let Some(s) = &self.selector {
            spec.selector = s.parse::<Selector>().map_err(bad)?;
        }
        if let Some(w) = &self.waves {
            spec.waves = parse_waves(w).map_err(bad)?;
        }
        if let Some(b) = self.bake {
            spec.bake_ms = millis(b);
        }
        if let Some(s) = self.shadow {
            spec.shadow_ms = Some(millis(s));
        }
        for g in &self.gates {
            spec.gates.push(g.parse::<Gate>().map_err(bad)?);
        }
        if let Some(m) = self.min_samples {
            spec.min_samples = m;
        }
        if let Some(t) = self.device_timeout {
            spec.device_timeout_ms = millis(t);
        }
        if let Some(o) = &self.on_fail {
            spec.on_fail = o.parse::<OnFail>().map_err(bad)?;
        }
        if let Some(s) = &self.max_silent {
            spec.max_silent = parse_fraction(s).map_err(bad)?;
        }
        if let Some(s) = &self.max_failed {
            spec.max_failed = parse_fraction(s).map_err(bad)?;
        }
        if let Some(i) = self.metrics_interval {
            spec.metrics_interval_ms = millis(i);
        }
        if let Some(f) = self.latency_floor {
            spec.latency_floor_us = u64::try_from(f.as_micros()).unwrap_or(u64::MAX);
        }
        if let Some(r) = self.rollback_rate_per_min {
            spec.rollback_rate_per_min = r;
        }
        Ok(spec)
    }
}

impl From<RolloutServiceError> for ApiError {
    fn from(e: RolloutServiceError) -> ApiError {
        let (status, code) = match &e {
            RolloutServiceError::Rollout(_) => (StatusCode::BAD_REQUEST, "rollout_refused"),
            RolloutServiceError::Conflict { .. } => (StatusCode::CONFLICT, "rollout_conflict"),
            RolloutServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RolloutServiceError::Exists(_) => (StatusCode::CONFLICT, "rollout_exists"),
            RolloutServiceError::UnknownModel(_) => (StatusCode::NOT_FOUND, "unknown_model"),
            RolloutServiceError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

#[derive(Debug, Deserialize)]
struct DetailQuery {
    #[serde(default)]
    audit: Option<u32>,
}

fn actor_name(actor: Option<Extension<Actor>>) -> String {
    actor.map_or_else(|| "unauthenticated".into(), |Extension(a)| a.name)
}

async fn start(
    State(s): State<RolloutService>,
    actor: Option<Extension<Actor>>,
    body: Bytes,
) -> Result<(StatusCode, Json<RolloutSummary>), ApiError> {
    let body: StartBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))?;
    let spec = body.to_spec()?;
    let summary = s.create(spec).await?;
    s.record_actor(&summary.id, &actor_name(actor), "start")
        .await?;
    Ok((StatusCode::CREATED, Json(summary)))
}

async fn list(State(s): State<RolloutService>) -> Json<Vec<RolloutSummary>> {
    Json(s.list().await)
}

async fn detail(
    State(s): State<RolloutService>,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Json<RolloutDetail>, ApiError> {
    Ok(Json(
        s.detail(&id, q.audit.unwrap_or(50).min(10_000)).await?,
    ))
}

pub(crate) async fn command(
    State(s): State<RolloutService>,
    actor: Option<Extension<Actor>>,
    Path((id, verb)): Path<(String, String)>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let cmd = match verb.as_str() {
        "pause" => RolloutCommand::Pause,
        "resume" => RolloutCommand::Resume,
        "abort" => RolloutCommand::Abort,
        "rollback" => RolloutCommand::Rollback,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown rollout action {other:?}: pause, resume, abort or rollback"
            )));
        }
    };
    let status = s.command(&id, cmd).await?;
    s.record_actor(&id, &actor_name(actor), &verb).await?;
    Ok(Json(status))
}

/// The rollout routes with their state; merge into the main router.
pub fn routes(service: RolloutService) -> Router {
    Router::new()
        .route("/v1/rollouts", post(start).get(list))
        .route("/v1/rollouts/{id}", get(detail))
        .route("/v1/rollouts/{id}/{verb}", post(command))
        .with_state(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_floor_is_a_duration_defaulting_to_one_millisecond() {
        let body: StartBody = serde_json::from_str(r#"{"model": "m@2"}"#).unwrap();
        assert_eq!(body.to_spec().unwrap().latency_floor_us, 1_000);
        let body: StartBody =
            serde_json::from_str(r#"{"model": "m@2", "latency_floor": "200us"}"#).unwrap();
        assert_eq!(body.to_spec().unwrap().latency_floor_us, 200);
        let body: StartBody =
            serde_json::from_str(r#"{"model": "m@2", "latency_floor": "5ms"}"#).unwrap();
        assert_eq!(body.to_spec().unwrap().latency_floor_us, 5_000);
        let mut spec = body.to_spec().unwrap();
        spec.id = "r1".into();
        spec.validate().unwrap();
        let mut zero = spec.clone();
        zero.latency_floor_us = 0;
        assert!(zero.validate().is_err());
    }
}
