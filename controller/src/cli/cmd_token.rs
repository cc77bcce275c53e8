//! `drover token create|list|revoke` and `drover login`, and where the CLI
//! finds its token: `DROVER_TOKEN`, else the credentials file `drover login`
//! wrote.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};

use super::{Ctx, Output, output};
use crate::auth::routes::TokenCreateBody;
use crate::auth::{NewToken, TokenInfo};

/// `drover token` subcommands (admin role).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCmd {
    /// Create an API token; it is printed once and only its hash is kept.
    Create {
        /// Name (shown in audit entries), e.g. `ci` or `alice`.
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (push, deploy, rollouts, aliases,
        /// retrain) or admin (tokens, keys, devices, broker ACLs).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// List tokens (names and roles, never the secrets).
    List,
    /// Revoke a token by name; it stops working at once.
    Revoke {
        /// Token name.
        name: String,
    },
}

/// `drover login` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// Read the token from this file (e.g. DATA_DIR/admin.token).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The token itself (visible in `ps`: prefer --token-file).
    #[arg(long)]
    pub token: Option<String>,
}

/// The credentials file: `DROVER_CREDENTIALS`, else
/// `$XDG_CONFIG_HOME/drover/credentials`, else `~/.config/drover/credentials`.
pub(crate) fn credentials_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DROVER_CREDENTIALS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("drover").join("credentials"))
}

/// The token the CLI sends: `DROVER_TOKEN` overrides the credentials file.
pub(crate) fn resolve_token() -> Option<String> {
    if let Ok(t) = std::env::var("DROVER_TOKEN")
        && !t.trim().is_empty()
    {
        return Some(t.trim().to_string());
    }
    let path = credentials_path()?;
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn write_credentials(path: &Path, token: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        crate::auth::perms::private_dir(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::auth::write_private(path, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `drover login`: checks the token against the controller, then
/// writes it to the credentials file (0600).
pub(crate) async fn login(args: LoginArgs, ctx: &Ctx, ca: Option<&[u8]>) -> anyhow::Result<()> {
    let token = match (&args.token_file, &args.token) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string(),
        (None, Some(t)) => t.trim().to_string(),
        (None, None) => return Err(anyhow!("give --token-file FILE (or --token TOKEN)")),
    };
    if token.is_empty() {
        return Err(anyhow!("the token is empty"));
    }
    let client = super::ApiClient::with_auth(ctx.client.base(), Some(token.clone()), ca)?;
    let _: serde_json::Value = client.get("checking the token", "/v1/keys", &[]).await?;
    let path = credentials_path()
        .ok_or_else(|| anyhow!("no home directory: set DROVER_CREDENTIALS or DROVER_TOKEN"))?;
    write_credentials(&path, &token)?;
    output::line(&format!(
        "logged in to {}; token saved in {} (DROVER_TOKEN overrides it)",
        client.base(),
        path.display()
    ));
    Ok(())
}

/// Runs a token subcommand.
pub(crate) async fn run(cmd: TokenCmd, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { name, role } => {
            let t: NewToken = ctx
                .client
                .post(
                    "token create",
                    "/v1/tokens",
                    &TokenCreateBody { name, role },
                )
                .await?;
            if ctx.output == Output::Json {
                return output::json(&t);
            }
            output::line(&format!(
                "created {} token {:?}; it is shown only now:",
                t.role, t.name
            ));
            output::line(&t.token);
            Ok(())
        }
        TokenCmd::List => {
            let list: Vec<TokenInfo> = ctx.client.get("token list", "/v1/tokens", &[]).await?;
            if ctx.output == Output::Json {
                return output::json(&list);
            }
            for t in list {
                output::line(&format!(
                    "{:<24} {:<9} created_at_ms={}",
                    t.name, t.role, t.created_at_ms
                ));
            }
            Ok(())
        }
        TokenCmd::Revoke { name } => {
            let _: serde_json::Value = ctx
                .client
                .delete("token revoke", &format!("/v1/tokens/{name}"))
                .await?;
            output::line(&format!("revoked token {name:?}"));
            Ok(())
        }
    }
}
