//! TLS for the MQTT link (rustls with ring): the broker's CA is pinned from
//! `ca_file` (no system roots: a device trusts only its fleet's CA), and a
//! client certificate is presented when `client_cert_file` and
//! `client_key_file` are set (brokers with `require_certificate`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{AgentConfig, ConfigError};

fn bad(key: &'static str, path: &Path, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key,
        detail: format!("{}: {e}", path.display()),
    }
}

/// The rustls client config for `mqtts://` brokers (None for `mqtt://`).
pub(crate) fn client_config(
    config: &AgentConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, ConfigError> {
    if !config.broker_addr()?.tls {
        return Ok(None);
    }
    let Some(ca) = &config.ca_file else {
        return Err(ConfigError::Invalid {
            key: "ca_file",
            detail: "an mqtts:// broker needs ca_file (the fleet CA to pin)".into(),
        });
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("ca_file", ca, e))?;
    for c in certs {
        roots.add(c).map_err(|e| bad("ca_file", ca, e))?;
    }
    if roots.is_empty() {
        return Err(bad("ca_file", ca, "no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("ca_file", ca, e))?
        .with_root_certificates(roots);
    let tls = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad("client_cert_file", cert, e))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| bad("client_key_file", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad("client_cert_file", cert, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(tls)))
}
