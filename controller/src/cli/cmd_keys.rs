//! `drover keys init|rotate|show`.

use std::path::PathBuf;

use super::{Ctx, Output, output};
use crate::controller::{KeysInfo, RotateOutcome};
use crate::keys::{KeyInit, KeyStore};

/// `drover keys` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCmd {
    /// Create the root, models and commands keys (idempotent) and print the
    /// root public key agents pin. With --data-dir, works on that directory
    /// without a running controller.
    Init {
        /// Work on this data dir directly instead of asking the controller.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Replace the models or commands key; the new root-signed key list is
    /// pushed to every device.
    Rotate {
        /// `models` or `commands`.
        #[arg(long, value_parser = ["models", "commands"])]
        role: String,
    },
    /// Print the public keys and key list version.
    Show,
}

/// Runs a keys subcommand.
pub(crate) async fn run(cmd: KeysCmd, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Init { data_dir } => {
            let init: KeyInit = match data_dir {
                Some(dir) => KeyStore::new(&dir).init()?,
                None => {
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
            Ok(())
        }
        KeysCmd::Rotate { role } => {
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
                ("key list version", k.key_list_version.to_string()),
            ]);
            Ok(())
        }
    }
}
