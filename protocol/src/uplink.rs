//! Device-signed uplinks: [`seal`] wraps an encoded [`Up`] into
//! [`Up::Signed`] with the device key, [`open`] checks it against the key
//! registered for the device and returns the inner message.
//!
//! The signature covers `"drover/v1/uplink\0"`, the fleet, `"\0"`, the
//! device, `"\0"`, the counter (8 bytes, big-endian) and the body, so a
//! sealed message is bound to its fleet, its device and its counter: it
//! cannot be replayed for another device, and the controller refuses a
//! counter it has already passed. Checking the counter (replay, freshness)
//! is the receiver's job: this module is pure and holds no state.

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

use crate::codec::{self, CodecError};
use crate::ids::{DeviceId, FleetId};
use crate::limits::MAX_UP_PAYLOAD;
use crate::messages::{SealedUp, Up};
use crate::signing::{PublicKey, Sign};

/// Bytes [`seal`] adds around the inner payload at most (variant tag, device
/// id, counter, length prefixes, signature, version byte).
pub const SEAL_OVERHEAD: usize = 256;
/// Largest inner payload that still fits `up` once sealed.
pub const MAX_SEALED_BODY: usize = MAX_UP_PAYLOAD - SEAL_OVERHEAD;

/// Why a sealed uplink was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UplinkError {
    /// The envelope names another device than the topic it came on.
    #[error("sealed for device {sealed}, received on the topic of {topic}")]
    WrongDevice {
        /// Device in the envelope.
        sealed: DeviceId,
        /// Device of the topic.
        topic: DeviceId,
    },
    /// The signature is not 64 bytes or does not verify with the device key.
    #[error("signature does not verify with the device key")]
    BadSignature,
    /// The registered key is not a valid ed25519 key.
    #[error("the registered device key is not a valid ed25519 key")]
    BadKey,
    /// The signed body is not an `up` message.
    #[error("signed body is malformed: {0}")]
    Body(CodecError),
    /// A sealed message inside a sealed message.
    #[error("nested sealed message")]
    Nested,
}

impl UplinkError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UplinkError::WrongDevice { .. } => "wrong_device",
            UplinkError::BadSignature => "bad_signature",
            UplinkError::BadKey => "bad_key",
            UplinkError::Body(_) => "bad_body",
            UplinkError::Nested => "nested",
        }
    }
}

/// The exact bytes a device signs.
pub fn signing_input(fleet: &FleetId, device: &DeviceId, counter: u64, body: &[u8]) -> Vec<u8> {
    let mut msg =
        Vec::with_capacity(32 + fleet.as_str().len() + device.as_str().len() + body.len());
    msg.extend_from_slice(b"drover/v1/uplink\0");
    msg.extend_from_slice(fleet.as_str().as_bytes());
    msg.push(0);
    msg.extend_from_slice(device.as_str().as_bytes());
    msg.push(0);
    msg.extend_from_slice(&counter.to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

/// Seals an encoded `up` payload (`codec::encode_up` output) and returns the
/// encoded [`Up::Signed`] ready to publish.
pub fn seal(
    signer: &dyn Sign,
    fleet: &FleetId,
    device: &DeviceId,
    counter: u64,
    body: Vec<u8>,
) -> Result<Vec<u8>, CodecError> {
    if body.len() > MAX_SEALED_BODY {
        return Err(CodecError::Encode(format!(
            "{} bytes exceeds the {MAX_SEALED_BODY}-byte sealed body limit",
            body.len()
        )));
    }
    let sig = signer
        .sign(&signing_input(fleet, device, counter, &body))
        .to_vec();
    codec::encode_up(&Up::Signed(SealedUp {
        device: device.clone(),
        counter,
        body,
        sig,
    }))
}

/// Checks `sealed` (received on `topic_device`'s topic of `fleet`) against
/// the device's registered `key` and decodes the inner message.
pub fn open(
    sealed: &SealedUp,
    fleet: &FleetId,
    topic_device: &DeviceId,
    key: &PublicKey,
) -> Result<Up, UplinkError> {
    if &sealed.device != topic_device {
        return Err(UplinkError::WrongDevice {
            sealed: sealed.device.clone(),
            topic: topic_device.clone(),
        });
    }
    let sig: [u8; 64] = sealed
        .sig
        .as_slice()
        .try_into()
        .map_err(|_| UplinkError::BadSignature)?;
    let vk = VerifyingKey::from_bytes(&key.0).map_err(|_| UplinkError::BadKey)?;
    vk.verify(
        &signing_input(fleet, &sealed.device, sealed.counter, &sealed.body),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| UplinkError::BadSignature)?;
    match codec::decode_up(&sealed.body).map_err(UplinkError::Body)? {
        Up::Signed(_) => Err(UplinkError::Nested),
        up => Ok(up),
    }
}

/// A device's counter source: microseconds since the epoch, strictly
/// increasing even when the clock stands still or steps back.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    last: u64,
}

impl Counter {
    /// Starts above `floor` (0 = no floor).
    pub fn new(floor: u64) -> Counter {
        Counter { last: floor }
    }

    /// The next counter at `now_us`.
    pub fn next(&mut self, now_us: u64) -> u64 {
        self.last = now_us.max(self.last.saturating_add(1));
        self.last
    }

    /// The last counter handed out.
    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{CommandAck, Hello};
    use crate::signing::Ed25519Signer;

    fn ids() -> (FleetId, DeviceId, DeviceId) {
        (
            FleetId::new("plant").unwrap(),
            DeviceId::new("dev-1").unwrap(),
            DeviceId::new("dev-2").unwrap(),
        )
    }

    fn sealed(bytes: &[u8]) -> SealedUp {
        match codec::decode_up(bytes).unwrap() {
            Up::Signed(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seal_open_round_trip_and_every_refusal() {
        let (fleet, d1, d2) = ids();
        let k1 = Ed25519Signer::from_seed([1; 32]);
        let k2 = Ed25519Signer::from_seed([2; 32]);
        let inner = Up::Ack(CommandAck {
            seq: 4,
            result: Ok(()),
        });
        let body = codec::encode_up(&inner).unwrap();
        let s = sealed(&seal(&k1, &fleet, &d1, 77, body.clone()).unwrap());
        assert_eq!(s.counter, 77);
        assert_eq!(open(&s, &fleet, &d1, &k1.public_key()).unwrap(), inner);

        // Another device's key, another topic, another fleet, a changed counter
        // or body: all refused.
        assert_eq!(
            open(&s, &fleet, &d1, &k2.public_key()),
            Err(UplinkError::BadSignature)
        );
        assert!(matches!(
            open(&s, &fleet, &d2, &k1.public_key()),
            Err(UplinkError::WrongDevice { .. })
        ));
        let other_fleet = FleetId::new("other").unwrap();
        assert_eq!(
            open(&s, &other_fleet, &d1, &k1.public_key()),
            Err(UplinkError::BadSignature)
        );
        let mut c = s.clone();
        c.counter += 1;
        assert_eq!(
            open(&c, &fleet, &d1, &k1.public_key()),
            Err(UplinkError::BadSignature)
        );
        let mut b = s.clone();
        b.body[1] ^= 1;
        assert_eq!(
            open(&b, &fleet, &d1, &k1.public_key()),
            Err(UplinkError::BadSignature)
        );
        let mut short = s.clone();
        short.sig.pop();
        assert_eq!(
            open(&short, &fleet, &d1, &k1.public_key()),
            Err(UplinkError::BadSignature)
        );
        // Relabelled for dev-2 (with dev-2's key) it does not verify either.
        let mut relabelled = s.clone();
        relabelled.device = d2.clone();
        assert_eq!(
            open(&relabelled, &fleet, &d2, &k2.public_key()),
            Err(UplinkError::BadSignature)
        );

        // Nested seals and junk bodies are refused after the signature check.
        let outer = seal(
            &k1,
            &fleet,
            &d1,
            78,
            seal(&k1, &fleet, &d1, 1, body).unwrap(),
        )
        .unwrap();
        assert_eq!(
            open(&sealed(&outer), &fleet, &d1, &k1.public_key()),
            Err(UplinkError::Nested)
        );
        let junk = seal(&k1, &fleet, &d1, 79, vec![1, 250, 250]).unwrap();
        assert!(matches!(
            open(&sealed(&junk), &fleet, &d1, &k1.public_key()),
            Err(UplinkError::Body(_))
        ));
    }

    #[test]
    fn oversized_bodies_are_refused_before_signing() {
        let (fleet, d1, _) = ids();
        let k = Ed25519Signer::from_seed([1; 32]);
        assert!(seal(&k, &fleet, &d1, 1, vec![0; MAX_SEALED_BODY + 1]).is_err());
        // The largest allowed body still fits the `up` limit once sealed.
        let long = DeviceId::new("d".repeat(64)).unwrap();
        let out = seal(&k, &fleet, &long, u64::MAX, vec![0; MAX_SEALED_BODY]).unwrap();
        assert!(out.len() <= MAX_UP_PAYLOAD);
        let hello = codec::encode_up(&Up::Hello(Hello::default())).unwrap();
        assert!(seal(&k, &fleet, &d1, 1, hello).is_ok());
    }

    #[test]
    fn counter_is_strictly_increasing() {
        let mut c = Counter::new(0);
        assert_eq!(c.next(100), 100);
        assert_eq!(c.next(100), 101, "a clock standing still");
        assert_eq!(c.next(50), 102, "a clock stepping back");
        assert_eq!(c.next(1_000), 1_000);
        let mut f = Counter::new(5_000);
        assert_eq!(f.next(10), 5_001);
        assert_eq!(f.last(), 5_001);
    }
}
