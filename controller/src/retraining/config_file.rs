//! Reading `controller.toml` from disk (the parsing is pure and lives in
//! [`crate::core::retraining::config`]).

use std::path::Path;

use crate::core::retraining::config::{CONFIG_FILE, ConfigError, RetrainConfig};

impl RetrainConfig {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<RetrainConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Reads `path` if given, else `DATA_DIR/controller.toml` if it exists;
    /// no file means no scheduled retraining.
    pub fn load_default(
        explicit: Option<&Path>,
        data_dir: &Path,
    ) -> Result<RetrainConfig, ConfigError> {
        match explicit {
            Some(path) => Self::load(path),
            None => {
                let path = data_dir.join(CONFIG_FILE);
                if path.exists() {
                    Self::load(&path)
                } else {
                    Ok(RetrainConfig::default())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::ModelName;

    use super::*;

    fn model(name: &str) -> ModelName {
        ModelName::new(name).unwrap()
    }

    #[test]
    fn load_default_reads_the_data_dir_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            RetrainConfig::load_default(None, dir.path())
                .unwrap()
                .models
                .is_empty()
        );
        std::fs::write(dir.path().join(CONFIG_FILE), "[retrain.a]\n").unwrap();
        let c = RetrainConfig::load_default(None, dir.path()).unwrap();
        assert!(c.models.contains_key(&model("a")));
        let missing = dir.path().join("nope.toml");
        let e = RetrainConfig::load_default(Some(&missing), dir.path()).unwrap_err();
        assert!(e.to_string().contains("nope.toml"), "{e}");
    }
}
