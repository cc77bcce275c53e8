//! The fleet CA: a small X.509 authority (rcgen, ECDSA P-256) in the data
//! directory, created on the first start. It signs the embedded broker's
//! server certificate (re-issued at every start, so its names follow the
//! configuration), per-device client certificates (CN = device id, for
//! Mosquitto `use_identity_as_username` / EMQX `peer_cert_as_username`)
//! and certificates for an external broker and the controller itself.
//!
//! Files (`DATA_DIR/fleet-ca/`, owner only): `ca.pem` (public: agents pin
//! it), `ca.key` (the CA's private key: whoever holds it can mint device
//! certificates).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// Directory under the data dir.
pub const DIR: &str = "fleet-ca";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const CA_CN: &str = "Drover fleet CA";

/// Why the fleet CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file.
    #[error("fleet CA file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// rcgen refused (bad name, bad key file).
    #[error("fleet CA: {0}")]
    Cert(#[from] rcgen::Error),
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate.
    pub cert_pem: String,
    /// Private key (PKCS#8).
    pub key_pem: String,
}

/// The loaded fleet CA.
pub struct FleetCa {
    cert: Certificate,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa").finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "Drover");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io(path))
}

impl FleetCa {
    /// Loads `DATA_DIR/fleet-ca`, creating the CA on first use.
    pub fn open_or_create(data_dir: &Path) -> Result<FleetCa, CaError> {
        let dir = data_dir.join(DIR);
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = KeyPair::from_pem(&key_pem)?;
            // rcgen cannot parse certificates here; re-signing the same
            // subject with the same key gives an issuer whose name and key
            // identifier match `ca.pem`, which is all chain building uses.
            let cert = ca_params()?.self_signed(&key)?;
            return Ok(FleetCa {
                cert,
                key,
                cert_pem,
            });
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        crate::auth::perms::private_dir(&dir).map_err(io(&dir))?;
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, &cert_pem).map_err(io(&cert_path))?;
        Ok(FleetCa {
            cert,
            key,
            cert_pem,
        })
    }

    /// The CA certificate (PEM) that agents and brokers pin.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of `ca.pem` under `data_dir`.
    pub fn cert_path(data_dir: &Path) -> PathBuf {
        data_dir.join(DIR).join(CA_CERT)
    }

    fn issue(
        &self,
        cn: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, CaError> {
        let mut p = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for a broker reachable under `names` (DNS names
    /// or IP addresses).
    pub fn server_cert(&self, names: &[String]) -> Result<Issued, CaError> {
        let cn = names.first().map_or("drover-broker", String::as_str);
        self.issue(cn, names.to_vec(), ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose CN is `identity` (a device id, or the
    /// controller's MQTT username).
    pub fn client_cert(&self, identity: &str) -> Result<Issued, CaError> {
        self.issue(identity, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_survives_a_restart_and_keeps_signing_verifiable_certs() {
        let dir = tempfile::tempdir().unwrap();
        let a = FleetCa::open_or_create(dir.path()).unwrap();
        let b = FleetCa::open_or_create(dir.path()).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        // A server certificate issued after the reload verifies against the
        // CA file written at creation.
        let server = b
            .server_cert(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let roots = {
            use rustls::pki_types::pem::PemObject as _;
            let mut r = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(a.cert_pem().as_bytes()) {
                r.add(c.unwrap()).unwrap();
            }
            r
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::pem::PemObject as _;
        let leaf =
            rustls::pki_types::CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(DIR).join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
