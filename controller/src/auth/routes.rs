//! `/v1/tokens`: create, list and revoke API tokens (admin only; the route
//! table in [`crate::core::auth`] says so).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::{Actor, AuthError, OperatorRole, TokenInfo, TokenStore};
use crate::http::ApiError;

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreateBody {
    /// Token name (shown in audit entries).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let (status, code) = match &e {
            AuthError::BadName(_) => (StatusCode::BAD_REQUEST, "bad_name"),
            AuthError::Exists(_) => (StatusCode::CONFLICT, "conflict"),
            AuthError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AuthError::Io { .. } | AuthError::Corrupt { .. } | AuthError::Random(_) => {
                tracing::error!(error = %e, "token store failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

async fn create(
    State(store): State<TokenStore>,
    actor: Option<Extension<Actor>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: TokenCreateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))?;
    let role: OperatorRole = body
        .role
        .parse()
        .map_err(|e: String| ApiError::bad_request("bad_role", e))?;
    let t = store.create(&body.name, role)?;
    let by = actor.map(|Extension(a)| a.name).unwrap_or_default();
    tracing::info!(token = %t.name, %role, by = %by, "API token created");
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

async fn list(State(store): State<TokenStore>) -> Json<Vec<TokenInfo>> {
    Json(store.list())
}

async fn revoke(
    State(store): State<TokenStore>,
    actor: Option<Extension<Actor>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    store.revoke(&name)?;
    let by = actor.map(|Extension(a)| a.name).unwrap_or_default();
    tracing::info!(token = %name, by = %by, "API token revoked");
    Ok(Json(serde_json::json!({ "revoked": name })))
}

/// The token routes, with the store as state.
pub fn routes(store: TokenStore) -> Router {
    Router::new()
        .route("/v1/tokens", get(list).post(create))
        .route("/v1/tokens/{name}", delete(revoke))
        .with_state(store)
}
