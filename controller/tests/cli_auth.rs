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
