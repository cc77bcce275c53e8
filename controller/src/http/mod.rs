//! The HTTP API (axum): JSON in and out, errors as `{"error", "detail"}`.
//! [`router`] returns a plain `axum::Router` so other modules (rollouts,
//! drift, retraining) can `.merge()` their own routes. Routes are listed in
//! `controller/API.md`.

pub mod agents;
pub(crate) mod errors;
pub mod limits;
pub(crate) mod retrain;
pub mod rollouts;
mod routes;
pub mod server;
pub mod upload;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::controller::Controller;

pub use errors::{ApiError, ErrorBody};
pub use routes::{DeployBody, DeviceAddBody, PushBody, RotateBody};
pub use upload::{MAX_JSON_PUSH_BYTES, MAX_UPLOAD_BYTES};

/// Largest body of every other JSON route.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// All routes of the controller API, with `controller` as state.
pub fn router(controller: Controller) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/keys", get(routes::keys))
        .route("/v1/keys/init", post(routes::keys_init))
        .route("/v1/keys/rotate", post(routes::keys_rotate))
        .route("/v1/keys/rotate/prepare", post(routes::keys_rotate_prepare))
        .route(
            "/v1/models",
            post(routes::push_model).get(routes::list_models),
        )
        .route("/v1/models/{name}/{version}", get(routes::show_model))
        .route(
            "/v1/models/{name}/{version}/artifact",
            get(routes::artifact),
        )
        .route("/v1/models/{name}/aliases/{alias}", put(routes::set_alias))
        .route(
            "/v1/devices",
            post(routes::add_device).get(routes::list_devices),
        )
        .route("/v1/devices/{id}", get(routes::show_device))
        .route("/v1/devices/{id}/labels", put(routes::set_device_labels))
        .route("/v1/devices/{id}/deploys", get(routes::device_deploys))
        .route("/v1/broker/acl", get(routes::broker_acl))
        .route("/v1/deploy", post(routes::deploy))
        .route("/v1/deployments/{id}", get(routes::deployment))
        .route("/v1/telemetry", get(routes::telemetry))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(controller)
}
