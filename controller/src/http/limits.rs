//! Upload admission: a model upload must stay under the per-upload cap
//! (a declared `Content-Length` over it is refused before a byte is read)
//! and fit in a global budget of bytes being uploaded at once; beyond the
//! budget it is refused with 503 and `Retry-After` rather than queued. An
//! upload without `Content-Length` (chunked) reserves the whole cap, which
//! the handler enforces while it streams. JSON pushes are capped at
//! [`super::upload::MAX_JSON_PUSH_BYTES`]. (Four parallel near-limit uploads once
//! took the controller to 2.6 GB.)

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::ApiError;

/// Upload limits, shared by every request.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    max_upload_bytes: u64,
    budget: Arc<Semaphore>,
    budget_kib: u32,
    idle: Duration,
}

/// How long an upload may go without sending a byte before it is cut off
/// (and its share of the budget freed).
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl UploadLimits {
    /// `max_upload_bytes` per upload, `budget_bytes` for all uploads in
    /// flight together.
    pub fn new(max_upload_bytes: u64, budget_bytes: u64) -> UploadLimits {
        let budget_kib = u32::try_from(budget_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        UploadLimits {
            max_upload_bytes,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            idle: UPLOAD_IDLE_TIMEOUT,
        }
    }

    /// Sets how long an upload may stall (default [`UPLOAD_IDLE_TIMEOUT`]).
    pub fn with_idle_timeout(mut self, idle: Duration) -> UploadLimits {
        self.idle = idle;
        self
    }
}

/// The request with its body cut off after `idle` without data: a client
/// trickling (or not sending) an upload cannot hold its budget forever.
fn with_idle_timeout(req: Request, idle: Duration) -> Request {
    use futures_util::StreamExt as _;
    let (parts, body) = req.into_parts();
    let stream =
        futures_util::stream::unfold(Some(body.into_data_stream()), move |state| async move {
            let mut data = state?;
            match tokio::time::timeout(idle, data.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(data))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("upload stalled for {idle:?}"),
                    )),
                    None,
                )),
            }
        });
    Request::from_parts(parts, axum::body::Body::from_stream(stream))
}

fn is_upload(req: &Request) -> bool {
    req.method() == Method::POST && req.uri().path() == "/v1/models"
}

/// Axum middleware enforcing [`UploadLimits`] on `POST /v1/models`.
pub async fn admit(State(limits): State<UploadLimits>, req: Request, next: Next) -> Response {
    if !is_upload(&req) {
        return next.run(req).await;
    }
    let cap = if super::upload::is_octet_stream(req.headers()) {
        limits.max_upload_bytes
    } else {
        limits
            .max_upload_bytes
            .min(super::upload::MAX_JSON_PUSH_BYTES)
    };
    let declared = match req.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                return unread_body(
                    ApiError::bad_request("bad_content_length", "Content-Length is not a number")
                        .into_response(),
                );
            }
        },
    };
    if let Some(len) = declared
        && len > cap
    {
        return unread_body(
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("upload of {len} bytes is over the {cap} byte limit"),
            )
            .into_response(),
        );
    }
    // Unsized: reserve the most it may send.
    let len = declared.unwrap_or(cap);
    let kib = u32::try_from(len.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, limits.budget_kib.max(1));
    let Ok(permit) = limits.budget.clone().try_acquire_many_owned(kib) else {
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "uploads_busy",
            "other uploads are using the upload budget; retry shortly",
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return unread_body(r);
    };
    let mut req = with_idle_timeout(req, limits.idle);
    req.extensions_mut().insert(super::upload::UploadCap(cap));
    let response = next.run(req).await;
    drop(permit);
    response
}

/// A refusal sent before the request body was read: the connection cannot
/// carry another request (the unread body is still on it), so say so. A
/// client that pooled it anyway failed its next request with a broken pipe.
fn unread_body(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
