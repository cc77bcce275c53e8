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

/// Largest plain-text error body carried over into `detail`; axum's own
/// rejections are one short sentence.
const MAX_PLAIN_DETAIL: usize = 4096;

/// Gives every error response the API's JSON shape, including those axum
/// writes itself as plain text or with no body: the body limit (413), a
/// wrong method (405, its `Allow` header kept), a malformed query or JSON
/// (400/415/422). Applied once around the whole API so no route can miss it.
pub(crate) async fn json_error_shape(resp: Response) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_DETAIL)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, code, detail).into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;

    use super::*;

    #[tokio::test]
    async fn axum_rejections_get_the_json_error_shape() {
        let app = Router::new()
            .route("/echo", post(|b: Bytes| async move { b }))
            .layer(DefaultBodyLimit::max(16))
            .layer(axum::middleware::map_response(json_error_shape));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();

        let r = client
            .post(format!("{url}/echo"))
            .body(vec![b'x'; 64])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body: ErrorBody = r.json().await.unwrap();
        assert_eq!(body.error, "body_too_large");
        assert!(!body.detail.is_empty());

        let r = client.get(format!("{url}/echo")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(r.headers().get("allow").is_some(), "Allow header kept");
        let body: ErrorBody = r.json().await.unwrap();
        assert_eq!(body.error, "method_not_allowed");

        let r = client.get(format!("{url}/nope")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body: ErrorBody = r.json().await.unwrap();
        assert_eq!(body.error, "not_found");

        // A small body goes through untouched.
        let r = client
            .post(format!("{url}/echo"))
            .body("ok")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "ok");
        server.abort();
    }
}
