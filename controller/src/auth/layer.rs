//! The bearer-token check in front of every route.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::TokenStore;
use crate::core::auth::{self, Denied};
use crate::http::ApiError;

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Axum middleware: looks the bearer token up, applies the route table and
/// puts the [`super::Actor`] into the request's extensions. 401 without a
/// valid token, 403 when its role is too low, both as JSON errors.
pub async fn require(State(store): State<TokenStore>, mut req: Request, next: Next) -> Response {
    let access = auth::required(req.method().as_str(), req.uri().path());
    let actor = bearer(&req).and_then(|t| store.verify(t));
    match auth::authorize(access, actor.as_ref().map(|a| a.role)) {
        Ok(()) => {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let by = actor.as_ref().map(|a| a.name.clone());
            if let Some(a) = actor {
                req.extensions_mut().insert(a);
            }
            let response = next.run(req).await;
            // Who changed what: every non-read request, with its outcome.
            if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
                tracing::info!(
                    target: "drover::audit",
                    by = by.as_deref().unwrap_or("-"),
                    %method,
                    %path,
                    status = response.status().as_u16(),
                    "operator request"
                );
            }
            response
        }
        Err(Denied::Unauthenticated) => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a valid API token is required: `drover login`, DROVER_TOKEN, or \
                 Authorization: Bearer TOKEN",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Err(Denied::Forbidden { needs, has }) => {
            let who = actor.map(|a| a.name).unwrap_or_default();
            tracing::info!(token = %who, %needs, %has, path = %req.uri().path(), "request refused: role too low");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this route needs the {needs} role; token {who:?} is {has}"),
            )
            .into_response()
        }
    }
}
