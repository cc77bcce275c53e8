//! `drover keys init|rotate|show`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use drover_protocol::trust::{KeyList, Role};
use drover_protocol::{Ed25519Signer, Sign as _, Signed, codec};

use super::{Ctx, Output, output};
use crate::clock::{Clock as _, SystemClock};
use crate::controller::{KeysInfo, RotateOutcome};
use crate::key_rotation::RotationPrepared;
use crate::keys::{KeyInit, KeyStore};

/// `drover keys` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCmd {
    /// Create the root, models, commands and agents keys (idempotent) and print the
    /// root public key agents pin. With --data-dir, works on that directory
    /// without a running controller.
    Init {
        /// Work on this data dir directly instead of asking the controller.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Keep the root key offline: write the root private key only to
        /// this new file (0600), sign the first key list with it, and leave
        /// just its public half in DATA_DIR/keys/root.pub. Needs --data-dir
        /// (the root private key never crosses the network); on a data dir
        /// whose root key is already there, moves it out (stop the
        /// controller first). Then move FILE offline.
        #[arg(long, value_name = "FILE", requires = "data_dir")]
        root_out: Option<PathBuf>,
    },
    /// Replace the models, commands or agents key; the new root-signed key
    /// list is pushed to every device.
    Rotate {
        /// `models`, `commands` or `agents`.
        #[arg(long, value_parser = ["models", "commands", "agents"])]
        role: String,
        /// The offline root key file (from `keys init --root-out`): the new
        /// key list is signed here, on this machine, and only the signed
        /// list is uploaded. Required when the controller's root key is
        /// kept offline.
        #[arg(long, value_name = "FILE")]
        root_key: Option<PathBuf>,
    },
    /// Print the public keys and key list version.
    Show,
}

/// Runs a keys subcommand.
pub(crate) async fn run(cmd: KeysCmd, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Init { data_dir, root_out } => {
            let init: KeyInit = match (data_dir, root_out) {
                (Some(dir), Some(out)) => init_offline_root(&dir, &out)?,
                (Some(dir), None) => KeyStore::new(&dir).init()?,
                (None, _) => {
                    ctx.client
                        .post("keys init", "/v1/keys/init", &serde_json::json!({}))
                        .await?
                }
            };
            if ctx.output == Output::Json {
                return output::json(&init);
            }
            if init.created {
                output::line(&format!("created keys in {}", init.dir));
            } else {
                output::line(&format!(
                    "keys already exist in {}; nothing changed",
                    init.dir
                ));
            }
            output::line(&format!(
                "root public key (pin this in agents): {}",
                init.root_public_key
            ));
            if let Some(file) = &init.root_key_file {
                output::line(&format!(
                    "root private key written to {file} (0600) and NOT kept in {}; move it \
                     offline now (e.g. an encrypted USB stick) and delete this copy. You need \
                     it only for `drover keys rotate --root-key {file}`.",
                    init.dir
                ));
            }
            Ok(())
        }
        KeysCmd::Rotate {
            role,
            root_key: Some(file),
        } => {
            let out = rotate_offline(ctx, &role, &file).await?;
            if ctx.output == Output::Json {
                return output::json(&out);
            }
            output::line(&format!(
                "rotated the {} key: new key {}; key list version {} signed locally with {} \
                 and sent to {} devices{}",
                out.role,
                out.public_key,
                out.key_list_version,
                file.display(),
                out.devices_notified,
                if out.manifests_resigned > 0 {
                    format!("; {} manifests re-signed", out.manifests_resigned)
                } else {
                    String::new()
                }
            ));
            Ok(())
        }
        KeysCmd::Rotate {
            role,
            root_key: None,
        } => {
            let out: RotateOutcome = ctx
                .client
                .post(
                    "keys rotate",
                    "/v1/keys/rotate",
                    &serde_json::json!({ "role": role }),
                )
                .await?;
            if ctx.output == Output::Json {
                return output::json(&out);
            }
            output::line(&format!(
                "rotated the {} key: new key {}; key list version {} sent to {} devices{}",
                out.role,
                out.public_key,
                out.key_list_version,
                out.devices_notified,
                if out.manifests_resigned > 0 {
                    format!("; {} manifests re-signed", out.manifests_resigned)
                } else {
                    String::new()
                }
            ));
            Ok(())
        }
        KeysCmd::Show => {
            let k: KeysInfo = ctx.client.get("keys", "/v1/keys", &[]).await?;
            if ctx.output == Output::Json {
                return output::json(&k);
            }
            output::pairs(&[
                ("root", k.root_public_key),
                ("models", k.models_public_key),
                ("commands", k.commands_public_key),
                ("agents", k.agents_public_key),
                ("key list version", k.key_list_version.to_string()),
            ]);
            Ok(())
        }
    }
}

/// `keys init --data-dir DIR --root-out FILE`: creates missing keys, makes
/// sure a current key list is stored (signed while the root key is still
/// at hand), then moves the root private key to `out`.
fn init_offline_root(dir: &Path, out: &Path) -> anyhow::Result<KeyInit> {
    let store = KeyStore::new(dir);
    let mut init = store.init()?;
    let keys = store.load()?;
    if keys.root.is_none() {
        anyhow::bail!(
            "the root key of {} is already offline (only keys/root.pub is there); nothing to write to {}",
            dir.display(),
            out.display()
        );
    }
    let db = crate::db::Db::open(&dir.join("drover.db"))?;
    crate::keys::current_key_list(&db, &keys, SystemClock.now())?;
    drop(db);
    store
        .export_root(out)
        .with_context(|| format!("writing the root key to {}", out.display()))?;
    init.root_key_file = Some(out.display().to_string());
    Ok(init)
}

/// `keys rotate --root-key FILE`: the controller stages a fresh key and
/// returns the key list naming it; this process checks the list against
/// what the controller reports, signs it with the root key read from
/// `file`, and uploads only the signature.
async fn rotate_offline(ctx: &Ctx, role: &str, file: &Path) -> anyhow::Result<RotateOutcome> {
    let root = Ed25519Signer::load(file)
        .with_context(|| format!("reading the root key file {}", file.display()))?;
    let info: KeysInfo = ctx.client.get("keys", "/v1/keys", &[]).await?;
    if root.public_key().to_hex() != info.root_public_key {
        anyhow::bail!(
            "{} holds root key {} but this controller's agents pin {}; refusing to sign",
            file.display(),
            root.public_key().to_hex(),
            info.root_public_key
        );
    }
    let prepared: RotationPrepared = ctx
        .client
        .post(
            "keys rotate (prepare)",
            "/v1/keys/rotate/prepare",
            &serde_json::json!({ "role": role }),
        )
        .await?;
    check_prepared(&prepared.key_list, &info, role, &prepared.public_key)?;
    let signed = Signed::sign(&prepared.key_list, &root)
        .map_err(|e| anyhow::anyhow!("signing the key list: {e}"))?;
    let bytes = codec::encode(&signed, usize::MAX)?;
    let out: RotateOutcome = ctx
        .client
        .post(
            "keys rotate",
            "/v1/keys/rotate",
            &serde_json::json!({
                "role": role,
                "signed_key_list": base64::engine::general_purpose::STANDARD.encode(bytes),
            }),
        )
        .await?;
    Ok(out)
}

/// Signs only a list that changes exactly the rotated role: the next
/// version, the new key for `role`, the other role's current key.
fn check_prepared(list: &KeyList, info: &KeysInfo, role: &str, fresh: &str) -> anyhow::Result<()> {
    let mut expected = [
        (info.models_public_key.as_str(), Role::Models),
        (info.commands_public_key.as_str(), Role::Commands),
        (info.agents_public_key.as_str(), Role::Agents),
    ];
    for (key, r) in expected.iter_mut() {
        if r.to_string() == role {
            *key = fresh;
        }
    }
    let names = |key: &str, r: Role| {
        list.keys
            .iter()
            .any(|k| k.public_key.to_hex() == key && k.roles == [r])
    };
    if list.version != info.key_list_version + 1
        || list.keys.len() != expected.len()
        || !expected.iter().all(|(key, r)| names(key, *r))
    {
        anyhow::bail!(
            "the controller prepared an unexpected key list (version {}, {} keys); refusing to sign it",
            list.version,
            list.keys.len()
        );
    }
    Ok(())
}
