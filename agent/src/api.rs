//! The loopback HTTP API (axum) for local applications:
//!
//! - `POST /v1/infer`: JSON `{"inputs": {"NAME": {"shape": [..], "data": [..]}, ..}}`
//!   (any number of inputs by name; numbers, booleans or strings) or
//!   `{"data": [..]}` (one input, batch 1, shape from the manifest), read as
//!   JSON whatever the content type; `application/x-npz` (what `np.savez`
//!   writes: one array per input, named as the input) or `application/x-npy`
//!   (one array, a one-input model); or `application/octet-stream`, a
//!   one-input model's input as raw little-endian f32. NaN and infinite
//!   inputs are refused (`non_finite_input`). The answer is JSON, or an
//!   `.npz` of the outputs (metadata in `x-drover-*` headers) when the
//!   request says `Accept: application/x-npz`.
//! - `POST /v1/feedback`: `{"request_id", "label"}` (class name or index) or
//!   `{"request_id", "value"}`.
//! - `GET /v1/status`, `GET /metrics` (Prometheus text).
//!
//! The body limit of `/v1/infer` is sized from the active model's inputs
//! (`crate::input_limit`), capped by the config's `max_body_bytes`; a larger
//! body is refused with 413 `body_too_large` before it is read in full.
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

use crate::input_limit::{BodyFormat, NO_MODEL_BYTES};
use drover_onnx::npy::{self, NpyArray, NpyData};

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
    let limit = small_body_limit(&shared);
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

/// The body limit of every route but `/v1/infer`.
fn small_body_limit(shared: &Shared) -> usize {
    shared.config.max_body_bytes.min(NO_MODEL_BYTES)
}

fn body_error(shared: &Shared, r: &BytesRejection) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(
            shared,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request bodies are limited to {} bytes",
                small_body_limit(shared)
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
    /// Raw little-endian f32 of a one-input model.
    Binary,
    /// One `.npy` array (a one-input model).
    Npy,
    /// An `.npz` archive: one array per input, by name.
    Npz,
}

impl BodyKind {
    fn format(&self) -> BodyFormat {
        match self {
            BodyKind::Json(_) => BodyFormat::Json,
            BodyKind::Binary | BodyKind::Npy | BodyKind::Npz => BodyFormat::Binary,
        }
    }
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
        "application/x-npy" => Ok(BodyKind::Npy),
        "application/x-npz" | "application/zip" => Ok(BodyKind::Npz),
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

/// The request for inputs by name: one finite f32 input by name keeps the
/// one-input form (it feeds the shadow candidate too).
fn from_named(named: Vec<NamedInput>) -> InferRequest {
    if let [one] = named.as_slice() {
        let data = match &one.values {
            InputValues::F64(v) if v.iter().all(|x| x.is_finite()) => {
                Some(v.iter().map(|x| *x as f32).collect())
            }
            InputValues::F32(v) if v.iter().all(|x| x.is_finite()) => Some(v.clone()),
            _ => None,
        };
        if let Some(data) = data {
            return InferRequest {
                data,
                shape: one.shape.clone(),
                input: Some(one.name.clone()),
                inputs: vec![],
            };
        }
    }
    InferRequest::named(named)
}

/// An array read from `.npy`/`.npz` as a named input. Binary floats have no
/// `null`: NaN and infinity are refused here.
fn npy_input(name: String, a: NpyArray) -> Result<NamedInput, (&'static str, String)> {
    let non_finite = match &a.data {
        NpyData::F32(v) => v.iter().any(|x| !x.is_finite()),
        NpyData::F64(v) => v.iter().any(|x| !x.is_finite()),
        _ => false,
    };
    if non_finite {
        return Err((
            "non_finite_input",
            format!("input {name:?}: values must be finite (no NaN or infinity)"),
        ));
    }
    Ok(NamedInput {
        name,
        shape: Some(a.shape),
        values: match a.data {
            NpyData::F32(v) => InputValues::F32(v),
            NpyData::F64(v) => InputValues::F64(v),
            NpyData::I64(v) => InputValues::I64(v),
            NpyData::Bool(v) => InputValues::Bool(v),
            NpyData::String(v) => InputValues::String(v),
        },
    })
}

fn parse_infer(
    shared: &Shared,
    kind: BodyKind,
    body: &[u8],
    only_input: Option<&str>,
    limit: usize,
) -> Result<InferRequest, Box<Response>> {
    let bad =
        |code: &str, detail: String| Box::new(error(shared, StatusCode::BAD_REQUEST, code, detail));
    match kind {
        BodyKind::Npy => {
            let a = npy::read_npy(body).map_err(|e| bad("bad_npy", e.to_string()))?;
            let Some(name) = only_input else {
                // No model: the runtime answers no_model; several inputs: say so.
                if shared.runtime.active().is_none() {
                    return Ok(InferRequest::new(vec![]));
                }
                return Err(bad(
                    "missing_input",
                    "an .npy body is one array; this model takes several inputs: send an \
                     .npz with one array per input (application/x-npz)"
                        .into(),
                ));
            };
            let one = npy_input(name.to_string(), a).map_err(|(c, d)| bad(c, d))?;
            Ok(from_named(vec![one]))
        }
        BodyKind::Npz => {
            let arrays = npy::read_npz(body, limit.saturating_mul(4)).map_err(|e| match e {
                npy::NpyError::TooLarge(_) => Box::new(error(
                    shared,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!(
                        "the .npz decodes to more than {} bytes",
                        limit.saturating_mul(4)
                    ),
                )),
                other => bad("bad_npz", other.to_string()),
            })?;
            if arrays.is_empty() {
                return Err(bad("bad_inputs", "the .npz holds no array".into()));
            }
            let named = arrays
                .into_iter()
                .map(|(n, a)| npy_input(n, a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|(c, d)| bad(c, d))?;
            Ok(from_named(named))
        }
        BodyKind::Binary => {
            if body.len() % 4 != 0 {
                return Err(bad(
                    "bad_shape",
                    format!("{} bytes is not a whole number of f32 values", body.len()),
                ));
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
                        "content type {other:?} with a body that is not JSON ({e}); send JSON, \
                         application/x-npz, application/x-npy or application/octet-stream"
                    ),
                )),
                None => Box::new(json_error(shared, &e)),
            })?;
            match (b.inputs, b.data) {
                (Some(inputs), None) if b.shape.is_none() => {
                    if inputs.is_empty() {
                        return Err(bad("bad_inputs", "\"inputs\" names no input".into()));
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
                    Ok(from_named(named))
                }
                (None, Some(data)) => Ok(InferRequest {
                    data,
                    shape: b.shape,
                    input: None,
                    inputs: vec![],
                }),
                _ => Err(bad(
                    "bad_request",
                    "give either \"inputs\" or \"data\"".into(),
                )),
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

/// Whether the client asked for the outputs as `.npz`.
fn wants_npz(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/x-npz"))
}

/// The outputs as an `.npz`, the rest of the answer in `x-drover-*` headers.
fn reply_npz(shared: &Shared, r: &InferResponse) -> Response {
    let arrays = r.outputs.iter().map(|o| (o.name(), &*o.tensor));
    let bytes = match npy::write_npz(arrays) {
        Ok(b) => b,
        Err(e) => {
            return error(
                shared,
                StatusCode::INTERNAL_SERVER_ERROR,
                "encode_failed",
                e.to_string(),
            );
        }
    };
    let mut resp = (
        [(header::CONTENT_TYPE, "application/x-npz")],
        axum::body::Body::from(bytes),
    )
        .into_response();
    let h = resp.headers_mut();
    let mut put = |name: &'static str, value: String| {
        // A label that is not a visible-ASCII header value stays in JSON answers only.
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put("x-drover-request-id", r.request_id.to_string());
    put("x-drover-model", r.model.to_string());
    put("x-drover-latency-us", r.latency_us.to_string());
    if let Some(l) = &r.label {
        put("x-drover-label", l.to_string());
    }
    if let Some(s) = r.score {
        put("x-drover-score", s.to_string());
    }
    if let Some(v) = r.value {
        put("x-drover-value", v.to_string());
    }
    resp
}

/// Bytes of an over-limit body read and dropped before answering 413, so a
/// client still sending gets the answer instead of a reset connection.
const DRAIN_BYTES: usize = 8 << 20;

enum BodyRead {
    TooLarge,
    Failed(String),
}

/// The body, at most `limit` bytes. Past the limit the rest is drained (up
/// to [`DRAIN_BYTES`]) and dropped.
async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, BodyRead> {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut buf = Vec::new();
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyRead::Failed(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if drained > 0 || buf.len() + data.len() > limit {
            drained += data.len();
            buf = Vec::new();
            if drained > DRAIN_BYTES {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if drained > 0 {
        return Err(BodyRead::TooLarge);
    }
    Ok(Bytes::from(buf))
}

fn too_large(shared: &Shared, limit: usize) -> Response {
    error(
        shared,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "request bodies to this model are limited to {limit} bytes (sized from its \
             inputs' declared shapes, capped by max_body_bytes)"
        ),
    )
}

async fn infer(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Body,
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
    let active = shared.runtime.active();
    let limit = active
        .as_ref()
        .map_or(NO_MODEL_BYTES, |m| {
            m.input_limits().body_bytes(kind.format())
        })
        .min(shared.config.max_body_bytes);
    let body = match read_limited(body, limit).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => return too_large(&shared, limit),
        Err(BodyRead::Failed(e)) => {
            return error(&shared, StatusCode::BAD_REQUEST, "bad_body", e);
        }
    };
    let only_input = active
        .as_ref()
        .and_then(|m| match m.onnx().schema().inputs.as_slice() {
            [one] => Some(one.name.clone()),
            _ => None,
        });
    drop(active);
    let npz_reply = wants_npz(&headers);
    let req = match parse_infer(&shared, kind, &body, only_input.as_deref(), limit) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match shared.runtime.infer(req) {
        Ok(r) if npz_reply => reply_npz(&shared, &r),
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
        Err(InferError::TooLarge(detail)) => {
            error(&shared, StatusCode::PAYLOAD_TOO_LARGE, "too_large", detail)
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
