//! Blocking file work the driver hands to worker threads: writing chunks
//! durably, digesting a download, reading and loading an installed model.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use drover_protocol::Sha256;
use drover_protocol::ids::Sha256Hasher;
use drover_protocol::manifest::{AgentVersion, ModelManifest};
use drover_protocol::messages::{Reason, ReasonCode};

use crate::config::AgentConfig;
use crate::runtime::LoadedModel;

pub(super) fn agent_version() -> AgentVersion {
    AgentVersion::parse(crate::version::agent_version()).unwrap_or_default()
}

pub(super) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, Reason> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Reason::new(ReasonCode::Internal, format!("worker task failed: {e}")))
}

pub(super) fn write_at(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)?;
    // Durable before the store says these bytes are held.
    f.sync_data()
}

pub(super) fn digest_file(path: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(buf.get(..k).unwrap_or_default());
        n += k as u64;
    }
    Ok((h.finish(), n))
}

/// Reads, checks and loads an installed model file.
pub(crate) fn load_installed(
    path: &Path,
    manifest: ModelManifest,
    cfg: &AgentConfig,
) -> Result<LoadedModel, Reason> {
    let bytes = std::fs::read(path)
        .map_err(|e| Reason::new(ReasonCode::NotInstalled, format!("{}: {e}", path.display())))?;
    drover_protocol::trust::check_artifact(&manifest, Sha256::of(&bytes), bytes.len() as u64)
        .map_err(|e| e.reason())?;
    LoadedModel::load(&bytes, manifest, cfg.recorder()).map_err(|e| e.reason())
}
