//! Streamed model uploads: `POST /v1/models` with
//! `Content-Type: application/octet-stream`. The body is the ONNX file
//! (optionally preceded by reference files whose sizes the query names);
//! everything else is in the query string. The model is written to
//! `DATA_DIR/uploads/` while it is hashed, never held in memory, and
//! validated from that file; on success the file is renamed into the
//! artifact store, on any refusal it is removed.
//!
//! The upload's size cap and its share of the controller-wide budget are
//! enforced before the handler runs ([`super::limits::admit`]); the cap is
//! enforced again here while streaming, for bodies sent without
//! `Content-Length`.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use drover_protocol::ids::Sha256Hasher;
use drover_protocol::{ModelName, Version};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::errors::ApiError;
use crate::controller::Controller;
use crate::registry::{OnnxFile, PushRequest};

type ApiResult<T> = Result<T, ApiError>;

/// Largest model upload by default (`ServeConfig::max_upload_bytes`); a
/// streamed upload goes to disk, never into memory.
pub const MAX_UPLOAD_BYTES: u64 = 512 * 1024 * 1024;

/// Largest JSON model push (`onnx_base64`): that body is held in memory,
/// so large models must use the streamed upload.
pub const MAX_JSON_PUSH_BYTES: u64 = 16 * 1024 * 1024;

/// The content type of a streamed upload.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Reference bytes a streamed upload may carry ahead of the model (they
/// are held in memory until the push is validated).
pub const MAX_STREAM_REFERENCE_BYTES: u64 = 64 * 1024 * 1024;

/// The most bytes this request may send: set by [`super::limits::admit`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct UploadCap(pub(crate) u64);

/// Whether `headers` say the body is a raw (streamed) upload.
pub(crate) fn is_octet_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OCTET_STREAM))
}

/// 413 for a body over `cap` bytes.
pub(crate) fn too_large(cap: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("upload is over the {cap} byte limit"),
    )
}

/// A failure reading the body: the idle cut-off of
/// [`super::limits::admit`] is 408, anything else 400.
pub(crate) fn body_error(e: axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload_stalled",
                io.to_string(),
            );
        }
        source = s.source();
    }
    ApiError::bad_request("bad_body", format!("reading the request body: {e}"))
}

/// Reads a whole (small, JSON) body, refusing it once it passes `cap`.
pub(crate) async fn collect(body: Body, cap: u64) -> ApiResult<Vec<u8>> {
    let mut data = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(body_error)?;
        if (out.len() + chunk.len()) as u64 > cap {
            return Err(too_large(cap));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A reference file sent ahead of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefKind {
    Csv,
    Array,
}

/// The query string of a streamed push.
#[derive(Debug, Default)]
struct Meta {
    name: Option<ModelName>,
    alias: Option<String>,
    parent: Option<u64>,
    labels: Option<Vec<String>>,
    latency_budget_ms: Option<u64>,
    training_run: Option<String>,
    retrain_job: Option<u64>,
    eval_metrics: std::collections::BTreeMap<String, f64>,
    fix_inputs: Vec<String>,
    input_shapes: Vec<String>,
    references: Vec<(RefKind, u64)>,
}

fn number(key: &str, value: &str) -> ApiResult<u64> {
    value.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_query",
            format!("{key}={value:?} is not an unsigned integer"),
        )
    })
}

fn parse_meta(uri: &axum::http::Uri) -> ApiResult<Meta> {
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let mut m = Meta::default();
    for (key, value) in pairs {
        match key.as_str() {
            "name" => {
                m.name = Some(
                    ModelName::new(&value)
                        .map_err(|e| ApiError::bad_request("bad_name", e.to_string()))?,
                );
            }
            "alias" => m.alias = Some(value),
            "parent" => m.parent = Some(number(&key, &value)?),
            "labels" => m.labels = Some(value.split(',').map(str::to_string).collect()),
            "latency_budget_ms" => m.latency_budget_ms = Some(number(&key, &value)?),
            "training_run" => m.training_run = Some(value),
            "retrain_job" => m.retrain_job = Some(number(&key, &value)?),
            "eval_metric" => {
                let parsed = value
                    .split_once('=')
                    .and_then(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()?)))
                    .filter(|(_, v)| v.is_finite());
                let Some((k, v)) = parsed else {
                    return Err(ApiError::bad_request(
                        "bad_query",
                        format!("eval_metric={value:?}: expected NAME=NUMBER"),
                    ));
                };
                m.eval_metrics.insert(k, v);
            }
            "fix_input" => m.fix_inputs.push(value),
            "input_shape" => m.input_shapes.push(value),
            "reference_csv_bytes" => m.references.push((RefKind::Csv, number(&key, &value)?)),
            "reference_array_bytes" => {
                m.references.push((RefKind::Array, number(&key, &value)?));
            }
            other => {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!("unknown parameter {other:?}; see controller/API.md"),
                ));
            }
        }
    }
    if m.references
        .iter()
        .filter(|(k, _)| *k == RefKind::Csv)
        .count()
        > 1
    {
        return Err(ApiError::bad_request(
            "bad_query",
            "reference_csv_bytes: at most one CSV (concatenate the rows)",
        ));
    }
    Ok(m)
}

/// An upload file that is removed when dropped (after a successful push it
/// was renamed into the store, so there is nothing left to remove).
struct TempUpload {
    path: PathBuf,
}

impl Drop for TempUpload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn create_temp(dir: &Path) -> ApiResult<(TempUpload, tokio::fs::File)> {
    let internal = |e: std::io::Error| {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create an upload file");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot store the upload: {e}"),
        )
    };
    tokio::fs::create_dir_all(dir).await.map_err(internal)?;
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| internal(std::io::Error::other(e.to_string())))?;
    let path = dir.join(format!("push-{}.onnx.part", hex::encode(nonce)));
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let file = opts.open(&path).await.map_err(internal)?;
    Ok((TempUpload { path }, file))
}

/// What arrived: the reference files (in memory) and the model (on disk).
struct Received {
    references: Vec<(RefKind, Vec<u8>)>,
    onnx: OnnxFile,
    temp: TempUpload,
}

/// Streams `body` (at most `cap` bytes): first the declared reference
/// files, then the model into a new file under `dir`, hashed on the way.
async fn receive(body: Body, cap: u64, refs: &[(RefKind, u64)], dir: &Path) -> ApiResult<Received> {
    let ref_total: u64 = refs.iter().map(|(_, n)| *n).sum();
    if ref_total > MAX_STREAM_REFERENCE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{ref_total} bytes of reference files; a streamed push carries at most \
                 {MAX_STREAM_REFERENCE_BYTES}"
            ),
        ));
    }
    if ref_total >= cap {
        return Err(too_large(cap));
    }
    let (temp, file) = create_temp(dir).await?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut head = Vec::with_capacity(ref_total as usize);
    let mut hasher = Sha256Hasher::default();
    let (mut total, mut size) = (0u64, 0u64);
    let write_err = |e: std::io::Error| {
        tracing::error!(error = %e, "writing an upload failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot store the upload: {e}"),
        )
    };
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(body_error)?;
        total += chunk.len() as u64;
        if total > cap {
            return Err(too_large(cap));
        }
        let take = (ref_total - head.len() as u64).min(chunk.len() as u64) as usize;
        head.extend_from_slice(&chunk[..take]);
        let rest = &chunk[take..];
        if !rest.is_empty() {
            hasher.update(rest);
            file.write_all(rest).await.map_err(write_err)?;
            size += rest.len() as u64;
        }
    }
    if (head.len() as u64) < ref_total {
        return Err(ApiError::bad_request(
            "short_body",
            format!(
                "the body ended after {} of the {ref_total} reference bytes the query declares",
                head.len()
            ),
        ));
    }
    if size == 0 {
        return Err(ApiError::bad_request(
            "empty_model",
            "no model bytes after the reference files",
        ));
    }
    file.flush().await.map_err(write_err)?;
    file.get_ref().sync_all().await.map_err(write_err)?;
    drop(file);
    let mut references = Vec::with_capacity(refs.len());
    let mut at = 0usize;
    for (kind, n) in refs {
        let n = *n as usize;
        references.push((*kind, head[at..at + n].to_vec()));
        at += n;
    }
    Ok(Received {
        references,
        onnx: OnnxFile {
            path: temp.path.clone(),
            sha256: hasher.finish(),
            size,
        },
        temp,
    })
}

/// `POST /v1/models` with `Content-Type: application/octet-stream`.
pub(crate) async fn push_stream(State(c): State<Controller>, req: Request) -> ApiResult<Response> {
    let meta = parse_meta(req.uri())?;
    let Some(name) = meta.name.clone() else {
        return Err(ApiError::bad_request(
            "bad_query",
            "name=MODEL is required in the query string",
        ));
    };
    if let Some(a) = &meta.alias {
        crate::registry::store::validate_alias(a)
            .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    }
    let cap = req
        .extensions()
        .get::<UploadCap>()
        .map_or(MAX_UPLOAD_BYTES, |c| c.0);
    let received = receive(req.into_body(), cap, &meta.references, &c.uploads_dir()).await?;
    let mut reference_csv = None;
    let mut reference_arrays = Vec::new();
    for (kind, bytes) in received.references {
        match kind {
            RefKind::Csv => reference_csv = Some(bytes),
            RefKind::Array => reference_arrays.push(bytes),
        }
    }
    let push = PushRequest {
        name: Some(name),
        onnx_file: Some(received.onnx),
        reference_csv,
        reference_arrays,
        labels: meta.labels,
        latency_budget_ms: meta.latency_budget_ms,
        parent: meta.parent.map(Version),
        alias: meta.alias,
        training_run: meta.training_run,
        retrain_job: meta.retrain_job,
        eval_metrics: meta.eval_metrics,
        load: drover_protocol::manifest::LoadSpec {
            fix_inputs: meta.fix_inputs,
            input_shapes: meta.input_shapes,
        },
        ..PushRequest::default()
    };
    let stored = c.push_model(push).await;
    // Moved into the store on success; removed here otherwise.
    drop(received.temp);
    Ok(pushed(&stored?))
}

/// The 201 answer to a push.
pub(crate) fn pushed(stored: &crate::registry::store::StoredModel) -> Response {
    let view = Controller::manifest_view(stored);
    axum::response::IntoResponse::into_response((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({
            "model": stored.manifest.model_ref().to_string(),
            "name": view.name,
            "version": view.version,
            "manifest": view,
        })),
    ))
}

/// Removes upload files a previous run left behind (a crash mid-upload).
pub fn clear_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "part") {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed an unfinished upload"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an unfinished upload")
                }
            }
        }
    }
}
