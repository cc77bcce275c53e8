//! The root key kept offline: `drover keys init --root-out` leaves no root
//! private key in the data dir, rotation without the key is refused and
//! changes nothing, and rotation signed from the offline file produces a
//! key list a device (its `TrustState`) accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use drover_controller::serve::start;
use drover_protocol::testkit::manifest;
use drover_protocol::trust::TrustState;
use drover_protocol::{DeviceId, Ed25519Signer, Sign as _, Signed, Timestamp};
use support::{config, drover, register, stderr, stdout, unique_fleet};

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_key_offline_init_and_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let root_file = tmp.path().join("root-offline.key");
    let (data_s, root_s) = (data.display().to_string(), root_file.display().to_string());

    // --root-out is refused without --data-dir (the key never crosses HTTP).
    let stray = tmp.path().join("stray.key");
    let o = drover(
        "http://127.0.0.1:9",
        &["keys", "init", "--root-out", &stray.display().to_string()],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--data-dir"), "{}", stderr(&o));
    assert!(!stray.exists());

    let o = drover(
        "http://127.0.0.1:9",
        &["keys", "init", "--data-dir", &data_s, "--root-out", &root_s],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("move it offline"), "{}", stdout(&o));
    let root = Ed25519Signer::load(&root_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&root_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No file in the data dir holds the root secret (hex seed as written).
    let secret = std::fs::read_to_string(&root_file).unwrap();
    let secret = secret.trim().as_bytes();
    assert!(!data.join("keys/root.key").exists());
    for f in files(&data) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "{} holds the root private key",
            f.display()
        );
    }

    let fleet = unique_fleet();
    let running = start(config(&data, &fleet)).await.unwrap();
    register(&running);
    let url = running.http_url();
    let c = running.handle();
    let before = c.keys_info();
    assert_eq!(before.root_public_key, root.public_key().to_hex());
    assert_eq!(before.key_list_version, 1);
    let (_, v1) = c.key_list();
    let models_file = data.join("keys/models.key");
    let models_before = std::fs::read(&models_file).unwrap();

    // Without the root key: refused, naming the flag; nothing changed.
    let o = drover(&url, &["keys", "rotate", "--role", "models"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--root-key"), "{}", stderr(&o));
    assert_eq!(c.keys_info(), before);
    assert_eq!(std::fs::read(&models_file).unwrap(), models_before);
    assert!(!data.join("keys/retired").exists());

    // A key that is not this fleet's root: the CLI refuses to sign.
    let wrong = tmp.path().join("wrong.key");
    Ed25519Signer::generate().unwrap().save(&wrong).unwrap();
    let o = drover(
        &url,
        &[
            "keys",
            "rotate",
            "--role",
            "models",
            "--root-key",
            &wrong.display().to_string(),
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("refusing to sign"), "{}", stderr(&o));
    assert_eq!(c.keys_info(), before);

    // A list signed by another key is refused by the controller itself.
    let token = support::token_for(&url);
    let http = reqwest::Client::new();
    let prepared: serde_json::Value = http
        .post(format!("{url}/v1/keys/rotate/prepare"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "role": "models" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list: drover_protocol::trust::KeyList =
        serde_json::from_value(prepared["key_list"].clone()).unwrap();
    let forged = Signed::sign(&list, &Ed25519Signer::load(&wrong).unwrap()).unwrap();
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(drover_protocol::codec::encode(&forged, usize::MAX).unwrap())
    };
    let r = http
        .post(format!("{url}/v1/keys/rotate"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "role": "models", "signed_key_list": b64 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(c.keys_info(), before);
    assert_eq!(std::fs::read(&models_file).unwrap(), models_before);

    // With the offline file: works, only the models key changes.
    let o = drover(
        &url,
        &["keys", "rotate", "--role", "models", "--root-key", &root_s],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("signed locally"), "{}", stdout(&o));
    let after = c.keys_info();
    assert_eq!(after.key_list_version, 2);
    assert_eq!(after.root_public_key, before.root_public_key);
    assert_eq!(after.commands_public_key, before.commands_public_key);
    assert_ne!(after.models_public_key, before.models_public_key);
    assert!(!data.join("keys/root.key").exists());

    // A device pinning the root accepts v1 then v2, and a manifest signed
    // by the new models key verifies (the old one no longer does).
    let now = Timestamp::from_system(std::time::SystemTime::now());
    let mut trust = TrustState::new(root.public_key(), DeviceId::new("dev-1").unwrap());
    trust.handle_key_list(&v1, now).unwrap();
    let (_, v2) = c.key_list();
    trust.handle_key_list(&v2, now).unwrap();
    assert_eq!(trust.key_list().unwrap().version, 2);
    let new_models = Ed25519Signer::load(&models_file).unwrap();
    assert_eq!(new_models.public_key().to_hex(), after.models_public_key);
    let m = manifest("sensor", 1, b"onnx bytes", now);
    trust
        .verify_manifest(&Signed::sign(&m, &new_models).unwrap(), now)
        .unwrap();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(String::from_utf8(models_before).unwrap().trim(), &mut seed).unwrap();
    let old_models = Ed25519Signer::from_seed(seed);
    assert!(
        trust
            .verify_manifest(&Signed::sign(&m, &old_models).unwrap(), now)
            .is_err()
    );
    running.shutdown().await;
}
