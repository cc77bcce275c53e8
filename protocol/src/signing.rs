//! Signatures: `Signed<T>` over domain-separated bytes, the `Sign` trait and a
//! file-backed ed25519 signer.
//!
//! A signed value keeps the exact bytes that were signed (`body`), so
//! verification never depends on re-encoding. The signature covers
//! `"drover/v1/" + DOMAIN + "\0" + body`: a signature made for a manifest can
//! never be replayed as a command or a key list.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::Sha256;

/// A type that can be signed, with its signing domain.
pub trait SignedPayload: Serialize + DeserializeOwned {
    /// Domain-separation tag, unique per type.
    const DOMAIN: &'static str;
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Short, stable id of this key: the first 8 bytes of its SHA-256.
    pub fn key_id(&self) -> KeyId {
        let d = Sha256::of(&self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d.0[..8]);
        KeyId(id)
    }

    /// Lower-case hex (what operators pin in agent configs).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters and checks the point is a valid key.
    pub fn from_hex(s: &str) -> Result<Self, SignatureError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| SignatureError::BadKeyEncoding)?;
        VerifyingKey::from_bytes(&out).map_err(|_| SignatureError::BadKeyEncoding)?;
        Ok(PublicKey(out))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Short key fingerprint carried next to a signature.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex::encode(self.0))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Why a signature or key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature was made by a different key than the one checked against.
    #[error("signed by key {signed_by}, expected key {expected}")]
    WrongKey {
        /// Key id in the envelope.
        signed_by: KeyId,
        /// Key id checked against.
        expected: KeyId,
    },
    /// The signature does not match the body (tampered body or forged signature).
    #[error("signature does not verify")]
    BadSignature,
    /// The signature is not 64 bytes.
    #[error("signature has {0} bytes, expected 64")]
    BadSignatureLength(usize),
    /// A public key is not a valid ed25519 point or not 32 bytes of hex.
    #[error("public key is not a valid ed25519 key")]
    BadKeyEncoding,
    /// The signed body does not decode as the expected type.
    #[error("signed body is malformed: {0}")]
    Body(String),
    /// Encoding a value for signing failed.
    #[error("cannot encode value for signing: {0}")]
    Encode(String),
}

/// A value with its signature. `T` only marks what the body decodes to.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// postcard bytes of the value, exactly as signed.
    pub body: Vec<u8>,
    /// Which key signed.
    pub key_id: KeyId,
    /// 64-byte ed25519 signature over the domain-separated body.
    pub signature: Vec<u8>,
    #[serde(skip)]
    _marker: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            body: self.body.clone(),
            key_id: self.key_id,
            signature: self.signature.clone(),
            _marker: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body && self.key_id == other.key_id && self.signature == other.signature
    }
}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("body_len", &self.body.len())
            .field("key_id", &self.key_id)
            .finish()
    }
}

fn signing_input(domain: &str, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(11 + domain.len() + body.len());
    msg.extend_from_slice(b"drover/v1/");
    msg.extend_from_slice(domain.as_bytes());
    msg.push(0);
    msg.extend_from_slice(body);
    msg
}

impl<T: SignedPayload> Signed<T> {
    /// Encodes and signs `value`.
    pub fn sign(value: &T, signer: &dyn Sign) -> Result<Signed<T>, SignatureError> {
        let body =
            postcard::to_allocvec(value).map_err(|e| SignatureError::Encode(e.to_string()))?;
        Ok(Self::sign_bytes(body, signer))
    }

    /// Signs already-encoded body bytes (fixtures use this to build malformed bodies).
    pub fn sign_bytes(body: Vec<u8>, signer: &dyn Sign) -> Signed<T> {
        let signature = signer.sign(&signing_input(T::DOMAIN, &body)).to_vec();
        Signed {
            body,
            key_id: signer.public_key().key_id(),
            signature,
            _marker: PhantomData,
        }
    }

    /// Checks the signature against `key` and decodes the body.
    pub fn verify(&self, key: &PublicKey) -> Result<T, SignatureError> {
        let expected = key.key_id();
        if self.key_id != expected {
            return Err(SignatureError::WrongKey {
                signed_by: self.key_id,
                expected,
            });
        }
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::BadSignatureLength(self.signature.len()))?;
        let vk = VerifyingKey::from_bytes(&key.0).map_err(|_| SignatureError::BadKeyEncoding)?;
        vk.verify(
            &signing_input(T::DOMAIN, &self.body),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .map_err(|_| SignatureError::BadSignature)?;
        self.decode_unverified()
    }

    /// Decodes the body WITHOUT checking the signature. Only for display and
    /// routing of values whose signature is checked elsewhere.
    pub fn decode_unverified(&self) -> Result<T, SignatureError> {
        let (value, rest) = postcard::take_from_bytes::<T>(&self.body)
            .map_err(|e| SignatureError::Body(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SignatureError::Body(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(value)
    }
}

/// Something that signs: a key file today, an HSM or KMS later.
pub trait Sign: Send + Sync {
    /// The public half, placed in key lists and pinned by agents.
    fn public_key(&self) -> PublicKey;
    /// Signs `msg`.
    fn sign(&self, msg: &[u8]) -> [u8; 64];
}

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// I/O error on the key file.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex characters.
    #[error("key file {0} does not hold a 32-byte hex ed25519 seed")]
    Format(String),
    /// The OS random source failed.
    #[error("cannot get randomness from the OS: {0}")]
    Random(String),
    /// Refusing to overwrite an existing key.
    #[error("key file {0} already exists; refusing to overwrite a key")]
    Exists(String),
}

/// An ed25519 signing key held in memory, loaded from or saved to a file
/// holding the 32-byte seed as hex.
pub struct Ed25519Signer {
    key: SigningKey,
}

impl Ed25519Signer {
    /// A fresh key from OS randomness.
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// A key from a fixed seed (tests and fixtures).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Ed25519Signer {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| KeyFileError::Format(path.display().to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// Writes the key to a new file readable only by its owner (0600).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        use std::io::Write as _;
        let io_err = |source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists(path.display().to_string())
            } else {
                io_err(e)
            }
        })?;
        writeln!(f, "{}", hex::encode(self.key.to_bytes())).map_err(io_err)?;
        f.sync_all().map_err(io_err)
    }
}

// Only the public half: a signer must never print its secret.
impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Signer({})", self.public_key())
    }
}

impl Sign for Ed25519Signer {
    fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Thing(u32);
    impl SignedPayload for Thing {
        const DOMAIN: &'static str = "thing";
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Other(u32);
    impl SignedPayload for Other {
        const DOMAIN: &'static str = "other";
    }

    #[test]
    fn sign_verify_and_tamper() {
        let k = Ed25519Signer::from_seed([7; 32]);
        let s = Signed::sign(&Thing(5), &k).unwrap();
        assert_eq!(s.verify(&k.public_key()).unwrap(), Thing(5));

        let mut tampered = s.clone();
        tampered.body[0] ^= 1;
        assert_eq!(
            tampered.verify(&k.public_key()),
            Err(SignatureError::BadSignature)
        );

        let other = Ed25519Signer::from_seed([8; 32]);
        assert!(matches!(
            s.verify(&other.public_key()),
            Err(SignatureError::WrongKey { .. })
        ));
    }

    #[test]
    fn domain_separation_stops_cross_type_replay() {
        let k = Ed25519Signer::from_seed([7; 32]);
        let s = Signed::sign(&Thing(5), &k).unwrap();
        let as_other: Signed<Other> = Signed {
            body: s.body.clone(),
            key_id: s.key_id,
            signature: s.signature.clone(),
            _marker: PhantomData,
        };
        assert_eq!(
            as_other.verify(&k.public_key()),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn key_file_round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let k = Ed25519Signer::generate().unwrap();
        k.save(&path).unwrap();
        let back = Ed25519Signer::load(&path).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(k.save(&path), Err(KeyFileError::Exists(_))));
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(matches!(
            Ed25519Signer::load(&dir.path().join("bad")),
            Err(KeyFileError::Format(_))
        ));
    }

    #[test]
    fn public_key_hex() {
        let k = Ed25519Signer::from_seed([1; 32]).public_key();
        assert_eq!(PublicKey::from_hex(&k.to_hex()).unwrap(), k);
        assert!(PublicKey::from_hex("00").is_err());
    }
}
