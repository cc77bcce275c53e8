//! Agent release routes, merged into the controller API:
//! `POST /v1/agents` (push a binary) and `GET /v1/agents` (list).

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::agent_releases::{AgentReleaseError, AgentReleaseView, parse_target};
use crate::controller::Controller;
use crate::http::{ApiError, MAX_BODY_BYTES};

/// `POST /v1/agents` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentPushBody {
    /// `major.minor.patch` the binary reports.
    pub version: String,
    /// `x86_64`, `aarch64` or `armv7` (checked against the ELF header).
    pub arch: String,
    /// The binary, standard base64.
    pub binary_base64: String,
}

impl From<AgentReleaseError> for ApiError {
    fn from(e: AgentReleaseError) -> ApiError {
        let e = match e {
            AgentReleaseError::Controller(c) => return ApiError::from(c),
            other => other,
        };
        let (status, code) = match &e {
            AgentReleaseError::BadVersion(_) => (StatusCode::BAD_REQUEST, "bad_version"),
            AgentReleaseError::BadArch(_) => (StatusCode::BAD_REQUEST, "bad_arch"),
            AgentReleaseError::NotAnExecutable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "not_an_executable")
            }
            AgentReleaseError::ArchMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "arch_mismatch")
            }
            AgentReleaseError::Exists { .. } => (StatusCode::CONFLICT, "release_exists"),
            AgentReleaseError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            AgentReleaseError::UnknownArch(_) => (StatusCode::CONFLICT, "unknown_arch"),
            // Answered above with the controller's own mapping.
            AgentReleaseError::Controller(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            AgentReleaseError::Io(_)
            | AgentReleaseError::Sign(_)
            | AgentReleaseError::Db(_)
            | AgentReleaseError::Task(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "agent release request failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

async fn push(
    State(c): State<Controller>,
    body: Bytes,
) -> Result<(StatusCode, Json<AgentReleaseView>), ApiError> {
    let body: AgentPushBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))?;
    let (version, arch) = parse_target(&body.version, &body.arch)?;
    let binary = base64::engine::general_purpose::STANDARD
        .decode(body.binary_base64.as_bytes())
        .map_err(|e| ApiError::bad_request("bad_base64", format!("binary_base64: {e}")))?;
    let view = c.push_agent(binary, version, arch).await?;
    let status = if view.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// `POST /v1/agents/update` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentUpdateBody {
    /// The device.
    pub device: String,
    /// The release version (the device's arch picks the build).
    pub version: String,
    /// An explicit rollback below the device's agent version floor.
    #[serde(default)]
    pub rollback: bool,
}

/// `POST /v1/agents/update` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUpdateSent {
    /// The device.
    pub device: String,
    /// The command's sequence number.
    pub seq: u64,
}

async fn update(
    State(c): State<Controller>,
    body: Bytes,
) -> Result<Json<AgentUpdateSent>, ApiError> {
    let body: AgentUpdateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))?;
    let device = drover_protocol::DeviceId::new(&body.device)
        .map_err(|e| ApiError::bad_request("bad_device_id", e.to_string()))?;
    let version = drover_protocol::manifest::AgentVersion::parse(&body.version)
        .ok_or_else(|| AgentReleaseError::BadVersion(body.version.clone()))?;
    let seq = c.update_agent(&device, version, body.rollback).await?;
    Ok(Json(AgentUpdateSent {
        device: device.to_string(),
        seq,
    }))
}

async fn list(State(c): State<Controller>) -> Result<Json<Vec<AgentReleaseView>>, ApiError> {
    Ok(Json(c.agent_releases().await?))
}

/// The agent release routes with their state; merge into the main router.
pub fn routes(controller: Controller) -> Router {
    Router::new()
        .route("/v1/agents", post(push).get(list))
        .route("/v1/agents/update", post(update))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(controller)
}
