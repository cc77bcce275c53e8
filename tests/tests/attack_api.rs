//! The operator-side attack suite: a real controller (embedded broker, real
//! HTTP, real SQLite) attacked over its API. Every case asserts the refusal
//! AND that the controller's state did not change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use drover_controller::cli::ApiClient;
use drover_controller::core::auth::{Access, OperatorRole, ROUTES};
use drover_controller::serve::{RunningController, ServeConfig, ServeError, start};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn config(dir: &Path) -> ServeConfig {
    let mut cfg = ServeConfig::ephemeral(dir);
    cfg.shutdown_grace = Duration::from_secs(1);
    cfg.http_limits.header_read_timeout = Duration::from_millis(300);
    cfg.max_upload_bytes = 64 * 1024;
    cfg.upload_budget_bytes = 96 * 1024;
    cfg.upload_idle_timeout = Duration::from_millis(500);
    cfg
}

struct Api {
    running: RunningController,
    _dir: tempfile::TempDir,
    url: String,
    admin: String,
    http: reqwest::Client,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let running = start(config(dir.path())).await.unwrap();
        let admin = running.admin_token().unwrap().to_string();
        let url = running.http_url();
        let api = Api {
            running,
            _dir: dir,
            url,
            admin,
            http: reqwest::Client::new(),
        };
        // Something to protect: keys, a model with an alias.
        let c = api.running.handle();
        c.keys_init().unwrap();
        c.push_model(drover_controller::registry::PushRequest {
            name: Some(drover_protocol::ModelName::new("sensor").unwrap()),
            onnx: std::fs::read(fixtures().join("models/sensor_clf_v1.onnx")).unwrap(),
            alias: Some("production".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        api
    }

    async fn token(&self, name: &str, role: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/tokens", self.url))
            .bearer_auth(&self.admin)
            .json(&json!({"name": name, "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Everything an attacker could change, read with the admin token.
    async fn snapshot(&self) -> Value {
        let mut out = serde_json::Map::new();
        for path in [
            "/v1/models",
            "/v1/models/sensor/production",
            "/v1/devices",
            "/v1/keys",
            "/v1/tokens",
            "/v1/rollouts",
            "/v1/retrain",
        ] {
            let r = self
                .http
                .get(format!("{}{path}", self.url))
                .bearer_auth(&self.admin)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            out.insert(path.into(), r.json().await.unwrap());
        }
        Value::Object(out)
    }

    async fn call(&self, method: &str, path: &str, auth: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.json(&body_for(method, path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// A concrete path for a route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .replace("/v1/devices/{id}", "/v1/devices/dev-1")
        .replace("/v1/tokens/{name}", "/v1/tokens/admin")
        .replace("{name}", "sensor")
        .replace("{version}", "1")
        .replace("{alias}", "production")
        .replace("{id}", "1")
        .replace("{verb}", "abort")
}

/// A body that would succeed if the caller were allowed.
fn body_for(method: &str, path: &str) -> Value {
    match (method, path) {
        ("POST", "/v1/tokens") => json!({"name": "evil", "role": "admin"}),
        ("POST", "/v1/devices") => json!({"id": "evil-1"}),
        ("POST", "/v1/keys/rotate") => json!({"role": "models"}),
        ("POST", "/v1/keys/rotate/prepare") => json!({"role": "models"}),
        ("PUT", _) => json!({"version": 1}),
        ("POST", "/v1/deploy") => json!({"model": "sensor@1", "device": "dev-1"}),
        ("POST", "/v1/retrain") => json!({"model": "sensor"}),
        ("POST", "/v1/rollouts") => json!({"model": "sensor@1", "selector": ""}),
        _ => json!({}),
    }
}

fn protected_routes() -> impl Iterator<Item = (&'static str, String, OperatorRole)> {
    ROUTES.iter().filter_map(|r| match r.access {
        Access::Public => None,
        Access::Role(role) => Some((r.method, concrete(r.path), role)),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_callers_without_a_valid_token() {
    let api = Api::start().await;
    let before = api.snapshot().await;
    let mut revoked = api.token("leaver", "admin").await;
    let r = api
        .http
        .delete(format!("{}/v1/tokens/leaver", api.url))
        .bearer_auth(&api.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let forged = format!("drv_{}", "ab".repeat(32));
    // The admin token with one character changed.
    let mut tampered = api.admin.clone();
    let last = if tampered.ends_with('0') { "1" } else { "0" };
    tampered.replace_range(tampered.len() - 1.., last);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("forged token", Some(format!("Bearer {forged}"))),
        ("tampered admin token", Some(format!("Bearer {tampered}"))),
        ("revoked admin token", Some(format!("Bearer {revoked}"))),
        ("token as basic auth", Some(format!("Basic {}", api.admin))),
        ("empty bearer", Some("Bearer ".into())),
    ];
    revoked.clear();
    let mut checked = 0;
    for (what, auth) in &cases {
        for (method, path, _) in protected_routes() {
            let (status, body) = api.call(method, &path, auth.as_deref()).await;
            assert_eq!(status, 401, "{what}: {method} {path}: {body}");
            assert_eq!(body["error"], "unauthenticated", "{what}: {method} {path}");
            checked += 1;
        }
    }
    assert!(checked >= 6 * 25, "{checked}");
    // Unknown routes do not reveal themselves to anonymous callers either.
    let (status, _) = api.call("GET", "/v1/secret-admin-panel", None).await;
    assert_eq!(status, 401);
    assert_eq!(api.snapshot().await, before, "state changed");
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_roles_below_its_minimum() {
    let api = Api::start().await;
    let viewer = format!("Bearer {}", api.token("dash", "viewer").await);
    let operator = format!("Bearer {}", api.token("ci", "operator").await);
    let before = api.snapshot().await;
    let mut refused = 0;
    for (method, path, needs) in protected_routes() {
        for (has, auth) in [
            (OperatorRole::Viewer, &viewer),
            (OperatorRole::Operator, &operator),
        ] {
            if has >= needs {
                continue;
            }
            let (status, body) = api.call(method, &path, Some(auth)).await;
            assert_eq!(status, 403, "{has} on {method} {path}: {body}");
            assert_eq!(body["error"], "forbidden", "{method} {path}");
            assert!(
                body["detail"].as_str().unwrap().contains(needs.as_str()),
                "{body}"
            );
            refused += 1;
        }
    }
    // viewer: every operator and admin route; operator: every admin route.
    assert!(refused >= 20, "{refused}");
    assert_eq!(api.snapshot().await, before, "state changed");
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_allow_what_they_should() {
    let api = Api::start().await;
    let viewer = format!("Bearer {}", api.token("dash", "viewer").await);
    let operator = format!("Bearer {}", api.token("ci", "operator").await);
    // Liveness is the one public route.
    let (status, _) = api.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, _) = api.call("GET", "/v1/models", Some(&viewer)).await;
    assert_eq!(status, 200);
    let (status, _) = api.call("GET", "/metrics", Some(&viewer)).await;
    assert_eq!(status, 200);
    // An operator moves an alias; an admin registers a device.
    let (status, body) = api
        .call(
            "PUT",
            "/v1/models/sensor/aliases/candidate",
            Some(&operator),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let admin = format!("Bearer {}", api.admin);
    let (status, body) = api.call("POST", "/v1/devices", Some(&admin)).await;
    assert_eq!(status, 201, "{body}");
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_client_uses_tokens_and_token_admin_is_admin_only() {
    let api = Api::start().await;
    let op = api.token("ci", "operator").await;
    let before = api.snapshot().await;
    let as_operator = ApiClient::with_auth(&api.url, Some(op), None).unwrap();
    let err = as_operator
        .post::<_, Value>(
            "token create",
            "/v1/tokens",
            &json!({"name": "mine", "role": "admin"}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 403"), "{err:#}");
    let err = as_operator
        .delete::<Value>("token revoke", "/v1/tokens/admin")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 403"), "{err:#}");
    let anonymous = ApiClient::new(&api.url).unwrap();
    let err = anonymous
        .get::<Value>("models", "/v1/models", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 401"), "{err:#}");
    assert_eq!(api.snapshot().await, before, "state changed");
    // The admin's client can.
    let admin = ApiClient::with_auth(&api.url, Some(api.admin.clone()), None).unwrap();
    let list: Vec<Value> = admin.get("tokens", "/v1/tokens", &[]).await.unwrap();
    let names: Vec<&str> = list.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "ci"]);
    // Listing never shows secrets or their hashes.
    assert!(
        list.iter()
            .all(|t| t.get("token").is_none() && t.get("sha256").is_none())
    );
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_unsized_uploads_are_refused_before_they_pass_the_cap() {
    let api = Api::start().await;
    let before = api.snapshot().await;
    let big = json!({"name": "evil", "onnx_base64": "A".repeat(100 * 1024)});
    let r = api
        .http
        .post(format!("{}/v1/models", api.url))
        .bearer_auth(&api.admin)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "too_large");
    // A chunked upload (no Content-Length) reserves the whole cap and is
    // refused as soon as it sends more.
    let mut raw = tokio::net::TcpStream::connect(api.running.http_addr())
        .await
        .unwrap();
    let req = format!(
        "POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        api.admin
    );
    raw.write_all(req.as_bytes()).await.unwrap();
    let chunk = format!("400\r\n{}\r\n", " ".repeat(1024));
    for _ in 0..65 {
        if raw.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), raw.read_to_end(&mut buf))
        .await
        .expect("the server kept the connection open")
        .ok();
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("too_large"), "{head}");
    assert_eq!(api.snapshot().await, before, "state changed");
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_concurrent_budget_get_503() {
    let api = Api::start().await;
    let before = api.snapshot().await;
    // A slow client holds 60 KiB of the 96 KiB budget: headers sent, body
    // trickling.
    let addr = api.running.http_addr();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
        api.admin,
        60 * 1024
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    // Keep trickling, one byte per 100 ms (under the idle timeout).
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = json!({"name": "evil", "onnx_base64": "A".repeat(50 * 1024)});
    let r = api
        .http
        .post(format!("{}/v1/models", api.url))
        .bearer_auth(&api.admin)
        .json(&second)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // Refused before its body was read: the connection is not reused (the
    // snapshot below used to hit it and fail with a broken pipe).
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "uploads_busy");
    trickle.abort();
    assert_eq!(api.snapshot().await, before, "state changed");
    api.running.shutdown().await;
}

/// Reads until the server closes the connection; returns how long it took.
async fn time_until_closed(mut s: tokio::net::TcpStream) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a slow connection open");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_dropped() {
    let api = Api::start().await;
    let before = api.snapshot().await;
    let addr = api.running.http_addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let took = time_until_closed(s).await;
    assert!(took >= Duration::from_millis(200), "{took:?}");
    // A connection that never sends a byte is dropped too.
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    time_until_closed(s).await;
    // Many at once do not keep the server from answering others.
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/models HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    let (status, _) = api.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    drop(held);
    assert_eq!(api.snapshot().await, before, "state changed");
    api.running.shutdown().await;
}

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "drover test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_api_is_verified_by_the_cli_and_a_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki();
    let other = pki();
    std::fs::write(dir.path().join("cert.pem"), &good.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &good.key_pem).unwrap();
    let mut cfg = config(&dir.path().join("data"));
    cfg.tls_cert = Some(dir.path().join("cert.pem"));
    cfg.tls_key = Some(dir.path().join("key.pem"));
    let running = start(cfg).await.unwrap();
    let url = running.http_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let token = running.admin_token().unwrap().to_string();

    let right =
        ApiClient::with_auth(&url, Some(token.clone()), Some(good.ca_pem.as_bytes())).unwrap();
    let tokens: Vec<Value> = right.get("tokens", "/v1/tokens", &[]).await.unwrap();
    assert_eq!(tokens.len(), 1);

    // The wrong CA: the client refuses the server before sending the token.
    let wrong =
        ApiClient::with_auth(&url, Some(token.clone()), Some(other.ca_pem.as_bytes())).unwrap();
    let err = wrong
        .post::<_, Value>(
            "token create",
            "/v1/tokens",
            &json!({"name": "evil", "role": "admin"}),
        )
        .await
        .unwrap_err();
    assert!(!format!("{err:#}").contains("HTTP"), "{err:#}");
    // No CA at all: nothing is trusted by default.
    let none = ApiClient::with_auth(&url, Some(token.clone()), None).unwrap();
    assert!(
        none.get::<Value>("tokens", "/v1/tokens", &[])
            .await
            .is_err()
    );
    // Plain HTTP to the TLS port gets nowhere.
    let plain = url.replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(format!("{plain}/v1/tokens"))
        .bearer_auth(&token)
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
    let tokens: Vec<Value> = right.get("tokens", "/v1/tokens", &[]).await.unwrap();
    assert_eq!(tokens.len(), 1, "state changed");
    running.shutdown().await;
}

#[tokio::test]
async fn non_loopback_http_without_tls_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cfg = config(&data);
    cfg.http = "0.0.0.0:0".parse().unwrap();
    let err = start(cfg).await.unwrap_err();
    assert!(matches!(err, ServeError::Config(_)), "{err}");
    assert_eq!(err.exit_code(), 64);
    let msg = err.to_string();
    assert!(
        msg.contains("--tls-cert") && msg.contains("clear text"),
        "{msg}"
    );
    assert!(!data.exists(), "nothing may be created");
    // Half a TLS configuration is refused too.
    let mut cfg = config(&data);
    cfg.tls_cert = Some(dir.path().join("cert.pem"));
    let err = start(cfg).await.unwrap_err();
    assert!(err.to_string().contains("--tls-key"), "{err}");
    assert!(!data.exists());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt as _;
    let api = Api::start().await;
    let data = api._dir.path();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data), 0o700);
    assert_eq!(mode(&data.join("keys")), 0o700);
    for f in ["drover.db", "tokens.json", "admin.token"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    for e in std::fs::read_dir(data.join("keys")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    // The token file holds digests, never the admin token itself.
    let stored = std::fs::read_to_string(data.join("tokens.json")).unwrap();
    assert!(!stored.contains(&api.admin));
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_audit_records_who_acted_and_refused_callers_leave_no_entry() {
    let api = Api::start().await;
    let operator = api.token("ci", "operator").await;
    let viewer = format!("Bearer {}", api.token("dash", "viewer").await);
    for id in ["dev-a", "dev-b", "dev-c"] {
        let r = api
            .http
            .post(format!("{}/v1/devices", api.url))
            .bearer_auth(&api.admin)
            .json(&json!({"id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = api
        .http
        .post(format!("{}/v1/rollouts", api.url))
        .bearer_auth(&operator)
        .json(&json!({"model": "sensor@1", "id": "r1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let audit = |api: &Api| {
        let url = format!("{}/v1/rollouts/r1?audit=1000", api.url);
        let req = api.http.get(url).bearer_auth(api.admin.clone());
        async move { req.send().await.unwrap().json::<Value>().await.unwrap()["audit"].clone() }
    };
    // Operator entries (the engine adds its own events concurrently).
    let operator_entries = |trail: &Value| -> Vec<(String, String)> {
        trail
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["kind"] == "operator")
            .map(|e| {
                (
                    e["event"]["by"].as_str().unwrap().to_string(),
                    e["event"]["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let trail = audit(&api).await;
    assert_eq!(
        operator_entries(&trail),
        [("ci".to_string(), "start".to_string())],
        "{trail}"
    );
    // A viewer's abort is refused: no entry, and the rollout was not aborted.
    let (status, _) = api
        .call("POST", "/v1/rollouts/r1/abort", Some(&viewer))
        .await;
    assert_eq!(status, 403);
    let after = audit(&api).await;
    assert_eq!(operator_entries(&after), operator_entries(&trail));
    assert!(
        after
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event"]["kind"] != "aborted"),
        "{after}"
    );
    // The operator's pause is recorded under its name.
    let r = api
        .http
        .post(format!("{}/v1/rollouts/r1/pause", api.url))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    let paused_ok = r.status().is_success();
    let after = audit(&api).await;
    if paused_ok {
        assert_eq!(
            operator_entries(&after).last().unwrap(),
            &("ci".to_string(), "pause".to_string())
        );
    } else {
        // Refused by the engine (already paused): nothing recorded.
        assert_eq!(operator_entries(&after), operator_entries(&trail));
    }
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_off_and_frees_its_budget() {
    let api = Api::start().await;
    let before = api.snapshot().await;
    let mut slow = tokio::net::TcpStream::connect(api.running.http_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
        api.admin,
        60 * 1024
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    // The server answers (an error) and closes once the body stalls.
    let took = time_until_closed(slow).await;
    assert!(took >= Duration::from_millis(400), "{took:?}");
    // Its 60 KiB are free again: a 50 KiB upload is admitted (and refused
    // only for its content).
    let r = api
        .http
        .post(format!("{}/v1/models", api.url))
        .bearer_auth(&api.admin)
        .json(&json!({"name": "evil", "onnx_base64": "A".repeat(50 * 1024)}))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 503);
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(api.snapshot().await, before, "state changed");
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_requests_from_an_admin_change_nothing() {
    let api = Api::start().await;
    let admin = format!("Bearer {}", api.admin);
    let before = api.snapshot().await;
    for (body, status, code) in [
        (json!({"name": "admin", "role": "viewer"}), 409, "conflict"),
        (json!({"name": "x", "role": "root"}), 400, "bad_role"),
        (
            json!({"name": "Not Valid!", "role": "viewer"}),
            400,
            "bad_name",
        ),
        (json!({"name": "x"}), 400, "bad_json"),
    ] {
        let r = api
            .http
            .post(format!("{}/v1/tokens", api.url))
            .header("authorization", &admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], code, "{body}");
    }
    let (status, _) = api.call("DELETE", "/v1/tokens/nobody", Some(&admin)).await;
    assert_eq!(status, 404);
    assert_eq!(api.snapshot().await, before, "state changed");
    api.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_a_restart_and_no_second_admin_token_appears() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(config(dir.path())).await.unwrap();
    let admin = running.admin_token().unwrap().to_string();
    let url = running.http_url();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/v1/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"name": "leaver", "role": "operator"}))
        .send()
        .await
        .unwrap();
    let leaver = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .delete(format!("{url}/v1/tokens/leaver"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    running.shutdown().await;
    let file_before = std::fs::read(dir.path().join("admin.token")).unwrap();

    let again = start(config(dir.path())).await.unwrap();
    let url = again.http_url();
    assert_eq!(again.admin_token(), Some(admin.as_str()));
    assert_eq!(
        std::fs::read(dir.path().join("admin.token")).unwrap(),
        file_before
    );
    let r = http
        .get(format!("{url}/v1/models"))
        .bearer_auth(&leaver)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let list: Vec<Value> = http
        .get(format!("{url}/v1/tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_a_silent_tls_client_are_refused() {
    let api = Api::start().await;
    let before = api.snapshot().await;
    let mut s = tokio::net::TcpStream::connect(api.running.http_addr())
        .await
        .unwrap();
    let huge = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || head.starts_with("HTTP/1.1 431") || head.starts_with("HTTP/1.1 400"),
        "{head}"
    );
    assert_eq!(api.snapshot().await, before, "state changed");
    api.running.shutdown().await;

    // TLS: a client that connects and never says hello is dropped.
    let dir = tempfile::tempdir().unwrap();
    let good = pki();
    std::fs::write(dir.path().join("cert.pem"), &good.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &good.key_pem).unwrap();
    let mut cfg = config(&dir.path().join("data"));
    cfg.tls_cert = Some(dir.path().join("cert.pem"));
    cfg.tls_key = Some(dir.path().join("key.pem"));
    cfg.http_limits.tls_handshake_timeout = Duration::from_millis(300);
    let running = start(cfg).await.unwrap();
    let s = tokio::net::TcpStream::connect(running.http_addr())
        .await
        .unwrap();
    let took = time_until_closed(s).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_role_table_exists() {
    // The table is what the auth layer enforces: a row that names no real
    // route would mean a real route is guarded by the fallback instead.
    let api = Api::start().await;
    let admin = format!("Bearer {}", api.admin);
    for (method, path, _) in protected_routes() {
        if path == "/v1/tokens/admin" {
            continue; // revoking the admin token would end the test
        }
        let (status, body) = api.call(method, &path, Some(&admin)).await;
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(!detail.contains("no such route"), "{method} {path}: {body}");
        assert_ne!(status, 405, "{method} {path}: the route lacks this method");
    }
    api.running.shutdown().await;
}
