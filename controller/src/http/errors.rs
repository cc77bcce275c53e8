//! API errors: every failure is JSON `{"error": code, "detail": text}` with
//! a status code that says whose fault it was.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::controller::ControllerError;
use crate::registry::RegistryError;
use crate::registry::inspect::InspectError;

/// The error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error: String,
    /// What happened, for people.
    pub detail: String,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Body.
    pub body: ErrorBody,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, error: &str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                detail: detail.into(),
            },
        }
    }
    /// 400.
    pub fn bad_request(error: &str, detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }
    /// 404.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> ApiError {
        let detail = e.to_string();
        let (status, code) = match &e {
            ControllerError::Registry(r) => match r {
                RegistryError::Model(InspectError::NotOnnx(_)) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "not_onnx")
                }
                RegistryError::Model(InspectError::UnsupportedOperator { .. }) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_operator")
                }
                RegistryError::Model(InspectError::Invalid(_)) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_model")
                }
                RegistryError::Csv(_) => (StatusCode::BAD_REQUEST, "bad_reference_csv"),
                RegistryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
                RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                RegistryError::Db(_) | RegistryError::Io(_) | RegistryError::Sign(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            ControllerError::BadSelector(_) => (StatusCode::BAD_REQUEST, "bad_selector"),
            ControllerError::UnknownDevice(_) => (StatusCode::NOT_FOUND, "unknown_device"),
            ControllerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ControllerError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ControllerError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ControllerError::NotConnected => (StatusCode::SERVICE_UNAVAILABLE, "not_connected"),
            ControllerError::Publish(_) => (StatusCode::BAD_GATEWAY, "publish_failed"),
            ControllerError::Keys(crate::keys::KeyError::RootOffline) => {
                (StatusCode::CONFLICT, "root_key_offline")
            }
            ControllerError::Keys(crate::keys::KeyError::BadKeyList(_)) => {
                (StatusCode::BAD_REQUEST, "bad_key_list")
            }
            ControllerError::Db(_)
            | ControllerError::Keys(_)
            | ControllerError::Codec(_)
            | ControllerError::Task(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %detail, "request failed");
        }
        ApiError::new(status, code, detail)
    }
}
