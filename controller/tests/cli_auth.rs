//! The `drover` binary's side of operator authentication: `drover login`
//! writes a private credentials file the other commands use, DROVER_TOKEN
//! overrides it, `drover token create|list|revoke`, and `drover serve`
//! refusing a non-loopback address without TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::{TestController, stderr, stdout};

async fn drover_env(
    url: &str,
    creds: &Path,
    token: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"));
    c.args(args)
        .env("DROVER_CONTROLLER", url)
        .env("DROVER_CREDENTIALS", creds)
        .env_remove("DROVER_TOKEN")
        .env_remove("RUST_LOG");
    if let Some(t) = token {
        c.env("DROVER_TOKEN", t);
    }
    c.output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_token_lifecycle_and_env_override() {
    let t = TestController::start().await;
    let url = t.url();
    let home = tempfile::tempdir().unwrap();
    let creds = home.path().join("drover/credentials");
    let admin_file = t.dir.path().join("admin.token");

    // Not logged in: refused with a hint.
    let o = drover_env(&url, &creds, None, &["model", "list"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 401"), "{}", stderr(&o));
    assert!(stderr(&o).contains("drover login"), "{}", stderr(&o));

    // A wrong token does not log in and writes nothing.
    let bad = home.path().join("bad.token");
    std::fs::write(&bad, format!("drv_{}\n", "00".repeat(32))).unwrap();
    let o = drover_env(
        &url,
        &creds,
        None,
        &["login", "--token-file", bad.to_str().unwrap()],
    )
    .await;
    assert!(!o.status.success());
    assert!(!creds.exists());

    let o = drover_env(
        &url,
        &creds,
        None,
        &["login", "--token-file", admin_file.to_str().unwrap()],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&creds).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(creds.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
    let o = drover_env(&url, &creds, None, &["model", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));

    // token create prints the secret once; list never shows it.
    let o = drover_env(
        &url,
        &creds,
        None,
        &[
            "--output", "json", "token", "create", "--name", "ci", "--role", "viewer",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let created: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ci = created["token"].as_str().unwrap().to_string();
    let o = drover_env(&url, &creds, None, &["token", "list"]).await;
    assert!(stdout(&o).contains("ci") && stdout(&o).contains("viewer"));
    assert!(!stdout(&o).contains(&ci));

    // DROVER_TOKEN overrides the credentials file: the viewer may read, not push.
    let o = drover_env(&url, &creds, Some(&ci), &["model", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = drover_env(
        &url,
        &creds,
        Some(&ci),
        &["token", "create", "--name", "x", "--role", "admin"],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 403"), "{}", stderr(&o));

    // Revoked: the viewer token stops working at once.
    let o = drover_env(&url, &creds, None, &["token", "revoke", "ci"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = drover_env(&url, &creds, Some(&ci), &["model", "list"]).await;
    assert!(stderr(&o).contains("HTTP 401"), "{}", stderr(&o));
    let o = drover_env(&url, &creds, None, &["--output", "json", "token", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "only admin is left");
    t.running.shutdown().await;
}

#[tokio::test]
async fn serve_refuses_a_public_address_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--http", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("--tls-cert"), "{}", stderr(&o));
    assert!(!data.exists());
}

fn pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_verifies_the_api_certificate_with_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki();
    let (other_ca, _, _) = pki();
    for (name, pem) in [
        ("ca.pem", &ca),
        ("other.pem", &other_ca),
        ("cert.pem", &cert),
        ("key.pem", &key),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let mut cfg = support::config(&dir.path().join("data"), &support::unique_fleet());
    cfg.tls_cert = Some(dir.path().join("cert.pem"));
    cfg.tls_key = Some(dir.path().join("key.pem"));
    let running = drover_controller::serve::start(cfg).await.unwrap();
    let url = running.http_url();
    let token = running.admin_token().unwrap().to_string();
    let creds = dir.path().join("creds");
    let ca_path = dir.path().join("ca.pem");
    let other_path = dir.path().join("other.pem");

    let o = drover_env(
        &url,
        &creds,
        Some(&token),
        &["--ca", ca_path.to_str().unwrap(), "token", "list"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("admin"));
    // A certificate from another CA is refused before anything is sent.
    let o = drover_env(
        &url,
        &creds,
        Some(&token),
        &[
            "--ca",
            other_path.to_str().unwrap(),
            "token",
            "create",
            "--name",
            "evil",
            "--role",
            "admin",
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("HTTP"), "{}", stderr(&o));
    // DROVER_CA works like --ca.
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["--output", "json", "token", "list"])
        .env("DROVER_CONTROLLER", &url)
        .env("DROVER_CREDENTIALS", &creds)
        .env("DROVER_TOKEN", &token)
        .env("DROVER_CA", &ca_path)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing was created");
    running.shutdown().await;
}
