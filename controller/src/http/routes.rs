//! Route handlers. Bodies are parsed by hand from bytes so that malformed
//! JSON also gets the `{"error", "detail"}` shape.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use drover_protocol::trust::Role;
use drover_protocol::{DeviceId, ModelName, ModelRef, Version};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;
use crate::controller::Controller;
use crate::registry::PushRequest;
use crate::telemetry::query::TelemetryFilter;
use drover_protocol::labels::{Selector, parse_labels};

type ApiResult<T> = Result<T, ApiError>;

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))
}

fn model_name(s: &str) -> ApiResult<ModelName> {
    ModelName::new(s).map_err(|e| ApiError::bad_request("bad_name", e.to_string()))
}

fn device_id(s: &str) -> ApiResult<DeviceId> {
    DeviceId::new(s).map_err(|e| ApiError::bad_request("bad_device_id", e.to_string()))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see controller/API.md")
}

pub(crate) async fn healthz(State(c): State<Controller>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "fleet": c.fleet().to_string() }))
}

pub(crate) async fn metrics(State(c): State<Controller>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        c.metrics_text().await,
    )
        .into_response()
}

pub(crate) async fn keys(State(c): State<Controller>) -> Json<crate::controller::KeysInfo> {
    Json(c.keys_info())
}

pub(crate) async fn keys_init(
    State(c): State<Controller>,
) -> ApiResult<Json<crate::keys::KeyInit>> {
    Ok(Json(c.keys_init()?))
}

/// `POST /v1/keys/rotate` and `/v1/keys/rotate/prepare` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateBody {
    /// `models`, `commands` or `agents`.
    pub role: String,
    /// With the root key offline: the prepared key list signed by the root
    /// key (codec-encoded `Signed<KeyList>`, standard base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_key_list: Option<String>,
}

fn rotate_role(body: &RotateBody) -> Result<Role, ApiError> {
    match body.role.as_str() {
        "models" => Ok(Role::Models),
        "commands" => Ok(Role::Commands),
        "agents" => Ok(Role::Agents),
        other => Err(ApiError::bad_request(
            "bad_role",
            format!(
                "role {other:?}: expected models, commands or agents (the root key is rotated offline)"
            ),
        )),
    }
}

pub(crate) async fn keys_rotate(
    State(c): State<Controller>,
    body: Bytes,
) -> ApiResult<Json<crate::controller::RotateOutcome>> {
    let body: RotateBody = parse_body(&body)?;
    let role = rotate_role(&body)?;
    let Some(signed) = &body.signed_key_list else {
        return Ok(Json(c.rotate_key(role).await?));
    };
    let signed = base64::engine::general_purpose::STANDARD
        .decode(signed)
        .ok()
        .and_then(|b| {
            drover_protocol::codec::decode(&b, drover_protocol::limits::MAX_DOWN_PAYLOAD).ok()
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_key_list",
                "signed_key_list: expected a base64 codec-encoded signed key list",
            )
        })?;
    Ok(Json(c.commit_rotation(role, signed).await?))
}

pub(crate) async fn keys_rotate_prepare(
    State(c): State<Controller>,
    body: Bytes,
) -> ApiResult<Json<crate::key_rotation::RotationPrepared>> {
    let body: RotateBody = parse_body(&body)?;
    let role = rotate_role(&body)?;
    Ok(Json(c.prepare_rotation(role).await?))
}

/// `POST /v1/models` body: the ONNX file base64-encoded, the reference CSV as text.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushBody {
    /// Model name.
    pub name: String,
    /// The ONNX file, standard base64.
    pub onnx_base64: String,
    /// Reference CSV text.
    #[serde(default)]
    pub reference_csv: Option<String>,
    /// Reference `.npy` / `.npz` files, standard base64, each one request
    /// (an `.npz`: one array per input, by name).
    #[serde(default)]
    pub reference_arrays_base64: Vec<String>,
    /// Class names by index.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Latency budget (p95, ms).
    #[serde(default)]
    pub latency_budget_ms: Option<u64>,
    /// Parent version.
    #[serde(default)]
    pub parent: Option<u64>,
    /// Alias to move to the new version.
    #[serde(default)]
    pub alias: Option<String>,
    /// Training run id.
    #[serde(default)]
    pub training_run: Option<String>,
    /// Retraining job id.
    #[serde(default)]
    pub retrain_job: Option<u64>,
    /// Extra evaluation metrics.
    #[serde(default)]
    pub eval_metrics: BTreeMap<String, f64>,
    /// `NAME=VALUE`: inputs the deployment fixes (constant-folded at load,
    /// so an `If` on them disappears), e.g. `sr=16000`.
    #[serde(default)]
    pub fix_inputs: Vec<String>,
    /// `NAME=D0,D1,...`: shapes pinned for inputs with dynamic dims.
    #[serde(default)]
    pub input_shapes: Vec<String>,
}

/// `POST /v1/models`: a streamed upload (`application/octet-stream`, see
/// [`super::upload`]) or, for small models, the JSON [`PushBody`] (at most
/// [`super::upload::MAX_JSON_PUSH_BYTES`]).
pub(crate) async fn push_model(
    State(c): State<Controller>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    if super::upload::is_octet_stream(req.headers()) {
        return super::upload::push_stream(State(c), req).await;
    }
    let cap = req
        .extensions()
        .get::<super::upload::UploadCap>()
        .map_or(super::upload::MAX_JSON_PUSH_BYTES, |c| c.0)
        .min(super::upload::MAX_JSON_PUSH_BYTES);
    let body = super::upload::collect(req.into_body(), cap).await?;
    let body: PushBody = parse_body(&body)?;
    let name = model_name(&body.name)?;
    let onnx = base64::engine::general_purpose::STANDARD
        .decode(body.onnx_base64.as_bytes())
        .map_err(|e| ApiError::bad_request("bad_base64", format!("onnx_base64: {e}")))?;
    let reference_arrays = body
        .reference_arrays_base64
        .iter()
        .enumerate()
        .map(|(i, b)| {
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| {
                    ApiError::bad_request(
                        "bad_base64",
                        format!("reference_arrays_base64[{i}]: {e}"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let req = PushRequest {
        name: Some(name),
        onnx,
        reference_arrays,
        reference_csv: body.reference_csv.map(String::into_bytes),
        labels: body.labels,
        latency_budget_ms: body.latency_budget_ms,
        parent: body.parent.map(Version),
        alias: body.alias,
        training_run: body.training_run,
        retrain_job: body.retrain_job,
        eval_metrics: body.eval_metrics,
        load: drover_protocol::manifest::LoadSpec {
            fix_inputs: body.fix_inputs,
            input_shapes: body.input_shapes,
        },
        ..PushRequest::default()
    };
    let stored = c.push_model(req).await?;
    Ok(super::upload::pushed(&stored))
}

pub(crate) async fn list_models(
    State(c): State<Controller>,
) -> ApiResult<Json<Vec<crate::registry::ModelSummary>>> {
    Ok(Json(c.models().await?))
}

pub(crate) async fn show_model(
    State(c): State<Controller>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<crate::registry::ManifestView>> {
    let stored = c.resolve_model(&model_name(&name)?, &version).await?;
    Ok(Json(Controller::manifest_view(&stored)))
}

pub(crate) async fn artifact(
    State(c): State<Controller>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let stored = c.resolve_model(&model_name(&name)?, &version).await?;
    let bytes = c.artifact(stored.manifest.artifact.sha256).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `PUT /v1/models/{name}/aliases/{alias}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AliasBody {
    version: u64,
}

pub(crate) async fn set_alias(
    State(c): State<Controller>,
    Path((name, alias)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let body: AliasBody = parse_body(&body)?;
    let name = model_name(&name)?;
    c.set_alias(&name, &alias, Version(body.version)).await?;
    Ok(Json(
        serde_json::json!({ "name": name.to_string(), "alias": alias, "version": body.version }),
    ))
}

/// `POST /v1/devices` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceAddBody {
    /// Device id.
    pub id: String,
    /// Labels, `k=v,...`.
    #[serde(default)]
    pub labels: Option<String>,
    /// Also issue a client certificate (CN = id) from the fleet CA.
    #[serde(default)]
    pub client_cert: bool,
}

pub(crate) async fn add_device(State(c): State<Controller>, body: Bytes) -> ApiResult<Response> {
    let body: DeviceAddBody = parse_body(&body)?;
    let id = device_id(&body.id)?;
    let labels = parse_labels(body.labels.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request("bad_labels", e.to_string()))?;
    let bundle = c.enroll_device(&id, labels, body.client_cert).await?;
    Ok((StatusCode::CREATED, Json(bundle)).into_response())
}

/// `GET /v1/devices`: registered devices matching `?selector=`; with
/// `?unregistered=true`, the device ids seen on the broker that were never
/// registered (never selectable).
pub(crate) async fn list_devices(
    State(c): State<Controller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    if q.get("unregistered").map(String::as_str) == Some("true") {
        return Ok(Json(c.unregistered_devices()).into_response());
    }
    let selector = Selector::parse(q.get("selector").map(String::as_str).unwrap_or(""))
        .map_err(crate::controller::ControllerError::from)?;
    Ok(Json(c.devices(&selector).await?).into_response())
}

/// `PUT /v1/devices/{id}/labels` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DeviceLabelsBody {
    /// Labels, `k=v,...` (replaces the device's registry labels).
    pub labels: String,
}

pub(crate) async fn set_device_labels(
    State(c): State<Controller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<crate::fleet::devices::DeviceInfo>> {
    let id = device_id(&id)?;
    let body: DeviceLabelsBody = parse_body(&body)?;
    let labels = parse_labels(&body.labels)
        .map_err(|e| ApiError::bad_request("bad_labels", e.to_string()))?;
    Ok(Json(c.set_device_labels(&id, labels).await?))
}

pub(crate) async fn show_device(
    State(c): State<Controller>,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::fleet::devices::DeviceInfo>> {
    let id = device_id(&id)?;
    c.device(&id).await?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("unknown device {id:?}"),
        )
    })
}

/// `GET /v1/devices/{id}/deploys?limit=N`: the device's latest model
/// commands and how each ended (newest first; default 20, at most 500).
pub(crate) async fn device_deploys(
    State(c): State<Controller>,
    Path(id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Vec<crate::fleet::commands::CommandRecord>>> {
    let id = device_id(&id)?;
    if c.device(&id).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("unknown device {id:?}"),
        ));
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 500);
    Ok(Json(c.deploy_history(&id, limit).await?))
}

/// `?limit=N` on list routes.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LimitQuery {
    limit: Option<u32>,
}

pub(crate) async fn broker_acl(
    State(c): State<Controller>,
) -> ApiResult<Json<crate::fleet::devices::BrokerAcl>> {
    Ok(Json(c.broker_acl().await?))
}

/// `POST /v1/deploy` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployBody {
    /// `name@version` (or `name@alias`).
    pub model: String,
    /// Target device.
    pub device: String,
    /// Shadow instead of activate.
    #[serde(default)]
    pub shadow: bool,
}

pub(crate) async fn deploy(State(c): State<Controller>, body: Bytes) -> ApiResult<Response> {
    let body: DeployBody = parse_body(&body)?;
    let (name, version) = body.model.split_once('@').ok_or_else(|| {
        ApiError::bad_request(
            "bad_model_ref",
            format!("expected NAME@VERSION, got {:?}", body.model),
        )
    })?;
    let name = model_name(name)?;
    let device = device_id(&body.device)?;
    let stored = c.resolve_model(&name, version).await?;
    let model = ModelRef {
        name,
        version: stored.manifest.version,
    };
    let d = c.deploy(&model, &device, body.shadow).await?;
    Ok((StatusCode::ACCEPTED, Json(d)).into_response())
}

pub(crate) async fn deployment(
    State(c): State<Controller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<crate::fleet::commands::Deployment>> {
    c.deployment(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("deployment {id}")))
}

fn num(q: &HashMap<String, String>, key: &str) -> ApiResult<Option<u64>> {
    q.get(key)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "bad_query",
                    format!("{key}={v:?} is not an unsigned integer"),
                )
            })
        })
        .transpose()
}

pub(crate) async fn telemetry(
    State(c): State<Controller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<crate::telemetry::summary::TelemetrySummary>> {
    let mut f = TelemetryFilter {
        // Per-device breakdowns cost one histogram per device: only when
        // asked for, or when the query names devices.
        per_device: match q.get("per_device") {
            Some(v) => v == "true",
            None => q.contains_key("device"),
        },
        from_ms: num(&q, "since_ms")?,
        to_ms: num(&q, "until_ms")?,
        ..TelemetryFilter::default()
    };
    if let Some(m) = q.get("model").filter(|m| !m.is_empty()) {
        let (name, version) = match m.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (m.as_str(), None),
        };
        let name = model_name(name)?;
        f.version = match version {
            Some(v) => match v.parse::<u64>() {
                Ok(v) => Some(v),
                Err(_) => Some(c.resolve_model(&name, v).await?.manifest.version.0),
            },
            None => None,
        };
        f.model = Some(name.to_string());
    }
    if let Some(d) = q.get("device").filter(|d| !d.is_empty()) {
        let ids = d
            .split(',')
            .map(|s| device_id(s.trim()).map(|d| d.to_string()))
            .collect::<ApiResult<Vec<_>>>()?;
        f.devices = Some(ids);
    }
    if let Some(r) = q.get("role") {
        if r != "active" && r != "shadow" {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("role={r:?}: expected active or shadow"),
            ));
        }
        f.role = Some(r.clone());
    }
    Ok(Json(c.telemetry_summary(f).await?))
}
