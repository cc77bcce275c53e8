//! Who is looking: a login form that takes an API token, an HttpOnly
//! `SameSite=Strict` cookie holding it, and per-session CSRF tokens.
//!
//! The cookie holds the API token itself, so the dashboard needs no session
//! table and a revoked token logs its sessions out at once. Every dashboard
//! request is mapped to the API route it mirrors and authorised through the
//! API's route table ([`crate::core::auth`]), so a viewer's session can read
//! every page and change nothing, exactly like a viewer's token.

use axum::body::Body;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::layout;
use super::{Dashboard, Session};
#[cfg(test)]
use crate::auth::OperatorRole;
use crate::core::auth::{self, Denied};

const COOKIE: &str = "drover_session";
/// A form POST is a CSRF token and a few words; nothing bigger is read.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// The header htmx requests carry the CSRF token in.
pub(super) const CSRF_HEADER: &str = "x-csrf-token";

/// The session's CSRF token: derived from the API token, so a page on
/// another origin (which cannot read the HttpOnly cookie) cannot know it.
fn csrf_of(token: &str) -> String {
    let d = Sha256::digest(format!("drover/v1/csrf\0{token}").as_bytes());
    hex::encode(&d[..16])
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The API route a dashboard request stands for; authorisation asks the
/// API's route table about that route.
fn api_route(method: &Method, path: &str) -> (&'static str, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if method == Method::POST {
        return match parts.as_slice() {
            ["ui", "rollouts", id, verb] => ("POST", format!("/v1/rollouts/{id}/{verb}")),
            ["ui", "retraining", "run"] => ("POST", "/v1/retrain".into()),
            // Ending one's own session needs only the session.
            ["ui", "logout"] => ("GET", "/v1/models".into()),
            _ => ("POST", path.to_string()),
        };
    }
    let api = match parts.as_slice() {
        [""] | ["ui", "devices", ..] => "/v1/devices",
        ["ui", "models", ..] => "/v1/models",
        ["ui", "rollouts", ..] | ["ui", "events"] => "/v1/rollouts",
        ["ui", "drift"] => "/v1/drift",
        ["ui", "retraining", ..] => "/v1/retrain",
        _ => path,
    };
    ("GET", api.to_string())
}

/// One field of an `application/x-www-form-urlencoded` body; `None` when
/// absent or badly encoded.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    s.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == name)
            .then(|| percent_decode(v))
            .flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn refuse(status: StatusCode, title: &str, detail: String) -> Response {
    (
        status,
        layout::bare_page(
            title,
            html! {
                h1 { (title) }
                p.error { (detail) }
                p { a href="/" { "Back to the fleet" } }
            },
        ),
    )
        .into_response()
}

/// Middleware in front of every page and action: a valid session, the
/// route table's verdict for the API route the request stands for, and on
/// anything but GET a matching CSRF token (header or form field).
pub(super) async fn require(State(d): State<Dashboard>, req: Request, next: Next) -> Response {
    let token = cookie_token(req.headers()).map(str::to_string);
    let actor = token.as_deref().and_then(|t| d.tokens.verify(t));
    let (Some(token), Some(actor)) = (token, actor) else {
        if req.method() == Method::GET {
            return Redirect::to("/ui/login").into_response();
        }
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "sign in with an API token first".into(),
        );
    };
    let (method, api_path) = api_route(req.method(), req.uri().path());
    if let Err(Denied::Forbidden { needs, has }) =
        auth::authorize(auth::required(method, &api_path), Some(actor.role))
    {
        tracing::info!(token = %actor.name, %needs, %has, path = %req.uri().path(), "dashboard request refused: role too low");
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "this needs the {needs} role; token {:?} is {has}",
                actor.name
            ),
        );
    }
    let session = Session {
        actor,
        csrf: csrf_of(&token),
    };
    let req = if req.method() == Method::GET || req.method() == Method::HEAD {
        req
    } else {
        match check_csrf(req, &session.csrf).await {
            Ok(req) => req,
            Err(r) => return r,
        }
    };
    let mut req = req;
    req.extensions_mut().insert(session);
    next.run(req).await
}

async fn check_csrf(req: Request, expected: &str) -> Result<Request, Response> {
    let header_ok = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    if header_ok {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                "dashboard forms are small".into(),
            )
        })?;
    if form_field(&bytes, "csrf").as_deref() != Some(expected) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "missing or wrong CSRF token: reload the page and try again".into(),
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The sign-in form's own CSRF cookie: set with the form, `SameSite=Strict`,
/// and required (equal to the form's hidden field) by the POST. A page on
/// another site can post a token to `/ui/login` but cannot make the browser
/// send this cookie, so it cannot sign a visitor in as someone else.
const LOGIN_COOKIE: &str = "drover_login";

pub(super) async fn login_page(State(d): State<Dashboard>) -> Response {
    login_response(&d, StatusCode::OK, None)
}

/// The sign-in form with a fresh login CSRF value in its field and cookie.
fn login_response(d: &Dashboard, status: StatusCode, error: Option<&str>) -> Response {
    let mut nonce = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut nonce) {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            format!("no randomness for the sign-in form: {e}"),
        );
    }
    let nonce = hex::encode(nonce);
    let secure = if d.secure_cookie { "; Secure" } else { "" };
    let cookie = format!(
        "{LOGIN_COOKIE}={nonce}; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
    );
    let mut r = (status, login_form(error, &nonce)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn login_form(error: Option<&str>, nonce: &str) -> axum::response::Html<String> {
    layout::bare_page(
        "Sign in",
        html! {
            h1 { "Drover — sign in" }
            p { "Paste an API token (" code { "drover token create NAME --role viewer" }
                ", or " code { "DATA_DIR/admin.token" } "). The dashboard allows what the token's role allows." }
            @if let Some(e) = error { p.error #login-error { (e) } }
            form method="post" action="/ui/login" {
                input type="hidden" name="login_csrf" value=(nonce);
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required;
                button #login type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    token: String,
    #[serde(default)]
    login_csrf: String,
}

pub(super) async fn login(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let from_our_form = !f.login_csrf.is_empty()
        && cookie(&headers, LOGIN_COOKIE).is_some_and(|c| c == f.login_csrf);
    if !from_our_form {
        tracing::warn!(target: "drover::audit", "dashboard sign-in refused: no matching login CSRF cookie");
        return login_response(
            &d,
            StatusCode::FORBIDDEN,
            Some(
                "This sign-in did not come from this page (or the page is old): sign in again here.",
            ),
        );
    }
    let token = f.token.trim();
    let Some(actor) = d.tokens.verify(token) else {
        return login_response(
            &d,
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid."),
        );
    };
    tracing::info!(target: "drover::audit", by = %actor.name, role = %actor.role, "dashboard sign-in");
    let secure = if d.secure_cookie { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub(super) async fn logout(State(d): State<Dashboard>) -> Response {
    let secure = if d.secure_cookie { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut r = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_routes_map_to_the_api_routes_they_mirror() {
        assert_eq!(
            api_route(&Method::POST, "/ui/rollouts/r1/pause"),
            ("POST", "/v1/rollouts/r1/pause".to_string())
        );
        assert_eq!(
            auth::required("POST", &api_route(&Method::POST, "/ui/rollouts/r1/pause").1),
            auth::Access::Role(OperatorRole::Operator)
        );
        assert_eq!(api_route(&Method::GET, "/").1, "/v1/devices");
        assert_eq!(api_route(&Method::GET, "/ui/drift").1, "/v1/drift");
        // Unknown POSTs fall back to the table's fail-closed default (admin).
        assert_eq!(
            auth::required("POST", &api_route(&Method::POST, "/ui/nope").1),
            auth::Access::Role(OperatorRole::Admin)
        );
    }

    #[test]
    fn form_fields_and_cookies_parse() {
        assert_eq!(
            form_field(b"a=1&csrf=ab%2Bc+d", "csrf").as_deref(),
            Some("ab+c d")
        );
        assert_eq!(form_field(b"csrf=%zz", "csrf"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; drover_session=drv_abc"),
        );
        assert_eq!(cookie_token(&h), Some("drv_abc"));
        assert_ne!(csrf_of("drv_a"), csrf_of("drv_b"));
    }
}
