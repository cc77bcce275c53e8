//! `drover-agent install`: a hardened systemd unit, the data directory and
//! the config in `/etc/drover`, all under a chosen root (so packaging and
//! tests can install into a staging directory).

use std::path::{Path, PathBuf};

use crate::config::{AgentConfig, ConfigError};

/// Where the unit goes, relative to the root.
pub const UNIT_PATH: &str = "etc/systemd/system/drover-agent.service";
/// Where the config goes, relative to the root.
pub const CONFIG_PATH: &str = "etc/drover/agent.toml";

/// Why installing failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The unit file.
    pub unit: PathBuf,
    /// The config copy.
    pub config: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// The systemd unit for `exec` running with `/etc/drover/agent.toml`.
pub fn unit_file(exec: &Path, data_dir: &Path) -> String {
    format!(
        "[Unit]\n\
         Description=Drover device agent (model deploys, local inference, telemetry)\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User=drover\n\
         Group=drover\n\
         ExecStartPre={exec} boot-check --config /{CONFIG_PATH}\n\
         ExecStart={data}/bin/current run --boot-checked --config /{CONFIG_PATH}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         TimeoutStopSec=20\n\
         Environment=RUST_LOG=info\n\
         ReadWritePaths={data}\n\
         NoNewPrivileges=true\n\
         ProtectSystem=strict\n\
         ProtectHome=true\n\
         PrivateTmp=true\n\
         PrivateDevices=true\n\
         ProtectKernelTunables=true\n\
         ProtectKernelModules=true\n\
         ProtectKernelLogs=true\n\
         ProtectControlGroups=true\n\
         ProtectClock=true\n\
         ProtectHostname=true\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         RestrictNamespaces=true\n\
         RestrictRealtime=true\n\
         RestrictSUIDSGID=true\n\
         LockPersonality=true\n\
         MemoryDenyWriteExecute=true\n\
         SystemCallArchitectures=native\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         UMask=0027\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exec = exec.display(),
        data = data_dir.display(),
    )
}

fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), InstallError> {
    let io = |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)?;
    set_mode(path, mode).map_err(io)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Validates `config_file`, then writes the unit, the config copy (0640, it
/// may hold the MQTT password) and the data directory (0750) under `root`.
pub fn install(config_file: &Path, root: &Path, exec: &Path) -> Result<Installed, InstallError> {
    let cfg = AgentConfig::load(config_file)?;
    let text = std::fs::read_to_string(config_file).map_err(|source| InstallError::Io {
        path: config_file.to_path_buf(),
        source,
    })?;
    let unit = root.join(UNIT_PATH);
    write(&unit, &unit_file(exec, &cfg.data_dir), 0o644)?;
    let config = root.join(CONFIG_PATH);
    write(&config, &text, 0o640)?;
    let data_dir = under(root, &cfg.data_dir);
    std::fs::create_dir_all(&data_dir).map_err(|source| InstallError::Io {
        path: data_dir.clone(),
        source,
    })?;
    set_mode(&data_dir, 0o750).map_err(|source| InstallError::Io {
        path: data_dir.clone(),
        source,
    })?;
    Ok(Installed {
        unit,
        config,
        data_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::Sign as _;
    use drover_protocol::testkit::TestKeys;
    use drover_protocol::{DeviceId, FleetId};

    #[test]
    fn installs_unit_config_and_data_dir_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig::new(
            DeviceId::new("d1").unwrap(),
            FleetId::new("f").unwrap(),
            "mqtt://127.0.0.1:1883",
            TestKeys::new(1).root.public_key(),
            "/var/lib/drover-agent",
        );
        let cfg_file = dir.path().join("agent.toml");
        std::fs::write(&cfg_file, cfg.to_commented_toml().unwrap()).unwrap();
        let root = dir.path().join("root");
        let got = install(&cfg_file, &root, Path::new("/usr/bin/drover-agent")).unwrap();
        let unit = std::fs::read_to_string(&got.unit).unwrap();
        assert!(unit.contains("User=drover"));
        assert!(unit.contains("Restart=on-failure"));
        assert!(unit.contains("ProtectSystem=strict"));
        assert!(unit.contains("ReadWritePaths=/var/lib/drover-agent"));
        assert!(unit.contains(
            "ExecStartPre=/usr/bin/drover-agent boot-check --config /etc/drover/agent.toml\n"
        ));
        assert!(unit.contains(
            "ExecStart=/var/lib/drover-agent/bin/current run --boot-checked --config /etc/drover/agent.toml\n"
        ));
        assert_eq!(got.config, root.join("etc/drover/agent.toml"));
        assert_eq!(
            AgentConfig::load(&got.config).unwrap(),
            cfg,
            "the copied config is the validated one"
        );
        assert!(root.join("var/lib/drover-agent").is_dir());

        std::fs::write(&cfg_file, "device_id = 'x'").unwrap();
        assert!(matches!(
            install(&cfg_file, &root, Path::new("/x")),
            Err(InstallError::Config(_))
        ));
    }
}
