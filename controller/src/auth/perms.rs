//! File permissions of the controller's secrets: the data and key
//! directories 0700, the database, keys and token files 0600. A no-op on
//! platforms without Unix permissions.

use std::path::Path;

/// Creates `dir` (and parents) if needed and makes it owner-only (0700).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Tightens what the controller keeps in `data_dir`: the directory and
/// `keys/` to 0700, `drover.db` (and its WAL files), key files and token
/// files to 0600. Run after the state is opened, so files created with the
/// process umask (SQLite, older data dirs) are covered too.
pub fn harden(data_dir: &Path) -> std::io::Result<()> {
    set_mode(data_dir, 0o700)?;
    for name in [
        "drover.db",
        "drover.db-wal",
        "drover.db-shm",
        super::TOKENS_FILE,
        super::ADMIN_TOKEN_FILE,
    ] {
        let p = data_dir.join(name);
        if p.exists() {
            set_mode(&p, 0o600)?;
        }
    }
    let keys = data_dir.join("keys");
    if keys.is_dir() {
        private_tree(&keys)?;
    }
    Ok(())
}

/// `dir` and every directory under it 0700, every file 0600.
fn private_tree(dir: &Path) -> std::io::Result<()> {
    set_mode(dir, 0o700)?;
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            private_tree(&p)?;
        } else if p.is_file() {
            set_mode(&p, 0o600)?;
        }
    }
    Ok(())
}
