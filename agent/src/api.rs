//! The loopback HTTP API (axum) for local applications:
//!
//! - `POST /v1/infer`: JSON `{"inputs": {"NAME": {"shape": [..], "data": [..]}, ..}}`
//!   (any number of inputs by name; numbers, booleans or strings) or
//!   `{"data": [..]}` (one input, batch 1, shape from the manifest), read as
//!   JSON whatever the content type; or `application/octet-stream`, a
//!   one-input model's input as raw little-endian f32. NaN and infinite
//!   inputs are refused (`non_finite_input`).
//! - `POST /v1/feedback`: `{"request_id", "label"}` (class name or index) or
//!   `{"request_id", "value"}`.
//! - `GET /v1/status`, `GET /metrics` (Prometheus text).
//!
//! Every refusal is a JSON `{"error", "detail"}` with 400, 404, 413, 415 or
//! 503, counted by error code; nothing a client sends can panic the server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::infer::{
    FeedbackError, FeedbackLabel, InferError, InferRequest, InferResponse, InputValues, NamedInput,
    OutputTensor,
};
use crate::shared::Shared;

/// A running API server.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves in the background.
    pub(crate) async fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(shared);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let serving = crate::http_serve::serve(
                listener,
                app,
                crate::http_serve::HEADER_READ_TIMEOUT,
                stop_rx,
            );
            tokio::pin!(serving);
            tokio::select! {
                () = &mut serving => {}
                _ = stopped => {
                    let _ = stop_tx.send(true);
                    serving.await;
                }
            }
        });
        tracing::info!(%addr, "inference api listening");
        Ok(Server {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish (bounded).
    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        if tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("http api did not drain in time");
        }
    }

    /// Stops at once.
    pub(crate) fn abort(&self) {
        self.task.abort();
    }
}

/// The routes, with the body limit.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.config.max_body_bytes;
    Router::new()
        .route("/v1/infer", post(infer))
        .route("/v1/feedback", post(feedback))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: String,
}

fn error(shared: &Shared, status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    shared.metrics.http_error(code);
    let body = ErrorBody {
        error: code,
        detail: detail.into(),
    };
    (status, axum::Json(body)).into_response()
}

fn body_error(shared: &Shared, r: &BytesRejection) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(
            shared,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request bodies are limited to {} bytes",
                shared.config.max_body_bytes
            ),
        )
    } else {
        error(shared, StatusCode::BAD_REQUEST, "bad_body", r.body_text())
    }
}

async fn not_found(State(shared): State<Arc<Shared>>) -> Response {
    error(
        &shared,
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}

enum BodyKind {
    /// JSON; `Some(type)` when the client declared another content type
    /// (curl -d sends application/x-www-form-urlencoded): the body is still
    /// read as JSON, and only refused with 415 when it does not parse.
    Json(Option<String>),
    Binary,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, String> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        // curl without -H sends no type for --data-binary; JSON is the default.
        return Ok(BodyKind::Json(None));
    };
    let ct = ct
        .to_str()
        .map_err(|_| "content type is not ASCII".to_string())?;
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyKind::Json(None)),
        "application/octet-stream" => Ok(BodyKind::Binary),
        other => Ok(BodyKind::Json(Some(other.to_string()))),
    }
}

/// JSON values of one input: numbers, booleans or strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonValues {
    /// `null` is a missing value (NaN), what imputers expect.
    Numbers(Vec<Option<f64>>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorBody {
    #[serde(default)]
    shape: Option<Vec<usize>>,
    data: JsonValues,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferBody {
    #[serde(default)]
    inputs: Option<BTreeMap<String, TensorBody>>,
    #[serde(default)]
    data: Option<Vec<f32>>,
    #[serde(default)]
    shape: Option<Vec<usize>>,
}

fn json_error(shared: &Shared, e: &serde_json::Error) -> Response {
    let code = match e.classify() {
        serde_json::error::Category::Data => "wrong_type",
        _ => "bad_json",
    };
    error(shared, StatusCode::BAD_REQUEST, code, e.to_string())
}

fn parse_infer(
    shared: &Shared,
    kind: BodyKind,
    body: &[u8],
) -> Result<InferRequest, Box<Response>> {
    match kind {
        BodyKind::Binary => {
            if body.len() % 4 != 0 {
                return Err(Box::new(error(
                    shared,
                    StatusCode::BAD_REQUEST,
                    "bad_shape",
                    format!("{} bytes is not a whole number of f32 values", body.len()),
                )));
            }
            let data = body
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok(InferRequest::new(data))
        }
        BodyKind::Json(declared) => {
            let b: InferBody = serde_json::from_slice(body).map_err(|e| match &declared {
                Some(other) => Box::new(error(
                    shared,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "content type {other:?} with a body that is not JSON ({e}); send JSON \
                         or application/octet-stream"
                    ),
                )),
                None => Box::new(json_error(shared, &e)),
            })?;
            match (b.inputs, b.data) {
                (Some(inputs), None) if b.shape.is_none() => {
                    if inputs.is_empty() {
                        return Err(Box::new(error(
                            shared,
                            StatusCode::BAD_REQUEST,
                            "bad_inputs",
                            "\"inputs\" names no input",
                        )));
                    }
                    let named = inputs
                        .into_iter()
                        .map(|(name, t)| NamedInput {
                            name,
                            shape: t.shape,
                            values: match t.data {
                                JsonValues::Numbers(v) => InputValues::F64(
                                    v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect(),
                                ),
                                JsonValues::Bools(v) => InputValues::Bool(v),
                                JsonValues::Strings(v) => InputValues::String(v),
                            },
                        })
                        .collect::<Vec<_>>();
                    // One f32 input by name keeps the one-input form (it
                    // feeds the shadow candidate too).
                    if let [one] = named.as_slice()
                        && let InputValues::F64(v) = &one.values
                        && v.iter().all(|x| x.is_finite())
                    {
                        return Ok(InferRequest {
                            data: v.iter().map(|x| *x as f32).collect(),
                            shape: one.shape.clone(),
                            input: Some(one.name.clone()),
                            inputs: vec![],
                        });
                    }
                    Ok(InferRequest::named(named))
                }
                (None, Some(data)) => Ok(InferRequest {
                    data,
                    shape: b.shape,
                    input: None,
                    inputs: vec![],
                }),
                _ => Err(Box::new(error(
                    shared,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "give either \"inputs\" or \"data\"",
                ))),
            }
        }
    }
}

#[derive(Serialize)]
struct InferReply<'a> {
    request_id: u64,
    model: &'a str,
    version: u64,
    outputs: BTreeMap<&'a str, &'a OutputTensor>,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f32>,
}

fn reply(r: &InferResponse) -> Response {
    let body = InferReply {
        request_id: r.request_id,
        model: r.model.name.as_str(),
        version: r.model.version.0,
        outputs: r.outputs.iter().map(|o| (&*o.name, o)).collect(),
        latency_us: r.latency_us,
        label: r.label.as_deref(),
        score: r.score,
        value: r.value,
    };
    axum::Json(body).into_response()
}

async fn infer(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let kind = match body_kind(&headers) {
        Ok(k) => k,
        Err(detail) => {
            return error(
                &shared,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                detail,
            );
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_error(&shared, &r),
    };
    let req = match parse_infer(&shared, kind, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match shared.runtime.infer(req) {
        Ok(r) => reply(&r),
        Err(InferError::NoModel) => error(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
            "no model is active yet",
        ),
        Err(InferError::BadInput { code, detail }) => {
            error(&shared, StatusCode::BAD_REQUEST, code, detail)
        }
        Err(InferError::Model(e)) => error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            "inference_failed",
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LabelValue {
    Index(u32),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    request_id: IdValue,
    #[serde(default)]
    label: Option<LabelValue>,
    #[serde(default)]
    value: Option<f32>,
}

#[derive(Serialize)]
struct FeedbackReply {
    status: &'static str,
    correct: bool,
}

async fn feedback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !matches!(body_kind(&headers), Ok(BodyKind::Json(_))) {
        return error(
            &shared,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "feedback takes application/json",
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_error(&shared, &r),
    };
    let b: FeedbackBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return json_error(&shared, &e),
    };
    let id = match b.request_id {
        IdValue::Number(n) => n,
        IdValue::Text(s) => match s.trim().parse() {
            Ok(n) => n,
            Err(_) => {
                return error(
                    &shared,
                    StatusCode::BAD_REQUEST,
                    "wrong_type",
                    "request_id must be an unsigned integer",
                );
            }
        },
    };
    let label = match (b.label, b.value) {
        (Some(LabelValue::Index(i)), None) => FeedbackLabel::Class(i),
        (Some(LabelValue::Name(n)), None) => FeedbackLabel::ClassName(n),
        (None, Some(v)) if v.is_finite() => FeedbackLabel::Value(v),
        _ => {
            return error(
                &shared,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give either \"label\" (class name or index) or a finite \"value\"",
            );
        }
    };
    match shared.feedback(id, &label) {
        Ok(correct) => axum::Json(FeedbackReply {
            status: "recorded",
            correct,
        })
        .into_response(),
        Err(FeedbackError::Unknown) => error(
            &shared,
            StatusCode::NOT_FOUND,
            "unknown_request",
            format!("request {id} is unknown (never seen, or no longer remembered)"),
        ),
        Err(FeedbackError::Expired) => error(
            &shared,
            StatusCode::NOT_FOUND,
            "expired_request",
            format!("request {id} is too old for feedback"),
        ),
        Err(FeedbackError::Mismatch(d)) => {
            error(&shared, StatusCode::BAD_REQUEST, "label_mismatch", d)
        }
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.status()).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics_text(),
    )
        .into_response()
}
